"""The committed generated modules must match protos/ (run the generator if this fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_smalltown.api import debug_pb2, enrolment_pb2

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "pytest_smalltown" / "api"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate = pytest.importorskip("pytest_smalltown.api.generate", reason="needs the dev extra (grpcio-tools)")
    pytest.importorskip("grpc_tools", reason="needs the dev extra (grpcio-tools)")
    fresh = generate.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    stale = [p.name for p in fresh if (PACKAGE_DIR / p.name).read_bytes() != p.read_bytes()]
    missing = [p.name for p in fresh if not (PACKAGE_DIR / p.name).exists()]
    assert not missing and not stale, (
        f"generated modules out of date (stale: {stale}, missing: {missing}); "
        "run: python -m pytest_smalltown.api.generate"
    )


def test_field_numbers_match_the_original_node_api() -> None:
    """Interoperability with real Smalltown builds depends on these numbers."""

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert debug_pb2.DESCRIPTOR.package == "smalltown.core.proto.api"
    assert numbers(debug_pb2.GetDebugKubeconfigRequest) == {"id": 1, "groups": 2}
    assert numbers(debug_pb2.GetComponentLogsRequest) == {"component_path": 1, "tail_lines": 2}
    assert numbers(debug_pb2.GetConditionResponse) == {"ok": 1}
    # join_consensus is a reference-node extension (100 and up, as in the ticket).
    assert numbers(debug_pb2.GetGoldenTicketRequest) == {"external_ip": 1, "join_consensus": 100}
    assert numbers(debug_pb2.GetLogsRequest) == {
        "dn": 1, "filters": 2, "backlog_mode": 3, "backlog_count": 4, "stream_mode": 5,
    }  # fmt: skip
    assert numbers(debug_pb2.GetLogsResponse) == {"backlog_entries": 1, "stream_entries": 2}
    assert debug_pb2.BacklogMode.Value("BACKLOG_COUNT") == 3 and debug_pb2.StreamMode.Value("STREAM_UNBUFFERED") == 2
    ticket = numbers(enrolment_pb2.GoldenTicket)
    assert {k: ticket[k] for k in ("etcd_ca_cert", "peers", "this", "node_id", "node_key")} == {
        "etcd_ca_cert": 1, "peers": 5, "this": 6, "node_id": 7, "node_key": 9,
    }  # fmt: skip
    assert numbers(enrolment_pb2.EnrolmentConfig) == {"golden_ticket": 1, "node_id": 2}
    service = debug_pb2.DESCRIPTOR.services_by_name["NodeDebugService"]
    assert service.methods_by_name["GetLogs"].server_streaming
