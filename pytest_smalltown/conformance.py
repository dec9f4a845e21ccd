"""Running the upstream Kubernetes conformance suite (``e2e.test``) against a cluster.

The suite runs on the host, against the cluster's API server as forwarded to
127.0.0.1, not in the cluster as a pod (the way Sonobuoy does it):

* there is no runner image to build, push or preload: ``e2e.test`` is one
  static binary from our Go build cache (:mod:`images.gobuild`), stamped with
  the cluster's Kubernetes version;
* its output, JUnit report and logs land in a host directory as they are
  written, so nothing has to be copied out of a pod that may be gone by then;
* conformance specs need nothing but the Kubernetes API (and ``kubectl``, which
  is our ``kube`` binary under that name): they create their own pods, and the
  specs that want SSH or a cloud are skipped by ``--provider=skeleton``.

The control plane of a reference node runs as host processes of the node, not
as pods, so the flags below also stop the framework from waiting for
kube-system pods and from trying to gather logs from nodes over SSH.

Progress is read from Ginkgo's default console output (``Will run N of M
specs``, then one line per finished spec with ``--ginkgo.force-newlines``);
the counts in the final :class:`ConformanceReport` come from the JUnit file,
which is the authority. Every process the runner starts lives in its own
process group, is killed with it on an exception or Ctrl-C, dies by
``PR_SET_PDEATHSIG`` if the Python process is SIGKILLed, and its group is
registered with the launcher's reaper, which kills the grandchildren (the
Ginkgo CLI's worker processes) in that case too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smalltown.images.cache import Progress, stderr_progress

#: Default focus: every spec that is part of the conformance profile.
CONFORMANCE_FOCUS = r"\[Conformance\]"

#: Full spec names (as ``e2e.test --list-tests`` prints them) of the smoke
#: subset that ``--smoke`` (and ``e2e/test_conformance.py``) runs. At least one
#: spec per SIG and per image the conformance specs use, chosen for the node
#: paths they prove: the apiserver reaching Services (webhook, aggregator),
#: DNS, NodePort, hostPort, exec, volumes, scheduling, kubectl on the host.
#: Where two specs prove the same path, the faster one is here (timings of a
#: 27-spec run in docs/conformance.md): the subset runs in every CI job.
SMOKE_TESTS: tuple[str, ...] = (
    # api-machinery: apiserver -> webhook Service (agnhost). The Aggregator spec (sample-apiserver,
    # etcd) is not here: under emulation its readiness probes time out and the aggregated API
    # answers 503 (docs/conformance.md); a smoke subset that fails by load would only teach CI to ignore it.
    "[sig-api-machinery] AdmissionWebhook [Privileged:ClusterAdmin] should be able to deny pod and configmap "
    "creation [Conformance]",
    # apps: httpd, agnhost serve-hostname through the apiserver's pod proxy
    "[sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new ones [Conformance]",
    "[sig-apps] ReplicationController should serve a basic image on each replica with a public image [Conformance]",
    # architecture: two schedulable nodes
    "[sig-architecture] Conformance Tests should have at least two untainted nodes [Conformance]",
    # auth: service-account issuer discovery from a pod, projected tokens
    "[sig-auth] ServiceAccounts ServiceAccountIssuerDiscovery should support OIDC discovery of service account "
    "issuer [Conformance]",
    "[sig-auth] ServiceAccounts should mount an API token into pods [Conformance]",
    # cli: kubectl on the host; httpd, nautilus
    "[sig-cli] Kubectl client Kubectl run pod should create a pod from an image when restart is Never [Conformance]",
    "[sig-cli] Kubectl client Update Demo should create and stop a replication controller [Conformance]",
    # instrumentation
    "[sig-instrumentation] Events should manage the lifecycle of an event [Conformance]",
    # network: DNS (jessie-dnsutils), NodePort Services, hostPort (portmap), EndpointSlices (nginx)
    "[sig-network] DNS should provide DNS for the cluster [Conformance]",
    "[sig-network] EndpointSlice should create Endpoints and EndpointSlices for Pods matching a Service "
    "[Conformance]",
    "[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different "
    "hostIP and protocol [LinuxOnly] [Conformance]",
    "[sig-network] Services should be able to create a functioning NodePort service [Conformance]",
    # node: lifecycle hooks, logs, exec over websockets, no_new_privs (nonewprivs), variable expansion
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart http hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs "
    "[NodeConformance] [Conformance]",
    "[sig-node] Pods should support remote command execution over websockets [NodeConformance] [Conformance]",
    "[sig-node] Security Context when creating containers with AllowPrivilegeEscalation should not allow "
    "privilege escalation when false [LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-node] Variable Expansion should allow substituting values in a container's args [NodeConformance] "
    "[Conformance]",
    # scheduling (pause)
    "[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching "
    "[Conformance]",
    # storage: emptyDir on tmpfs, projected secrets (agnhost mounttest)
    "[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-storage] Projected secret should be consumable from pods in volume [NodeConformance] [Conformance]",
)

#: Ginkgo's whole-suite timeout. Its default (1h) would cut a full conformance
#: run on emulated nodes in the middle; per-spec timeouts still apply.
SUITE_TIMEOUT = "24h"

#: Seconds between SIGINT (Ginkgo runs cleanup nodes, writes its report) and
#: SIGKILL of the whole process group when the runner is interrupted.
INTERRUPT_GRACE = 15.0

#: Where ``e2e.test`` writes its JUnit report inside ``--report-dir`` (it names
#: it ``junit_<report-prefix>01.xml`` and we set no prefix).
JUNIT_NAME = "junit_01.xml"
LOG_NAME = "e2e.log"
SUMMARY_NAME = "summary.txt"


class ConformanceError(RuntimeError):
    """The suite could not be run at all (as opposed to: it ran and specs failed)."""


# --- what to run ----------------------------------------------------------------


def go_regexp_quote(text: str) -> str:
    """Quote ``text`` for Go's regexp syntax (RE2), which Ginkgo's focus uses.

    Python's :func:`re.escape` also escapes spaces and ``#``, which RE2 rejects
    as invalid escapes, so it cannot be used for Ginkgo.
    """
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def smoke_focus(tests: Iterable[str] | None = None) -> str:
    """A focus regexp matching exactly the specs in ``tests`` (default :data:`SMOKE_TESTS`)."""
    names = tuple(SMOKE_TESTS if tests is None else tests)
    if not names:
        raise ConformanceError(
            "the smoke subset is empty: fill in pytest_smalltown.conformance.SMOKE_TESTS with full spec "
            "names (e2e.test --list-tests prints them), or run with --focus instead"
        )
    # Ginkgo matches the focus against "<suite description> <spec text>", so a
    # spec name starts after a space, not at the start of the string.
    return r"\s(?:" + "|".join(go_regexp_quote(name) for name in names) + ")$"


@dataclass(frozen=True)
class SuiteBinaries:
    """The programs a run needs: ``e2e.test``, the ``kube`` multi-call binary, the Ginkgo CLI."""

    e2e: Path
    kube: Path
    #: Only needed for parallel runs (``procs > 1``); ``e2e.test`` alone runs serially.
    ginkgo: Path | None = None


def build_suite(procs: int = 1, progress: Progress = stderr_progress) -> SuiteBinaries:
    """Build (or find in the cache) what a run with ``procs`` processes needs."""
    from pytest_smalltown.images.gobuild import build_program

    return SuiteBinaries(
        e2e=build_program("e2e", progress),
        kube=build_program("kube", progress),
        ginkgo=build_program("ginkgo", progress) if procs > 1 else None,
    )


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides the command line of one run."""

    kubeconfig: Path
    report_dir: Path
    kubectl: Path
    focus: str = CONFORMANCE_FOCUS
    skip: str | None = None
    procs: int = 1


def framework_args(options: RunOptions) -> list[str]:
    """Flags of the Kubernetes e2e framework (``test/e2e/framework``), for every process."""
    return [
        f"--kubeconfig={options.kubeconfig}",
        # The fallback provider: no cloud API, and not in the framework's list
        # of providers with SSH, so SSH-only specs skip instead of failing.
        "--provider=skeleton",
        f"--kubectl-path={options.kubectl}",
        f"--report-dir={options.report_dir}",
        # Perf data and other side files go beside the report, not in /tmp.
        f"--e2e-output-dir={options.report_dir}",
        # Our control plane is processes on the node, not kube-system pods:
        # there are no system pods to wait for before the suite starts.
        "--minStartupPods=-1",
        # Otherwise the suite ends by running cluster/log-dump/log-dump.sh from
        # a Kubernetes checkout to SSH into nodes; node logs come from
        # NodeDebugService instead.
        "--disable-log-dump=true",
    ]


def ginkgo_args(options: RunOptions) -> list[str]:
    """Ginkgo flags (without the ``ginkgo.`` prefix that ``e2e.test`` wants for them)."""
    args = [
        f"timeout={SUITE_TIMEOUT}",
        "no-color",
        # One line per finished spec, so progress can be read line by line.
        "force-newlines",
        # Without it every spec the focus filters out prints an "S" line:
        # thousands of them for a conformance run.
        "silence-skips",
        f"focus={options.focus}",
    ]
    if options.skip:
        args.append(f"skip={options.skip}")
    return args


def build_command(binaries: SuiteBinaries, options: RunOptions) -> list[str]:
    """The argv of a run: ``e2e.test`` alone, or the Ginkgo CLI driving ``procs`` copies of it."""
    if options.procs < 1:
        raise ConformanceError(f"procs must be at least 1, got {options.procs}")
    if options.procs == 1:
        return [str(binaries.e2e), *(f"--ginkgo.{arg}" for arg in ginkgo_args(options)), *framework_args(options)]
    if binaries.ginkgo is None:
        raise ConformanceError(f"running with {options.procs} processes needs the Ginkgo CLI, which was not given")
    return [
        str(binaries.ginkgo), f"--procs={options.procs}", *(f"--{arg}" for arg in ginkgo_args(options)),
        str(binaries.e2e), "--", *framework_args(options),
    ]  # fmt: skip


# --- progress from Ginkgo's console output ---------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WILL_RUN = re.compile(r"^Will run (\d+) of (\d+) specs$")
# A finished spec: "•" alone (passed, succinct), "• [1.234 seconds]" (passed,
# verbose), "• [FAILED] [1.234 seconds]" and the other failure states, or
# "↺ [FLAKEY TEST - TOOK 2 ATTEMPTS TO PASS] [...]". Suite-level nodes report
# as "[SynchronizedBeforeSuite] [FAILED] [...]" instead.
_SPEC_DONE = re.compile(r"^(?:•|↺)(?: \[(?P<state>[A-Z]+)\])?(?: DURING REPETITION #\d+)?(?: \[[\d.]+ seconds\])?$")
_SUITE_NODE_FAILED = re.compile(r"^\[(?P<node>[A-Za-z]+)\] \[(?P<state>FAILED|PANICKED|TIMEDOUT|INTERRUPTED|ABORTED)\]")
_FAILURE_STATES = {"FAILED", "PANICKED", "TIMEDOUT", "INTERRUPTED", "ABORTED"}


@dataclass
class GinkgoProgress:
    """Counts read from Ginkgo's console output, one line at a time.

    :meth:`feed` returns a message when something worth telling the user
    happened (the run's size became known, a spec failed, a spec finished).
    Specs skipped at run time are silenced too, so ``done`` can end below
    ``total``; the JUnit report has the exact numbers.
    """

    total: int | None = None
    all_specs: int | None = None
    done: int = 0
    failed: list[str] = field(default_factory=list)
    _failed_header: bool = False

    def feed(self, line: str) -> str | None:
        line = _ANSI.sub("", line).rstrip("\r\n")
        if self._failed_header:
            # The line after a failure header names the spec (and its location below).
            if line.strip():
                self._failed_header = False
                self.failed.append(line.strip())
                return f"FAILED {line.strip()} ({self._counts()})"
            return None
        if match := _WILL_RUN.match(line):
            self.total, self.all_specs = int(match[1]), int(match[2])
            return f"will run {self.total} of {self.all_specs} specs"
        if match := _SPEC_DONE.match(line):
            self.done += 1
            if match["state"] in _FAILURE_STATES:
                self._failed_header = True
                return None
            return self._counts()
        if match := _SUITE_NODE_FAILED.match(line):
            self.failed.append(f"[{match['node']}]")
            return f"{match['node']} {match['state']}: the suite cannot run its specs (see the log)"
        return None

    def _counts(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"{self.done}/{total} specs done, {len(self.failed)} failed"


# --- the report -------------------------------------------------------------------

_SPEC_PREFIX = "[It] "
_FAILED_STATUSES = {"failed", "timedout", "interrupted", "aborted", "panicked"}


@dataclass(frozen=True)
class SpecResult:
    """One JUnit test case: a spec (``[It] ...``) or a suite-level node (``[SynchronizedBeforeSuite]``)."""

    name: str
    status: str
    seconds: float
    #: The failure text, or for a spec skipped at run time the reason.
    detail: str = ""

    @property
    def is_spec(self) -> bool:
        return self.name.startswith(_SPEC_PREFIX)

    @property
    def selected(self) -> bool:
        """False for the specs the focus filtered out (pending ones too): Ginkgo lists them as skipped.

        A spec skipped at run time (``e2eskipper.Skip``) carries a reason; a
        filtered one does not, which is the only way to tell them apart in JUnit.
        """
        if self.status == "pending":
            return False
        return self.status != "skipped" or bool(self.detail)

    @property
    def title(self) -> str:
        """The name as ``--focus`` and ``--list-tests`` spell it (without Ginkgo's ``[It]`` prefix)."""
        return self.name.removeprefix(_SPEC_PREFIX)

    @property
    def failed(self) -> bool:
        return self.status in _FAILED_STATUSES


def parse_junit(path: Path) -> list[SpecResult]:
    """Read the test cases of a JUnit file as written by ``e2e.test --report-dir``.

    Ginkgo writes a ``status`` attribute on every case; a ``failure`` or
    ``error`` element carries the failure text, a ``skipped`` element's
    message is ``skipped`` or ``skipped - <reason>``.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise ConformanceError(f"cannot read the JUnit report {path}: {error}") from error
    results = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            status, detail = "failed", (problem.text or problem.get("message") or "").strip()
        elif skipped is not None:
            status, detail = "skipped", skipped.get("message", "").removeprefix("skipped").removeprefix(" - ")
        else:
            status, detail = "passed", ""
        results.append(SpecResult(case.get("name", "?"), case.get("status") or status,
                                  float(case.get("time") or 0.0), detail))
    return results


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class ConformanceReport:
    """What a run did: per-spec results from JUnit, the exit status, where the files are."""

    results: tuple[SpecResult, ...]
    returncode: int
    report_dir: Path
    seconds: float
    command: tuple[str, ...] = ()

    @property
    def specs(self) -> list[SpecResult]:
        """The specs the run selected (not those its focus filtered out)."""
        return [r for r in self.results if r.is_spec and r.selected]

    @property
    def passed(self) -> int:
        return sum(r.status == "passed" for r in self.specs)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.specs)

    @property
    def failures(self) -> list[SpecResult]:
        """Failed specs and failed suite-level nodes (a failed BeforeSuite skips every spec)."""
        return [r for r in self.results if r.failed]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        """True only if the suite exited cleanly, nothing failed and at least one spec passed."""
        return self.returncode == 0 and not self.failures and self.passed > 0

    def render(self, width: int = 100, max_slowest: int = 5, max_failures: int = 8, failure_lines: int = 3) -> str:
        """One screen of text: the verdict, the counts, the slowest specs and the first failures."""
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [
            f"conformance {verdict}: {self.passed} passed, {self.failed} failed, {self.skipped} skipped "
            f"of {len(self.specs)} specs in {_duration(self.seconds)} (exit status {self.returncode})",
            f"report: {self.report_dir}  (JUnit: {JUNIT_NAME}, log: {LOG_NAME})",
        ]
        if not self.results:
            lines.append(f"no JUnit report was written; the suite did not get to run specs; see {LOG_NAME}")
        elif not self.specs and not self.failures:
            lines.append("no spec matched the focus")
        ran = sorted((r for r in self.specs if r.status != "skipped"), key=lambda r: r.seconds, reverse=True)
        if ran and max_slowest:
            lines += ["", "slowest:"]
            lines += [_clip(f"  {r.seconds:7.1f}s  {r.title}", width) for r in ran[:max_slowest]]
        if self.failures:
            lines += ["", f"failures ({self.failed}):"]
            for result in self.failures[:max_failures]:
                lines.append(f"  {result.title}")  # whole: it is what --focus takes to rerun it
                text = [line.strip() for line in result.detail.splitlines() if line.strip()]
                lines += [_clip(f"      {line}", width) for line in text[:failure_lines]]
            if self.failed > max_failures:
                lines.append(f"  ... and {self.failed - max_failures} more in {JUNIT_NAME}")
        return "\n".join(lines)


# --- running ----------------------------------------------------------------------


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class SuiteProcess:
    """A started suite process (group leader) and its combined output."""

    popen: subprocess.Popen[bytes]
    watched: bool = False

    def lines(self) -> Iterator[str]:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            yield raw.decode("utf-8", errors="replace")

    def stop(self, grace: float = INTERRUPT_GRACE) -> None:
        """SIGINT the group (Ginkgo then cleans up and reports), SIGKILL what is left after ``grace``."""
        if self.popen.poll() is None:
            _killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL whatever is left in the group (Ginkgo's workers, kubectl) and reap the leader."""
        _killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        if self.watched:
            from pytest_smalltown.launch.reaper import reaper

            reaper().forget_process_group(self.popen.pid)
            self.watched = False


def start_suite(argv: list[str], cwd: Path, watch: bool = True) -> SuiteProcess:
    """Start ``argv`` in its own process group, dying with us, stdout and stderr merged into a pipe.

    Its own group, so that Ctrl-C in the terminal reaches only us and we stop
    the suite in order; ``watch`` registers the group with the reaper, which
    kills it if we die without doing so.
    """
    from pytest_smalltown.launch.reaper import die_with_parent, supervised_popen

    options: dict[str, Any] = dict(cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if watch:
        return SuiteProcess(supervised_popen(argv, **options), watched=True)
    return SuiteProcess(subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent, **options))


def run_suite(
    argv: list[str],
    report_dir: Path,
    progress: Progress = stderr_progress,
    *,
    grace: float = INTERRUPT_GRACE,
    watch: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> ConformanceReport:
    """Run a built command line, stream its progress, and report from its JUnit file."""
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / JUNIT_NAME
    junit.unlink(missing_ok=True)  # never summarise a previous run's report
    started = clock()
    tracker = GinkgoProgress()
    with open(report_dir / LOG_NAME, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        process = start_suite(argv, report_dir, watch=watch)
        try:
            for line in process.lines():
                log.write(line)
                log.flush()
                message = tracker.feed(line)
                if message:
                    progress(f"conformance: {message}")
            returncode = process.popen.wait()
        except BaseException:
            progress(f"conformance: interrupted; stopping the suite (SIGINT, SIGKILL after {grace:.0f}s)")
            process.stop(grace)
            raise
        finally:
            process.kill()
    results = parse_junit(junit) if junit.exists() else []
    report = ConformanceReport(tuple(results), returncode, report_dir, clock() - started, tuple(argv))
    (report_dir / SUMMARY_NAME).write_text(report.render() + "\n")
    return report


def run_conformance(
    kubeconfig: Path,
    *,
    focus: str | None = None,
    skip: str | None = None,
    procs: int = 1,
    report_dir: Path,
    progress: Progress = stderr_progress,
    binaries: SuiteBinaries | None = None,
) -> ConformanceReport:
    """Run the conformance suite (or the specs ``focus`` picks) against the cluster of ``kubeconfig``.

    Builds ``e2e.test`` (and the Ginkgo CLI for ``procs > 1``) if they are not
    cached, then writes to ``report_dir``: the JUnit report, the full console
    log and ``summary.txt`` (:meth:`ConformanceReport.render`).
    """
    if not kubeconfig.is_file():
        raise ConformanceError(f"kubeconfig {kubeconfig} does not exist")
    if procs < 1:
        raise ConformanceError(f"--procs must be at least 1, got {procs}")
    suite = binaries or build_suite(procs, progress)
    report_dir = report_dir.absolute()
    with tempfile.TemporaryDirectory(prefix="smalltown-conformance-") as tmp:
        # The kube binary is kubectl when invoked under that name.
        kubectl = Path(tmp) / "kubectl"
        kubectl.symlink_to(suite.kube)
        options = RunOptions(
            kubeconfig=kubeconfig.absolute(), report_dir=report_dir, kubectl=kubectl,
            focus=focus or CONFORMANCE_FOCUS, skip=skip, procs=procs,
        )  # fmt: skip
        argv = build_command(suite, options)
        progress(f"conformance: running {'e2e.test' if procs == 1 else f'{procs} e2e.test processes'}; "
                 f"focus {_clip(options.focus, 80)!r}; log: {report_dir / LOG_NAME}")
        return run_suite(argv, report_dir, progress)
