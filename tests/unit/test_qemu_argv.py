"""QEMU command lines for every boot style, checked option by option."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import (
    DirectBoot,
    Disk,
    SocketNic,
    UefiBoot,
    UserNic,
    VMConfig,
    check_paths,
    health_socket,
    inherited_fds,
    qemu_argv,
    random_mac,
)


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_qemu_binary_is_part_of_the_config() -> None:
    """The QEMU a VM runs on travels in its config (``--smalltown-qemu``), not beside it."""
    config = VMConfig(name="node0", boot=DirectBoot(Path("/k")), qemu="/opt/qemu-9/bin/qemu-system-x86_64")
    assert qemu_argv(config)[0] == "/opt/qemu-9/bin/qemu-system-x86_64"


def test_direct_boot_on_q35() -> None:
    config = VMConfig(
        name="node0",
        boot=DirectBoot(Path("/k/vmlinuz"), Path("/k/initrd.gz"), "console=ttyS0 quiet"),
        memory_mib=2048,
        cpus=2,
        disks=(Disk(Path("/img/disk.raw")),),
    )
    argv = qemu_argv(config)
    assert argv[0] == "qemu-system-x86_64"
    assert option_values(argv, "-M") == ["q35"]
    assert option_values(argv, "-kernel") == ["/k/vmlinuz"]
    assert option_values(argv, "-initrd") == ["/k/initrd.gz"]
    assert option_values(argv, "-append") == ["console=ttyS0 quiet"]
    assert option_values(argv, "-m") == ["2048"] and option_values(argv, "-smp") == ["2"]
    assert "id=disk0,if=none,format=raw,snapshot=on,file=/img/disk.raw" in option_values(argv, "-drive")
    assert "virtio-blk-pci,drive=disk0" in option_values(argv, "-device")
    assert "-no-reboot" in argv
    # Console on stdout, no monitor, no display.
    assert option_values(argv, "-serial") == ["chardev:console"]
    assert option_values(argv, "-chardev")[0].startswith("stdio,id=console")
    assert option_values(argv, "-monitor") == ["none"] and option_values(argv, "-display") == ["none"]
    assert "virtio-rng-pci,rng=rng0" in option_values(argv, "-device")


def test_read_only_disk_with_serial_is_shared_without_overlay() -> None:
    config = VMConfig(
        name="node1",
        boot=DirectBoot(Path("/k/vmlinuz"), None, ""),
        disks=(Disk(Path("/img/disk.raw")), Disk(Path("/c/set.tar"), snapshot=False, read_only=True,
                                                  serial="preload-conformance")),
    )
    argv = qemu_argv(config)
    assert "id=disk1,if=none,format=raw,snapshot=off,readonly=on,file=/c/set.tar" in option_values(argv, "-drive")
    assert "virtio-blk-pci,drive=disk1,serial=preload-conformance" in option_values(argv, "-device")


@pytest.mark.parametrize("kwargs", [{"read_only": True}, {"serial": "x" * 21}, {"serial": "a,b"}])
def test_disk_rejects_impossible_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Disk(Path("/img/disk.raw"), **kwargs)  # type: ignore[arg-type]


def test_uefi_boot_maps_firmware_read_only_and_snapshots_vars_and_disk() -> None:
    config = VMConfig(
        name="smalltown",
        boot=UefiBoot(Path("/fw/OVMF_CODE.fd"), Path("/fw/OVMF_VARS.fd")),
        disks=(Disk(Path("/img/smalltown.qcow2"), format="qcow2"),),
        tpm_socket=Path("/tmp/st-x/swtpm.sock"),
    )
    argv = qemu_argv(config)
    drives = option_values(argv, "-drive")
    assert "if=pflash,format=raw,readonly=on,file=/fw/OVMF_CODE.fd" in drives
    assert "if=pflash,format=raw,snapshot=on,file=/fw/OVMF_VARS.fd" in drives
    assert "id=disk0,if=none,format=qcow2,snapshot=on,file=/img/smalltown.qcow2" in drives
    assert "-kernel" not in argv
    assert "socket,id=tpmsock,path=/tmp/st-x/swtpm.sock" in option_values(argv, "-chardev")
    assert option_values(argv, "-tpmdev") == ["emulator,id=tpm0,chardev=tpmsock"]
    assert "tpm-tis,tpmdev=tpm0" in option_values(argv, "-device")


def test_no_reboot_can_be_turned_off() -> None:
    config = VMConfig(name="x", boot=DirectBoot(Path("/k")), no_reboot=False)
    assert "-no-reboot" not in qemu_argv(config)


def test_microvm_uses_mmio_devices_and_skips_tsc_calibration() -> None:
    port_map = PortMap({7837: 40001, 6443: 40002})
    config = VMConfig(
        name="switch",
        machine="microvm",
        boot=DirectBoot(Path("/k"), Path("/i"), "console=ttyS0"),
        nics=(UserNic("02:72:82:bf:c3:56", port_map), SocketNic(7, "02:53:4d:01:00:02")),
        tsc_khz=2_500_000,
    )
    argv = qemu_argv(config)
    assert option_values(argv, "-M") == ["microvm"]
    assert option_values(argv, "-append") == ["console=ttyS0 tsc_early_khz=2500000"]
    netdevs = option_values(argv, "-netdev")
    assert netdevs[0] == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40002-:6443,hostfwd=tcp:127.0.0.1:40001-:7837"
    assert netdevs[1] == "socket,id=net1,fd=7"
    devices = option_values(argv, "-device")
    assert "virtio-net-device,netdev=net0,mac=02:72:82:bf:c3:56" in devices
    assert "virtio-net-device,netdev=net1,mac=02:53:4d:01:00:02" in devices
    assert not any("-pci" in device for device in devices)
    assert inherited_fds(config) == (7,)


def test_microvm_rejects_uefi() -> None:
    with pytest.raises(ValueError, match="microvm"):
        VMConfig(name="x", machine="microvm", boot=UefiBoot(Path("/c"), Path("/v")))


def test_enrolment_file_goes_through_fw_cfg() -> None:
    config = VMConfig(
        name="node1",
        boot=DirectBoot(Path("/k")),
        fw_cfg=(("com.nexantic.smalltown/enrolment.pb", Path("/tmp/st-1/enrolment.pb")),),
    )
    assert option_values(qemu_argv(config), "-fw_cfg") == [
        "name=com.nexantic.smalltown/enrolment.pb,file=/tmp/st-1/enrolment.pb"
    ]


def test_accelerators() -> None:
    kvm = qemu_argv(VMConfig(name="x", boot=DirectBoot(Path("/k")), accel="kvm"))
    tcg = qemu_argv(VMConfig(name="x", boot=DirectBoot(Path("/k")), accel="tcg"))
    assert option_values(kvm, "-accel") == ["kvm"] and option_values(kvm, "-cpu") == ["host"]
    assert option_values(tcg, "-accel") == ["tcg,thread=multi"]


def test_random_mac_is_locally_administered_unicast() -> None:
    for _ in range(100):
        first = int(random_mac().split(":")[0], 16)
        assert first & 0x02 and not first & 0x01


def test_check_paths_names_the_missing_file(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    config = VMConfig(name="n", boot=DirectBoot(kernel, tmp_path / "missing-initrd"))
    with pytest.raises(FileNotFoundError, match="initramfs .*missing-initrd"):
        check_paths(config)


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="memory"):
        VMConfig(name="n", boot=DirectBoot(Path("/k")), memory_mib=1)
    with pytest.raises(ValueError, match="cpus"):
        VMConfig(name="n", boot=DirectBoot(Path("/k")), cpus=0)


def test_qmp_and_restore_options_only_when_asked() -> None:
    plain = qemu_argv(VMConfig(name="n", boot=DirectBoot(Path("/k"))))
    assert "-qmp" not in plain and "-incoming" not in plain and "-S" not in plain

    restoring = VMConfig(
        name="n", boot=DirectBoot(Path("/k")), qmp_socket=Path("/w/n.qmp"), incoming="exec:zstd -d -c /s", paused=True
    )
    argv = qemu_argv(restoring)
    assert option_values(argv, "-qmp")[0] == "unix:/w/n.qmp,server=on,wait=off"
    assert option_values(argv, "-incoming") == ["exec:zstd -d -c /s"]
    assert "-S" in argv


def test_commas_in_user_paths_cannot_inject_options() -> None:
    """QEMU splits these options at commas and reads ",," as one literal comma: every path is doubled."""
    odd = Path("/img/a,snapshot=off,file=/etc/shadow")
    config = VMConfig(
        name="n,1",
        boot=UefiBoot(Path("/fw/code,x.fd"), Path("/fw/vars,x.fd")),
        disks=(Disk(odd, format="qcow2"),),
        fw_cfg=(("opt/a,b", Path("/w/e,f.pb")),),
        tpm_socket=Path("/tmp/st,x/swtpm.sock"),
        qmp_socket=Path("/w,x/n.qmp"),
    )
    argv = qemu_argv(config)
    drives = option_values(argv, "-drive")
    assert "if=pflash,format=raw,readonly=on,file=/fw/code,,x.fd" in drives
    assert "if=pflash,format=raw,snapshot=on,file=/fw/vars,,x.fd" in drives
    assert "id=disk0,if=none,format=qcow2,snapshot=on,file=/img/a,,snapshot=off,,file=/etc/shadow" in drives
    assert option_values(argv, "-fw_cfg") == ["name=opt/a,,b,file=/w/e,,f.pb"]
    assert "socket,id=tpmsock,path=/tmp/st,,x/swtpm.sock" in option_values(argv, "-chardev")
    assert option_values(argv, "-qmp") == ["unix:/w,,x/n.qmp,server=on,wait=off",
                                           "unix:/w,,x/n.qmp.health,server=on,wait=off"]
    assert option_values(argv, "-name") == ["n,,1"]


def test_a_relative_image_path_never_reads_as_a_block_protocol() -> None:
    """QEMU's block layer takes ``nbd:...`` or ``json:{...}`` before any '/' as a protocol, not a file name."""
    config = VMConfig(name="n", boot=UefiBoot(Path("json:{x}"), Path("v.fd")), disks=(Disk(Path("nbd:h:1")),))
    drives = option_values(qemu_argv(config), "-drive")
    assert "if=pflash,format=raw,readonly=on,file=./json:{x}" in drives
    assert "if=pflash,format=raw,snapshot=on,file=./v.fd" in drives
    assert "id=disk0,if=none,format=raw,snapshot=on,file=./nbd:h:1" in drives


def test_the_harness_has_a_qmp_monitor_of_its_own_beside_the_control_one() -> None:
    """QEMU serves one client per QMP socket at a time: the liveness checks must not queue behind a reboot or save."""
    config = VMConfig(name="n", boot=DirectBoot(Path("/k")), qmp_socket=Path("/w/n.qmp"))
    assert option_values(qemu_argv(config), "-qmp") == [
        "unix:/w/n.qmp,server=on,wait=off", "unix:/w/n.qmp.health,server=on,wait=off"]
    assert health_socket(config) == Path("/w/n.qmp.health")
    assert health_socket(VMConfig(name="n", boot=DirectBoot(Path("/k")))) is None
