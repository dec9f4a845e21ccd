"""Node identity: an ed25519 key, and the names derived from it.

As in the original Smalltown, a node *is* its key: the hostname and the
Kubernetes node name are ``smalltown-<hex>`` from the public key, and
``/etc/machine-id`` is hex from the same key (Kubernetes reports it as the
node's machineID). Hex rather than base64 because node names must be valid
DNS labels; a 16-hex-digit prefix (64 bits) keeps the name short enough for
a Linux hostname (64 bytes) while collisions stay out of reach for a test
cluster.

A joining node does not invent its key: node 0 generates it and sends it in
the golden ticket (``node_key``/``node_id``), so node 0 can issue the
joiner's kubelet certificates for a name that is already fixed, and the
joiner still derives its name from "its" key by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pytest_smalltown.node.pki import write_private, write_public

NAME_PREFIX = "smalltown-"
NAME_HEX_DIGITS = 16


def generate_node_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_bytes(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def node_name(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    """``smalltown-`` and the first 16 hex digits of the raw public key."""
    return NAME_PREFIX + public_bytes(key).hex()[:NAME_HEX_DIGITS]


def machine_id(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    """32 lowercase hex digits, the format systemd and Kubernetes expect."""
    return public_bytes(key).hex()[:32]


def node_key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_node_key(pem: bytes) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("node key must be ed25519")
    return key


@dataclass(frozen=True)
class NodeIdentity:
    key: ed25519.Ed25519PrivateKey

    @property
    def name(self) -> str:
        return node_name(self.key)

    @property
    def machine_id(self) -> str:
        return machine_id(self.key)


def load_or_create(path: Path, provided_pem: bytes | None = None) -> NodeIdentity:
    """The persisted node key; ``provided_pem`` (from a golden ticket) wins over both."""
    if provided_pem:
        key = load_node_key(provided_pem)
        write_private(path, provided_pem)
    elif path.exists():
        key = load_node_key(path.read_bytes())
    else:
        key = generate_node_key()
        write_private(path, node_key_pem(key))
    return NodeIdentity(key)


def os_release(version: str) -> str:
    """/etc/os-release content; Kubernetes shows PRETTY_NAME as the node's OS image."""
    return (
        'NAME="Smalltown"\n'
        "ID=smalltown\n"
        "ID_LIKE=debian\n"
        f'VERSION="{version} (reference node)"\n'
        f"VERSION_ID={version}\n"
        f'PRETTY_NAME="Smalltown {version} (reference node, Debian bookworm)"\n'
        'HOME_URL="https://github.com/monogon-dev/monogon"\n'
    )


def hosts_file(name: str, ip: str | None) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{ip}\t{name}" if ip else f"127.0.1.1\t{name}")
    return "\n".join(lines) + "\n"


def write_identity_files(etc: Path, ident: NodeIdentity, version: str, ip: str | None) -> None:
    """/etc/hostname, /etc/machine-id, /etc/os-release, /etc/hosts."""
    write_public(etc / "hostname", (ident.name + "\n").encode())
    write_public(etc / "machine-id", (ident.machine_id + "\n").encode())
    # Debian's /etc/os-release is a symlink into /usr/lib; replace the link, not its target.
    osr = etc / "os-release"
    if osr.is_symlink():
        osr.unlink()
    write_public(osr, os_release(version).encode())
    write_public(etc / "hosts", hosts_file(ident.name, ip).encode())
