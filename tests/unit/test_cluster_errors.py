"""Bad cluster input fails early and clearly, launching nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pytest_smalltown.cluster import ClusterLaunchError, launch_cluster
from pytest_smalltown.launch.vm import QemuNotFoundError
from pytest_smalltown.settings import resolve
from pytest_smalltown.spec import ClusterSpec


def qemu_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("qemu-system")]


def test_missing_qemu_is_reported_before_anything_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "empty-cache"))  # a build would show up here
    settings = resolve({"qemu": "qemu-system-nonexistent", "accel": "tcg"}, {}, environ={})
    with pytest.raises(QemuNotFoundError, match="qemu-system-nonexistent was not found on PATH; install QEMU"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_missing_image_names_the_option_and_starts_no_vm(tmp_path: Path) -> None:
    before = qemu_processes()
    settings = resolve({"image": str(tmp_path / "smalltown.qcow2"), "accel": "tcg"}, {}, environ={})
    with pytest.raises(ClusterLaunchError) as caught:
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    message = str(caught.value)
    assert "phase 'images' did not finish" in message
    assert "--smalltown-image" in message and "smalltown.qcow2 does not exist" in message
    assert qemu_processes() == before
