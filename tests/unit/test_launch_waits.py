"""The launcher's waits (ports, save and restore) poll through base.waits.wait_for and keep their own errors."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pytest_smalltown.launch import vm as vm_module
from pytest_smalltown.launch import vmstate
from pytest_smalltown.launch.vm import LaunchError, VMExitedError
from pytest_smalltown.launch.vmstate import VMStateError


class _Monitor:
    """A QMP monitor that answers from a script of replies (the last one repeats)."""

    def __init__(self, replies: list[dict[str, Any]], alive: bool = True) -> None:
        self.name = "node0"
        self.replies = replies
        self.asked = 0
        self.alive = alive

    def check_running(self) -> None:
        if not self.alive:
            raise VMExitedError("node0", -9, "", [])

    def stderr(self) -> str:
        return "qemu: load of migration failed"

    def cmd(self, command: str, **arguments: Any) -> Any:
        reply = self.replies[min(self.asked, len(self.replies) - 1)]
        self.asked += 1
        return reply


def test_a_migration_that_completes_ends_the_wait() -> None:
    monitor = _Monitor([{"status": "active"}, {"status": "active"}, {"status": "completed"}])
    vmstate.wait_migration(monitor, timeout=10)  # type: ignore[arg-type]
    assert monitor.asked == 3


def test_a_failed_migration_is_raised_at_once_with_qemus_reason() -> None:
    monitor = _Monitor([{"status": "failed", "error-desc": "bad state file"}])
    started = time.monotonic()
    with pytest.raises(VMStateError, match="state transfer failed: bad state file; QEMU stderr: qemu: load"):
        vmstate.wait_migration(monitor, timeout=30)  # type: ignore[arg-type]
    assert monitor.asked == 1 and time.monotonic() - started < 5


def test_a_migration_that_does_not_finish_is_a_vm_state_error_naming_its_state() -> None:
    monitor = _Monitor([{"status": "active"}])
    with pytest.raises(VMStateError, match=r"^VM 'node0': state transfer not done within 0s \(active\)$"):
        vmstate.wait_migration(monitor, timeout=0.2)  # type: ignore[arg-type]


def test_a_vm_that_dies_during_a_restore_ends_the_wait_with_its_exit() -> None:
    monitor = _Monitor([{"status": "inmigrate"}], alive=False)
    with pytest.raises(VMExitedError):
        vmstate.wait_incoming(monitor, timeout=30)  # type: ignore[arg-type]


def test_a_restore_that_never_loads_is_a_vm_state_error() -> None:
    monitor = _Monitor([{"status": "inmigrate"}])
    with pytest.raises(VMStateError, match=r"^VM 'node0': saved state not loaded within 0s$"):
        vmstate.wait_incoming(monitor, timeout=0.2)  # type: ignore[arg-type]


class _Vm:
    """What wait_listening reads of a VM: its name, pid and liveness."""

    name = "nanoswitch"
    pid = os.getpid()  # this test process: it listens on nothing the test asks for

    def __init__(self, alive: bool = True) -> None:
        self.alive = alive

    def check_running(self) -> None:
        if not self.alive:
            raise VMExitedError(self.name, 1, "qemu: Could not set up host forwarding rule", [])


def test_ports_that_never_listen_are_a_launch_error_naming_them() -> None:
    with pytest.raises(LaunchError, match=r"^VM 'nanoswitch': host ports \[1, 2\] not listening after 0s$"):
        vm_module.wait_listening(_Vm(), [2, 1], timeout=0.2)  # type: ignore[arg-type]


def test_a_vm_that_exits_while_its_ports_are_awaited_is_raised_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(VMExitedError, match="host forwarding rule"):
        vm_module.wait_listening(_Vm(alive=False), [1], timeout=30)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
