"""Unit tests of the Nanoswitch launcher's pure parts: addressing, kernel command line, argv, errors.

Nothing here builds an image or starts QEMU; a fake image with non-existent
paths is enough because argv construction does not touch the file system.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

import pytest

from pytest_smalltown.images.switch import SwitchImage
from pytest_smalltown import contract
from pytest_smalltown.launch import switch as sw
from pytest_smalltown.launch.ports import PortMap, PortNotForwardedError
from pytest_smalltown.launch.qemu import SocketNic, UserNic, inherited_fds, qemu_argv

FAKE_IMAGE = SwitchImage(kernel=Path("/nonexistent/vmlinuz"), initramfs=Path("/nonexistent/initramfs.gz"))


def params(cmdline: str) -> dict[str, str]:
    """The nanoswitch.* parameters of a kernel command line, as the Go side splits them."""
    result = {}
    for token in cmdline.split():
        if token.startswith("nanoswitch."):
            key, _, value = token.partition("=")
            assert key not in result, f"{key} given twice"
            result[key.removeprefix("nanoswitch.")] = value
    return result


# --- addressing -----------------------------------------------------------------


def test_node_mac_and_address_follow_the_design() -> None:
    assert contract.node_mac(0) == "02:53:4d:01:00:02"
    assert contract.node_address(0) == "10.1.0.2"
    assert contract.node_mac(1) == "02:53:4d:01:00:03"
    assert contract.node_address(1) == "10.1.0.3"
    assert contract.node_mac(7) == "02:53:4d:01:00:09"
    assert contract.node_address(7) == "10.1.0.9"


def test_every_node_has_a_distinct_unicast_local_mac_and_address_on_the_bridge() -> None:
    macs = [contract.node_mac(i) for i in range(contract.MAX_NODES)]
    addresses = [contract.node_address(i) for i in range(contract.MAX_NODES)]
    assert len(set(macs)) == len(set(addresses)) == contract.MAX_NODES
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02 == 2, mac  # unicast, locally administered
        assert mac != contract.UPLINK_MAC
    network = ipaddress.ip_network("10.1.0.0/24")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert ip in network and str(ip) != contract.SWITCH_ADDRESS
        assert int(str(ip).rsplit(".", 1)[1]) < 200, "must stay below the switch's pool for unknown MACs"


@pytest.mark.parametrize("bad", [-1, contract.MAX_NODES, 1.0, "0", True, None])
def test_node_index_out_of_range_is_a_clear_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="node index"):
        contract.node_mac(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node index"):
        contract.node_address(bad)  # type: ignore[arg-type]


def test_max_nodes_is_at_least_eight() -> None:
    assert contract.MAX_NODES >= 8


def test_default_ports_are_external_debug_and_kubernetes() -> None:
    assert sw.DEFAULT_PORTS == (7836, 7837, 6443)
    assert (sw.EXTERNAL_SERVICE_PORT, sw.DEBUG_SERVICE_PORT, sw.KUBERNETES_API_PORT) == (7836, 7837, 6443)


# --- node count and port validation -----------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, contract.MAX_NODES + 1, 2.0, "2", None, True])
def test_launch_switch_rejects_bad_node_counts_before_starting_anything(
    bad: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("launch_switch went past validation")

    monkeypatch.setattr(sw, "start_vm_with_ports", must_not_run)
    monkeypatch.setattr(sw, "resolve_accel", must_not_run)
    monkeypatch.setattr(sw, "make_workdir", must_not_run)
    with pytest.raises(ValueError, match=r"node count|1 to \d+ nodes"):
        sw.launch_switch(bad, image=FAKE_IMAGE)  # type: ignore[arg-type]


def test_launch_switch_rejects_unknown_accelerator_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sw, "start_vm_with_ports", None)
    with pytest.raises(ValueError, match="accel"):
        sw.launch_switch(1, accel="hvf", image=FAKE_IMAGE)


def test_launch_switch_starts_the_qemu_it_is_given(tmp_path: Path) -> None:
    """--smalltown-qemu reaches the switch too, not only the nodes."""
    from pytest_smalltown.base.programs import ProgramNotFoundError

    image = SwitchImage(tmp_path / "vmlinuz", tmp_path / "initramfs")
    with pytest.raises(ProgramNotFoundError, match="/nonexistent/qemu-of-the-user"):
        sw.launch_switch(1, workdir=tmp_path, accel="tcg", image=image, qemu="/nonexistent/qemu-of-the-user")


def test_node_count_error_names_the_limit() -> None:
    with pytest.raises(ValueError) as info:
        contract.check_node_count(contract.MAX_NODES + 1)
    assert str(contract.MAX_NODES) in str(info.value) and str(contract.MAX_NODES + 1) in str(info.value)


@pytest.mark.parametrize("ports", [[0], [65536], [7836, 7836], ["7836"], [True]])
def test_bad_ports_are_rejected(ports: list[object]) -> None:
    with pytest.raises(ValueError):
        sw.check_ports(ports)  # type: ignore[arg-type]


# --- kernel command line ----------------------------------------------------------


def test_cmdline_for_two_nodes() -> None:
    cmdline = sw.switch_cmdline(2)
    assert params(cmdline) == {
        "nodes": "2",
        "lease": "02:53:4d:01:00:02=10.1.0.2,02:53:4d:01:00:03=10.1.0.3",
        "forward": "7836,7837,6443",
        "target": "10.1.0.2",
        "proxy": "27837=10.1.0.2:7837,27838=10.1.0.3:7837",
        "dnat": "30000-32767",
        "ports": "02:72:82:00:00:00,02:72:82:00:00:01",
        "control": "nanoswitch.control",
    }
    assert "console=ttyS0" in cmdline.split()


def test_node_ports_are_not_forwarded_at_launch_but_on_request() -> None:
    with pytest.raises(ValueError, match="NodePort.*forward_node_port"):
        sw.check_ports([7837, 30080])

    class FakeMonitor:
        """Answers HMP like QEMU: nothing on success, a message when the host port is taken."""

        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.commands: list[str] = []

        def cmd(self, command: str, **arguments: str) -> str:
            assert command == "human-monitor-command"
            self.commands.append(arguments["command-line"])
            if len(self.commands) <= self.failures:
                return "Could not set up host forwarding rule 'tcp:...'\r\n"
            return ""

    monitor = FakeMonitor(failures=1)
    host_port = sw.forward_node_port(monitor, 30080)  # type: ignore[arg-type]
    assert monitor.commands[-1] == f"hostfwd_add net0 tcp:127.0.0.1:{host_port}-:30080"
    assert len(monitor.commands) == 2
    with pytest.raises(sw.SwitchError, match="NodePort 30081"):
        sw.forward_node_port(FakeMonitor(failures=99), 30081)  # type: ignore[arg-type]
    for bad in (8080, 40000, True, "30080"):
        with pytest.raises(ValueError, match="not a NodePort"):
            sw.forward_node_port(FakeMonitor(failures=0), bad)  # type: ignore[arg-type]


def test_every_node_gets_its_own_debug_port_on_the_switch() -> None:
    from pytest_smalltown.contract import NODE_DEBUG_PORT_BASE

    assert [contract.node_debug_guest_port(i) for i in range(3)] == [NODE_DEBUG_PORT_BASE + i for i in range(3)]
    assert NODE_DEBUG_PORT_BASE == 27837
    proxies = params(sw.switch_cmdline(contract.MAX_NODES))["proxy"].split(",")
    assert proxies == [f"{contract.node_debug_guest_port(i)}={contract.node_address(i)}:7837" for i in range(contract.MAX_NODES)]
    # Node 0's debug service is reachable both ways: the classic forward and its own port.
    assert params(sw.switch_cmdline(1))["proxy"] == "27837=10.1.0.2:7837"
    assert "7837" in params(sw.switch_cmdline(1))["forward"].split(",")
    with pytest.raises(ValueError, match="node index"):
        contract.node_debug_guest_port(contract.MAX_NODES)


def test_per_node_debug_ports_cannot_be_forwarded_to_node_0() -> None:
    reserved = contract.node_debug_guest_port(contract.MAX_NODES - 1)
    with pytest.raises(ValueError, match=f"port {reserved} is reserved: .*each node's debug service"):
        sw.check_ports([7837, reserved])
    with pytest.raises(ValueError, match="reserved"):
        sw.switch_cmdline(2, ports=[27837])
    assert sw.check_ports([sw.NODE_DEBUG_GUEST_PORTS.start - 1, sw.NODE_DEBUG_GUEST_PORTS.stop]) == (27836, 27837 + contract.MAX_NODES)


def test_cmdline_leases_every_node_and_fits_the_kernel_limit_at_max_nodes() -> None:
    cmdline = sw.switch_cmdline(contract.MAX_NODES, extra=["tsc_early_khz=2596120"])
    leases = dict(item.split("=") for item in params(cmdline)["lease"].split(","))
    assert leases == {contract.node_mac(i): contract.node_address(i) for i in range(contract.MAX_NODES)}
    # x86 COMMAND_LINE_SIZE is 2048 including QEMU's own additions; leave it half.
    assert len(cmdline) < 1024


def test_cmdline_forwards_what_it_is_told_to_the_target_node() -> None:
    cmdline = sw.switch_cmdline(3, ports=[2345, 7835], target=1)
    assert params(cmdline)["forward"] == "2345,7835"
    assert params(cmdline)["target"] == "10.1.0.3"


def test_cmdline_without_ports_forwards_only_node_ports_to_node_0() -> None:
    p = params(sw.switch_cmdline(1, ports=[]))
    assert "forward" not in p
    assert (p["target"], p["dnat"]) == ("10.1.0.2", "30000-32767")
    assert p["proxy"] == "27837=10.1.0.2:7837"


def test_cmdline_rejects_target_outside_the_cluster() -> None:
    with pytest.raises(ValueError, match="target node 2"):
        sw.switch_cmdline(2, target=2)


def test_ready_pattern_matches_forwarding_and_fatal_lines_only() -> None:
    pattern = re.compile(sw.READY_PATTERN)
    assert pattern.search("nanoswitch: forwarding 7836,7837,6443 to 10.1.0.2 (up 1.33s)")
    assert pattern.search("nanoswitch: forwarding none (up 1.2s)")
    assert pattern.search("nanoswitch: fatal: no uplink NIC with MAC 02:72:82:bf:c3:56")
    assert not pattern.search("nanoswitch: lease 10.1.0.2 to 02:53:4d:01:00:02")
    assert not pattern.search("nanoswitch: fixed lease 02:53:4d:01:00:02 -> 10.1.0.2")


# --- VM config and QEMU argv ------------------------------------------------------


def test_switch_vm_config_argv() -> None:
    port_map = PortMap({7836: 40001, 7837: 40002, 6443: 40003})
    config = sw.switch_vm_config(FAKE_IMAGE, 2, [11, 12], port_map, "tcg")
    assert config.machine == "microvm"
    uplink, *nodes = config.nics
    assert isinstance(uplink, UserNic) and uplink.mac == contract.UPLINK_MAC
    assert [n.fd for n in nodes if isinstance(n, SocketNic)] == [11, 12]
    assert inherited_fds(config) == (11, 12)
    argv = qemu_argv(config)
    joined = " ".join(argv)
    assert "-M microvm" in joined.replace("microvm,", "microvm ")
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs[0].startswith("user,")
    # Every forward binds loopback only, from the port map, to the same guest port.
    assert sorted(re.findall(r"hostfwd=tcp:([\d.]+):(\d+)-:(\d+)", netdevs[0])) == [
        ("127.0.0.1", "40001", "7836"),
        ("127.0.0.1", "40002", "7837"),
        ("127.0.0.1", "40003", "6443"),
    ]
    assert netdevs[1:] == ["socket,id=net1,fd=11", "socket,id=net2,fd=12"]
    cmdline = argv[argv.index("-append") + 1]
    assert params(cmdline)["forward"] == "7836,7837,6443"  # the order the port map lists them
    assert argv[argv.index("-kernel") + 1] == str(FAKE_IMAGE.kernel)
    assert argv[argv.index("-initrd") + 1] == str(FAKE_IMAGE.initramfs)


def test_switch_vm_config_forwards_exactly_the_port_map() -> None:
    config = sw.switch_vm_config(FAKE_IMAGE, 1, [5], PortMap({2345: 50000}), "tcg")
    cmdline = qemu_argv(config)[qemu_argv(config).index("-append") + 1]
    assert params(cmdline)["forward"] == "2345"


def test_switch_vm_config_forwards_per_node_ports_to_their_nodes_not_node_0() -> None:
    port_map = PortMap({7837: 40001, 27837: 40002, 27838: 40003})
    argv = qemu_argv(sw.switch_vm_config(FAKE_IMAGE, 2, [11, 12], port_map, "tcg"))
    netdev = argv[argv.index("-netdev") + 1]
    assert sorted(re.findall(r"hostfwd=tcp:127.0.0.1:(\d+)-:(\d+)", netdev)) == [
        ("40001", "7837"), ("40002", "27837"), ("40003", "27838"),
    ]  # fmt: skip
    p = params(argv[argv.index("-append") + 1])
    assert p["forward"] == "7837"
    assert p["proxy"] == "27837=10.1.0.2:7837,27838=10.1.0.3:7837"


def test_launch_switch_forwards_every_nodes_debug_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers pass the same arguments as before; the per-node ports come along."""
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_start(make_config, ports, workdir, history=()):  # type: ignore[no-untyped-def]
        seen["ports"] = ports
        seen["config"] = make_config(PortMap({p: 40000 + i for i, p in enumerate(ports)}))
        raise Stop

    monkeypatch.setattr(sw, "start_vm_with_ports", fake_start)
    with pytest.raises(Stop):
        sw.launch_switch(3, sw.DEFAULT_PORTS, workdir=tmp_path, accel="tcg", image=FAKE_IMAGE)
    assert seen["ports"] == (7836, 7837, 6443, 27837, 27838, 27839)
    cmdline = qemu_argv(seen["config"])[qemu_argv(seen["config"]).index("-append") + 1]  # type: ignore[arg-type]
    assert params(cmdline)["forward"] == "7836,7837,6443"
    assert params(cmdline)["proxy"] == "27837=10.1.0.2:7837,27838=10.1.0.3:7837,27839=10.1.0.4:7837"


def test_switch_vm_config_needs_one_end_per_node() -> None:
    with pytest.raises(ValueError, match="2 nodes need 2 switch ends"):
        sw.switch_vm_config(FAKE_IMAGE, 2, [11], PortMap({}), "tcg")


# --- unknown port --------------------------------------------------------------


def test_unforwarded_port_error_names_the_port_and_what_is_forwarded() -> None:
    ports = PortMap({7836: 40001, 7837: 40002, 6443: 40003})
    with pytest.raises(PortNotForwardedError) as info:
        ports[7833]
    message = str(info.value)
    assert "7833" in message and "6443" in message and "7836" in message and "7837" in message
    assert isinstance(info.value, KeyError)


# --- Switch object without a VM -----------------------------------------------------


class _StoppedVM:
    """Just enough of a VM for Switch's bookkeeping."""

    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1

    def console_tail(self, n: int = 40) -> list[str]:
        return []


def test_switch_exposes_node_nics_and_closes_everything_once(tmp_path: Path) -> None:
    pairs = [socket.socketpair() for _ in range(2)]
    for a, _ in pairs:
        a.close()
    ends = [b for _, b in pairs]
    workdir = tmp_path / "sw"
    workdir.mkdir()
    vm = _StoppedVM()
    ports = PortMap({7837: 40000, 27837: 40001, 27838: 40002})
    switch = sw.Switch(2, vm, ends, ports, workdir, True, 0.0)  # type: ignore[arg-type]
    assert [switch.node_debug_port(i) for i in range(2)] == [40001, 40002]
    with pytest.raises(ValueError, match="nodes 0..1"):
        switch.node_debug_port(2)
    nic = switch.node_nic(1)
    assert nic == SocketNic(fd=ends[1].fileno(), mac="02:53:4d:01:00:03")
    assert switch.node_address(1) == "10.1.0.3"
    with pytest.raises(ValueError, match="nodes 0..1"):
        switch.node_fd(2)
    with switch:
        pass
    switch.close()
    assert vm.stopped == 1
    assert all(end.fileno() == -1 for end in ends)
    assert not workdir.exists()
    with pytest.raises(sw.SwitchError, match="closed"):
        switch.node_fd(0)


# --- image builder and the Go program ------------------------------------------------


def test_image_cache_key_covers_sources_modules_kernel_and_toolchain() -> None:
    from pytest_smalltown.images import switch as image
    from pytest_smalltown.images.kernel import Kernel

    kernel = Kernel(Path("/k/vmlinuz"), Path("/k/modules"), "6.1.0-56-amd64", "6.1.192-2")
    key = image.cache_key(kernel, "go version go1.26.8 linux/amd64")
    assert key == image.cache_key(kernel, "go version go1.26.8 linux/amd64"), "must be stable"
    assert key != image.cache_key(kernel, "go version go1.26.9 linux/amd64")
    other_kernel = Kernel(Path("/k/vmlinuz"), Path("/k/modules"), "6.1.0-57-amd64", "6.1.193-1")
    assert key != image.cache_key(other_kernel, "go version go1.26.8 linux/amd64")
    names = {p.name for p in image.source_files()}
    assert {"main.go", "dhcp.go", "config.go", "go.mod", "go.sum"} <= names
    assert not any(name.endswith("_test.go") for name in names)


def test_go_program_unit_tests_pass() -> None:
    """config.go and dhcp.go (command line syntax, lease decisions) have Go tests of their own."""
    import shutil
    import subprocess

    from pytest_smalltown.images import switch as image

    if shutil.which("go") is None:
        pytest.skip("no Go toolchain")
    proc = subprocess.run(
        ["nice", "go", "test", "./..."], cwd=image.GO_DIR, env=image.go_build_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_planned_switch_gets_its_cables_and_ports_at_start() -> None:
    """switch_config is what a cluster plan holds; cabled adds what exists only once it starts."""
    port_map = PortMap({7836: 41000, 7837: 41001, 6443: 41002, 27837: 41003, 27838: 41004})
    planned = sw.switch_config(FAKE_IMAGE, 2, sw.DEFAULT_PORTS, "tcg", qemu="/opt/qemu/qemu-system-x86_64")
    assert planned.nics == () and planned.qmp_socket is None
    started = sw.cabled(planned, [11, 12], port_map, qmp_socket=Path("/w/nanoswitch.qmp"))
    assert started.qemu == "/opt/qemu/qemu-system-x86_64"
    assert qemu_argv(started)[1:] == qemu_argv(
        sw.switch_vm_config(FAKE_IMAGE, 2, [11, 12], port_map, "tcg", qmp_socket=Path("/w/nanoswitch.qmp"))
    )[1:]


def test_launch_switch_probes_the_accelerator_with_the_qemu_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_smalltown.launch.accel import ProbeResult

    probed: list[str] = []

    class Stop(Exception):
        pass

    def probe(mode: str, qemu: str) -> ProbeResult:
        probed.append(qemu)
        return ProbeResult("tcg", "probed", 0.0, "")

    def fake_start(make_config, ports, workdir, history=()):  # type: ignore[no-untyped-def]
        raise Stop

    monkeypatch.setattr(sw, "resolve_accel", probe)
    monkeypatch.setattr(sw, "start_vm_with_ports", fake_start)
    with pytest.raises(Stop):
        sw.launch_switch(1, workdir=tmp_path, accel="auto", image=FAKE_IMAGE, qemu="/opt/qemu/qemu-system-x86_64")
    assert probed == ["/opt/qemu/qemu-system-x86_64"]
