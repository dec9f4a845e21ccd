"""The launcher against real QEMU: console capture, port forwards, socket NICs, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import pytest

from pytest_smalltown.base.programs import ProgramNotFoundError
from pytest_smalltown.images.tinyvm import HELLO_LINE, READY_LINE, TinyImage
from pytest_smalltown.launch import vm as vm_module
from pytest_smalltown.launch.accel import probe_kvm
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import DirectBoot, SocketNic, UserNic, VMConfig, random_mac
from pytest_smalltown.launch.vm import (
    VMExitedError,
    listening_sockets,
    start_swtpm,
    start_vm,
    start_vm_with_ports,
)

BOOT_TIMEOUT = 120  # TCG on a loaded 2-core machine; a healthy boot takes seconds


def tiny_config(image: TinyImage, name: str, accel: str, *options: str, **kwargs) -> VMConfig:
    return VMConfig(
        name=name,
        boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline(f"tiny.name={name}", *options)),
        accel=accel,  # type: ignore[arg-type]
        memory_mib=256,
        **kwargs,
    )


def read_line(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        return conn.makefile().readline().strip()


def test_serial_console_is_captured(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    vm = start_vm(tiny_config(tiny_image, "console", accel), workdir)
    try:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
        assert HELLO_LINE in vm.console_tail(100)
        assert HELLO_LINE in vm.console_log.read_text()
        # Lines seen before the call are found too (no race with fast guests).
        assert vm.wait_for_console("^tinyvm: init$", 1).group(0) == HELLO_LINE
    finally:
        vm.stop()
    assert vm.returncode is not None


def test_forwarded_port_reaches_a_server_in_the_guest(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    def config(port_map: PortMap) -> VMConfig:
        return tiny_config(tiny_image, "fwd", accel, "tiny.ip=dhcp", "tiny.serve=7837", nics=(UserNic(random_mac(), port_map),))

    vm, port_map = start_vm_with_ports(config, [7837], workdir)
    try:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
        assert read_line(port_map[7837]) == "tinyvm fwd port 7837"
        listeners = listening_sockets(vm.pid)
        assert listeners == {("127.0.0.1", port_map[7837])}, "forwards must listen on 127.0.0.1 only"
    finally:
        vm.stop()


def test_user_networking_reaches_nothing_on_the_host(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    """SLIRP maps 10.0.2.2 to the host's loopback; restrict=on must keep a guest off it (forwards still work)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.2)
        host_port = listener.getsockname()[1]

        def config(port_map: PortMap) -> VMConfig:
            return tiny_config(tiny_image, "fenced", accel, "tiny.ip=dhcp", "tiny.serve=7837",
                               f"tiny.connect=10.0.2.2:{host_port}", nics=(UserNic(random_mac(), port_map),))  # fmt: skip

        vm, port_map = start_vm_with_ports(config, [7837], workdir)
        try:
            verdict = vm.wait_for_console(r"^tinyvm: connect \S+ (ok|fail)$", BOOT_TIMEOUT).group(1)
            assert read_line(port_map[7837]) == "tinyvm fenced port 7837"
        finally:
            vm.stop()
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()
    assert verdict == "fail"


def test_console_keeps_flowing_when_its_log_file_cannot_be_written(
    tiny_image: TinyImage, accel: str, workdir: Path
) -> None:
    """A full disk must not stall the guest: the tail keeps the lines and says why the log stopped."""
    (workdir / "fulldisk.console.log").symlink_to("/dev/full")
    vm = start_vm(tiny_config(tiny_image, "fulldisk", accel), workdir)
    try:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
        tail = vm.console_tail(200)
    finally:
        vm.stop()
    assert HELLO_LINE in tail
    assert any("console log" in line and "not written" in line for line in tail), tail


def test_a_port_taken_before_qemu_binds_it_is_retried(
    tiny_image: TinyImage, accel: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = vm_module.conflict_free_port_map
    calls: list[PortMap] = []

    def first_one_taken(ports):  # type: ignore[no-untyped-def]
        port_map = PortMap({p: taken for p in ports}) if not calls else real(ports)
        calls.append(port_map)
        return port_map

    monkeypatch.setattr(vm_module, "conflict_free_port_map", first_one_taken)

    def config(port_map: PortMap) -> VMConfig:
        return tiny_config(tiny_image, "retry", accel, nics=(UserNic(random_mac(), port_map),))

    try:
        vm, port_map = start_vm_with_ports(config, [7837], workdir)
        try:
            assert len(calls) == 2 and port_map[7837] != taken
        finally:
            vm.stop()
    finally:
        squatter.close()


def test_two_vms_joined_by_a_socketpair_reach_each_other(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = start_vm(
        tiny_config(tiny_image, "left", accel, "tiny.ip=192.168.77.1/24", nics=(SocketNic(left.fileno(), random_mac()),)),
        workdir,
    )
    try:
        server.wait_for_console(READY_LINE, BOOT_TIMEOUT)
        client = start_vm(
            tiny_config(tiny_image, "right", accel, "tiny.ip=192.168.77.2/24", "tiny.ping=192.168.77.1",
                        nics=(SocketNic(right.fileno(), random_mac()),)),
            workdir,
        )  # fmt: skip
        try:
            match = client.wait_for_console(r"tinyvm: ping 192\.168\.77\.1 (ok|fail)", BOOT_TIMEOUT)
            assert match.group(1) == "ok", client.console_tail(20)
        finally:
            client.stop()
    finally:
        server.stop()
        left.close()
        right.close()


def test_fw_cfg_file_reaches_the_guest(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    payload = workdir / "enrolment.pb"
    payload.write_bytes(b"\x0a\x04test-enrolment")
    name = "com.nexantic.smalltown/enrolment.pb"
    vm = start_vm(tiny_config(tiny_image, "fwcfg", accel, f"tiny.fwcfg={name}", fw_cfg=((name, payload),)), workdir)
    try:
        match = vm.wait_for_console(r"tinyvm: fwcfg (\w+)", BOOT_TIMEOUT)
        assert match.group(1) == hashlib.md5(payload.read_bytes()).hexdigest()
    finally:
        vm.stop()


def test_swtpm_gives_the_guest_a_tpm2(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    tpm, tpm_socket = start_swtpm(workdir, "swtpm-test")
    vm = start_vm(tiny_config(tiny_image, "tpm", accel, tpm_socket=tpm_socket), workdir)
    try:
        match = vm.wait_for_console(r"tinyvm: (tpm 2|ready)", BOOT_TIMEOUT)
        assert match.group(1) == "tpm 2", vm.console_tail(20)
    finally:
        vm.stop()
        tpm.stop()  # exits by itself once QEMU disconnects (--terminate); stop() reaps it


def test_qemu_exiting_early_raises_with_status_and_stderr(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    config = tiny_config(tiny_image, "broken", accel, extra_args=("-device", "no-such-device"))
    vm = start_vm(config, workdir)
    with pytest.raises(VMExitedError) as caught:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
    assert caught.value.returncode == 1
    assert "no-such-device" in caught.value.stderr
    assert "exited with status 1" in str(caught.value)


def test_kernel_panic_is_reported_with_console_tail(tiny_image: TinyImage, accel: str, workdir: Path) -> None:
    config = VMConfig(
        name="panic",
        boot=DirectBoot(tiny_image.kernel, None, "console=ttyS0 panic=-1"),  # no initramfs: no root fs
        accel=accel,  # type: ignore[arg-type]
        memory_mib=256,
    )
    vm = start_vm(config, workdir)
    with pytest.raises(VMExitedError) as caught:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
    assert any("Kernel panic" in line for line in caught.value.console_tail)


def test_missing_qemu_is_a_clear_error(tiny_image: TinyImage, workdir: Path) -> None:
    with pytest.raises(ProgramNotFoundError, match="'qemu-system-nonexistent' is not installed; .*qemu-system-x86"):
        start_vm(dataclasses.replace(tiny_config(tiny_image, "x", "tcg"), qemu="qemu-system-nonexistent"), workdir)


def test_accelerator_probe_gives_a_verdict_that_boots(tiny_image: TinyImage, workdir: Path) -> None:
    result = probe_kvm()
    assert result.accel in ("kvm", "tcg") and result.reason
    vm = start_vm(tiny_config(tiny_image, "probed", result.accel), workdir)
    try:
        vm.wait_for_console(READY_LINE, BOOT_TIMEOUT)
    finally:
        vm.stop()
