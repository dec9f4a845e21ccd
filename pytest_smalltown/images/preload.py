"""Image sets a cluster can ask to have preloaded into every node's containerd.

A reference node boots with only the pause and test images; a cluster that
needs more (the conformance suite's images) names a set in its spec
(``ClusterSpec.preload``). Each set is one ``docker save``-format archive built
by the package; the launcher attaches it to every node as a read-only virtio
disk whose serial is :func:`disk_serial`, and the node agent streams the disk
into ``ctr images import`` before it starts the kubelet, so a node is not
Ready until the set is there.

This module only names the sets and finds their builders; it imports nothing
heavy, so the pytest layer can validate markers without loading the builders.
"""

from __future__ import annotations

from pathlib import Path

from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.contract import PRELOAD_DISK_SERIAL_PREFIX

#: Every image set the package can build, by the name a spec uses.
PRELOAD_SETS: tuple[str, ...] = ("conformance",)


def disk_serial(name: str) -> str:
    """The virtio serial of the disk carrying set ``name`` (virtio allows 20 bytes)."""
    serial = f"{PRELOAD_DISK_SERIAL_PREFIX}{name}"
    if len(serial) > 20:
        raise ValueError(f"preload set name {name!r} is too long for a virtio serial ({serial!r})")
    return serial


def build_preload_archive(name: str, progress: Progress = stderr_progress) -> Path:
    """Build (or find in the cache) the archive of set ``name``."""
    if name == "conformance":
        from pytest_smalltown.images.conformance import build_conformance_archive

        return build_conformance_archive(progress)
    raise ValueError(f"unknown preload set {name!r}; known: {', '.join(PRELOAD_SETS)}")
