"""The Nanoswitch booted for real, with tiny busybox node VMs on its NICs.

The accelerator comes from the ``accel`` fixture (``SMALLTOWN_ACCEL``, probed
for ``auto``; TCG on our machines, whose KVM cannot boot stock kernels).

One switch and two tiny nodes per module: node 0 boots first (and pings the
host's SLIRP gateway through the switch's NAT), then node 1 (which pings node 0), both serve the forwarded ports and
answer with their own name, so a reply on a forwarded 127.0.0.1 port says which
node it came from. Teardown is checked on switches of their own.

Timings (switch start -> "forwarding", node start -> address) are printed,
not asserted: run with ``-s`` to see them. They depend on the host's load.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_smalltown.images.switch import SwitchImage, build_switch_image
from pytest_smalltown.images.tinyvm import TinyImage
from pytest_smalltown import contract
from pytest_smalltown.faults import FaultLog
from pytest_smalltown.launch import switch as sw
from pytest_smalltown.launch.ports import PortMap, PortNotForwardedError
from pytest_smalltown.launch.qemu import Accel, DirectBoot, VMConfig
from pytest_smalltown.launch.vm import VM, listening_sockets, start_vm
from pytest_smalltown.network import LinkProfile, Network

pytestmark = pytest.mark.integration

NODE_BOOT_TIMEOUT = 180.0
#: The host as QEMU user networking shows it to the switch's uplink. SLIRP only
#: answers addresses of its own 10.0.2.0/24, so a node's ping reaching it shows
#: the switch's masquerade works (checked: with the NAT rule removed it fails).
SLIRP_GATEWAY = "10.0.2.2"


#: Where node 1 (on the bridge, as a pod's traffic is) tries to open a TCP
#: connection, and whether it may: node 0's own debug port answers (its
#: fence is the node's business), but nothing of the switch's does, on either
#: of its addresses: not the host's forwards, not a node's debug forward, not
#: a NodePort of the DNAT range.
FENCE_PROBES: dict[str, str] = {
    f"{contract.node_address(0)}:7837": "ok",
    "10.0.2.15:7837": "fail",
    "10.0.2.15:6443": "fail",
    f"10.0.2.15:{contract.node_debug_guest_port(0)}": "fail",
    f"10.0.2.15:{contract.node_debug_guest_port(1)}": "fail",
    "10.0.2.15:30080": "fail",
    "10.1.0.1:7837": "fail",
    f"10.1.0.1:{contract.node_debug_guest_port(0)}": "fail",
}


@dataclass
class TinyNode:
    index: int
    vm: VM
    started: float
    init_after: float = 0.0
    ip_after: float = 0.0
    ip_line: str = ""


@dataclass
class Net:
    switch: sw.Switch
    nodes: list[TinyNode]


def wait_line(vm: VM, pattern: str, timeout: float = NODE_BOOT_TIMEOUT) -> str:
    return vm.wait_for_console(pattern, timeout).group(0)


def start_tiny(
    switch: sw.Switch, image: TinyImage, accel: Accel, index: int, workdir: Path, *options: str
) -> TinyNode:
    """Start tiny VM ``index`` on the switch's NIC for that node and wait until it has an address."""
    config = VMConfig(
        name=f"node{index}",
        boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline(*options)),
        machine="microvm",
        accel=accel,
        memory_mib=128,
        nics=(switch.node_nic(index),),
        rng=False,
    )
    started = time.monotonic()
    vm = start_vm(config, workdir)
    node = TinyNode(index, vm, started)
    wait_line(vm, r"tinyvm: init")
    node.init_after = time.monotonic() - started
    node.ip_line = wait_line(vm, r"tinyvm: ip .*")
    node.ip_after = time.monotonic() - started
    return node


@pytest.fixture(scope="module")
def switch_image() -> SwitchImage:
    return build_switch_image()


@pytest.fixture(scope="module")
def net(
    switch_image: SwitchImage, tiny_image: TinyImage, accel: Accel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Net]:
    tiny = tiny_image
    workdir = tmp_path_factory.mktemp("tiny")
    switch = sw.launch_switch(2, accel=accel, image=switch_image)
    nodes: list[TinyNode] = []
    try:
        serve = "tiny.serve=" + ",".join(map(str, sw.DEFAULT_PORTS))
        nodes.append(start_tiny(switch, tiny, accel, 0, workdir, "tiny.name=node0", "tiny.ip=dhcp", serve,
                                f"tiny.ping={SLIRP_GATEWAY}"))  # fmt: skip
        wait_line(nodes[0].vm, r"tinyvm: ready")
        nodes.append(start_tiny(switch, tiny, accel, 1, workdir, "tiny.name=node1", "tiny.ip=dhcp", serve,
                                f"tiny.ping={contract.node_address(0)}", "tiny.connect=" + ",".join(FENCE_PROBES)))  # fmt: skip
        wait_line(nodes[1].vm, r"tinyvm: ready")
        print(f"\n[switch] start -> forwarding: {switch.ready_after:.2f}s ({switch.ready_line})")
        for node in nodes:
            print(
                f"[node{node.index}] start -> init {node.init_after:.2f}s, start -> address {node.ip_after:.2f}s, "
                f"init -> address (modules + DHCP) {node.ip_after - node.init_after:.2f}s: {node.ip_line}"
            )
        yield Net(switch, nodes)
    finally:
        pids = [switch.vm.pid, *(node.vm.pid for node in nodes)]
        for node in nodes:
            node.vm.stop()
        switch.close()
    # Reported as a teardown error if anything survived.
    assert all(process_gone(pid) for pid in pids), f"QEMU still running: {pids}"
    assert not switch.workdir.exists()


def test_each_node_gets_exactly_its_planned_address(net: Net) -> None:
    for node in net.nodes:
        assert node.ip_line.split() == ["tinyvm:", "ip", f"{contract.node_address(node.index)}/24"]
        lease = wait_line(net.switch.vm, rf"nanoswitch: lease \S+ to {contract.node_mac(node.index)}", 5)
        assert lease.split() == ["nanoswitch:", "lease", contract.node_address(node.index), "to", contract.node_mac(node.index)]


def test_node_reaches_the_outside_through_the_switch_nat(net: Net) -> None:
    assert wait_line(net.nodes[0].vm, r"tinyvm: ping \S+ \w+", 5) == f"tinyvm: ping {SLIRP_GATEWAY} ok"


def test_nodes_reach_each_other_through_the_bridge(net: Net) -> None:
    # node 1's echo request crosses the bridge to node 0 and node 0's reply comes back.
    assert wait_line(net.nodes[1].vm, r"tinyvm: ping \S+ \w+", 5) == f"tinyvm: ping {contract.node_address(0)} ok"


def test_nothing_of_the_switch_answers_the_nodes_side(net: Net) -> None:
    """A node (and so any pod it routes) cannot use the forwards meant for the host (issue 23's fence)."""
    lines = [line for line in net.nodes[1].vm.console_tail(400) if line.startswith("tinyvm: connect ")]
    seen = {line.split()[2]: line.split()[3] for line in lines}
    assert seen == FENCE_PROBES


def read_banner(port: int, attempts: int = 20) -> str:
    """The line a forwarded port answers with, retrying while busybox nc re-arms between clients."""
    last = ""
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.settimeout(10)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = conn.recv(200)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                pass
        last = data.decode(errors="replace").strip()
        if last:
            return last
        time.sleep(0.5)
    return last


@pytest.mark.parametrize("guest_port", sw.DEFAULT_PORTS)
def test_forwarded_port_reaches_node0_and_not_node1(net: Net, guest_port: int) -> None:
    answer = read_banner(net.switch.ports[guest_port])
    assert answer == f"tinyvm node0 port {guest_port}"


@pytest.mark.parametrize("index", [0, 1])
def test_each_nodes_debug_service_has_its_own_forward(net: Net, index: int) -> None:
    assert read_banner(net.switch.node_debug_port(index)) == f"tinyvm node{index} port 7837"


def test_forwarded_ports_listen_on_loopback_only(net: Net) -> None:
    listeners = listening_sockets(net.switch.vm.pid)
    assert listeners == {("127.0.0.1", host) for host in net.switch.ports.values()}
    assert len(listeners) == len(sw.DEFAULT_PORTS) + 2  # and one debug forward per node


def test_unforwarded_port_is_a_clear_error(net: Net) -> None:
    with pytest.raises(PortNotForwardedError,
                       match=r"guest port 7833 is not forwarded.*\[6443, 7836, 7837, 27837, 27838\]"):  # fmt: skip
        net.switch.ports[7833]


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def our_qemu_children() -> list[int]:
    """Live QEMU processes whose parent is this pytest process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if comm.startswith("qemu-system") and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry))
    return found


def open_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target)
    return inodes


def test_switch_with_max_nodes_starts_and_teardown_leaves_nothing(switch_image: SwitchImage, accel: Accel) -> None:
    """MAX_NODES NICs all join the bridge; close() stops QEMU, closes every end and removes the work dir."""
    switch = sw.launch_switch(contract.MAX_NODES, ports=[7837], accel=accel, image=switch_image)
    try:
        bridge_line = wait_line(switch.vm, r"nanoswitch: bridge br0 .*", 5)
        ports = re.search(r"ports (\S+);", bridge_line)
        assert ports is not None and len(ports.group(1).split(",")) == contract.MAX_NODES, bridge_line
        assert switch.ready_line is not None and switch.ready_line.startswith("nanoswitch: forwarding 7837 to 10.1.0.2")
        pid = switch.vm.pid
        workdir = switch.workdir
        assert workdir.exists()
        ends = {f"socket:[{os.fstat(switch.node_fd(i)).st_ino}]" for i in range(contract.MAX_NODES)}
        assert ends <= open_socket_inodes()
        print(f"\n[switch x{contract.MAX_NODES}] start -> forwarding: {switch.ready_after:.2f}s")
    finally:
        switch.close()
    assert process_gone(pid)
    assert pid not in our_qemu_children()
    assert not workdir.exists()
    assert not ends & open_socket_inodes(), "node ends still open after close()"


def test_not_ready_in_time_gives_console_tail_and_cleans_up(switch_image: SwitchImage, accel: Accel) -> None:
    before = set(os.listdir("/tmp"))
    children_before = set(our_qemu_children())
    with pytest.raises(sw.SwitchError, match=r"did not report 'nanoswitch: forwarding' within 1s") as info:
        sw.launch_switch(1, accel=accel, image=switch_image, ready_timeout=1.0)
    assert "console tail" in str(info.value)
    leftovers = {name for name in set(os.listdir("/tmp")) - before if name.startswith("st-sw-")}
    assert not leftovers
    assert set(our_qemu_children()) <= children_before


def test_fatal_switch_error_is_reported_with_its_reason(switch_image: SwitchImage, accel: Accel, tmp_path: Path) -> None:
    """A command line the switch rejects surfaces as SwitchError naming the reason, not as a timeout."""
    pair = socket.socketpair()
    config = sw.switch_vm_config(
        switch_image, 1, [pair[0].fileno()], PortMap({}), accel,
        extra_kernel_args=["nanoswitch.frobnicate=1"],
    )  # fmt: skip
    switch = sw.Switch(1, start_vm(config, tmp_path), [pair[1]], PortMap({}), tmp_path, False, time.monotonic())
    pair[0].close()
    try:
        started = time.monotonic()
        with pytest.raises(sw.SwitchError, match=r"failed to start: nanoswitch: fatal: bad kernel parameter "
                                                 r"\"nanoswitch.frobnicate=1\": unknown parameter"):  # fmt: skip
            switch.wait_ready(sw.READY_TIMEOUT)
        assert time.monotonic() - started < sw.READY_TIMEOUT / 2, "fatal must end the wait early"
    finally:
        switch.close()


def fastest_banner_seconds(port: int, answers: int = 3) -> float:
    """The quickest of ``answers`` round trips to a forwarded port that got its line back.

    A connection that busybox nc answers with nothing (it re-arms between
    clients) is not timed but tried again half a second later, so the figure
    is the link's, not the retry's; the minimum is the least noisy figure of a busy host.
    """
    times: list[float] = []
    for _ in range(answers * 10):
        started = time.monotonic()
        if read_banner(port, attempts=1):
            times.append(time.monotonic() - started)
            if len(times) == answers:
                return min(times)
        else:
            time.sleep(0.5)
    raise AssertionError(f"port {port} answered {len(times)} of {answers * 10} connections")


def test_faults_slow_and_cut_the_links_between_nodes_and_leave_no_trace_after(
    switch_image: SwitchImage, tiny_image: TinyImage, accel: Accel, tmp_path: Path
) -> None:
    """The switch's faults, driven through its fault channel as ``cluster.network`` drives them.

    A degraded link delays what the switch sends its node (the host's
    requests too, so the host can time it); a node cut off from the others
    still gets its address from the switch, but neither its ping nor its TCP
    connection reaches node 0, and the capture of its cable holds what it
    sent; after the heal a node on that cable reaches node 0 again.
    """
    for name in ("0", "1", "2"):
        (tmp_path / name).mkdir()
    switch = sw.launch_switch(2, accel=accel, image=switch_image)
    assert switch.vm.config.qmp_socket is not None
    network = Network(switch.vm.config.qmp_socket, 2, FaultLog())
    probes = (f"tiny.ping={contract.node_address(0)}", f"tiny.connect={contract.node_address(0)}:7836")
    nodes: list[TinyNode] = []
    try:
        nodes.append(start_tiny(switch, tiny_image, accel, 0, tmp_path / "0", "tiny.name=node0", "tiny.ip=dhcp",
                                "tiny.serve=7836"))  # fmt: skip
        wait_line(nodes[0].vm, r"tinyvm: ready")
        port = switch.ports[7836]
        before = fastest_banner_seconds(port)
        with network.degrade(0, delay_ms=400) as record:
            assert network.status().degraded == {0: LinkProfile(delay_ms=400)}
            slowed = fastest_banner_seconds(port)
        after = fastest_banner_seconds(port)
        print(f"\n[faults] host -> node 0: {before:.3f}s, {slowed:.3f}s with 400 ms delay, {after:.3f}s after")
        assert slowed >= 0.4, "the connection's SYN to node 0 crosses the degraded link"
        assert after < 0.4 and network.status().degraded == {}, "the delay outlived its with block"
        assert record.ended is not None

        with network.isolate(1), network.capture(tmp_path / "capture", nodes=[1]) as captures:
            assert network.status().partition == ((1,), (0,))
            nodes.append(start_tiny(switch, tiny_image, accel, 1, tmp_path / "1", "tiny.name=node1", "tiny.ip=dhcp",
                                    *probes))  # fmt: skip
            cut_off = nodes[-1].vm
            assert wait_line(cut_off, r"tinyvm: ping \S+ \w+") == f"tinyvm: ping {contract.node_address(0)} fail"
            assert wait_line(cut_off, r"tinyvm: connect \S+ \w+") == f"tinyvm: connect {contract.node_address(0)}:7836 fail"
            cut_off.stop()
        assert network.status().partition == ()
        # The cable's capture: a pcap file with the cut-off node's DHCP exchange and pings in it.
        capture = captures[0].read_bytes()
        assert capture[:4] == b"\xd4\xc3\xb2\xa1" and len(capture) > 24 + 10 * 16, f"{len(capture)} bytes"

        nodes.append(start_tiny(switch, tiny_image, accel, 1, tmp_path / "2", "tiny.name=node1", "tiny.ip=dhcp",
                                *probes))  # fmt: skip
        assert wait_line(nodes[-1].vm, r"tinyvm: ping \S+ \w+") == f"tinyvm: ping {contract.node_address(0)} ok"
        assert wait_line(nodes[-1].vm, r"tinyvm: connect \S+ \w+") == f"tinyvm: connect {contract.node_address(0)}:7836 ok"
        assert "nanoswitch: fault: partition [1] | [0] healed" in "\n".join(switch.vm.console_tail(200))
    finally:
        for node in nodes:
            node.vm.stop()
        switch.close()
