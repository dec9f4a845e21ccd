"""The conformance runner: command line, progress from Ginkgo's output, JUnit summary, process handling.

The Ginkgo output lines below were recorded from real runs of our
``e2e.test`` (v1.34.4, Ginkgo v2.21.0); the fake ``e2e.test`` replays them.
"""

from __future__ import annotations

import re

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_smalltown import conformance
from pytest_smalltown.cli import main
from pytest_smalltown.conformance import (
    ConformanceError,
    ConformanceReport,
    GinkgoProgress,
    RunOptions,
    SpecResult,
    SuiteBinaries,
    build_command,
    go_regexp_quote,
    parse_junit,
    run_conformance,
    run_suite,
    smoke_focus,
)

# --- recorded output (verbatim from e2e.test v1.34.4 with our flags) ---------------

#: e2e.test --ginkgo.dry-run, focus on two conformance specs: one bare bullet per spec.
RECORDED_DRY_RUN = """\
  I1122 01:17:20.791034   14239 e2e.go:109] Starting e2e run "d4c17e3b-a960-49bc-84fd-83f500a99fc2" on Ginkgo node 1
Running Suite: Kubernetes e2e suite - /tmp/rec
==============================================
Random Seed: 1795310239 - will randomize all specs

Will run 2 of 7144 specs
•
•

Ran 2 of 7144 Specs in 0.490 seconds
SUCCESS! -- 2 Passed | 0 Failed | 0 Pending | 7142 Skipped
PASS
"""

#: Two specs failing in BeforeEach (namespace creation refused by a stub API server);
#: the repeated 'Unexpected error while creating namespace' timeline lines are thinned out.
RECORDED_FAILING_RUN = """\
  I1122 01:15:23.610778   11200 e2e.go:109] Starting e2e run "e4e5a4c0-2798-47b4-85c6-3ed91cee9297" on Ginkgo node 1
Running Suite: Kubernetes e2e suite - /tmp/rec
==============================================
Random Seed: 1795310122 - will randomize all specs

Will run 2 of 7144 specs
------------------------------
• [FAILED] [30.002 seconds]
[sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  [BeforeEach] set up framework | framework.go:200
  [It] k8s.io/kubernetes@v1.34.4/test/e2e/common/node/pods.go:205

  Timeline >>
  STEP: Creating a kubernetes client @ 11/22/26 01:15:24.229
  I1122 01:15:24.229400 11200 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-fake
  STEP: Building a namespace api object, basename pods @ 11/22/26 01:15:24.23
  I1122 01:15:24.232112 11200 util.go:354] Unexpected error while creating namespace: fake API server: not implemented
  I1122 01:15:54.230280 11200 framework.go:263] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [BeforeEach] - k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23
  STEP: dump namespace information after failure @ 11/22/26 01:15:54.23
  << Timeline

  [FAILED] context deadline exceeded
  In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23
------------------------------
• [FAILED] [30.002 seconds]
[sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  [BeforeEach] set up framework | framework.go:200
  [It] k8s.io/kubernetes@v1.34.4/test/e2e/apimachinery/discovery.go:126

  Timeline >>
  STEP: Creating a kubernetes client @ 11/22/26 01:15:54.424
  I1122 01:15:54.424741 11200 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-fake
  STEP: Building a namespace api object, basename discovery @ 11/22/26 01:15:54.425
  I1122 01:15:54.430726 11200 util.go:354] Unexpected error while creating namespace: fake API server: not implemented
  I1122 01:16:24.425949 11200 util.go:354] Unexpected error while creating namespace: client rate limiter Wait returned an error: rate: Wait(n=1) would exceed context deadline
  I1122 01:16:24.426088 11200 framework.go:263] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [BeforeEach] - k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:16:24.426
  STEP: dump namespace information after failure @ 11/22/26 01:16:24.426
  << Timeline

  [FAILED] context deadline exceeded
  In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:16:24.426
------------------------------

Summarizing 2 Failures:
  [FAIL] [sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263
  [FAIL] [sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263

Ran 2 of 7144 Specs in 60.533 seconds
FAIL! -- 0 Passed | 2 Failed | 0 Pending | 7142 Skipped
--- FAIL: TestE2E (61.47s)
FAIL
"""

#: No API server at all: the suite's setup fails, no spec runs.
RECORDED_NO_CLUSTER = """\
  I1122 01:14:55.942079   10935 e2e.go:109] Starting e2e run "5eb992de-7e22-4a39-b468-8189a9cc279e" on Ginkgo node 1
Running Suite: Kubernetes e2e suite - /tmp/rec
==============================================
Random Seed: 1795310095 - will randomize all specs

Will run 1 of 7144 specs
------------------------------
[SynchronizedBeforeSuite] [FAILED] [15.002 seconds]
[SynchronizedBeforeSuite] 
k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:69

  Timeline >>
  I1122 01:14:56.210926 10935 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-nothing
  I1122 01:14:56.211699 10935 helper.go:51] Waiting up to 15s for all (but 0) nodes to be schedulable
  I1122 01:14:56.212097 10935 wait.go:253] Unexpected error listing nodes: Get "http://127.0.0.1:1/api/v1/nodes?fieldSelector=spec.unschedulable%3Dfalse&resourceVersion=0": dial tcp 127.0.0.1:1: connect: connection refused
  I1122 01:15:11.211988 10935 e2e.go:211] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [SynchronizedBeforeSuite] - k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211 @ 11/22/26 01:15:11.212
  << Timeline

  [FAILED] context deadline exceeded
  In [SynchronizedBeforeSuite] at: k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211 @ 11/22/26 01:15:11.212
------------------------------

Summarizing 1 Failure:
  [FAIL] [SynchronizedBeforeSuite] 
  k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211

Ran 0 of 7144 Specs in 15.002 seconds
FAIL! -- A BeforeSuite node failed so all tests were skipped.
--- FAIL: TestE2E (15.27s)
FAIL
"""

#: The Ginkgo CLI (--procs=2) driving e2e.test: the start of its output.
RECORDED_PARALLEL_HEAD = """\
Running Suite: Kubernetes e2e suite - /root/.cache/pytest-smalltown/go-e2e-d8a03a4038c288f0
===========================================================================================
Random Seed: 1795310191 - will randomize all specs

Will run 2 of 7144 specs
Running in parallel across 2 processes
------------------------------
• [FAILED] [30.004 seconds]
"""


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
    assert results[2].seconds == 250.0
    # Skipped at run time (a reason) versus filtered out by the focus (none).
    assert results[5].detail == "Only supported for providers [gce] (not skeleton)" and results[5].selected
    assert not results[6].selected


def test_report_counts_and_renders_one_screen(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    report = ConformanceReport(tuple(parse_junit(tmp_path / "junit.xml")), 1, tmp_path, 4000.0)
    assert (report.passed, report.failed, report.skipped, report.ok) == (2, 2, 1, False)
    text = report.render()
    lines = text.splitlines()
    assert lines[0] == "conformance FAILED: 2 passed, 2 failed, 1 skipped of 5 specs in 1h06m (exit status 1)"
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


# --- command line -------------------------------------------------------------------

BINARIES = SuiteBinaries(e2e=Path("/c/e2e.test"), kube=Path("/c/kube"), ginkgo=Path("/c/ginkgo"))
OPTIONS = RunOptions(kubeconfig=Path("/k/kubeconfig"), report_dir=Path("/r"), kubectl=Path("/t/kubectl"))
FRAMEWORK = [
    "--kubeconfig=/k/kubeconfig", "--provider=skeleton", "--kubectl-path=/t/kubectl", "--report-dir=/r",
    "--e2e-output-dir=/r", "--minStartupPods=-1", "--disable-log-dump=true",
]  # fmt: skip


def test_serial_command_is_e2e_test_alone() -> None:
    assert build_command(BINARIES, OPTIONS) == [
        "/c/e2e.test", "--ginkgo.timeout=24h", "--ginkgo.no-color", "--ginkgo.force-newlines",
        "--ginkgo.silence-skips", r"--ginkgo.focus=\[Conformance\]", *FRAMEWORK,
    ]  # fmt: skip


def test_parallel_command_runs_the_ginkgo_cli_over_the_binary() -> None:
    options = RunOptions(OPTIONS.kubeconfig, OPTIONS.report_dir, OPTIONS.kubectl, focus="Pods", skip="Serial", procs=3)
    assert build_command(BINARIES, options) == [
        "/c/ginkgo", "--procs=3", "--timeout=24h", "--no-color", "--force-newlines", "--silence-skips",
        "--focus=Pods", "--skip=Serial", "/c/e2e.test", "--", *FRAMEWORK,
    ]  # fmt: skip
    with pytest.raises(ConformanceError, match="needs the Ginkgo CLI"):
        build_command(SuiteBinaries(e2e=BINARIES.e2e, kube=BINARIES.kube), options)


def test_smoke_focus_matches_exactly_the_listed_specs() -> None:
    with pytest.raises(ConformanceError, match="smoke subset is empty"):
        smoke_focus(())
    listed = ["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]", "[sig-x] a.b (c)"]
    focus = re.compile(smoke_focus(listed))  # this subset of RE2 means the same in Python
    # Ginkgo matches "<suite description> <spec text>".
    assert all(focus.search(f"Kubernetes e2e suite {name}") for name in listed)
    for other in ("[sig-node] Pods should get a host IP [NodeConformance] [Conformance] [Slow]",
                  "[sig-x] aXb (c)", "[sig-node] Pods should get a host IP"):
        assert not focus.search(f"Kubernetes e2e suite {other}"), other
    assert go_regexp_quote("x y#z") == "x y#z"  # RE2 rejects Python's escaped space and hash


def test_cli_smoke_with_an_empty_list_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(conformance, "SMOKE_TESTS", ())
    assert main(["conformance", "--smoke", "--kubeconfig", "/nonexistent"]) == 2
    assert "smoke subset is empty" in capsys.readouterr().err
    assert main(["conformance", "--smoke", "--focus", "x"]) == 2


# --- progress -----------------------------------------------------------------------


def _feed(lines: list[str]) -> tuple[GinkgoProgress, list[str]]:
    tracker = GinkgoProgress()
    messages = [m for m in map(tracker.feed, lines) if m]
    return tracker, messages


def test_progress_counts_passed_specs() -> None:
    tracker, messages = _feed(RECORDED_DRY_RUN.splitlines(keepends=True))
    assert (tracker.total, tracker.all_specs, tracker.done, tracker.failed) == (2, 7144, 2, [])
    assert messages == ["will run 2 of 7144 specs", "1/2 specs done, 0 failed", "2/2 specs done, 0 failed"]


def test_progress_names_failed_specs() -> None:
    tracker, messages = _feed(RECORDED_FAILING_RUN.splitlines(keepends=True))
    assert (tracker.total, tracker.done) == (2, 2)
    assert tracker.failed == [
        "[sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] "
        "[sig-node, NodeConformance, Conformance]",
        "[sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup "
        "[Conformance] [sig-api-machinery, Conformance]",
    ]
    assert messages[0] == "will run 2 of 7144 specs"
    assert messages[1].startswith("FAILED [sig-node] Pods") and messages[1].endswith("(1/2 specs done, 1 failed)")
    assert messages[2].endswith("(2/2 specs done, 2 failed)")
    assert len(messages) == 3  # timelines, "Summarizing 2 Failures" and the totals say nothing new


def test_progress_reports_a_failed_suite_setup() -> None:
    tracker, messages = _feed(RECORDED_NO_CLUSTER.splitlines(keepends=True))
    assert (tracker.total, tracker.done, tracker.failed) == (1, 0, ["[SynchronizedBeforeSuite]"])
    assert messages[-1] == "SynchronizedBeforeSuite FAILED: the suite cannot run its specs (see the log)"


def test_progress_under_the_ginkgo_cli() -> None:
    tracker, messages = _feed(RECORDED_PARALLEL_HEAD.splitlines(keepends=True))
    assert (tracker.total, tracker.done) == (2, 1)
    assert messages[0] == "will run 2 of 7144 specs"


# --- running a fake e2e.test ----------------------------------------------------------


def _fake_suite(tmp_path: Path, body: str) -> SuiteBinaries:
    """An executable that stands in for e2e.test; ``body`` is Python with ``report_dir`` defined."""
    script = tmp_path / "e2e.test"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time, subprocess, signal\n"
        "from pathlib import Path\n"
        "args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "report_dir = Path(args['report-dir'])\n" + textwrap.dedent(body)
    )
    script.chmod(0o755)
    kube = tmp_path / "kube"
    kube.write_text("#!/bin/sh\n")
    kube.chmod(0o755)
    return SuiteBinaries(e2e=script, kube=kube)


def test_a_run_streams_progress_and_reports_from_junit(tmp_path: Path) -> None:
    (tmp_path / "recorded.txt").write_text(RECORDED_FAILING_RUN)
    (tmp_path / "junit.xml").write_text(JUNIT)
    binaries = _fake_suite(
        tmp_path,
        f"""
        assert os.path.islink(args['kubectl-path']) and os.path.basename(args['kubectl-path']) == 'kubectl'
        for line in Path({str(tmp_path / "recorded.txt")!r}).read_text().splitlines(keepends=True):
            sys.stdout.write(line)
        sys.stdout.flush()
        (report_dir / 'junit_01.xml').write_text(Path({str(tmp_path / "junit.xml")!r}).read_text())
        sys.exit(1)
        """,
    )
    (tmp_path / "kubeconfig").write_text("")
    messages: list[str] = []
    report = run_conformance(
        tmp_path / "kubeconfig", report_dir=tmp_path / "out", progress=messages.append, binaries=binaries
    )
    assert report.returncode == 1 and not report.ok
    assert (report.passed, report.failed) == (2, 2)
    assert any(m.startswith("conformance: will run") for m in messages)
    assert (tmp_path / "out" / "summary.txt").read_text() == report.render() + "\n"
    assert RECORDED_FAILING_RUN.splitlines()[0] in (tmp_path / "out" / "e2e.log").read_text()


def test_cli_exit_status_follows_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "kubeconfig").write_text("")
    junit = '<testsuites><testsuite><testcase name="[It] a" status="passed" time="1"/></testsuite></testsuites>'
    binaries = _fake_suite(tmp_path, f"(report_dir / 'junit_01.xml').write_text({junit!r})\n")
    monkeypatch.setattr(conformance, "build_suite", lambda procs, progress: binaries)
    argv = ["conformance", "--kubeconfig", str(tmp_path / "kubeconfig"), "--report-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "conformance PASSED: 1 passed, 0 failed" in capsys.readouterr().out
    # Nothing ran: not a pass.
    binaries = _fake_suite(tmp_path, "(report_dir / 'junit_01.xml').write_text('<testsuites/>')\n")
    assert main(argv) == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SLEEPER = """
child = subprocess.Popen(['sleep', '300'])
(report_dir / 'pids').write_text(f'{os.getpid()} {child.pid}')
print('Will run 3 of 10 specs', flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_interrupting_the_runner_kills_the_suite_and_its_children(tmp_path: Path, ignore_sigint: bool) -> None:
    body = ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignore_sigint else "") + SLEEPER
    binaries = _fake_suite(tmp_path, body)

    def interrupt(message: str) -> None:
        if "will run" in message:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_suite([str(binaries.e2e), f"--report-dir={tmp_path}"], tmp_path, interrupt, grace=1.0)
    assert time.monotonic() - started < 30
    suite, grandchild = map(int, (tmp_path / "pids").read_text().split())
    assert _wait_dead(suite) and _wait_dead(grandchild)


def test_suite_dies_with_a_sigkilled_runner(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: no orderly teardown runs, the kernel still kills e2e.test."""
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pytest_smalltown.conformance import start_suite
            process = start_suite(['sleep', '300'], Path({str(tmp_path)!r}), watch=False)
            print(process.popen.pid, flush=True)
            time.sleep(300)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert runner.stdout is not None
    suite = int(runner.stdout.readline())
    assert _alive(suite)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert _wait_dead(suite)
