"""Network faults from the host's side: the fault channel's client, the fault context managers, and the CLI's parsing.

The switch's end is an in-process stand-in on a UNIX socket that answers as
``images/go/nanoswitch/control.go`` does (its own tests are ``faults_test.go``);
tests/integration/test_switch.py drives the real one.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown import network as net
from pytest_smalltown.faults import FaultLog
from pytest_smalltown.launch import switch as sw
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import DirectBoot, VMConfig, qemu_argv


class StandInSwitch:
    """Answers fault requests on ``<dir>/nanoswitch.control`` like the switch: state in, status out."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "nanoswitch.control"
        self.requests: list[dict[str, Any]] = []
        self.partition: list[list[int]] | None = None
        self.degraded: dict[str, dict[str, Any]] = {}
        self.refuse: str | None = None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection, connection.makefile("rwb") as stream:
                line = stream.readline()
                if not line:
                    continue
                stream.write(json.dumps(self.answer(json.loads(line))).encode() + b"\n")
                stream.flush()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if self.refuse:
            return {"ok": False, "error": self.refuse}
        op = request["op"]
        if op == "partition":
            self.partition = request["groups"]
        elif op == "heal_partition":
            self.partition = None
        elif op == "degrade":
            self.degraded[str(request["node"])] = request["link"]
        elif op == "restore":
            self.degraded.pop(str(request["node"]), None)
        elif op == "heal":
            self.partition, self.degraded = None, {}
        return {"ok": True, "status": {"partition": self.partition, "degraded": self.degraded}}

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[StandInSwitch]:
    stand_in = StandInSwitch(tmp_path)
    yield stand_in
    stand_in.close()


@pytest.fixture
def network(switch: StandInSwitch) -> net.Network:
    # The fault channel lies beside the switch's QMP socket.
    return net.Network(switch.path.with_suffix(".qmp"), nodes=3, log=FaultLog())


def test_the_fault_channel_lies_beside_the_switchs_qmp_socket_in_its_private_work_dir() -> None:
    assert sw.control_socket_of(Path("/tmp/st-sw-x/nanoswitch.qmp")) == Path("/tmp/st-sw-x/nanoswitch.control")


def test_a_partition_is_on_for_its_with_block_and_healed_after_also_when_the_test_fails(
    network: net.Network, switch: StandInSwitch
) -> None:
    with pytest.raises(AssertionError, match="the test failed"):
        with network.partition([0], [2, 1]) as record:
            assert network.status().partition == ((0,), (1, 2))
            assert record.description == "network partitioned [0] | [1,2]"
            raise AssertionError("the test failed")
    assert [r["op"] for r in switch.requests] == ["partition", "status", "heal_partition"]
    assert switch.requests[0]["groups"] == [[0], [1, 2]]
    assert network.status().partition == ()
    assert record.ended is not None and list(network.log.records) == [record]


def test_isolate_is_a_partition_of_one_node_against_the_rest(network: net.Network, switch: StandInSwitch) -> None:
    with network.isolate(1):
        pass
    assert switch.requests[0] == {"op": "partition", "groups": [[1], [0, 2]]}


def test_a_degraded_link_is_sent_in_the_switchs_units_and_restored_after(
    network: net.Network, switch: StandInSwitch
) -> None:
    with network.degrade(2, delay_ms=200, jitter_ms=20, loss_percent=5, rate_kbit=1000) as record:
        status = network.status()
    assert switch.requests[0]["link"] == {"delay_us": 200000, "jitter_us": 20000, "loss_percent": 5,
                                          "rate_bytes_per_s": 125000}  # fmt: skip
    assert status.degraded == {2: net.LinkProfile(200, 20, 5, 1000)}
    assert record.description == "node 2's link degraded: delay 200ms ±20ms, loss 5%, rate 1000kbit"
    assert switch.requests[-1] == {"op": "restore", "node": 2}
    assert str(network.status()) == "partition: none\nlinks: all ordinary"


def test_a_node_the_cluster_lacks_is_refused_before_anything_is_sent(
    network: net.Network, switch: StandInSwitch
) -> None:
    with pytest.raises(LookupError, match="node 3: the cluster has nodes 0..2"):
        with network.partition([0], [3]):
            pass
    with pytest.raises(LookupError, match="node -1"):
        with network.degrade(-1, delay_ms=10):
            pass
    assert switch.requests == []


@pytest.mark.parametrize(("kwargs", "why"), [
    ({}, "needs a delay, loss or rate"),
    ({"jitter_ms": 5}, "jitter needs a delay"),
    ({"loss_percent": 120}, "more than 100%"),
    ({"delay_ms": -1}, "no negative values"),
])  # fmt: skip
def test_a_link_profile_that_means_nothing_is_refused(kwargs: dict[str, float], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        net.LinkProfile(**kwargs)


def test_the_switchs_refusal_reaches_the_caller_with_its_reason_and_nothing_is_logged(
    network: net.Network, switch: StandInSwitch
) -> None:
    switch.refuse = "a partition is on already ([0] | [1]): heal it first"
    with pytest.raises(net.NetworkFaultError, match=r"refused partition: a partition is on already .*heal it first"):
        with network.partition([0], [1]):
            pass
    assert list(network.log.records) == []


def test_a_missing_channel_says_what_to_do(tmp_path: Path) -> None:
    network = net.Network(tmp_path / "nanoswitch.qmp", nodes=2, log=FaultLog())
    with pytest.raises(net.NetworkFaultError, match="no fault channel at .*smalltown down && smalltown up"):
        network.status()


def test_a_switch_that_does_not_answer_times_out_with_the_operation_named(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "nanoswitch.control"))
    silent.listen()
    try:
        with pytest.raises(net.NetworkFaultError, match="did not answer heal within 0.2s"):
            net.request(tmp_path / "nanoswitch.control", {"op": "heal"}, timeout=0.2)
    finally:
        silent.close()


def test_the_switch_vm_gets_its_fault_channel_and_its_port_macs_on_the_command_line(tmp_path: Path) -> None:
    cmdline = sw.switch_cmdline(2)
    values = dict(token.split("=", 1) for token in cmdline.split() if token.startswith("nanoswitch."))
    assert values["nanoswitch.ports"] == "02:72:82:00:00:00,02:72:82:00:00:01"
    assert values["nanoswitch.control"] == sw.CONTROL_PORT_NAME
    config = VMConfig("nanoswitch", DirectBoot(tmp_path / "k", tmp_path / "i", cmdline), machine="microvm")
    cabled = sw.cabled(config, [7, 8], PortMap({}), qmp_socket=tmp_path / "nanoswitch.qmp")
    assert [nic.mac for nic in cabled.nics[1:]] == ["02:72:82:00:00:00", "02:72:82:00:00:01"]
    argv = qemu_argv(cabled)
    assert "virtio-serial-device,id=vserial0" in argv
    assert f"socket,id=vport0,path={tmp_path}/nanoswitch.control,server=on,wait=off" in argv
    assert "virtserialport,bus=vserial0.0,chardev=vport0,name=nanoswitch.control" in argv
    # Without QMP (a switch started by hand for a test) there is no channel either.
    assert sw.cabled(config, [7, 8], PortMap({})).virtio_ports == ()


@pytest.mark.parametrize(("text", "ms"), [("200ms", 200), ("0.5s", 500), ("300us", 0.3), ("15", 15)])
def test_durations_read_as_tc_spells_them(text: str, ms: float) -> None:
    assert net.parse_duration_ms(text) == pytest.approx(ms)


def test_rates_percentages_and_groups_read_as_the_cli_takes_them() -> None:
    assert net.parse_rate_kbit("1mbit") == 1000 and net.parse_rate_kbit("500kbit") == 500
    assert net.parse_percent("5%") == 5.0
    assert net.parse_groups(["0", "1,2"]) == [[0], [1, 2]]
    for bad, parse in (("fast", net.parse_duration_ms), ("1mb", net.parse_rate_kbit), ("lots", net.parse_percent)):
        with pytest.raises(ValueError, match="such as"):
            parse(bad)  # type: ignore[operator]
    with pytest.raises(ValueError, match="node numbers joined by commas"):
        net.parse_groups(["0", "one"])


# --- smalltown net, on a kept cluster ------------------------------------------------


def keep_cluster(switch_qmp_socket: Path | None, nodes: int = 3) -> None:
    """Record a kept cluster of this process whose switch is the stand-in (or one kept before faults: None)."""
    import os

    from pytest_smalltown.kept import state_path

    state = {"pid": os.getpid(), "nodes": nodes, "ports": {}, "kubeconfig": "/x"}
    if switch_qmp_socket is not None:
        state["switch_qmp_socket"] = str(switch_qmp_socket)
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps(state))


@pytest.fixture
def kept(switch: StandInSwitch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInSwitch:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    keep_cluster(switch.path.with_suffix(".qmp"))
    return switch


def test_net_commands_drive_the_kept_clusters_switch_and_print_what_is_on(
    kept: StandInSwitch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smalltown.cli import main

    assert main(["net", "partition", "0", "1,2"]) == 0
    assert kept.requests[-1] == {"op": "partition", "groups": [[0], [1, 2]]}
    assert "partition: [0] | [1,2]" in capsys.readouterr().out
    assert main(["net", "heal"]) == 0 and kept.requests[-1] == {"op": "heal"}
    assert main(["net", "isolate", "2"]) == 0 and kept.requests[-1]["groups"] == [[2], [0, 1]]
    assert main(["net", "degrade", "1", "--delay", "200ms", "--jitter", "20ms", "--loss", "5%", "--rate", "1mbit"]) == 0
    assert kept.requests[-1]["link"] == {"delay_us": 200000, "jitter_us": 20000, "loss_percent": 5.0,
                                         "rate_bytes_per_s": 125000}  # fmt: skip
    capsys.readouterr()
    assert main(["net", "status"]) == 0
    assert "node 1's link: delay 200ms ±20ms, loss 5%, rate 1000kbit" in capsys.readouterr().out
    assert main(["net", "restore", "1"]) == 0 and kept.requests[-1] == {"op": "restore", "node": 1}


@pytest.mark.parametrize(("command", "why"), [
    (["net", "partition", "0", "5"], "node 5: the cluster has nodes 0..2"),
    (["net", "partition", "0", "one"], "node numbers joined by commas"),
    (["net", "degrade", "1"], "needs a delay, loss or rate"),
    (["net", "degrade", "1", "--delay", "soon"], "is not a duration such as 200ms"),
    (["net", "restore", "3"], "node 3"),
])  # fmt: skip
def test_net_refuses_bad_input_before_it_asks_the_switch(
    kept: StandInSwitch, capsys: pytest.CaptureFixture[str], command: list[str], why: str
) -> None:
    from pytest_smalltown.cli import main

    assert main(command) == 2
    assert why in capsys.readouterr().err
    assert kept.requests == []


def test_net_on_a_switch_that_refuses_says_why(kept: StandInSwitch, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_smalltown.cli import main

    kept.refuse = "node 1's link is degraded already: restore it first"
    assert main(["net", "degrade", "1", "--delay", "10ms"]) == 1
    assert "the switch refused degrade: node 1's link is degraded already: restore it first" in capsys.readouterr().err


def test_net_on_a_cluster_kept_before_faults_existed_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smalltown.cli import main

    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    keep_cluster(None)
    assert main(["net", "status"]) == 1
    assert "smalltown down && smalltown up" in capsys.readouterr().err
