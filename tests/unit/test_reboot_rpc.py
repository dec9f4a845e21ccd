"""The Reboot RPC in-process: DebugClient.reboot -> the real DebugServicer -> the node's reboot hook.

What happens after the hook (components stopped, disks flushed, the machine
restarted) needs a machine: e2e/test_reboots.py reboots real node VMs.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from pytest_smalltown.debug import DebugClient
from pytest_smalltown.node.debug_service import Conditions, DebugServicer, serve
from pytest_smalltown.node.logbuffer import LogRegistry


def _unused(*args: object) -> Any:
    raise AssertionError("Reboot needs no kubeconfig or ticket")


def _client(reboot: Any) -> tuple[grpc.Server, DebugClient]:
    server, port = serve(DebugServicer(LogRegistry(), Conditions(()), _unused, _unused, reboot=reboot),
                         "127.0.0.1:0", max_workers=2)  # fmt: skip
    return server, DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=2)


def test_reboot_runs_the_nodes_hook_and_answers() -> None:
    calls: list[str] = []
    server, client = _client(lambda: calls.append("reboot"))
    try:
        client.reboot()
    finally:
        client.close()
        server.stop(0)
    assert calls == ["reboot"]


def test_a_node_that_cannot_reboot_itself_says_so() -> None:
    server, client = _client(None)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            client.reboot()
    finally:
        client.close()
        server.stop(0)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "not the machine's init" in raised.value.details()  # type: ignore[attr-defined]
