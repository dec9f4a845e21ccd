"""The real-image path against real QEMU, OVMF and swtpm: what a Smalltown disk goes through.

- a unified kernel image on a GPT disk boots through OVMF and sees its TPM
  (the tiny VM, made into a UEFI disk by the same code as the reference one);
- a disk the firmware cannot boot fails a launch with OVMF's own words;
- the reference UEFI disk's data partition opens only with the TPM that
  sealed it: the same disk (a persistent overlay) is booted three times;
- a UEFI+TPM cluster is saved and restored with its TPM's state.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_smalltown.base.progress import stderr_progress
from pytest_smalltown.images.tinyvm import READY_LINE, TinyImage
from pytest_smalltown.images.uefi import build_uefi_image, efi_stub, make_uefi_disk
from pytest_smalltown.launch.qemu import Disk, UefiBoot, VMConfig
from pytest_smalltown.launch.vm import VM, start_swtpm, start_vm
from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.settings import Settings, resolve
from pytest_smalltown.snapshots import SNAPSHOT_DIR_ENV
from pytest_smalltown.spec import ClusterSpec

#: OVMF under TCG takes 10-15 s to reach the disk on this class of machine;
#: the reference node's agent then needs about a minute to unlock its data.
TINY_BOOT_TIMEOUT = 180
NODE_DATA_TIMEOUT = 400

OVMF = UefiBoot(Settings().ovmf_code, Settings().ovmf_vars)


def uefi_vm(name: str, disk: Disk, accel: str, workdir: Path, tpm_socket: Path | None, memory_mib: int) -> VM:
    return start_vm(VMConfig(name=name, boot=OVMF, accel=accel, memory_mib=memory_mib,  # type: ignore[arg-type]
                             cpus=2, disks=(disk,), tpm_socket=tpm_socket), workdir)  # fmt: skip


def test_a_unified_kernel_image_boots_through_ovmf_and_finds_its_tpm(tiny_image: TinyImage, accel: str,
                                                                     workdir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.img"
    root.write_bytes(bytes(1 << 20))
    disk = make_uefi_disk(efi_stub(), tiny_image.kernel, tiny_image.initramfs, TinyImage.cmdline("tiny.name=uefi"),
                          "NAME=tiny\n", root, tmp_path / "uefi")  # fmt: skip
    tpm, socket = start_swtpm(workdir, "swtpm")
    vm = uefi_vm("uefi", Disk(disk), accel, workdir, socket, memory_mib=256)
    try:
        vm.wait_for_console(READY_LINE, TINY_BOOT_TIMEOUT)
        console = vm.console_log.read_text(errors="replace")
        assert "BdsDxe: starting Boot" in console, "OVMF booted the disk (not a direct kernel boot)"
        assert "tinyvm: tpm 2" in console, "the guest kernel found the swtpm TPM 2.0"
    finally:
        vm.stop()
        tpm.stop(grace=2)


def test_a_disk_the_firmware_cannot_boot_fails_the_launch_with_the_firmware_console(tmp_path: Path,
                                                                                    accel: str) -> None:
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as f:
        f.truncate(64 << 20)
    settings = resolve({"image": str(blank), "accel": accel, "snapshots": "off", "boot_timeout": "600"}, {}, environ={})
    with pytest.raises(ClusterLaunchError) as info:
        launch_cluster(ClusterSpec(1), settings, progress=lambda _: None)
    message = str(info.value)
    assert "the UEFI firmware could not boot its disk" in message
    assert "BdsDxe: failed to load Boot" in message, "the firmware's own words, from the console tail"


@pytest.fixture(scope="module")
def reference_uefi_disk() -> Path:
    return build_uefi_image()


def test_the_data_partition_opens_only_with_the_tpm_that_sealed_it(reference_uefi_disk: Path, accel: str,
                                                                   workdir: Path) -> None:
    overlay = workdir / "node.qcow2"  # the node's writes persist across the three boots, the image stays as built
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(reference_uefi_disk),
                    str(overlay)], check=True)  # fmt: skip
    disk = Disk(overlay, "qcow2", snapshot=False)
    memory = Settings().node_memory

    def boot(tpm_name: str, expect: str) -> str:
        tpm, socket = start_swtpm(workdir, tpm_name)  # state in workdir/<tpm_name>-state, kept between boots
        vm = uefi_vm(f"node-{tpm_name}", disk, accel, workdir, socket, memory)
        try:
            return vm.wait_for_console(expect, NODE_DATA_TIMEOUT).group(0)
        finally:
            vm.stop()
            tpm.stop(grace=2)

    first = boot("sealer", r"data partition /dev/vda3 sealed to this TPM \(first boot.*")
    assert "LUKS2" in first
    assert "unlocked with the key sealed to this TPM" in boot("sealer", r"data partition /dev/vda3 unlocked.*")
    refused = boot("stranger", r"DATA UNAVAILABLE: .*")
    assert "sealed by another TPM" in refused


def test_a_tpm_cluster_is_restored_with_its_tpm_and_its_data_partition_opens_again_after_a_reboot(
    reference_uefi_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UEFI+TPM cluster is saved once Ready and restored, its swtpm's state with it.

    QEMU's tpm-emulator carries the TPM's state (seeds, NV, sessions) in the
    migration stream: the restored node's fresh swtpm gets it when the saved
    state loads. The restored node reports its data partition sealed and
    open; rebooted, it unseals its key again, which only the TPM that sealed
    it can: a swtpm that had not been given the saved state would make this
    boot end in "DATA UNAVAILABLE". The snapshot lives in this test's own directory.
    """
    monkeypatch.setenv(SNAPSHOT_DIR_ENV, str(tmp_path / "snapshots"))
    settings = resolve({"image": str(reference_uefi_disk), "tpm": "true", "snapshots": "refresh"}, {}, environ={})
    booted = launch_cluster(ClusterSpec(1), settings, stderr_progress)
    try:
        assert booted.how.startswith("booted") and "saved" in booted.how, booted.how
        assert booted.debug.condition("DataSealed") is True
    finally:
        booted.close()

    restored = launch_cluster(ClusterSpec(1), replace(settings, snapshots="require"), stderr_progress)
    try:
        assert restored.how.startswith("restored"), restored.how
        assert restored.debug.condition("DataSealed") is True and restored.debug.condition("DataAvailable") is True
        restored.reboot_node(0)
        debug = restored.node_debug(0)
        try:
            agent_log = "\n".join(debug.component_logs("agent"))
        finally:
            debug.close()
        assert "unlocked with the key sealed to this TPM" in agent_log, agent_log[-2000:]
    finally:
        restored.close()
