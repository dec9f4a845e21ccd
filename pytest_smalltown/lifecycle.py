"""Node lifecycle for tests: reboot a node, gracefully or hard, and wait until it is back.

A reboot is judged from outside, the way a user would: the Kubernetes Node
object reports a new ``bootID`` (the kubelet reads it from the kernel, so it
changes on every boot and only on a boot) and is Ready, and the node's own
agent says ``KubernetesReady``. Comparing boot IDs rather than watching for
NotReady-then-Ready matters because a node can go down and come back faster
than the node-lifecycle controller notices (``faults.NODE_MONITOR_GRACE_SECONDS``), and then Ready never drops.

Graceful: the node's ``Reboot`` RPC; the agent stops its components newest
first, flushes the disks and restarts the machine. Hard: QEMU's reset, like a
reset button; nothing in the guest is told. On node 0 a hard reset can lose
etcd's last writes: etcd runs without fsync (emulated disks are slow), so what
was only in the page cache is gone, as on a real machine without fsync.

A new boot can hang: under TCG a node's kernel has soft-locked both vCPUs
for minutes in the seconds when kubelet and kube-proxy first program
iptables (rare, cause unknown; see docs/internals.md). The reboot reads the
node's console from the restart on and resets a boot that hung once more, as
the launch relaunches a cluster whose boot hung; :attr:`RebootResult.hung_boots`
says it happened.

Either way QEMU must let the guest restart: node VMs run with ``-no-reboot``
so that a kernel panic ends QEMU instead of boot-looping unseen; the reboot
switches that off for its duration (QMP ``set-action``) and back afterwards.

Used by :meth:`pytest_smalltown.cluster.Cluster.reboot_node` and by
``smalltown reboot``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.debug import DebugClient
from pytest_smalltown.kube import node_addresses, node_ready
from pytest_smalltown.launch.vm import GuestHungError, LaunchError
from pytest_smalltown.launch.vmstate import Monitor, allow_guest_reboot, hard_reset


#: How many boots that hung a reboot resets before it gives up.
HUNG_BOOT_RESETS = 1


class RebootError(LaunchError):
    """A node did not come back from a reboot in time; shows what it was doing."""


class GuestConsole(Protocol):
    """The rebooted machine's console as a reboot reads it (a :class:`~pytest_smalltown.launch.vm.VM` is one)."""

    def note_reset(self) -> None:
        """The machine restarts now: health checks read only what it prints from here on."""

    def check_not_hung(self) -> None:
        """Raise :class:`GuestHungError` if the kernel reports, since the restart, a CPU stuck for minutes."""

    def console_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` console lines."""


@dataclass(frozen=True)
class RebootResult:
    """What a reboot took, for logs and benchmarks."""

    #: The node's Kubernetes name.
    node: str
    hard: bool
    old_boot_id: str
    new_boot_id: str
    #: From the request until the Node reported a new boot and was Ready, and the agent agreed.
    seconds_to_ready: float
    #: Boots that hung (kernel soft lockup) and were reset once more on the way.
    hung_boots: int = 0


def find_node(kube: k8s.ApiClient, address: str) -> Any:
    """The Node object whose InternalIP is ``address`` (node VMs are known by address before they have names)."""
    nodes: list[Any] = k8s.CoreV1Api(kube).list_node(_request_timeout=10).items
    for node in nodes:
        if node_addresses(node).get("InternalIP") == address:
            return node
    known = ", ".join(f"{n.metadata.name} ({node_addresses(n).get('InternalIP')})" for n in nodes) or "none"
    raise LookupError(f"no Kubernetes node has the address {address}; nodes: {known}")


def reboot_node(
    monitor: Monitor,
    debug: DebugClient,
    kube: k8s.ApiClient,
    address: str,
    *,
    hard: bool,
    timeout: float,
    guest: GuestConsole,
) -> RebootResult:
    """Reboot the node VM behind ``monitor`` (its debug service ``debug``, its address ``address``) and wait for it.

    A boot that hangs is reset once more (:data:`HUNG_BOOT_RESETS`). Raises
    :class:`RebootError` with the node's console tail when it is not back
    within ``timeout`` seconds, or hung again; the VM is left running either way.
    """
    core = k8s.CoreV1Api(kube)
    node = find_node(kube, address)
    name: str = node.metadata.name
    old_boot_id: str = node.status.node_info.boot_id
    started = time.monotonic()
    kind = "hard" if hard else "graceful"

    def back() -> Any:
        guest.check_not_hung()
        current: Any = core.read_node(name, _request_timeout=10)
        return current if current.status.node_info.boot_id != old_boot_id and node_ready(current) else None

    def describe() -> str:
        current: Any = core.read_node(name, _request_timeout=10)
        same = current.status.node_info.boot_id == old_boot_id
        return f"boot ID {'unchanged' if same else 'new'}, {'Ready' if node_ready(current) else 'not Ready'}"

    def failed(why: str) -> RebootError:
        tail = "\n".join(f"    {line}" for line in guest.console_tail(40)) or "    (no console output)"
        return RebootError(f"{kind} reboot of node {name} ({address}): {why}\n  console (last lines):\n{tail}")

    allow_guest_reboot(monitor, True)
    try:
        if hard:
            hard_reset(monitor)
        else:
            debug.reboot()
        guest.note_reset()
        hung_boots = 0
        while True:
            left = timeout - (time.monotonic() - started)
            try:
                current = wait_for(f"node {name} to be Ready after a new boot", back, left, interval=1.0,
                                   describe=describe, fatal=(GuestHungError,))
                debug.wait_condition("KubernetesReady", max(1.0, timeout - (time.monotonic() - started)))
                break
            except TimeoutError as error:
                raise failed(str(error)) from error
            except GuestHungError as hung:
                if hung_boots >= HUNG_BOOT_RESETS:
                    raise failed(f"its kernel hung in {hung_boots + 1} boots in a row "
                                 f"(a CPU stuck for {hung.seconds}s)") from hung
                hung_boots += 1
                hard_reset(monitor)
                guest.note_reset()
    finally:
        allow_guest_reboot(monitor, False)
    return RebootResult(name, hard, old_boot_id, current.status.node_info.boot_id, time.monotonic() - started,
                        hung_boots)
