"""Bad cluster input fails early and clearly, launching nothing."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_smalltown.base.programs import ProgramNotFoundError
from pytest_smalltown.launch.console import ConsoleTail
from pytest_smalltown.launch.vm import FirmwareBootError, GuestHungError, check_console_not_hung, check_firmware_booted
from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.settings import resolve
from pytest_smalltown.spec import ClusterSpec


def qemu_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("qemu-system")]


def test_missing_qemu_is_reported_before_anything_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "empty-cache"))  # a build would show up here
    settings = resolve({"qemu": "qemu-system-nonexistent", "accel": "tcg"}, {}, environ={})
    with pytest.raises(ProgramNotFoundError, match="'qemu-system-nonexistent' is not installed; .*apt-get install qemu-system-x86.*--smalltown-qemu"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_missing_image_names_the_option_before_the_accelerator_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = qemu_processes()

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the accelerator probe ran before the image path was checked")

    monkeypatch.setattr("pytest_smalltown.plan.resolve_accel", no_probe)
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
    with pytest.raises(ProgramNotFoundError, match="swtpm.*drop --smalltown-tpm"):
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)


def test_a_hung_guest_is_launched_once_more_and_only_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_smalltown import launcher

    attempts: list[int] = []

    def hang_then(results: list[object]) -> Callable[..., object]:
        def launch_once(spec: ClusterSpec, settings: object, progress: object) -> object:
            attempts.append(1)
            result = results.pop(0)
            if result == "hang":
                cause = GuestHungError("node0", 131, ["soft lockup"])
                raise ClusterLaunchError(spec, "nodes-ready", cause, {}) from cause
            return result
        return launch_once

    class Launched:
        phase_seconds = {"switch": 1.0}

    monkeypatch.setattr(launcher, "_launch_once", hang_then(["hang", Launched()]))
    relaunched = launch_cluster(ClusterSpec(1), resolve({}, {}, environ={}), progress=lambda _: None)
    assert len(attempts) == 2 and list(relaunched.phase_seconds) == ["hung-relaunch", "switch"]  # type: ignore[attr-defined]
    monkeypatch.setattr(launcher, "_launch_once", hang_then(["hang", "hang"]))
    with pytest.raises(ClusterLaunchError, match="stuck for 131s"):
        launch_cluster(ClusterSpec(1), resolve({}, {}, environ={}), progress=lambda _: None)
    assert len(attempts) == 4


def test_the_firmware_giving_up_on_the_disk_is_a_boot_error_booting_is_not() -> None:
    booting = ConsoleTail("node0", ['\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 "UEFI Misc Device" from '
                                    'PciRoot(0x0)/Pci(0x1,0x0)',
                                    'BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0)'])
    check_firmware_booted(booting)
    failed = ConsoleTail("node0", ['\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 "UEFI Misc Device" from '
                                   'PciRoot(0x0)/Pci(0x1,0x0): Not Found', ">>Start PXE over IPv4."])
    with pytest.raises(FirmwareBootError, match=r"node0.*could not boot its disk: BdsDxe: failed to load Boot0001") as info:
        check_firmware_booted(failed)
    assert "EFI/BOOT/BOOTX64.EFI" in str(info.value), "the message says what a bootable disk needs"
    assert ">>Start PXE over IPv4." in str(info.value), "the console tail is part of the message"


def test_the_health_check_leaves_a_rebooting_nodes_hang_to_the_reboot() -> None:
    from pytest_smalltown.cluster import Cluster, ClusterNode
    from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
    from pytest_smalltown.plan import ClusterPlan

    class RunningVM:
        """A VM whose QEMU runs, with only a console: what the health check reads."""

        name = "node0"
        console = ConsoleTail("node0", ["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]"])

        def check_running(self) -> None:
            pass

        def check_firmware_booted(self) -> None:
            check_firmware_booted(self.console)

        def check_not_hung(self) -> None:
            check_console_not_hung(self.console)

    config = VMConfig(name="node0", boot=DirectBoot(Path("/k")))
    plan = ClusterPlan(spec=ClusterSpec(1), switch=config, nodes=(config,), tpm=False, qemu_version="QEMU 7.2",
                       boot_timeout=600.0, snapshots="off", snapshots_source="default", images_seconds=0.0)
    cluster = Cluster(plan)  # no switch started: only its nodes are checked
    try:
        node = ClusterNode(index=1, address="10.1.0.3", vm=RunningVM(), rebooting=True)  # type: ignore[arg-type]
        cluster.nodes.append(node)
        cluster.check_alive()  # the reboot resets it and judges the next boot
        node.rebooting = False
        with pytest.raises(GuestHungError, match="node0.*stuck for 131s"):
            cluster.check_alive()
    finally:
        cluster.close()


def test_a_node_that_exited_is_reported_before_another_nodes_hang() -> None:
    """``check_alive`` looks at every process before any console: a hang it raises means all of them still run."""
    from pytest_smalltown.cluster import Cluster, ClusterNode
    from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
    from pytest_smalltown.launch.vm import VMExitedError
    from pytest_smalltown.plan import ClusterPlan

    class VMStandIn:
        def __init__(self, name: str, exited: bool, console: list[str]) -> None:
            self.name, self.exited, self.console = name, exited, ConsoleTail(name, console)

        def check_running(self) -> None:
            if self.exited:
                raise VMExitedError(self.name, 137, "", [])

        def check_firmware_booted(self) -> None:
            check_firmware_booted(self.console)

        def check_not_hung(self) -> None:
            check_console_not_hung(self.console)

    config = VMConfig(name="node0", boot=DirectBoot(Path("/k")))
    plan = ClusterPlan(spec=ClusterSpec(2), switch=config, nodes=(config, config), tpm=False, qemu_version="QEMU 7.2",
                       boot_timeout=600.0, snapshots="off", snapshots_source="default", images_seconds=0.0)
    cluster = Cluster(plan)
    try:
        hung = VMStandIn("node0", False, ["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]"])
        cluster.nodes.append(ClusterNode(index=0, address="10.1.0.2", vm=hung))  # type: ignore[arg-type]
        cluster.nodes.append(ClusterNode(index=1, address="10.1.0.3", vm=VMStandIn("node1", True, [])))  # type: ignore[arg-type]
        with pytest.raises(VMExitedError, match="node1"):
            cluster.check_alive()
    finally:
        cluster.close()
