"""Debug and Kubernetes client helpers against in-process doubles."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

from pytest_smalltown.api import debug_pb2, debug_pb2_grpc
from pytest_smalltown.base.waits import WaitTimeoutError, wait_for
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.debug import DebugClient, LogTimeoutError
from pytest_smalltown.kube import PodEndedError, write_kubeconfig
from pytest_smalltown.spec import ClusterSpec


class FlakyNode(debug_pb2_grpc.NodeDebugServiceServicer):
    """Unavailable for the first calls, like a node still making its PKI; then answers."""

    def __init__(self, unavailable_calls: int) -> None:
        self.calls = 0
        self.unavailable_calls = unavailable_calls
        self.lines: list[str] = ["old line 1", "old line 2"]
        self.new_line = threading.Event()

    def GetDebugKubeconfig(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.unavailable_calls:
            context.abort(grpc.StatusCode.UNAVAILABLE, "CA not ready yet")
        return debug_pb2.GetDebugKubeconfigResponse(debug_kubeconfig=f"user={request.id} groups={list(request.groups)}")

    def GetCondition(self, request, context):  # type: ignore[no-untyped-def]
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown condition {request.name}")

    def GetLogs(self, request, context) -> Iterator[debug_pb2.GetLogsResponse]:  # type: ignore[no-untyped-def]
        yield debug_pb2.GetLogsResponse(backlog_entries=[debug_pb2.LogEntry(dn=request.dn, line=line) for line in self.lines])
        if request.stream_mode == debug_pb2.STREAM_UNBUFFERED:
            while context.is_active():
                if self.new_line.wait(0.05):
                    self.new_line.clear()
                    yield debug_pb2.GetLogsResponse(stream_entries=[debug_pb2.LogEntry(dn=request.dn, line="pod ns/followed started")])


@pytest.fixture
def node() -> Iterator[tuple[FlakyNode, DebugClient]]:
    servicer = FlakyNode(unavailable_calls=3)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    debug_pb2_grpc.add_NodeDebugServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=10)
    yield servicer, client
    client.close()
    server.stop(0)


def test_unavailable_is_retried_until_the_node_answers(node: tuple[FlakyNode, DebugClient]) -> None:
    servicer, client = node
    assert client.debug_kubeconfig() == "user=debug-user groups=['system:masters']"
    assert servicer.calls == 4


def test_retries_give_up_with_the_last_error(node: tuple[FlakyNode, DebugClient]) -> None:
    servicer, client = node
    servicer.unavailable_calls = 10**6
    with pytest.raises(grpc.RpcError) as caught:
        client.debug_kubeconfig(retry_for=0.5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_client_retries_what_the_node_service_means_by_not_yet_and_nothing_it_means_by_never() -> None:
    """The real NodeDebugService's codes: UNAVAILABLE is "not yet"; FAILED_PRECONDITION is "never on this node"."""
    from pytest_smalltown.node.debug_service import Conditions, DebugServicer, FailedPrecondition, Unavailable, serve
    from pytest_smalltown.node.logbuffer import LogRegistry

    asked: list[str] = []

    def kubeconfig(user: str, groups: object) -> str:
        asked.append(user)
        if len(asked) < 3:
            raise Unavailable("cluster CA not created yet")
        return "kubeconfig"

    def ticket(ip: str, join: bool) -> object:
        asked.append(ip)
        raise FailedPrecondition("only the node that bootstrapped the cluster issues tickets")

    server, port = serve(DebugServicer(LogRegistry(), Conditions(()), kubeconfig, ticket), "127.0.0.1:0", max_workers=2)
    client = DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=20)
    try:
        assert client.debug_kubeconfig() == "kubeconfig" and len(asked) == 3
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            client.golden_ticket("10.1.0.3")
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert asked[3:] == ["10.1.0.3"], "asked once: a worker will never issue tickets"
        assert time.monotonic() - started < 5
    finally:
        client.close()
        server.stop(0)


def test_not_found_is_not_retried(node: tuple[FlakyNode, DebugClient]) -> None:
    _, client = node
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        client.condition("NoSuchCondition")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - started < 5  # no backoff loop (generous: this is not a performance check)


def test_wait_for_log_sees_backlog_and_new_lines(node: tuple[FlakyNode, DebugClient]) -> None:
    servicer, client = node
    assert client.wait_for_log("kube.kubelet", "old line 2", timeout=5).text == "old line 2"
    threading.Timer(0.3, servicer.new_line.set).start()
    assert "followed" in client.wait_for_log("kube.kubelet", "ns/followed", timeout=10).text


def test_wait_for_log_times_out_with_a_clear_error(node: tuple[FlakyNode, DebugClient]) -> None:
    _, client = node
    with pytest.raises(LogTimeoutError, match=r"no line of kube.kubelet matched /never/ within 1s"):
        client.wait_for_log("kube.kubelet", "never", timeout=1)


def test_kubeconfig_points_at_the_forwarded_port_and_is_private(tmp_path: Path) -> None:
    original = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "smalltown", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority-data": "x"}}],
        "users": [{"name": "debug-user", "user": {"client-certificate-data": "c", "client-key-data": "k"}}],
        "contexts": [{"name": "default", "context": {"cluster": "smalltown", "user": "debug-user"}}],
        "current-context": "default",
    }
    path = tmp_path / "kubeconfig"
    path.write_text("stale")
    path.chmod(0o644)
    write_kubeconfig(yaml.safe_dump(original), 41234, path)
    written = yaml.safe_load(path.read_text())
    assert written["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:41234"
    assert written["users"] == original["users"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wait_for_names_what_it_waited_for_and_the_last_state() -> None:
    with pytest.raises(WaitTimeoutError, match=r"waiting for pod ns/x to be Running; last state: phase=Pending"):
        wait_for("pod ns/x to be Running", lambda: None, timeout=0.2, interval=0.05, describe=lambda: "phase=Pending")


def test_wait_for_stops_at_once_on_a_terminal_pod() -> None:
    def check() -> None:
        raise PodEndedError("pod ns/x ended Failed")

    started = time.monotonic()
    with pytest.raises(PodEndedError):
        wait_for("pod ns/x to be Succeeded", check, timeout=30, interval=0.05)
    assert time.monotonic() - started < 10


def test_wait_for_lets_an_interrupt_through_at_once() -> None:
    """Ctrl-C (or the plugin's SIGTERM) inside a check ends the wait; it is not a "not yet"."""
    calls = []

    def check() -> None:
        calls.append(1)
        raise KeyboardInterrupt("received signal 15")

    with pytest.raises(KeyboardInterrupt):
        wait_for("node n to be Ready after a new boot", check, timeout=30, interval=0.05)
    assert len(calls) == 1


def test_a_death_of_the_cluster_ends_every_wait_at_once(node: tuple[FlakyNode, DebugClient]) -> None:
    """The watch's ClusterDiedDuringTest means "stop everything", never "not yet": no retry loop may swallow it."""
    from pytest_smalltown.watch import ClusterDiedDuringTest

    _, client = node
    calls = []

    def died() -> None:
        calls.append(1)
        raise ClusterDiedDuringTest("the cluster died while this test ran: VM 'node0' exited with status 137")

    started = time.monotonic()
    with pytest.raises(ClusterDiedDuringTest):
        wait_for("a pod to be Running", died, timeout=5, interval=0.05)
    with pytest.raises(ClusterDiedDuringTest):
        client.call(died)
    assert len(calls) == 2 and time.monotonic() - started < 2
    assert not isinstance(ClusterDiedDuringTest("x"), Exception), "a test's own `except Exception` lets it through too"


def test_cluster_launch_error_names_phase_and_shows_consoles() -> None:
    error = ClusterLaunchError(
        ClusterSpec(2), "nodes-ready", TimeoutError("1 of 2 nodes Ready"),
        {"nanoswitch": ["nanoswitch: forwarding"], "node1": ["smalltown: [ 20.1] kubelet started", "oops"]},
    )  # fmt: skip
    text = str(error)
    assert "2-node cluster: phase 'nodes-ready' did not finish: 1 of 2 nodes Ready" in text
    assert "console of node1 (last 2 lines)" in text and "    oops" in text
