"""Fetching and unpacking Debian packages without installing them on the host.

Images are assembled from Debian's binary packages. ``apt-get download``
uses the host's configured mirrors (the only package source on our machines)
and ``dpkg-deb -x`` unpacks without running maintainer scripts, so nothing
here needs or touches the host's package state.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pytest_smalltown.images.cache import hash_inputs, remembered
from pytest_smalltown.launch.reaper import run_supervised

#: What apt resolves candidate versions from: its package lists, sources, pins
#: and configuration, and dpkg's installed state and architectures (apt does
#: not downgrade an installed package that is newer than the archive's).
APT_STATE: tuple[str, ...] = (
    "/var/lib/apt/lists/*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
    "/etc/apt/preferences", "/etc/apt/preferences.d/*", "/etc/apt/apt.conf", "/etc/apt/apt.conf.d/*",
    "/var/lib/dpkg/status", "/var/lib/dpkg/arch",
)


class PackageError(RuntimeError):
    """A Debian package could not be resolved or fetched."""


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PackageError(f"'{name}' is not installed; {hint}")
    return path


def parse_show(show_output: str) -> dict[str, dict[str, str]]:
    """``{package: fields}`` from ``apt-cache show`` output (one paragraph per package version).

    The first paragraph of a package wins, which with ``--no-all-versions`` is
    the candidate apt would install.
    """
    packages: dict[str, dict[str, str]] = {}
    for paragraph in show_output.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            packages.setdefault(fields["Package"], fields)
    return packages


def apt_state() -> str:
    """A hash of the names, sizes and mtimes of the files in :data:`APT_STATE` (and of ``$APT_CONFIG``).

    It changes whenever ``apt-get update``, an install or a change of sources,
    pins or configuration could change a candidate version, and costs a few
    ``stat`` calls.
    """
    parts = [os.environ.get("APT_CONFIG", "")]
    for pattern in APT_STATE:
        for path in sorted(glob.glob(pattern)):
            info = os.stat(path)
            parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    return hash_inputs(parts)


def _ask_apt(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """What :func:`candidates` answers, from apt itself: one ``apt-cache`` call for all ``packages``."""
    _require_tool("apt-cache", "images are built from Debian packages and need apt")
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True)
    found = parse_show(proc.stdout)
    missing = [name for name in packages if name not in found]
    if missing:
        raise PackageError(
            f"Debian package(s) {', '.join(missing)} unknown to apt; run 'apt-get update' (as root) "
            f"and try again. apt said: {proc.stderr.strip()}"
        )
    return {name: found[name] for name in packages}


def candidates(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """The fields of the version apt would install, for each of ``packages``.

    Image cache keys are built from these versions on every lookup, and one
    ``apt-cache show`` costs about half a second (more on hosts whose apt
    keeps no binary cache, as Debian's container images configure it). So the
    answer is remembered (:func:`cache.remembered`) for as long as
    :func:`apt_state` is unchanged, and apt is asked once after each change.
    """
    token = f"{apt_state()}:{' '.join(packages)}"
    return remembered("apt-candidates", token, lambda: _ask_apt(packages))


def versions(packages: Sequence[str]) -> list[str]:
    """``name=version`` of the candidate of each of ``packages``, in their order (as image keys record them)."""
    found = candidates(packages)
    return [f"{name}={found[name]['Version']}" for name in packages]


def candidate(package: str) -> tuple[str, str]:
    """Return ``(version, depends)`` of the version apt would install for ``package``."""
    fields = candidates([package])[package]
    return fields["Version"], fields.get("Depends", "")


def download(packages: list[str], dest: Path) -> list[Path]:
    """Download the ``.deb`` files of ``packages`` (no dependencies) into ``dest``."""
    _require_tool("apt-get", "images are built from Debian packages and need apt")
    dest.mkdir(parents=True, exist_ok=True)
    # As root, apt downloads as the unprivileged _apt user, which cannot write
    # a private temp dir. Keep the directory private (another local user must
    # not be able to swap the kernel every VM boots) and let apt download as
    # root instead; it still checks each .deb against the signed index.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    proc = run_supervised(["apt-get", "download", "-q", *sandbox, *packages], cwd=dest)
    if proc.returncode != 0:
        raise PackageError(
            f"apt-get download {' '.join(packages)} failed; run 'apt-get update' and check "
            f"the mirror is reachable. apt said: {proc.stderr.strip()[-2000:]}"
        )
    return sorted(dest.glob("*.deb"))


def run_tool(argv: list[str], what: str) -> None:
    """Run a packaging tool (dpkg-deb, depmod); a failure is a :class:`PackageError` with its output.

    A bare CalledProcessError would say only the exit status; the tool's
    own message (a truncated download, a full disk) is what tells the user
    what to do.
    """
    proc = run_supervised(argv)
    if proc.returncode != 0:
        raise PackageError(
            f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{(proc.stderr or proc.stdout).strip()[-2000:]}\n"
            "If the package file is damaged, run the build again (nothing half-built is kept); if the disk is "
            "full, free space under the cache directory (smalltown image prune)."
        )


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` into ``dest`` (no maintainer scripts run)."""
    _require_tool("dpkg-deb", "images are built from Debian packages and need dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    run_tool(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")
