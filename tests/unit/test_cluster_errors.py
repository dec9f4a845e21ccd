"""Bad cluster input fails early and clearly, launching nothing."""

from __future__ import annotations

import shutil
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


def test_missing_image_names_the_option_before_the_accelerator_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = qemu_processes()

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the accelerator probe ran before the image path was checked")

    monkeypatch.setattr("pytest_smalltown.cluster.resolve_accel", no_probe)
    settings = resolve({"image": str(tmp_path / "smalltown.qcow2"), "accel": "auto"}, {}, environ={})
    with pytest.raises(FileNotFoundError, match="--smalltown-image .*smalltown.qcow2 does not exist"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    assert qemu_processes() == before


def test_missing_firmware_and_swtpm_are_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "smalltown.img"
    image.write_bytes(b"")
    settings = resolve({"image": str(image), "accel": "tcg", "ovmf_code": str(tmp_path / "CODE.fd")}, {}, environ={})
    with pytest.raises(FileNotFoundError, match="--smalltown-ovmf-code .*CODE.fd does not exist"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    monkeypatch.setenv("PATH", str(tmp_path))  # no swtpm (and no QEMU: it is given by absolute path)
    settings = resolve({"qemu": qemu, "tpm": "true", "accel": "tcg"}, {}, environ={})
    with pytest.raises(QemuNotFoundError, match="swtpm.*drop --smalltown-tpm"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
