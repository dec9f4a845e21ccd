"""The cluster's certificate authority and every certificate a node needs.

One ECDSA P-256 CA signs everything: etcd server/peer/client, the apiserver's
serving certificate, all Kubernetes client identities (controller-manager,
scheduler, kube-proxy, kubelets, the apiserver's kubelet client, debug users)
and the kubelets' serving certificates. One CA is what the original
Smalltown did too ("id-ca"), and it keeps a golden ticket small: a joining
node needs exactly one trust root.

ECDSA P-256 rather than ed25519 for the TLS keys because every consumer
(Go's crypto/tls in etcd and Kubernetes, OpenSSL in Python clients, the
service-account token signer, which refuses ed25519) accepts it.
Node identity keys stay ed25519 (see :mod:`identity`); a CA certificate over
such a key is what a golden ticket carries as ``node_cert``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Validity of every certificate. Test clusters are short-lived, but a VM
#: snapshot may be resumed much later, and an expired cert is a baffling failure.
VALIDITY = datetime.timedelta(days=3650)
#: Backdating absorbs clock skew between the host and a guest whose RTC lags.
BACKDATE = datetime.timedelta(hours=1)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    # ed25519 signs without a separate digest; ECDSA uses SHA-256.
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _certificate(subject: x509.Name, issuer: x509.Name, public_key: PublicKey, *, ca: bool) -> x509.CertificateBuilder:
    """What every certificate of ours has: a fresh serial, the validity window, and key usage for a CA or a leaf."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )


def generate_ca(cn: str = "Smalltown Cluster CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh self-signed CA (certificate, key)."""
    key = new_key()
    builder = _certificate(_name(cn), _name(cn), key.public_key(), ca=True).add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return _sign(builder, key), key


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    cn: str,
    *,
    orgs: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    client: bool = False,
    server: bool = False,
    public_key: PublicKey | None = None,
) -> tuple[x509.Certificate, PrivateKey | None]:
    """Issue a leaf certificate signed by the CA.

    A new ECDSA key is generated unless ``public_key`` is given (then the
    returned key is None: the caller holds the private half). ``client`` and
    ``server`` select the extended key usages; Go's TLS stack enforces them.
    """
    key: PrivateKey | None = None
    if public_key is None:
        key = new_key()
        public_key = key.public_key()
    usages = []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = _certificate(_name(cn, orgs), ca_cert.subject, public_key, ca=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
        critical=False,
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _sign(builder, ca_key), key


def apiserver_sans(node_name: str, node_ip: str | None, service_ip: str, domain: str) -> tuple[list[str], list[str]]:
    """DNS names and IPs the apiserver certificate must cover.

    127.0.0.1/localhost because debug kubeconfigs point there (the harness
    forwards a host port and rewrites only the port); the node IP for workers
    and for the ``kubernetes`` Endpoints; the service IP and names for pods.
    """
    dns = [
        "localhost",
        node_name,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{domain}",
    ]
    ips = ["127.0.0.1", service_ip]
    if node_ip:
        ips.append(node_ip)
    return dns, ips


@dataclass(frozen=True)
class KeyPair:
    """PEM certificate and key, as written to disk and as carried in tickets."""

    cert: bytes
    key: bytes


class ClusterCA:
    """The CA kept in a directory (``ca.crt``/``ca.key``), created on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"
        self._cert: x509.Certificate | None = None
        self._key: PrivateKey | None = None

    def exists(self) -> bool:
        return self.cert_path.exists() and self.key_path.exists()

    def ensure(self) -> None:
        """Load the CA, creating it if this is the cluster's first boot."""
        if self.exists():
            self._cert = load_cert(self.cert_path.read_bytes())
            self._key = load_key(self.key_path.read_bytes())
            return
        cert, key = generate_ca()
        write_private(self.key_path, key_pem(key))
        write_public(self.cert_path, cert_pem(cert))
        self._cert, self._key = cert, key

    @property
    def cert(self) -> x509.Certificate:
        if self._cert is None:
            raise RuntimeError("CA not loaded")
        return self._cert

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            raise RuntimeError("CA not loaded")
        return self._key

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def issue(self, cn: str, **kwargs: object) -> KeyPair:
        """Issue a certificate with a new key; see :func:`issue` for the options."""
        cert, key = issue(self.cert, self.key, cn, **kwargs)  # type: ignore[arg-type]
        assert key is not None
        return KeyPair(cert_pem(cert), key_pem(key))

    def ensure_pair(self, name: str, cn: str, **kwargs: object) -> KeyPair:
        """``name.crt``/``name.key`` in the CA directory, issued once and then reused.

        Reuse matters on a reboot of the same disk; a change of SANs (a new
        node IP) is handled by the caller deleting the pair first.
        """
        crt, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if crt.exists() and key.exists():
            return KeyPair(crt.read_bytes(), key.read_bytes())
        pair = self.issue(cn, **kwargs)
        write_private(key, pair.key)
        write_public(crt, pair.cert)
        return pair


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def kubeconfig(server: str, ca: bytes, cert: bytes, key: bytes, user: str = "smalltown") -> str:
    """A single-context kubeconfig with everything embedded.

    Rendered as JSON, which is valid YAML: kubectl, client-go and the Python
    ``kubernetes`` client all read it, and no YAML library is needed here.
    """
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "smalltown", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "smalltown", "context": {"cluster": "smalltown", "user": user}}],
        "current-context": "smalltown",
    }
    return json.dumps(doc, indent=2) + "\n"
