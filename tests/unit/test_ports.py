"""Port maps: conflict-free allocation, loopback-only rules, clear errors."""

from __future__ import annotations

import socket
from concurrent import futures

import grpc
import pytest

from pytest_smalltown.api import debug_pb2, debug_pb2_grpc
from pytest_smalltown.contract import SWITCH_FORWARDED_PORTS, NodePort
from pytest_smalltown.launch.ports import PortMap, PortNotForwardedError, conflict_free_port_map, identity_port_map


def test_conflict_free_map_gives_distinct_bindable_ports() -> None:
    port_map = conflict_free_port_map(SWITCH_FORWARDED_PORTS)
    assert set(port_map) == {7836, 7837, 6443}
    assert len(set(port_map.values())) == 3
    for host_port in port_map.values():
        with socket.socket() as sock:  # still free: QEMU will be able to bind it
            sock.bind(("127.0.0.1", host_port))


def test_identity_map() -> None:
    assert dict(identity_port_map([NodePort.DEBUG_SERVICE, 6443])) == {7837: 7837, 6443: 6443}


def test_rules_bind_loopback_only() -> None:
    rules = PortMap({7837: 41000}).hostfwd_rules()
    assert rules == ["hostfwd=tcp:127.0.0.1:41000-:7837"]


def test_unforwarded_port_error_names_port_and_alternatives() -> None:
    port_map = PortMap({7837: 41000, 6443: 41001})
    with pytest.raises(PortNotForwardedError) as caught:
        port_map[NodePort.MASTER_SERVICE]
    message = str(caught.value)
    assert "7833" in message and "[6443, 7837]" in message
    assert port_map.address(7837) == "127.0.0.1:41000"


class _Conditions(debug_pb2_grpc.NodeDebugServiceServicer):
    def GetCondition(self, request, context):  # type: ignore[no-untyped-def]
        return debug_pb2.GetConditionResponse(ok=request.name == "IPAssigned")


def test_dial_grpc_reaches_the_host_port_of_a_guest_port() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    debug_pb2_grpc.add_NodeDebugServiceServicer_to_server(_Conditions(), server)
    host_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with PortMap({7837: host_port}).dial_grpc(NodePort.DEBUG_SERVICE) as channel:
            stub = debug_pb2_grpc.NodeDebugServiceStub(channel)
            assert stub.GetCondition(debug_pb2.GetConditionRequest(name="IPAssigned"), timeout=5).ok
            assert not stub.GetCondition(debug_pb2.GetConditionRequest(name="Other"), timeout=5).ok
    finally:
        server.stop(0)
