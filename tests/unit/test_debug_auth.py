"""The debug service's token: refused without it, for every shape of call; accepted with it; old nodes unaffected.

The real servicer and server of the node agent, in process, with the real
clients of the host side.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pytest_smalltown.api import debug_pb2
from pytest_smalltown.debug import DebugClient, new_debug_token, read_debug_token, write_debug_token
from pytest_smalltown.kept import KeptClusterError, KeptState
from pytest_smalltown.node.debug_service import Conditions, DebugServicer, read_token, serve
from pytest_smalltown.node.logbuffer import LogRegistry

TOKEN = new_debug_token()


def _kubeconfig(user: str, groups: Any) -> str:
    return f"kubeconfig for {user}"


def _ticket(address: str, join: bool) -> Any:
    raise AssertionError("not called")


def _serve(token: str | None) -> tuple[grpc.Server, int]:
    logs = LogRegistry()
    logs.get_or_create("kube.kubelet").write("kubelet started")
    servicer = DebugServicer(logs, Conditions(("IPAssigned",)), _kubeconfig, _ticket)
    return serve(servicer, "127.0.0.1:0", max_workers=4, token=token)


@pytest.fixture
def guarded_port() -> Iterator[int]:
    """A node that was given the cluster's token."""
    server, port = _serve(TOKEN)
    yield port
    server.stop(0)


@pytest.fixture
def open_port() -> Iterator[int]:
    """A node that was given none (as an image that knows nothing of tokens)."""
    server, port = _serve(None)
    yield port
    server.stop(0)


def _client(port: int, token: str | None) -> DebugClient:
    return DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=1, token=token)


#: One call of each shape the service has: unary, server streaming, client streaming.
CALLS: dict[str, Callable[[DebugClient], object]] = {
    "unary": lambda c: c.stub.GetCondition(debug_pb2.GetConditionRequest(name="IPAssigned"), timeout=5),
    "server-streaming": lambda c: list(c.stub.GetLogs(debug_pb2.GetLogsRequest(
        dn="kube.kubelet", backlog_mode=debug_pb2.BACKLOG_ALL), timeout=5)),
    "client-streaming": lambda c: c.stub.LoadImage(iter([debug_pb2.ImagePart(data_part=b"x")]), timeout=5),
}


@pytest.mark.parametrize("shape", CALLS)
@pytest.mark.parametrize("sent", ["none", "wrong"])
def test_a_node_with_a_token_refuses_calls_without_it(guarded_port: int, shape: str, sent: str) -> None:
    client = _client(guarded_port, None if sent == "none" else new_debug_token())
    with pytest.raises(grpc.RpcError) as refused:
        CALLS[shape](client)
    client.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in (refused.value.details() or "")


def test_a_node_with_a_token_answers_clients_that_send_it(guarded_port: int) -> None:
    client = _client(guarded_port, TOKEN)
    assert client.condition("IPAssigned") is False
    assert client.component_logs("kube.kubelet") == ["kubelet started"]
    assert client.debug_kubeconfig() == "kubeconfig for debug-user"
    with pytest.raises(grpc.RpcError) as no_runtime:  # past the check: this node has no image loader
        CALLS["client-streaming"](client)
    assert no_runtime.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.close()


@pytest.mark.parametrize("sent", [None, TOKEN], ids=["no-token", "a-token"])
def test_a_node_without_a_token_serves_any_client(open_port: int, sent: str | None) -> None:
    """Images that know nothing of tokens (the original era's) still work with our clients, which send one."""
    client = _client(open_port, sent)
    assert client.component_logs("kube.kubelet") == ["kubelet started"]
    client.close()


def test_the_token_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = write_debug_token(TOKEN, tmp_path / "debug-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_debug_token(path) == TOKEN
    assert read_token(path) == TOKEN  # as the node reads it from fw_cfg
    assert len(TOKEN) == 64 and TOKEN != new_debug_token()


def test_the_node_reads_no_token_when_fw_cfg_has_none(tmp_path: Path) -> None:
    assert read_token(tmp_path / "absent") is None
    (tmp_path / "empty").write_text("")
    assert read_token(tmp_path / "empty") is None


def _kept(**fields: object) -> KeptState:
    return KeptState.from_json({"pid": 1, "nodes": 1, "kubeconfig": "/x", **fields}, Path("cluster.json"))


def test_a_kept_token_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeptClusterError, match="unreadable"):
        _kept(debug_token=str(tmp_path / "gone")).debug_token()


def test_a_kept_cluster_of_an_older_smalltown_has_no_token() -> None:
    assert _kept().debug_token() is None
