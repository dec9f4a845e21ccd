"""Fetching and unpacking Debian packages without installing them on the host.

Images are assembled from Debian's binary packages. ``apt-get download``
uses the host's configured mirrors (the only package source on our machines)
and ``dpkg-deb -x`` unpacks without running maintainer scripts, so nothing
here needs or touches the host's package state.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class PackageError(RuntimeError):
    """A Debian package could not be resolved or fetched."""


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PackageError(f"'{name}' is not installed; {hint}")
    return path


def candidate(package: str) -> tuple[str, str]:
    """Return ``(version, depends)`` of the version apt would install for ``package``."""
    _require_tool("apt-cache", "images are built from Debian packages and need apt")
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise PackageError(
            f"Debian package {package!r} is unknown to apt; run 'apt-get update' "
            f"(as root) and try again. apt said: {proc.stderr.strip()}"
        )
    fields: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields.get("Version", ""), fields.get("Depends", "")


def download(packages: list[str], dest: Path) -> list[Path]:
    """Download the ``.deb`` files of ``packages`` (no dependencies) into ``dest``."""
    _require_tool("apt-get", "images are built from Debian packages and need apt")
    dest.mkdir(parents=True, exist_ok=True)
    # apt drops privileges to _apt for downloads; a root-owned temp dir it
    # cannot write only produces a warning, so make dest world-writable.
    dest.chmod(0o777)
    proc = subprocess.run(
        ["apt-get", "download", "-q", *packages],
        cwd=dest,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PackageError(
            f"apt-get download {' '.join(packages)} failed; run 'apt-get update' and check "
            f"the mirror is reachable. apt said: {proc.stderr.strip()[-2000:]}"
        )
    return sorted(dest.glob("*.deb"))


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` into ``dest`` (no maintainer scripts run)."""
    _require_tool("dpkg-deb", "images are built from Debian packages and need dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
