"""The data partition: found by its GPT name, unlocked with a key only this node's TPM can unseal.

Smalltown keeps a node's state on a data partition apart from the system,
encrypted with a key sealed to the node's TPM: a disk taken to another
machine (or booted with another TPM) does not open. The reference node does
the same when its disk has a partition named ``smalltown-data`` (the UEFI
image, :mod:`pytest_smalltown.images.uefi`); it is mounted on the agent's data
directory, which holds the node key, the PKI, etcd and the local volumes.

What happens at boot:

* no such partition (the direct-boot image): the data directory is on the
  root file system, as before;
* a TPM and a blank partition (first boot): 64 random bytes are sealed to
  the TPM (a sealed data object under the storage primary key, which is
  derived from the TPM's own secret seed), the partition is formatted LUKS2
  with them as its key, the sealed object is stored in a LUKS2 token, and
  ext4 is made inside;
* a TPM and a LUKS2 partition (later boots): the token's object is loaded
  into the TPM and unsealed. Another TPM derives another primary key, so
  loading fails: the partition stays locked, the node says why and does not
  start (``DataAvailable`` stays false);
* no TPM: a LUKS2 partition cannot be opened (the node says so); a blank
  one gets plain ext4 and the node logs that its data is not encrypted.

The key never touches a disk: it passes from ``tpm2_unseal`` to
``cryptsetup`` through this process's memory and pipes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: GPT partition name of the data partition (images/uefi.py makes it).
DATA_PARTITION_NAME = "smalltown-data"
#: Device-mapper name of the unlocked partition.
MAPPED_NAME = "smalltown-data"
#: The kernel's TPM resource manager: each tool invocation gets its own session.
TPM_DEVICE = Path("/dev/tpmrm0")
#: LUKS2 token type that carries the sealed key.
TOKEN_TYPE = "smalltown-tpm2"
KEY_BYTES = 64
#: ext4 superblock magic, at byte 1080 of the partition.
EXT4_MAGIC_OFFSET = 1080
EXT4_MAGIC = b"\x53\xef"


class DataUnavailableError(RuntimeError):
    """The data partition cannot be unlocked or mounted; the message says why and what to do."""


@dataclass(frozen=True)
class DataState:
    """How the data directory came to be: for the log and the ``DataSealed`` condition."""

    device: str | None
    sealed: bool
    description: str


def find_partition(name: str = DATA_PARTITION_NAME, sys_block: Path = Path("/sys/class/block")) -> str | None:
    """The ``/dev`` path of the partition whose GPT name is ``name`` (read from sysfs uevents), or None."""
    if not sys_block.is_dir():
        return None
    for entry in sorted(sys_block.iterdir()):
        try:
            fields = dict(line.split("=", 1) for line in (entry / "uevent").read_text().splitlines() if "=" in line)
        except OSError:
            continue
        if fields.get("PARTNAME") == name and "DEVNAME" in fields:
            return f"/dev/{fields['DEVNAME']}"
    return None


def _run(argv: list[str], what: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-1500:]
        raise DataUnavailableError(f"{what} failed (exit {proc.returncode}): {message}")
    return proc.stdout


class Tpm:
    """Seal and unseal a small secret with tpm2-tools, under the owner hierarchy's primary key."""

    def __init__(self, workdir: Path, tcti: str = f"device:{TPM_DEVICE}") -> None:
        self.workdir = workdir
        #: How tpm2-tools reach the TPM: the kernel's device in the node, a swtpm socket in tests.
        self.env = {"TPM2TOOLS_TCTI": tcti}

    def _tool(self, argv: list[str], what: str, stdin: bytes | None = None) -> bytes:
        """Run one tpm2-tools command, then flush the transient objects it left loaded.

        Behind the kernel's resource manager (/dev/tpmrm0) they would go with
        the connection; a TPM spoken to directly (swtpm in tests) keeps them,
        and has three slots. The context files the tools saved stay loadable.
        """
        try:
            return _run(argv, what, stdin=stdin, env=self.env)
        finally:
            _run(["tpm2_flushcontext", "-t"], "tpm2_flushcontext", env=self.env)

    def _primary(self) -> Path:
        # The primary key is derived from the TPM's storage seed and the
        # template: the same TPM makes the same key on every boot, another
        # TPM a different one. Nothing needs to be stored for it.
        context = self.workdir / "primary.ctx"
        self._tool(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", str(context)],
                   "tpm2_createprimary")
        return context

    def seal(self, secret: bytes) -> tuple[bytes, bytes]:
        """Seal ``secret`` to this TPM; returns the sealed object's public and private parts."""
        primary = self._primary()
        public, private = self.workdir / "seal.pub", self.workdir / "seal.priv"
        self._tool(["tpm2_create", "-Q", "-C", str(primary), "-g", "sha256", "-i", "-",
                    "-u", str(public), "-r", str(private)], "tpm2_create (sealing the data key)", stdin=secret)
        return public.read_bytes(), private.read_bytes()

    def unseal(self, public: bytes, private: bytes) -> bytes:
        """The secret sealed in ``(public, private)``; fails unless this TPM sealed it."""
        primary = self._primary()
        (self.workdir / "seal.pub").write_bytes(public)
        (self.workdir / "seal.priv").write_bytes(private)
        loaded = self.workdir / "seal.ctx"
        try:
            self._tool(["tpm2_load", "-Q", "-C", str(primary), "-u", str(self.workdir / "seal.pub"),
                        "-r", str(self.workdir / "seal.priv"), "-c", str(loaded)], "tpm2_load")
        except DataUnavailableError as error:
            raise DataUnavailableError(
                "this TPM cannot load the data partition's sealed key: the partition was sealed by another "
                f"TPM (or its TPM state was lost). The data stays locked. ({error})"
            ) from error
        return self._tool(["tpm2_unseal", "-Q", "-c", str(loaded)], "tpm2_unseal")


def luks_token(public: bytes, private: bytes) -> str:
    """The LUKS2 token (JSON) that stores the sealed key next to the keyslot it opens."""
    return json.dumps({
        "type": TOKEN_TYPE, "keyslots": ["0"],
        "tpm2-public": base64.b64encode(public).decode(), "tpm2-private": base64.b64encode(private).decode(),
    })  # fmt: skip


def parse_luks_token(text: str) -> tuple[bytes, bytes]:
    """The sealed key's public and private parts from a token written by :func:`luks_token`."""
    token = json.loads(text)
    if token.get("type") != TOKEN_TYPE:
        raise DataUnavailableError(f"the data partition's LUKS token is of type {token.get('type')!r}, not {TOKEN_TYPE}")
    return base64.b64decode(token["tpm2-public"]), base64.b64decode(token["tpm2-private"])


def has_ext4(device: str) -> bool:
    """True if ``device`` starts with an ext4 (ext2/3) superblock."""
    with open(device, "rb") as f:
        f.seek(EXT4_MAGIC_OFFSET)
        return f.read(2) == EXT4_MAGIC


def is_blank(device: str, probe_bytes: int = 1 << 20) -> bool:
    """True if the first MiB of ``device`` is zeros: a partition nothing was ever written to."""
    with open(device, "rb") as f:
        return not f.read(probe_bytes).strip(b"\0")


def make_ext4(device: str) -> None:
    _run(["mkfs.ext4", "-q", "-L", "smalltown-data", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
          device], f"mkfs.ext4 {device}")  # fmt: skip


def mount_ext4(device: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "ext4", "-o", "noatime", device, str(target)], f"mounting {device} on {target}")


class DataPartition:
    """Unlock (or on first boot, create) the data partition ``device`` and mount it on ``target``."""

    def __init__(self, device: str, target: Path, tpm_present: bool) -> None:
        self.device = device
        self.target = target
        self.tpm_present = tpm_present
        self.mapped = f"/dev/mapper/{MAPPED_NAME}"

    def _is_luks(self) -> bool:
        return subprocess.run(["cryptsetup", "isLuks", self.device], capture_output=True, check=False).returncode == 0

    def _open(self, key: bytes) -> None:
        _run(["modprobe", "dm_crypt"], "modprobe dm_crypt")
        _run(["cryptsetup", "open", "--type", "luks2", "--key-file", "-", self.device, MAPPED_NAME],
             f"cryptsetup open {self.device}", stdin=key)  # fmt: skip

    def prepare(self) -> DataState:
        luks = self._is_luks()
        if not self.tpm_present:
            if luks:
                raise DataUnavailableError(
                    f"{self.device} is encrypted with a key sealed to a TPM, and this node has none "
                    "(boot it with the TPM that sealed it: --smalltown-tpm and its swtpm state)")
            if is_blank(self.device):
                make_ext4(self.device)
            mount_ext4(self.device, self.target)
            return DataState(self.device, False, f"no TPM: data partition {self.device} is NOT encrypted "
                                                 f"(plain ext4 on {self.target}); attach a TPM to seal it")
        with tempfile.TemporaryDirectory(prefix="tpm-", dir="/run") as work:
            tpm = Tpm(Path(work))
            if luks:
                token = _run(["cryptsetup", "token", "export", "--token-id", "0", self.device],
                             "reading the sealed key from the LUKS2 token").decode()  # fmt: skip
                self._open(tpm.unseal(*parse_luks_token(token)))
                mount_ext4(self.mapped, self.target)
                return DataState(self.device, True, f"data partition {self.device} unlocked with the key sealed "
                                                    f"to this TPM, mounted on {self.target}")
            if not is_blank(self.device):
                if has_ext4(self.device):
                    mount_ext4(self.device, self.target)
                    return DataState(self.device, False, f"data partition {self.device} was made without a TPM "
                                                         "and stays NOT encrypted (plain ext4)")
                raise DataUnavailableError(f"{self.device} holds neither LUKS2 nor ext4 nor zeros; "
                                           "refusing to format it (wipe it to start afresh)")
            key = os.urandom(KEY_BYTES)
            public, private = tpm.seal(key)
            # The key is random, not a passphrase: stretching it buys nothing,
            # and argon2's memory-hard default costs seconds under emulation.
            _run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
                  "--pbkdf-force-iterations", "1000", "--label", "smalltown-data", "--key-file", "-", self.device],
                 f"cryptsetup luksFormat {self.device}", stdin=key)  # fmt: skip
            _run(["cryptsetup", "token", "import", "--token-id", "0", "--json-file", "-", self.device],
                 "storing the sealed key in a LUKS2 token", stdin=luks_token(public, private).encode())  # fmt: skip
            self._open(key)
            make_ext4(self.mapped)
            mount_ext4(self.mapped, self.target)
            return DataState(self.device, True, f"data partition {self.device} sealed to this TPM (first boot: "
                                                f"LUKS2, key sealed in its token), mounted on {self.target}")


def prepare_data(target: Path, log: Callable[[str], None], tpm_device: Path = TPM_DEVICE) -> DataState:
    """Make the data directory ``target`` available (see the module's docstring); raise when it cannot be."""
    device = find_partition()
    if device is None:
        target.mkdir(parents=True, exist_ok=True)
        return DataState(None, False, f"no data partition: data directory {target} is on the root file system")
    tpm_present = tpm_device.exists()
    log(f"data partition {device} found; TPM {'present' if tpm_present else 'absent'}")
    return DataPartition(device, target, tpm_present).prepare()
