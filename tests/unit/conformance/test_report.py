"""Reading e2e.test's JUnit, and the report: honest counts and one screen of text."""

from __future__ import annotations

from pathlib import Path

from pytest_smalltown.conformance.junit import parse_junit
from pytest_smalltown.conformance.report import ConformanceReport
from pytest_smalltown.conformance.results import SpecResult

JUNIT = """\
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="1" errors="0" failures="2" time="312.5">
  <testsuite name="Kubernetes e2e suite" package="/tmp" tests="5" disabled="0" skipped="1" errors="0" failures="2" time="312.5" timestamp="2026-11-22T01:00:00">
    <properties>
      <property name="SuiteSucceeded" value="false"></property>
    </properties>
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.5"></testcase>
    <testcase name="[It] [sig-node] Pods should get a host IP [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.25"></testcase>
    <testcase name="[It] [sig-apps] Deployment should run the lifecycle of a Deployment [Conformance]" classname="Kubernetes e2e suite" status="passed" time="250.0"></testcase>
    <testcase name="[It] [sig-network] DNS should provide DNS for services  [Conformance]" classname="Kubernetes e2e suite" status="failed" time="40.0">
      <failure type="failed">[FAILED] Unable to read agnhost_udp@dns-test-service from pod dns-6172/dns-test
In [It] at: k8s.io/kubernetes/test/e2e/network/dns_common.go:468 @ 11/22/26 01:04:01.123

second line
third line
fourth line</failure>
      <system-err>STEP: Creating a test headless service</system-err>
    </testcase>
    <testcase name="[It] [sig-storage] Projected secret should be consumable [Conformance]" classname="Kubernetes e2e suite" status="timedout" time="8.5">
      <failure type="timedout">[TIMEDOUT] A suite timeout occurred</failure>
    </testcase>
    <testcase name="[It] [sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0.5">
      <skipped message="skipped - Only supported for providers [gce] (not skeleton)"></skipped>
    </testcase>
    <testcase name="[It] [sig-storage] CSI Volumes [Driver: csi-hostpath] should mount [Feature:X]" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0.001"></testcase>
  </testsuite>
</testsuites>
"""



def test_junit_is_parsed_into_specs_and_suite_nodes(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    results = parse_junit(tmp_path / "junit.xml")
    assert [r.status for r in results] == [
        "passed", "passed", "passed", "failed", "timedout", "skipped", "skipped", "passed"]  # fmt: skip
    assert not results[0].is_spec and results[1].is_spec
    assert results[1].title == "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]"
    assert results[3].detail.startswith("[FAILED] Unable to read agnhost_udp")
    assert results[2].seconds == 250.0 and results[2].source == "junit.xml"
    # Skipped at run time (a reason) versus filtered out by the focus (none).
    assert results[5].detail == "Only supported for providers [gce] (not skeleton)" and results[5].selected
    assert not results[6].selected and results[6].verdict is None
    assert [r.verdict for r in results[1:6]] == ["passed", "passed", "failed", "failed", "skipped"]


def test_report_counts_and_renders_one_screen(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    report = ConformanceReport(tuple(parse_junit(tmp_path / "junit.xml")), 1, tmp_path, 4000.0)
    assert (report.passed, report.failed, report.skipped, report.not_run, report.ok) == (2, 2, 1, 0, False)
    text = report.render()
    lines = text.splitlines()
    assert lines[0] == "conformance FAILED: 2 passed, 2 failed, 1 skipped, 0 not run of 5 specs in 1h06m (exit status 1)"
    assert len(lines) <= 25 and all(len(line) <= 100 for line in lines if not line.startswith("report: "))
    slowest = lines[lines.index("slowest:") + 1 :]
    assert slowest[0].strip().startswith("250.0s  [sig-apps] Deployment")
    assert "[sig-network] DNS should provide DNS for services  [Conformance]" in text
    assert "      [FAILED] Unable to read agnhost_udp@dns-test-service from pod dns-6172/dns-test" in lines
    assert "fourth line" not in text  # only the first lines of each failure
    assert "[TIMEDOUT] A suite timeout occurred" in text


def test_report_is_ok_only_when_something_passed_and_nothing_failed(tmp_path: Path) -> None:
    passed = SpecResult("[It] a [Conformance]", "passed", 1.0)
    assert ConformanceReport((passed,), 0, tmp_path, 1.0).ok
    assert not ConformanceReport((passed,), 1, tmp_path, 1.0).ok
    assert not ConformanceReport((), 0, tmp_path, 1.0).ok
    setup = SpecResult("[SynchronizedBeforeSuite]", "failed", 1.0, "[FAILED] no nodes")
    filtered = SpecResult("[It] b", "skipped", 0.0)  # the focus left it out: not counted
    report = ConformanceReport((setup, filtered), 1, tmp_path, 1.0)
    assert (report.passed, report.failed, report.skipped, report.ok) == (0, 1, 0, False)
    assert "[SynchronizedBeforeSuite]" in report.render()
    assert "no spec matched" not in report.render()


def test_a_partial_run_counts_the_selected_specs_without_a_result_as_not_run(tmp_path: Path) -> None:
    """Honest counts: planned specs that never finished (or were interrupted) are not run, and fail the run."""
    results = (
        SpecResult("[It] a", "passed", 1.0),
        SpecResult("[It] b", "skipped", 0.1, "Only supported for providers [gce]"),
        SpecResult("[It] c", "interrupted", 5.0, "[INTERRUPTED] Interrupted by User"),
    )
    report = ConformanceReport(results, 0, tmp_path, 60.0, planned=("a", "b", "c", "d"))
    assert (report.passed, report.failed, report.skipped, report.not_run, report.total) == (1, 0, 1, 2, 4)
    assert not report.ok, "a pass needs every selected spec to have a result"
    text = report.render()
    assert text.startswith("conformance FAILED: 1 passed, 0 failed, 1 skipped, 2 not run of 4 specs")
    assert f"smalltown conformance --resume {tmp_path}" in text
    assert "Interrupted by User" not in text, "an interrupted spec is not a failure of the cluster"
    assert ConformanceReport(results[:2], 0, tmp_path, 1.0, planned=("a", "b")).ok



def test_the_summary_says_how_many_results_only_results_jsonl_holds() -> None:
    """Issue 22 counts from e2e.test's JUnit: results read only from the verbose output are told apart."""
    results = (
        SpecResult("[It] a", "passed", 1.0, source="junit_01.xml"),
        SpecResult("[It] b", "passed", 1.0, source="junit_01.xml", kept_in="junit_merged.xml"),
        SpecResult("[It] c", "passed", 1.0, source="results.jsonl"),
        SpecResult("[It] d", "failed", 1.0, "[FAILED] no", source="results.jsonl"),
        SpecResult("[It] e", "skipped", 1.0, "not here", source="results.jsonl"),
    )
    report = ConformanceReport(results, 1, Path("/r"), 5.0, planned=("a", "b", "c", "d", "e"))
    assert [r.from_junit for r in results] == [True, True, False, False, False]
    line = "counted from e2e.test's JUnit: 2 passed, 0 failed; from results.jsonl only: 1 passed, 1 failed"
    assert report.sources_text() == line
    assert report.render().splitlines()[2] == line
    assert line not in ConformanceReport((), 0, Path("/r"), 0.0, planned=("a",)).render(), "nothing to tell apart"


def test_results_land_in_the_file_at_the_path_even_after_it_was_replaced(tmp_path: Path) -> None:
    """A git stash or checkout replaces results.jsonl while a run goes on; the next results must land in the new one."""
    from pytest_smalltown.conformance.files import RESULTS_NAME
    from pytest_smalltown.conformance.results import ResultsFile, SpecResult, read_results

    def spec(name: str) -> SpecResult:
        return SpecResult(f"[It] {name}", "passed", 1.0)

    with ResultsFile(tmp_path, chunk=5) as results:
        results.append(spec("first"))
        replaced = tmp_path / "replacement"
        replaced.write_text((tmp_path / RESULTS_NAME).read_text())
        replaced.replace(tmp_path / RESULTS_NAME)  # what git does: a new file under the old name
        results.append(spec("second"))
    assert [result.name for _, result in read_results(tmp_path)] == ["[It] first", "[It] second"]
