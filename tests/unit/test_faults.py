"""Faults switch themselves off, whatever the test does, and a failed test's report names the ones it had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.evidence import report_sections
from pytest_smalltown.faults import FaultLog, FaultRecord, frozen


class RecordingMonitor:
    """A QMP monitor stand-in that remembers the commands sent to it."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def cmd(self, command: str, **arguments: Any) -> dict[str, Any]:
        self.commands.append(command)
        return {}


def test_a_frozen_node_runs_again_after_the_block_and_the_log_has_the_stall() -> None:
    monitor, log = RecordingMonitor(), FaultLog()
    with frozen(monitor, log, "node1") as record:  # type: ignore[arg-type]
        assert monitor.commands == ["stop"]
        assert record.ended is None and "frozen (vCPUs stopped): on since" in str(record)
    assert monitor.commands == ["stop", "cont"]
    assert record.ended is not None and record.ended >= record.started
    assert [r.description for r in log.records] == ["node1 frozen (vCPUs stopped)"]


def test_a_test_that_fails_while_a_node_is_frozen_thaws_it() -> None:
    monitor, log = RecordingMonitor(), FaultLog()
    with pytest.raises(AssertionError, match="the test's own failure"), frozen(monitor, log, "node1"):  # type: ignore[arg-type]
        raise AssertionError("the test's own failure")
    assert monitor.commands == ["stop", "cont"], "a failed test must not leave the node frozen for the next one"
    assert log.records[0].ended is not None


def test_a_fault_counts_for_the_windows_it_overlaps_only() -> None:
    record = FaultRecord("node1 frozen", started=100.0, ended=160.0)
    assert record.overlaps(150, 200) and record.overlaps(50, 110) and record.overlaps(120, 130)
    assert not record.overlaps(161, 200) and not record.overlaps(10, 99)
    still_on = FaultRecord("node0 frozen", started=100.0)
    assert still_on.overlaps(1000, 2000) and not still_on.overlaps(10, 99)
    assert str(record).endswith("for 60.0s") and "on since" in str(still_on)


class FaultyCluster:
    """Just enough of a cluster for report_sections: no consoles, no nodes to read, a fault log."""

    def __init__(self, log: FaultLog) -> None:
        self.faults = log
        self.spec = None

    def consoles(self, lines: int = 0) -> dict[str, list[str]]:
        return {}


def test_the_report_of_a_failed_phase_lists_the_faults_that_were_on_during_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_smalltown.evidence as evidence

    monkeypatch.setattr(evidence, "_node_debug_clients", lambda cluster: [])
    log = FaultLog()
    log.records.extend([FaultRecord("node1 frozen (vCPUs stopped)", 100.0, 130.0),
                        FaultRecord("node0 frozen (vCPUs stopped)", 10.0, 20.0)])  # fmt: skip
    sections = dict(report_sections(FaultyCluster(log), None, window=(120.0, 200.0)))  # type: ignore[arg-type]
    assert sections["smalltown faults"].splitlines() == [str(log.records[0])]
    assert "smalltown faults" not in dict(report_sections(FaultyCluster(log), None, window=(300.0, 400.0)))  # type: ignore[arg-type]


def test_a_failed_tests_artifacts_get_the_packet_captures_of_the_network_faults_on_during_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pytest_smalltown.evidence as evidence

    monkeypatch.setattr(evidence, "_node_debug_clients", lambda cluster: [])
    captures = tmp_path / "cluster" / "captures"
    for fault in ("fault-001", "fault-002"):
        (captures / fault).mkdir(parents=True)
        (captures / fault / "node1.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + fault.encode())
    log = FaultLog()
    log.records.extend([
        FaultRecord("network partitioned [0] | [1]", 100.0, 130.0, captures=(captures / "fault-001" / "node1.pcap",)),
        FaultRecord("node 1's link degraded: delay 200ms", 300.0, 330.0, captures=(captures / "fault-002" / "node1.pcap",)),
    ])  # fmt: skip
    cluster = FaultyCluster(log)
    cluster.dump = lambda directory: None  # type: ignore[attr-defined]
    written = evidence.write_artifacts(cluster, tmp_path / "artifacts", "e2e/test_x.py::test_y", None,  # type: ignore[arg-type]
                                       window=(120.0, 200.0))  # fmt: skip
    copied = sorted(path.relative_to(written / "captures") for path in (written / "captures").rglob("*.pcap"))
    assert copied == [Path("fault-001/node1.pcap")], "only the faults on while the failed phase ran"
    assert (written / "captures" / "fault-001" / "node1.pcap").read_bytes().endswith(b"fault-001")
