"""lifecycle.reboot_node with stand-ins for QEMU's monitor, the node's debug service and the Kubernetes API.

What is checked here is the order of things a real reboot depends on: the VM
may reset only for the reboot's duration (also when the wait fails), a hard
reboot is QEMU's reset and a graceful one the node's RPC, and "back" means a
new boot ID on a Ready node, and a boot that hangs is reset once more, not
twice. e2e/test_reboots.py reboots real node VMs.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pytest_smalltown import lifecycle
from pytest_smalltown.launch.vm import GuestHungError


class FakeMonitor:
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def cmd(self, command: str, **arguments: Any) -> None:
        self.commands.append((command, arguments))


class FakeDebug:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reboot(self) -> None:
        self.calls.append("reboot")

    def wait_condition(self, name: str, timeout: float) -> None:
        self.calls.append(f"wait {name}")


class FakeGuest:
    """A console whose boots hang as scripted: ``hangs`` is how many boots in a row do."""

    def __init__(self, hangs: int = 0) -> None:
        self.hangs = hangs
        self.resets = 0

    def note_reset(self) -> None:
        self.resets += 1

    def check_not_hung(self) -> None:
        if self.resets <= self.hangs:
            raise GuestHungError("node1", 131, [f"boot {self.resets}: soft lockup"])

    def console_tail(self, lines: int = 50) -> list[str]:
        return ["kernel: still here"]


def node(boot_id: str, ready: bool, address: str = "10.1.0.3") -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(name="smalltown-n1"),
        status=SimpleNamespace(
            node_info=SimpleNamespace(boot_id=boot_id),
            addresses=[SimpleNamespace(type="InternalIP", address=address)],
            conditions=[SimpleNamespace(type="Ready", status="True" if ready else "False")],
        ),
    )


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The Node as the API reports it, read after read (the last one repeats)."""
    reads: list[Any] = [node("boot-1", True)]

    class FakeCore:
        def __init__(self, _client: object) -> None:
            pass

        def list_node(self, **_: object) -> Any:
            return SimpleNamespace(items=[reads[0]])

        def read_node(self, name: str, **_: object) -> Any:
            return reads.pop(0) if len(reads) > 1 else reads[0]

    monkeypatch.setattr(lifecycle.k8s, "CoreV1Api", FakeCore)
    return reads


@pytest.mark.parametrize("hard", [False, True])
def test_a_reboot_lets_the_vm_reset_only_for_its_duration_and_waits_for_a_new_boot(
    api: list[Any], hard: bool
) -> None:
    api += [node("boot-1", True), node("boot-2", False), node("boot-2", True)]
    monitor, debug = FakeMonitor(), FakeDebug()
    result = lifecycle.reboot_node(monitor, debug, object(), "10.1.0.3", hard=hard,  # type: ignore[arg-type]
                                   timeout=30, guest=FakeGuest())  # fmt: skip
    assert (result.node, result.old_boot_id, result.new_boot_id) == ("smalltown-n1", "boot-1", "boot-2")
    assert result.hard is hard
    expected = [("set-action", {"reboot": "reset"})]
    expected += [("system_reset", {})] if hard else []
    expected += [("set-action", {"reboot": "shutdown"})]
    assert monitor.commands == expected
    assert debug.calls == (["wait KubernetesReady"] if hard else ["reboot", "wait KubernetesReady"])
    assert result.hung_boots == 0


@pytest.mark.parametrize("hard", [False, True])
def test_a_boot_that_hangs_is_reset_once_more(api: list[Any], hard: bool) -> None:
    api += [node("boot-1", True), node("boot-3", True)]
    monitor, guest = FakeMonitor(), FakeGuest(hangs=1)
    result = lifecycle.reboot_node(monitor, FakeDebug(), object(), "10.1.0.3", hard=hard,  # type: ignore[arg-type]
                                   timeout=30, guest=guest)  # fmt: skip
    assert (result.new_boot_id, result.hung_boots, guest.resets) == ("boot-3", 1, 2)
    resets = [command for command, _ in monitor.commands if command == "system_reset"]
    assert len(resets) == (2 if hard else 1), "the hung boot is reset, however the reboot began"
    assert monitor.commands[-1] == ("set-action", {"reboot": "shutdown"})


def test_a_boot_that_hangs_twice_is_an_error_with_its_console(api: list[Any]) -> None:
    monitor, guest = FakeMonitor(), FakeGuest(hangs=2)
    with pytest.raises(lifecycle.RebootError, match=r"(?s)hard reboot of node smalltown-n1.*hung in 2 boots in a row "
                                                    r"\(a CPU stuck for 131s\).*kernel: still here"):  # fmt: skip
        lifecycle.reboot_node(monitor, FakeDebug(), object(), "10.1.0.3", hard=True,  # type: ignore[arg-type]
                              timeout=30, guest=guest)
    assert guest.resets == 2 and monitor.commands[-1] == ("set-action", {"reboot": "shutdown"})


def test_a_node_that_does_not_come_back_is_an_error_with_its_console(api: list[Any]) -> None:
    monitor = FakeMonitor()
    with pytest.raises(lifecycle.RebootError, match=r"(?s)graceful reboot of node smalltown-n1.*boot ID unchanged.*"
                                                    r"console \(last lines\):\n    kernel: still here"):  # fmt: skip
        lifecycle.reboot_node(monitor, FakeDebug(), object(), "10.1.0.3", hard=False,  # type: ignore[arg-type]
                              timeout=1.5, guest=FakeGuest())
    assert monitor.commands[-1] == ("set-action", {"reboot": "shutdown"}), "-no-reboot semantics restored"


def test_an_unknown_address_names_the_nodes_there_are(api: list[Any]) -> None:
    with pytest.raises(LookupError, match=r"address 10.1.0.9; nodes: smalltown-n1 \(10.1.0.3\)"):
        lifecycle.find_node(object(), "10.1.0.9")  # type: ignore[arg-type]
