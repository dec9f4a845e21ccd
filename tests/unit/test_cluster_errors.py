"""Bad cluster input fails early and clearly, launching nothing."""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.launch.vm import VM, FirmwareBootError, GuestHungError, ProgramNotFoundError, QemuNotFoundError
from pytest_smalltown.phases import ClusterLaunchError
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


def _console(lines: list[str]) -> VM:
    """A VM object with only a console tail (no QEMU): what the hang check reads."""
    vm = VM.__new__(VM)
    vm.name = "node0"
    vm._cond = threading.Condition()
    vm._tail = collections.deque(lines)
    vm._lines_this_boot = len(lines)
    return vm


def test_a_long_soft_lockup_is_a_hung_guest_a_short_one_is_load() -> None:
    busy = _console(["[  60.1] watchdog: BUG: soft lockup - CPU#1 stuck for 48s! [kube:279]"])
    busy.check_not_hung()
    hung = _console(["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]", "[ 171.0] rcu: ..."])
    with pytest.raises(GuestHungError, match="node0.*stuck for 131s"):
        hung.check_not_hung()


def test_a_hang_reads_as_one_behind_the_register_dumps_and_traces_of_its_reports() -> None:
    def report(cpu: int, seconds: int) -> list[str]:
        return [f"[ 164.4] watchdog: BUG: soft lockup - CPU#{cpu} stuck for {seconds}s! [iptables:28{cpu}]",
                *(f"[ 164.4]  trace line {n}" for n in range(45))]  # fmt: skip

    stalls = [f"[ 170.8] rcu: stall detail {n}" for n in range(20)]
    with pytest.raises(GuestHungError, match="stuck for 131s"):
        _console([*report(0, 131), *report(1, 131), *stalls]).check_not_hung()


def test_after_a_reset_only_the_new_boot_can_read_as_hung() -> None:
    vm = _console(["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]"])
    vm.note_reset()
    vm.check_not_hung()  # the lockup was the boot before the reset
    assert vm.console_tail()[0].endswith("stuck for 131s! [iptables:293]"), "the history stays for error messages"
    vm._tail.append("[ 150.0] watchdog: BUG: soft lockup - CPU#1 stuck for 124s! [kubelet:301]")
    vm._lines_this_boot += 1
    with pytest.raises(GuestHungError, match="stuck for 124s"):
        vm.check_not_hung()


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
    booting = _console(['\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0)',
                        'BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0)'])
    booting.check_firmware_booted()
    failed = _console(['\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 "UEFI Misc Device" from '
                       'PciRoot(0x0)/Pci(0x1,0x0): Not Found', ">>Start PXE over IPv4."])
    with pytest.raises(FirmwareBootError, match=r"node0.*could not boot its disk: BdsDxe: failed to load Boot0001") as info:
        failed.check_firmware_booted()
    assert "EFI/BOOT/BOOTX64.EFI" in str(info.value), "the message says what a bootable disk needs"
    assert ">>Start PXE over IPv4." in str(info.value), "the console tail is part of the message"


def test_the_health_check_leaves_a_rebooting_nodes_hang_to_the_reboot() -> None:
    from pytest_smalltown.cluster import Cluster, ClusterNode
    from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
    from pytest_smalltown.plan import ClusterPlan

    class Running:
        def poll(self) -> None:
            return None

    vm = _console(["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]"])
    vm._popen = Running()  # type: ignore[assignment]
    config = VMConfig(name="node0", boot=DirectBoot(Path("/k")))
    plan = ClusterPlan(spec=ClusterSpec(1), switch=config, nodes=(config,), tpm=False, qemu_version="QEMU 7.2",
                       boot_timeout=600.0, snapshots="off", snapshots_source="default", images_seconds=0.0)
    cluster = Cluster(plan)  # no switch started: only its nodes are checked
    try:
        node = ClusterNode(index=1, address="10.1.0.3", vm=vm, rebooting=True)
        cluster.nodes.append(node)
        cluster.check_alive()  # the reboot resets it and judges the next boot
        node.rebooting = False
        with pytest.raises(GuestHungError, match="node0.*stuck for 131s"):
            cluster.check_alive()
    finally:
        cluster.close()
