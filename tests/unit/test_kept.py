"""The kept cluster: its state file, its keepers, and the cluster as a session attached to it sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_smalltown.attached import AttachedCluster
from pytest_smalltown.kept import KeptState, Owner, process_identity
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.vmstate import Monitor
from pytest_smalltown.spec import ClusterSpec

QEMU = "qemu-system-x86_64"


@pytest.fixture
def kept_vms(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    """Two QEMU processes with QMP sockets, as a kept cluster's owner runs its node VMs (no guest in them)."""
    vms = []
    for index in range(2):
        socket = tmp_path / f"node{index}.qmp"
        argv = [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", f"unix:{socket},server=on,wait=off"]
        vms.append((subprocess.Popen(argv), socket))
    deadline = time.monotonic() + 30
    while not all(socket.exists() for _, socket in vms) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield vms
    for process, _ in vms:
        process.kill()
        process.wait()


@pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"needs {QEMU}")
def test_stopping_a_node_of_an_attached_kept_cluster_stops_that_node_only(
    kept_vms: list[tuple[subprocess.Popen[bytes], Path]], tmp_path: Path
) -> None:
    """The owner takes a node VM whose QEMU exited for a crash and closes the whole cluster; so QEMU must run on."""
    state = KeptState(Owner(os.getpid(), process_identity(os.getpid())), ClusterSpec(2), PortMap({}),
                      tmp_path / "kubeconfig", qmp_sockets=[socket for _, socket in kept_vms])  # fmt: skip
    kept = AttachedCluster(state, debug=None, kube=None)
    kept.stop_node(1)
    time.sleep(0.5)  # a QEMU told to quit is gone by now
    assert [process.poll() for process, _ in kept_vms] == [None, None], "every VM still runs, as the owner checks"
    states = []
    for index, (_, socket) in enumerate(kept_vms):
        monitor = Monitor.at(socket, f"node{index}")
        states.append(monitor.cmd("query-status")["running"])
        monitor.close()
    assert states == [True, False], "node 1 runs no more, node 0 runs on"


# --- the state file ---------------------------------------------------------------


def test_a_state_round_trips_through_its_file_in_the_format_older_smalltowns_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pytest_smalltown.kept import state_path

    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    pid = os.getpid()
    state = KeptState(Owner(pid, process_identity(pid)), ClusterSpec(2, ("conformance",)), PortMap({7837: 4001, 6443: 4002}),
                      tmp_path / "kubeconfig", debug_token_path=tmp_path / "debug-token",
                      consoles={"node0": tmp_path / "node0.console.log"}, addresses=["10.1.0.2", "10.1.0.3"],
                      qmp_sockets=[tmp_path / "node0.qmp", tmp_path / "node1.qmp"],
                      switch_qmp_socket=tmp_path / "switch.qmp", phases={"switch": 1.5}, how="restored")  # fmt: skip
    state.write()
    on_disk = json.loads(state_path().read_text())
    assert set(on_disk) == {"pid", "owner", "nodes", "preload", "ports", "kubeconfig", "debug_token", "consoles",
                            "addresses", "qmp_sockets", "switch_qmp_socket", "phases", "how"}  # fmt: skip
    assert on_disk["ports"] == {"7837": 4001, "6443": 4002} and on_disk["preload"] == ["conformance"]
    assert KeptState.read() == state
    KeptState.forget(pid + 1)
    assert state_path().exists(), "another process's record stays"
    KeptState.forget(pid)
    assert not state_path().exists()


def test_a_state_file_of_an_older_smalltown_still_reads(tmp_path: Path) -> None:
    """Before owners, tokens, QMP sockets and per-node ports were recorded: those read as absent."""
    state = KeptState.from_json({"pid": 12, "nodes": 1, "ports": {"7837": 5, "6443": 6}, "kubeconfig": "/x"},
                                tmp_path / "cluster.json")  # fmt: skip
    assert state.owner == Owner(12, None) and state.spec == ClusterSpec(1) and state.debug_token_path is None
    assert state.node_debug_port(0) == 5, "node 0's debug service through the 7837 forward"
    assert (state.qmp_sockets, state.switch_qmp_socket, state.how) == ([], None, "booted")


class _Cluster:
    def __init__(self, dies_after: int) -> None:
        self.checks = 0
        self.dies_after = dies_after

    def check_alive(self) -> None:
        self.checks += 1
        if self.checks > self.dies_after:
            raise RuntimeError("VM 'node0' exited with status 137\n  last console lines: ...")

    def close(self) -> None:
        pass


def test_waiting_while_kept_ends_when_a_cluster_dies_and_says_so() -> None:
    from pytest_smalltown.kept import wait_while_kept

    said: list[str] = []
    wait_while_kept([_Cluster(dies_after=1)], said.append)
    assert said == ["a kept cluster died: VM 'node0' exited with status 137"]


class _HungCluster:
    """Its node0 hangs from the second check on; on the fifth, its switch exits."""

    def __init__(self) -> None:
        self.checks = 0

    def check_alive(self) -> None:
        from pytest_smalltown.launch.vm import GuestHungError

        self.checks += 1
        if self.checks >= 5:
            raise RuntimeError("VM 'nanoswitch' exited with status 1")
        if self.checks >= 2:
            raise GuestHungError("node0", 131, ["watchdog: BUG: soft lockup - CPU#0 stuck for 131s!"])

    def close(self) -> None:
        pass


def test_a_hung_guest_in_a_kept_cluster_is_said_once_and_the_cluster_kept() -> None:
    """A kept cluster is for looking at: a hang is reported, not a reason to tear down the evidence."""
    from pytest_smalltown.kept import wait_while_kept

    cluster = _HungCluster()
    said: list[str] = []
    wait_while_kept([cluster], said.append)
    assert cluster.checks == 5, "the wait went on after the hang, until the switch exited"
    assert len(said) == 2 and said[0].startswith("node0's kernel reports a CPU stuck for 131s"), said
    assert said[1] == "a kept cluster died: VM 'nanoswitch' exited with status 1"


def test_waiting_while_kept_ends_when_asked_to_stop() -> None:
    import threading

    from pytest_smalltown.kept import wait_while_kept

    stop = threading.Event()
    stop.set()
    cluster = _Cluster(dies_after=10)
    said: list[str] = []
    wait_while_kept([cluster], said.append, stop)
    assert said == [] and cluster.checks == 1, "checked once, then stopped"


def test_serving_records_the_cluster_until_stopped_then_forgets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``smalltown up``'s server: the state names this process while it serves, and is gone once it stops."""
    import threading
    from types import SimpleNamespace

    from pytest_smalltown.kept import serve, state_path

    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    node = SimpleNamespace(name="node0", console_log=tmp_path / "node0.console.log", address="10.1.0.2",
                           qmp_socket=tmp_path / "node0.qmp")  # fmt: skip
    cluster = SimpleNamespace(spec=ClusterSpec(1), ports=PortMap({7837: 4001}), kubeconfig_path=tmp_path / "kubeconfig",
                              debug_token_path=tmp_path / "debug-token", nodes=[node], switch_qmp_socket=None,
                              phase_seconds={"nodes": 2.0}, how="booted", check_alive=lambda: None)  # fmt: skip
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(cluster, stop, print))
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not state_path().exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        state = KeptState.read()
        assert state.owner.pid == os.getpid() and state.consoles == {"node0": tmp_path / "node0.console.log"}
        assert state.qmp_sockets == [tmp_path / "node0.qmp"] and state.phases == {"nodes": 2.0}
    finally:
        stop.set()
        server.join(timeout=10)
    assert not server.is_alive() and not state_path().exists()
