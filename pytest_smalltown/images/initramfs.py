"""Writing initramfs archives (cpio "newc", gzip) in pure Python.

Building the archive ourselves, rather than with ``cpio`` over a staging
directory, lets every entry be owned by root and carry an exact mode without
the builder being root, and makes the output byte-for-byte reproducible
(fixed mtimes, sorted entries).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Initramfs:
    """An in-memory description of an initramfs: paths to contents and modes.

    Parent directories are created implicitly. Paths are absolute inside the
    archive ("/init", "/bin/busybox").
    """

    _entries: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def _add(self, path: str, mode: int, data: bytes) -> None:
        path = "/" + path.strip("/")
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            self._entries.setdefault(parent, (stat.S_IFDIR | 0o755, b""))
        self._entries[path] = (mode, data)

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | mode, b"")

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | mode, data)

    def copy(self, path: str, source: Path, mode: int | None = None) -> None:
        """Add the contents of host file ``source`` as ``path`` (keeping its mode by default)."""
        file_mode = stat.S_IMODE(source.stat().st_mode) if mode is None else mode
        self.file(path, source.read_bytes(), file_mode)

    def symlink(self, path: str, target: str) -> None:
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def to_cpio(self) -> bytes:
        """Serialise as an uncompressed newc archive."""
        out = bytearray()
        for ino, path in enumerate(sorted(self._entries), start=1):
            mode, data = self._entries[path]
            out += _newc_entry(path.lstrip("/"), mode, data, ino)
        out += _newc_entry("TRAILER!!!", 0, b"", 0)
        return bytes(out)

    def write(self, dest: Path) -> None:
        """Write as gzip-compressed newc, the format every Debian kernel unpacks."""
        dest.write_bytes(gzip.compress(self.to_cpio(), compresslevel=6, mtime=0))


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    name_bytes = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    entry = header + name_bytes
    entry += _pad4(len(entry))
    entry += data + _pad4(len(data))
    return entry
