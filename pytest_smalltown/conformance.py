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

A run is cut short sometimes (Ctrl-C, SIGTERM, a host that goes away), and a
full run under emulation takes hours, so a run keeps what it learned:

* before it starts, a Ginkgo dry run (``--ginkgo.dry-run --ginkgo.json-report``)
  lists the specs the focus and skip select; they go into ``run.json`` in the
  report directory with the focus, skip and process count (:class:`RunPlan`);
* while it runs, every finished spec is appended to ``results.jsonl`` and
  flushed (:class:`SpecStream` reads Ginkgo's verbose console output). Ginkgo's
  own report files (``--json-report``, ``--junit-report``) and the e2e
  framework's JUnit are written only when the suite ends, which an interrupted
  run may never reach; the framework's ``--progress-report-url`` posts per spec
  but names only passed and failed specs (not timed-out, panicked or skipped
  ones) and carries neither durations nor failure text;
* ``resume_conformance`` (``smalltown conformance --resume DIR``) runs only the
  planned specs with no result yet, as a new chunk whose JUnit gets its own
  name, and every run ends by merging the chunks' JUnit into one
  (``junit_merged.xml``) and writing an honest summary: passed, failed,
  skipped and not run.

The JUnit files that ``e2e.test`` writes stay the authority for the specs they
cover; the streamed results stand in for the chunks that wrote none.

Every process the runner starts lives in its own process group, is killed
with it on an exception or Ctrl-C, dies by ``PR_SET_PDEATHSIG`` if the Python
process is SIGKILLed, and its group is registered with the launcher's reaper,
which kills the grandchildren (the Ginkgo CLI's worker processes) in that case
too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import select
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.progress import Progress, stderr_progress

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

#: Seconds the dry run that lists a run's specs may take (it runs no spec).
DRY_RUN_TIMEOUT = 300.0

#: Files of a report directory. ``e2e.test`` names its JUnit report
#: ``junit_<report-prefix>01.xml``: the first chunk of a run has no prefix,
#: later ones (``--resume``) ``chunkNN_`` (:attr:`Chunk.report_prefix`).
JUNIT_NAME = "junit_01.xml"
MERGED_JUNIT_NAME = "junit_merged.xml"
LOG_NAME = "e2e.log"
SUMMARY_NAME = "summary.txt"
PLAN_NAME = "run.json"
RESULTS_NAME = "results.jsonl"

#: How many lines of a failure (or a skip's reason) a result keeps.
FAILURE_LINES = 5


class ConformanceError(SmalltownError, RuntimeError):
    """The suite could not be run at all (as opposed to: it ran and specs failed)."""


# --- what to run ----------------------------------------------------------------


def go_regexp_quote(text: str) -> str:
    """Quote ``text`` for Go's regexp syntax (RE2), which Ginkgo's focus uses.

    Python's :func:`re.escape` also escapes spaces and ``#``, which RE2 rejects
    as invalid escapes, so it cannot be used for Ginkgo.
    """
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def exact_focus(names: Iterable[str]) -> str:
    """A focus regexp matching exactly the specs named (full names, as ``--list-tests`` prints them)."""
    # Ginkgo matches the focus against "<suite description> <spec text>", so a
    # spec name starts after a space, not at the start of the string.
    return r"\s(?:" + "|".join(go_regexp_quote(name) for name in names) + ")$"


def smoke_focus(tests: Iterable[str] | None = None) -> str:
    """A focus regexp matching exactly the specs in ``tests`` (default :data:`SMOKE_TESTS`)."""
    names = tuple(SMOKE_TESTS if tests is None else tests)
    if not names:
        raise ConformanceError(
            "the smoke subset is empty: fill in pytest_smalltown.conformance.SMOKE_TESTS with full spec "
            "names (e2e.test --list-tests prints them), or run with --focus instead"
        )
    return exact_focus(names)


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
    """Everything that decides the command line of one run (one chunk)."""

    kubeconfig: Path
    report_dir: Path
    kubectl: Path
    focus: str = CONFORMANCE_FOCUS
    skip: str | None = None
    procs: int = 1
    #: ``e2e.test --report-prefix``: gives each chunk's JUnit its own file name.
    report_prefix: str = ""


def framework_args(options: RunOptions) -> list[str]:
    """Flags of the Kubernetes e2e framework (``test/e2e/framework``), for every process."""
    args = [
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
    if options.report_prefix:
        args.append(f"--report-prefix={options.report_prefix}")
    return args


def ginkgo_args(options: RunOptions) -> list[str]:
    """Ginkgo flags (without the ``ginkgo.`` prefix that ``e2e.test`` wants for them)."""
    args = [
        f"timeout={SUITE_TIMEOUT}",
        "no-color",
        # One line per finished spec, so progress can be read line by line.
        "force-newlines",
        # Verbose: every finished spec is reported with its name (by default a
        # passed spec is a bare bullet), which is what results.jsonl is made
        # from. Skips are not silenced: a spec skipped at run time
        # (e2eskipper) would vanish with them; the price is one bare "S" line
        # in the log per spec the focus filters out.
        "v",
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


# --- the plan: which specs a run selected ------------------------------------------


@dataclass(frozen=True)
class SelectedSpec:
    """A spec the run's focus and skip select, as Ginkgo's dry run reports it."""

    #: The full name (containers' texts and the spec's own, joined by spaces): what
    #: ``--list-tests`` prints, what a focus matches, what JUnit names after ``[It]``.
    name: str
    #: Ginkgo labels; the e2e framework gives each bracketed tag of the name one.
    labels: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        """The line Ginkgo's verbose reporter prints for the spec: its name, then its labels."""
        return f"{self.name} [{', '.join(self.labels)}]" if self.labels else self.name

    @property
    def serial(self) -> bool:
        """Conformance marks the specs that must not run beside others with ``[Serial]`` in their names."""
        return "[Serial]" in self.name

    @property
    def serial_decorated(self) -> bool:
        """Whether Ginkgo itself knows: the framework adds the ``Serial`` decorator with the ``Serial`` label.

        Ginkgo runs such specs on process 1 after every other process has
        finished; a ``[Serial]`` name without the decorator would run beside
        others, so :func:`plan_chunks` gives those a serial chunk of their own.
        """
        return "Serial" in self.labels


@dataclass(frozen=True)
class ChunkRecord:
    """One ``e2e.test`` run (chunk) of a report directory, as ``run.json`` keeps it."""

    index: int
    junit: str
    procs: int
    specs: int
    started: str
    returncode: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class RunPlan:
    """What a report directory's run selected and how: its ``run.json``.

    Written before the first spec runs, so that ``--resume`` knows the specs
    that still need a result even when nothing else was written.
    """

    focus: str
    skip: str | None
    procs: int
    specs: tuple[SelectedSpec, ...]
    chunks: tuple[ChunkRecord, ...] = ()

    def save(self, report_dir: Path) -> None:
        """Write ``run.json`` whole or not at all (a reader never sees half of it)."""
        data = {
            "focus": self.focus, "skip": self.skip, "procs": self.procs,
            "specs": [{"name": spec.name, "labels": list(spec.labels)} for spec in self.specs],
            "chunks": [dataclasses.asdict(chunk) for chunk in self.chunks],
        }  # fmt: skip
        tmp = report_dir / f".{PLAN_NAME}.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(report_dir / PLAN_NAME)

    @classmethod
    def load(cls, report_dir: Path) -> RunPlan:
        path = report_dir / PLAN_NAME
        try:
            data = json.loads(path.read_text())
            return cls(
                focus=data["focus"], skip=data["skip"], procs=int(data["procs"]),
                specs=tuple(SelectedSpec(s["name"], tuple(s["labels"])) for s in data["specs"]),
                chunks=tuple(ChunkRecord(**chunk) for chunk in data["chunks"]),
            )  # fmt: skip
        except FileNotFoundError:
            raise ConformanceError(
                f"{report_dir} holds no conformance run ({PLAN_NAME} is missing): give the report "
                "directory of a run that smalltown conformance started"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConformanceError(f"cannot read {path}: {error!r}") from None

    def with_chunk(self, record: ChunkRecord) -> RunPlan:
        """The plan with ``record`` added, or replacing the record of the same chunk."""
        others = tuple(chunk for chunk in self.chunks if chunk.index != record.index)
        return dataclasses.replace(self, chunks=tuple(sorted((*others, record), key=lambda c: c.index)))


def parse_dry_run(path: Path) -> list[SelectedSpec]:
    """The specs a dry run selected, from its Ginkgo JSON report (``--ginkgo.json-report``).

    Every spec of the suite is in the report; a dry run marks the selected ones
    ``passed`` and the ones the focus, skip or a pending mark left out
    ``skipped`` or ``pending``.
    """
    try:
        reports = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConformanceError(f"cannot read the dry run's report {path}: {error}") from error
    specs = []
    for report in reports:
        for spec in report.get("SpecReports") or ():
            if spec.get("LeafNodeType") != "It" or spec.get("State") != "passed":
                continue
            texts = [*(spec.get("ContainerHierarchyTexts") or ()), spec.get("LeafNodeText") or ""]
            labels = [label for group in spec.get("ContainerHierarchyLabels") or () for label in group or ()]
            labels += spec.get("LeafNodeLabels") or ()
            specs.append(SelectedSpec(" ".join(text for text in texts if text), tuple(dict.fromkeys(labels))))
    return specs


def list_specs(binaries: SuiteBinaries, focus: str, skip: str | None, workdir: Path) -> list[SelectedSpec]:
    """Ask ``e2e.test`` which specs ``focus`` and ``skip`` select: a dry run, no cluster needed."""
    report = workdir / "dry-run.json"
    argv = [str(binaries.e2e), "--ginkgo.dry-run", "--ginkgo.no-color", f"--ginkgo.json-report={report}",
            f"--ginkgo.focus={focus}", *([f"--ginkgo.skip={skip}"] if skip else [])]  # fmt: skip
    process = start_suite(argv, workdir)
    try:
        output, _ = process.popen.communicate(timeout=DRY_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConformanceError(f"the dry run listing the specs took over {DRY_RUN_TIMEOUT:.0f}s") from None
    finally:
        process.kill()
    if process.popen.returncode != 0 or not report.exists():
        tail = output.decode("utf-8", errors="replace")[-2000:]
        raise ConformanceError(f"the dry run listing the specs failed (exit {process.popen.returncode}):\n{tail}")
    return parse_dry_run(report)


# --- results as specs finish: Ginkgo's verbose console output -----------------------
#
# What Ginkgo v2 (v2.21.0, as e2e.test v1.34 links it) prints with -v, --no-color
# and --force-newlines, from reporters/default_reporter.go and checked against
# the output of a stand-in suite (tests/unit/test_conformance_runner.py):
#
#   serial (e2e.test alone): before a spec, a delimiter and its name; its
#   timeline streams (indented); when it ends, a header ("• [12.3 seconds]",
#   "• [FAILED] [12.3 seconds]", "S [SKIPPED] [0.1 seconds]"), for any state but
#   passed the name again and the failure, then a delimiter.
#
#   parallel (the Ginkgo CLI): each finished spec as one block, printed whole
#   by the CLI: delimiter, header, name, location, its timeline between
#   "Timeline >>" and "<< Timeline", the failure, delimiter.
#
# A name line is "<full name> [<labels>]"; for a failed spec Ginkgo marks where
# it failed: "[BeforeEach]" after a container's text, "[It] " before the
# spec's own, or "TOP-LEVEL [X] " in front. Only lines at column 0 are the
# reporter's own: everything a spec prints is indented.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DELIMITER = "-" * 30
_WILL_RUN = re.compile(r"^Will run (\d+) of (\d+) specs$")
_SPEC_HEADER = re.compile(
    r"^(?P<mark>•|↺|S|P)(?: \[(?P<state>[A-Z][A-Z0-9 -]*)\])?(?: DURING REPETITION #\d+)?"
    r"(?: \[(?P<seconds>\d+(?:\.\d+)?) seconds\])?$"
)
_SUITE_HEADER = re.compile(
    r"^\[(?P<node>[A-Za-z]+(?: \((?:Each|All|Suite)\))?)\] (?:PASSED|\[(?P<state>[A-Z]+)\])"
    r"(?: \[(?P<seconds>\d+(?:\.\d+)?) seconds\])?$"
)
_NODE_TYPES = (
    r"(?:It|Container|(?:Just)?(?:Before|After)Each|(?:Before|After)All|(?:Synchronized)?(?:Before|After)Suite"
    r"|Report(?:Before|After)(?:Each|Suite)|DeferCleanup(?: \((?:Each|All|Suite)\))?)"
)
_NODE_MARKER = re.compile(rf"\[{_NODE_TYPES}\]")
_TOP_LEVEL = re.compile(rf"^TOP-LEVEL \[{_NODE_TYPES}\] ")
_LABELS = re.compile(r" \[([^\[\]]+)\]$")
_SECTION_END = re.compile(r"^\s*<< (?:Timeline|Captured StdOut/StdErr Output|Report Entries)$")
_FAILURE_START = re.compile(r"^\s*\[(?P<state>FAILED|PANICKED|TIMEDOUT|INTERRUPTED|ABORTED|SKIPPED)\] ")
_FAILURE_WHERE = re.compile(r"^\s*In \[[^\]]+\] at: ")


def _unmarked(line: str) -> Iterator[str]:
    """``line`` without each of the failure marks Ginkgo may have put into a name, one at a time."""
    line = _TOP_LEVEL.sub("", line, count=1)
    yield line
    for mark in _NODE_MARKER.finditer(line):
        before, after = line[: mark.start()], line[mark.end() :]
        yield before.rstrip(" ") + (" " if before.strip() and after.strip() else "") + after.lstrip(" ")


def guess_name(line: str) -> str:
    """A spec's full name from a name line, without knowing the spec: marks and labels taken off.

    The e2e framework writes each label into the name as a bracketed tag too,
    so a trailing bracket is the label list only if every label in it is a tag
    of the name; otherwise it is part of the name.
    """
    candidates = list(_unmarked(line.rstrip()))
    name = candidates[-1]  # a name has no node tags of its own: at most one is there, the failure's
    labels = _LABELS.search(name)
    if labels and all(f"[{label}]" in name[: labels.start()] for label in labels[1].split(", ")):
        name = name[: labels.start()]
    return name


def failure_text(lines: Sequence[str], max_lines: int = FAILURE_LINES) -> str:
    """The first lines of the failure (or skip reason) that ends a spec's block, with where it happened.

    It follows the spec's timeline and other sections, and reads
    ``[FAILED] <message>`` ... ``In [It] at: <file:line> @ <time>``; a panic's
    own text follows that line.
    """
    start = max((i + 1 for i, line in enumerate(lines) if _SECTION_END.match(line)), default=0)
    first = next((i for i in range(start, len(lines)) if _FAILURE_START.match(lines[i])), None)
    if first is None:
        return ""
    text: list[str] = []
    rest = iter(lines[first:])
    for line in rest:
        if line.strip():
            text.append(line.strip())
        if _FAILURE_WHERE.match(line):
            break
    if text[0].startswith("[PANICKED]"):
        text += [line.strip() for line in rest if line.strip()][:1]
    if len(text) > max_lines:
        where = [line for line in text if _FAILURE_WHERE.match(line)][-1:]
        text = text[: max_lines - len(where)] + where
    return "\n".join(text)


@dataclass
class _Block:
    """A finished spec's report, from its header line to the closing delimiter."""

    status: str
    seconds: float
    node: str | None = None  # a suite-level node ("SynchronizedBeforeSuite"), not a spec
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StreamEvent:
    """Something worth telling the user, and the result of the spec that just finished, if any."""

    message: str
    result: SpecResult | None = None


class SpecStream:
    """Reads Ginkgo's verbose console output line by line and tells when each spec finished, and how.

    ``specs`` (the run's plan) turns the name lines Ginkgo prints (with labels
    and failure marks) back into full names exactly; a name that matches no
    planned spec is guessed (:func:`guess_name`).
    """

    def __init__(self, specs: Iterable[SelectedSpec] = ()) -> None:
        self._names = {spec.display: spec.name for spec in specs}
        self.total: int | None = None
        self.all_specs: int | None = None
        self.done = 0
        self.failed: list[str] = []
        #: Everything that finished: specs (``[It] <name>``) and suite-level nodes.
        self.results: list[SpecResult] = []
        self._announced: str | None = None  # serial runs name a spec before it runs
        self._after_delimiter = False
        self._block: _Block | None = None

    def feed(self, line: str) -> StreamEvent | None:
        line = _ANSI.sub("", line).rstrip("\r\n")
        if line == _DELIMITER:
            self._after_delimiter = True
            return self.finish()
        if block := self._header(line):
            event = self.finish()  # a block never closed (there is always a delimiter; just in case)
            self._after_delimiter = False
            if block.status != "ignored":
                self._block = block
            return event
        if self._block is not None:
            self._block.lines.append(line)
            return None
        if match := _WILL_RUN.match(line):
            self.total, self.all_specs = int(match[1]), int(match[2])
            return StreamEvent(f"will run {self.total} of {self.all_specs} specs")
        # A serial run names each spec before it runs (exactly, no failure marks yet);
        # without a plan, the first line after a delimiter is taken for the name.
        if line in self._names or (not self._names and self._after_delimiter and line.strip()):
            self._announced = self._name(line)
        if line.strip():
            self._after_delimiter = False
        return None

    def finish(self) -> StreamEvent | None:
        """Close the open block (a delimiter did, or the output ended): its spec has finished."""
        block, self._block = self._block, None
        if block is None:
            return None
        announced, self._announced = self._announced, None
        if block.node is not None:
            return self._suite_node(block)
        first = next((line for line in block.lines if line.strip()), None)
        name = self._name(first) if first is not None else announced
        self.done += 1
        result = None
        if name is not None:
            result = SpecResult(f"{_SPEC_PREFIX}{name}", block.status, block.seconds, failure_text(block.lines),
                                RESULTS_NAME)  # fmt: skip
            self.results.append(result)
        if block.status in _FAILED_STATUSES or block.status == "interrupted":
            if block.status != "interrupted":
                self.failed.append(name or "a spec")
            return StreamEvent(f"{block.status.upper()} {name or 'a spec'} ({self._counts()})", result)
        return StreamEvent(self._counts(), result)

    def _header(self, line: str) -> _Block | None:
        if match := _SPEC_HEADER.match(line):
            state = match["state"] or ""
            if match["mark"] in "SP" and not match["seconds"]:
                return _Block("ignored", 0.0)  # filtered out, skipped after an interrupt, pending: nothing ran
            status = "passed" if not state or state.startswith("FLAKEY") else state.lower()
            return _Block(status, float(match["seconds"] or 0.0))
        if match := _SUITE_HEADER.match(line):
            return _Block((match["state"] or "passed").lower(), float(match["seconds"] or 0.0), node=match["node"])
        return None

    def _name(self, line: str) -> str:
        for candidate in _unmarked(line.rstrip()):
            if candidate in self._names:
                return self._names[candidate]
        return guess_name(line)

    def _suite_node(self, block: _Block) -> StreamEvent | None:
        assert block.node is not None
        result = SpecResult(f"[{block.node}]", block.status, block.seconds, failure_text(block.lines), RESULTS_NAME)
        self.results.append(result)
        if block.status not in _FAILED_STATUSES:
            return None
        self.failed.append(result.name)
        consequence = ": the suite cannot run its specs" if "BeforeSuite" in block.node else ""
        return StreamEvent(f"{block.node} {block.status.upper()}{consequence} (see the log)", result)

    def _counts(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"{self.done}/{total} specs done, {len(self.failed)} failed"


# --- spec results: the JUnit report, results.jsonl -----------------------------------

_SPEC_PREFIX = "[It] "
#: Ginkgo states that are a failing verdict. "interrupted" is not one: the run
#: was stopped while the spec ran (Ctrl-C, SIGTERM), so it has no verdict and
#: ``--resume`` runs it again.
_FAILED_STATUSES = {"failed", "timedout", "aborted", "panicked"}


@dataclass(frozen=True)
class SpecResult:
    """One JUnit test case (a spec, ``[It] ...``, or a suite-level node, ``[SynchronizedBeforeSuite]``),
    or one line of ``results.jsonl``."""

    name: str
    #: Ginkgo's state: passed, failed, timedout, panicked, aborted, interrupted, skipped, pending.
    status: str
    seconds: float
    #: The failure text, or for a spec skipped at run time the reason.
    detail: str = ""
    #: The file it was read from (a chunk's JUnit, or results.jsonl).
    source: str = ""

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

    @property
    def verdict(self) -> str | None:
        """passed, failed or skipped; None when the spec was interrupted or not selected: no result."""
        if not self.selected or self.status == "interrupted":
            return None
        return "failed" if self.failed else self.status


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
                                  float(case.get("time") or 0.0), detail, path.name))  # fmt: skip
    return results


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsFile:
    """``results.jsonl``: one JSON line per finished spec, appended and flushed to disk as it finishes.

    Append-only, so that whatever stops the run (Ctrl-C, SIGKILL, a host that
    goes away) loses at most the spec that was running.
    """

    def __init__(self, report_dir: Path, chunk: int) -> None:
        self.path = report_dir / RESULTS_NAME
        self.chunk = chunk
        self._file: IO[str] | None = None

    def __enter__(self) -> ResultsFile:
        self._file = open(self.path, "a")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, result: SpecResult) -> None:
        if self._file is None or not result.is_spec:
            return
        entry: dict[str, Any] = {
            "name": result.title, "state": result.verdict or result.status, "seconds": result.seconds,
            "ginkgo_state": result.status, "chunk": self.chunk, "finished": _now(),
        }  # fmt: skip
        if result.detail:
            entry["reason" if result.status == "skipped" else "failure"] = result.detail
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def read_results(report_dir: Path) -> list[tuple[int, SpecResult]]:
    """The lines of ``results.jsonl``, with their chunks; a torn last line (the writer was killed) is skipped."""
    path = report_dir / RESULTS_NAME
    if not path.exists():
        return []
    results = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            detail = entry.get("failure") or entry.get("reason") or ""
            result = SpecResult(f"{_SPEC_PREFIX}{entry['name']}", entry["ginkgo_state"], float(entry["seconds"]),
                                detail, RESULTS_NAME)  # fmt: skip
            results.append((int(entry["chunk"]), result))
        except (ValueError, KeyError, TypeError):
            continue
    return results


# --- the report -------------------------------------------------------------------


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
    """What a run did: one result per spec that has one, the suite-level nodes, the exit status, the files.

    ``planned`` (the specs ``run.json`` lists) is what makes the counts honest
    for a partial run: a planned spec without a result is "not run", and a run
    with any is not a pass.
    """

    results: tuple[SpecResult, ...]
    returncode: int
    report_dir: Path
    seconds: float
    command: tuple[str, ...] = ()
    #: Full names of the specs the run selected; None: those in ``results``.
    planned: tuple[str, ...] | None = None
    #: Things the counts alone do not say (a chunk that wrote no JUnit, an interruption).
    notes: tuple[str, ...] = ()

    @property
    def specs(self) -> list[SpecResult]:
        """The specs the run selected (not those its focus filtered out) that finished or were interrupted."""
        return [r for r in self.results if r.is_spec and r.selected]

    @property
    def judged(self) -> list[SpecResult]:
        """The specs with a result: passed, failed or skipped (an interrupted one has none)."""
        return [r for r in self.specs if r.verdict is not None]

    @property
    def passed(self) -> int:
        return sum(r.verdict == "passed" for r in self.judged)

    @property
    def skipped(self) -> int:
        return sum(r.verdict == "skipped" for r in self.judged)

    @property
    def failures(self) -> list[SpecResult]:
        """Failed specs and failed suite-level nodes (a failed BeforeSuite skips every spec)."""
        return [r for r in self.results if r.failed]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return len(self.planned) if self.planned is not None else len(self.specs)

    @property
    def not_run(self) -> int:
        """Selected specs without a result: never started, or interrupted."""
        if self.planned is None:
            return sum(r.verdict is None for r in self.specs)
        return len(set(self.planned) - {r.title for r in self.judged})

    @property
    def ok(self) -> bool:
        """True only if the suite exited cleanly, every selected spec has a result, none failed, one passed."""
        return self.returncode == 0 and not self.failures and self.passed > 0 and self.not_run == 0

    def render(self, width: int = 100, max_slowest: int = 5, max_failures: int = 8, failure_lines: int = 3) -> str:
        """One screen of text: the verdict, the counts, the slowest specs and the first failures."""
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [
            f"conformance {verdict}: {self.passed} passed, {self.failed} failed, {self.skipped} skipped, "
            f"{self.not_run} not run of {self.total} specs in {_duration(self.seconds)} "
            f"(exit status {self.returncode})",
            f"report: {self.report_dir}  (results: {RESULTS_NAME}, JUnit: {MERGED_JUNIT_NAME}, log: {LOG_NAME})",
        ]
        lines += [_clip(note, width) for note in self.notes]
        if not self.results and self.total:
            lines.append(f"no spec finished; see {LOG_NAME}")
        elif not self.total and not self.failures:
            lines.append("no spec matched the focus")
        if self.not_run:
            lines.append(f"not run: {self.not_run} selected specs have no result; run them with: "
                         f"smalltown conformance --resume {self.report_dir}")
        ran = sorted((r for r in self.judged if r.verdict != "skipped"), key=lambda r: r.seconds, reverse=True)
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
                lines.append(f"  ... and {self.failed - max_failures} more in {MERGED_JUNIT_NAME} and {RESULTS_NAME}")
        return "\n".join(lines)


def collect_results(
    report_dir: Path,
    plan: RunPlan,
    own_chunks: Iterable[int] = (),
    streamed_suite_nodes: dict[int, list[SpecResult]] | None = None,
) -> tuple[list[SpecResult], list[str]]:
    """Each planned spec's result over every chunk, then the suite-level nodes of ``own_chunks``; and notes.

    Chunk by chunk, a chunk's JUnit (written by ``e2e.test``) is the authority
    for the specs it names, its lines of ``results.jsonl`` for the others (a
    chunk cut short wrote no JUnit); a later chunk's result replaces an
    earlier one (``--resume`` runs only specs without one, and interrupted ones).
    """
    planned = {spec.name for spec in plan.specs}
    own = set(own_chunks)
    streamed: dict[int, list[SpecResult]] = {}
    for index, result in read_results(report_dir):
        streamed.setdefault(index, []).append(result)
    verdicts: dict[str, SpecResult] = {}
    suite_nodes: list[SpecResult] = []
    notes = [_chunk_line(chunk, streamed.get(chunk.index, ())) for chunk in plan.chunks]
    for chunk in plan.chunks:
        verdicts.update({r.title: r for r in streamed.get(chunk.index, ()) if r.title in planned and r.verdict})
        cases = _chunk_junit(report_dir, chunk, notes)
        if cases is None:
            if chunk.index in own:
                suite_nodes += (streamed_suite_nodes or {}).get(chunk.index, [])
            continue
        verdicts.update({r.title: r for r in cases if r.is_spec and r.title in planned and r.verdict})
        if chunk.index in own:
            suite_nodes += [r for r in cases if not r.is_spec]
    return [verdicts[spec.name] for spec in plan.specs if spec.name in verdicts] + suite_nodes, notes


def _chunk_line(chunk: ChunkRecord, streamed: Iterable[SpecResult]) -> str:
    """How a chunk went: its results, wall time, pace and how it ended."""
    results = sum(result.verdict is not None for result in streamed)
    ended = "interrupted" if chunk.returncode is None else f"exit status {chunk.returncode}"
    pace = f" ({results / chunk.seconds * 60:.1f} specs/min)" if chunk.seconds else ""
    return (f"chunk {chunk.index}: {results} results of its {chunk.specs} specs in {_duration(chunk.seconds or 0.0)}"
            f"{pace}, {chunk.procs} process{'es' if chunk.procs > 1 else ''}, {ended}")


def _chunk_junit(report_dir: Path, chunk: ChunkRecord, notes: list[str]) -> list[SpecResult] | None:
    """The test cases of a chunk's JUnit, or None (with a note saying why) if it wrote none that can be read."""
    path = report_dir / chunk.junit
    try:
        return parse_junit(path)
    except ConformanceError as error:
        why = "wrote no JUnit" if not path.exists() else f"left an unreadable JUnit ({error})"
        notes.append(f"note: chunk {chunk.index} {why}; its results come from {RESULTS_NAME}")
        return None


def build_report(
    report_dir: Path,
    plan: RunPlan,
    *,
    returncode: int,
    seconds: float,
    command: Sequence[str] = (),
    own_chunks: Iterable[int] = (),
    streamed_suite_nodes: dict[int, list[SpecResult]] | None = None,
    notes: Sequence[str] = (),
) -> ConformanceReport:
    """The report of a report directory as it stands: every chunk's results, judged against the plan."""
    results, found = collect_results(report_dir, plan, own_chunks, streamed_suite_nodes)
    return ConformanceReport(tuple(results), returncode, report_dir, seconds, tuple(command),
                             tuple(spec.name for spec in plan.specs), (*notes, *found))  # fmt: skip


def load_report(report_dir: Path) -> ConformanceReport:
    """The counts of a report directory's run so far (spec results only; e.g. after an interruption)."""
    plan = RunPlan.load(report_dir)
    last = plan.chunks[-1].returncode if plan.chunks else None
    seconds = sum(chunk.seconds or 0.0 for chunk in plan.chunks)
    return build_report(report_dir, plan, returncode=last or 0, seconds=seconds)


#: Ginkgo's JUnit counts: which states are failures, which errors.
_JUNIT_FAILURES = {"failed", "timedout"}
_JUNIT_ERRORS = {"interrupted", "aborted", "panicked"}


def write_merged_junit(report: ConformanceReport, plan: RunPlan) -> Path:
    """``junit_merged.xml``: every chunk's JUnit in one, each test case as ``e2e.test`` wrote it.

    One case per spec with a result (from the chunk that gave it), then the
    suite-level nodes of this invocation's chunks. Specs whose result exists
    only in ``results.jsonl`` (their chunk wrote no JUnit) are counted in a
    property, not made up as cases; so are the specs not run. The file says
    that it is merged, and from which files.
    """
    wanted: dict[str, set[str]] = {}
    for result in report.results:
        if result.source.endswith(".xml"):
            wanted.setdefault(result.source, set()).add(result.name)
    sources = [chunk.junit for chunk in plan.chunks if chunk.junit in wanted]
    cases = []
    for source in sources:
        for case in ET.parse(report.report_dir / source).getroot().iter("testcase"):
            if case.get("name") in wanted[source]:
                cases.append(copy.deepcopy(case))
    statuses = [case.get("status", "") for case in cases]
    counts = {
        "tests": str(len(cases)), "disabled": "0",
        "errors": str(sum(s in _JUNIT_ERRORS for s in statuses)),
        "failures": str(sum(s in _JUNIT_FAILURES for s in statuses)),
        "time": f"{sum(float(case.get('time') or 0.0) for case in cases):.3f}",
    }  # fmt: skip
    root = ET.Element("testsuites", counts)
    suite = ET.SubElement(root, "testsuite", {"name": "Kubernetes e2e suite", "package": str(report.report_dir),
                                              **counts, "skipped": str(statuses.count("skipped")),
                                              "timestamp": plan.chunks[0].started if plan.chunks else _now()})
    only_streamed = sum(r.source == RESULTS_NAME for r in report.judged)
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("SmalltownMerged", "true"),
        ("SmalltownMergedFrom", " ".join(sources)),
        ("SmalltownSpecsSelected", str(report.total)),
        ("SmalltownSpecsNotRun", str(report.not_run)),
        ("SmalltownResultsOnlyInResultsJsonl", str(only_streamed)),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    suite.extend(cases)
    ET.indent(root)
    path = report.report_dir / MERGED_JUNIT_NAME
    comment = (f"<!-- Merged by pytest-smalltown from {', '.join(sources) or 'no JUnit file'} (each kept as "
               f"e2e.test wrote it): one test case per spec with a result, from the chunk that gave it. -->\n")
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + comment + ET.tostring(root, encoding="unicode") + "\n")
    return path


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

    def lines(self, deadline: float | None = None) -> Iterator[str]:
        """Its output, line by line, until it ends or (if given) the ``time.monotonic()`` deadline passes.

        Read straight from the pipe (no buffer of Python's in between), so that
        reading can stop and start again without losing what was read.
        """
        assert self.popen.stdout is not None
        fd, pending = self.popen.stdout.fileno(), b""
        while True:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
            data = os.read(fd, 65536)
            if not data:
                break
            *complete, pending = (pending + data).split(b"\n")
            for raw in complete:
                yield (raw + b"\n").decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")

    def stop(self, grace: float = INTERRUPT_GRACE, on_line: Callable[[str], None] = lambda line: None) -> None:
        """SIGINT the group, read what it still prints for ``grace`` seconds, then SIGKILL what is left.

        On SIGINT Ginkgo reports the spec it interrupts, runs cleanup and
        writes its report: its output is read meanwhile (into ``on_line``), or
        a full pipe would stop it.
        """
        deadline = time.monotonic() + grace
        if self.popen.poll() is None:
            _killpg(self.popen.pid, signal.SIGINT)
        for line in self.lines(deadline):
            on_line(line)
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL whatever is left in the group (Ginkgo's workers, kubectl) and reap the leader."""
        _killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        if self.watched:
            from pytest_smalltown.base.processes import reaper

            reaper().forget_process_group(self.popen.pid)
            self.watched = False


def start_suite(argv: list[str], cwd: Path, watch: bool = True) -> SuiteProcess:
    """Start ``argv`` in its own process group, dying with us, stdout and stderr merged into a pipe.

    Its own group, so that Ctrl-C in the terminal reaches only us and we stop
    the suite in order; ``watch`` registers the group with the reaper, which
    kills it if we die without doing so.
    """
    from pytest_smalltown.base.processes import die_with_parent, supervised_popen

    options: dict[str, Any] = dict(cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if watch:
        return SuiteProcess(supervised_popen(argv, **options), watched=True)
    return SuiteProcess(subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent, **options))


def run_suite(
    argv: list[str],
    report_dir: Path,
    progress: Progress = stderr_progress,
    *,
    stream: SpecStream | None = None,
    results: ResultsFile | None = None,
    grace: float = INTERRUPT_GRACE,
    watch: bool = True,
) -> int:
    """Run one command line, appending its output to the log and each finished spec to ``results``.

    Returns its exit status. On an exception (Ctrl-C, SIGTERM) the suite is
    stopped (:meth:`SuiteProcess.stop`) and what it prints meanwhile is still
    logged and read, then the exception goes on.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    stream = stream or SpecStream()
    with open(report_dir / LOG_NAME, "a") as log:
        log.write("$ " + " ".join(argv) + "\n")

        def take(line: str) -> None:
            log.write(line)
            log.flush()
            event = stream.feed(line)
            if event is not None:
                if event.result is not None and results is not None:
                    results.append(event.result)
                progress(f"conformance: {event.message}")

        process = start_suite(argv, report_dir, watch=watch)
        try:
            for line in process.lines():
                take(line)
            returncode = process.popen.wait()
        except BaseException:
            progress(f"conformance: interrupted; stopping the suite (SIGINT, SIGKILL after {grace:.0f}s)")
            process.stop(grace, on_line=take)
            raise
        finally:
            process.kill()
            event = stream.finish()
            if event is not None and event.result is not None and results is not None:
                results.append(event.result)
    return returncode


@dataclass(frozen=True)
class Chunk:
    """One ``e2e.test`` run of a report directory: which specs, with which focus, in how many processes."""

    index: int
    specs: tuple[SelectedSpec, ...]
    focus: str
    skip: str | None
    procs: int

    @property
    def report_prefix(self) -> str:
        """The first chunk writes ``junit_01.xml``; later ones ``junit_chunk02_01.xml`` and so on."""
        return "" if self.index == 1 else f"chunk{self.index:02d}_"

    @property
    def junit(self) -> str:
        return f"junit_{self.report_prefix}01.xml"


def plan_chunks(plan: RunPlan, pending: Sequence[SelectedSpec], procs: int) -> list[Chunk]:
    """The chunks that run ``pending``: the plan's own focus when that is every spec, else their exact names.

    With ``procs > 1`` Ginkgo runs the specs it knows as Serial (the framework's
    ``WithSerial()``, which is how every ``[Serial]`` conformance spec is
    registered) on one process after all others have finished. A spec named
    ``[Serial]`` without that decorator would run beside others: such specs get
    a chunk of their own, after the others, in one process.
    """
    first = max((chunk.index for chunk in plan.chunks), default=0) + 1
    apart = {spec.name for spec in pending if procs > 1 and spec.serial and not spec.serial_decorated}
    together = tuple(spec for spec in pending if spec.name not in apart)
    chunks = []
    if together:
        focus = plan.focus if len(together) == len(plan.specs) else exact_focus(spec.name for spec in together)
        chunks.append(Chunk(first, together, focus, plan.skip, procs))
    if apart:
        alone = tuple(spec for spec in pending if spec.name in apart)
        chunks.append(Chunk(first + len(chunks), alone, exact_focus(sorted(apart)), plan.skip, 1))
    return chunks


def _check_run(kubeconfig: Path, procs: int) -> None:
    if not kubeconfig.is_file():
        raise ConformanceError(f"kubeconfig {kubeconfig} does not exist")
    if procs < 1:
        raise ConformanceError(f"--procs must be at least 1, got {procs}")


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
    cached, lists the selected specs into ``run.json``, then writes to
    ``report_dir`` as it runs: ``results.jsonl``, the JUnit report and the full
    console log; at the end (an interrupted end too) ``junit_merged.xml`` and
    ``summary.txt`` (:meth:`ConformanceReport.render`). A directory that holds a
    run already is refused: :func:`resume_conformance` continues it.
    """
    _check_run(kubeconfig, procs)
    report_dir = report_dir.absolute()
    if any((report_dir / name).exists() for name in (PLAN_NAME, RESULTS_NAME)):
        raise ConformanceError(f"{report_dir} holds a run already: continue it with "
                               f"smalltown conformance --resume {report_dir}, or give another report directory")
    suite = binaries or build_suite(procs, progress)
    focus = focus or CONFORMANCE_FOCUS
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smalltown-dry-run-") as tmp:
        specs = list_specs(suite, focus, skip, Path(tmp))
    plan = RunPlan(focus, skip, procs, tuple(specs))
    plan.save(report_dir)
    progress(f"conformance: {len(specs)} specs selected by focus {_clip(focus, 60)!r}"
             f"{f' and skip {_clip(skip, 40)!r}' if skip else ''}; the list: {report_dir / PLAN_NAME}")
    return _run_plan(kubeconfig, plan, report_dir, procs, suite, progress)


def resume_conformance(
    kubeconfig: Path,
    *,
    report_dir: Path,
    procs: int | None = None,
    progress: Progress = stderr_progress,
    binaries: SuiteBinaries | None = None,
) -> ConformanceReport:
    """Run the specs of ``report_dir``'s run that have no result yet (never run, or interrupted).

    Same focus and skip as the run it continues (from ``run.json``), same
    process count unless ``procs`` is given; the results go to the same files,
    the JUnit to a new chunk's file, and the report covers every chunk.
    """
    report_dir = report_dir.absolute()
    plan = RunPlan.load(report_dir)
    procs = procs or plan.procs
    _check_run(kubeconfig, procs)
    suite = binaries or build_suite(procs, progress)
    return _run_plan(kubeconfig, plan, report_dir, procs, suite, progress)


def _run_plan(
    kubeconfig: Path, plan: RunPlan, report_dir: Path, procs: int, suite: SuiteBinaries, progress: Progress
) -> ConformanceReport:
    """Run the planned specs that have no result, chunk by chunk; write the report whatever happens."""
    started = time.monotonic()
    have, _ = collect_results(report_dir, plan)
    done = {result.title for result in have if result.is_spec}
    pending = [spec for spec in plan.specs if spec.name not in done]
    if plan.specs and not pending:
        progress(f"conformance: every one of the {len(plan.specs)} selected specs has a result; nothing to run")
    returncode = 0
    command: tuple[str, ...] = ()
    own: list[int] = []
    suite_nodes: dict[int, list[SpecResult]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="smalltown-conformance-") as tmp:
            # The kube binary is kubectl when invoked under that name.
            kubectl = Path(tmp) / "kubectl"
            kubectl.symlink_to(suite.kube)
            for chunk in plan_chunks(plan, pending, procs):
                options = RunOptions(kubeconfig.absolute(), report_dir, kubectl, chunk.focus, chunk.skip,
                                     chunk.procs, chunk.report_prefix)  # fmt: skip
                command = tuple(build_command(suite, options))
                own.append(chunk.index)
                plan, code, stream = _run_chunk(plan, chunk, list(command), report_dir, progress)
                suite_nodes[chunk.index] = [result for result in stream.results if not result.is_spec]
                returncode = code or returncode
    except BaseException as error:
        interrupted = not isinstance(error, Exception)  # KeyboardInterrupt, the CLI's SIGTERM
        note = "the run was interrupted" if interrupted else f"the run stopped on {type(error).__name__}: {error}"
        try:
            plan = RunPlan.load(report_dir)  # it records the chunk that was running
            _finish(plan, report_dir, returncode=130 if interrupted else returncode or 1,
                    seconds=time.monotonic() - started, command=command, own=own, suite_nodes=suite_nodes,
                    notes=[f"note: {note}; e2e.test was stopped"])  # fmt: skip
        except Exception as failure:  # noqa: BLE001 - the error that stopped the run is the one to raise
            progress(f"conformance: could not write the report of the stopped run: {failure!r}")
        raise
    return _finish(plan, report_dir, returncode=returncode, seconds=time.monotonic() - started, command=command,
                   own=own, suite_nodes=suite_nodes, notes=[])


def _run_chunk(
    plan: RunPlan, chunk: Chunk, argv: list[str], report_dir: Path, progress: Progress
) -> tuple[RunPlan, int, SpecStream]:
    """Run one chunk; ``run.json`` records it before it starts and its exit status after."""
    record = ChunkRecord(chunk.index, chunk.junit, chunk.procs, len(chunk.specs), _now())
    plan = plan.with_chunk(record)
    plan.save(report_dir)
    (report_dir / chunk.junit).unlink(missing_ok=True)  # never take a previous run's report for this one's
    where = "e2e.test" if chunk.procs == 1 else f"{chunk.procs} e2e.test processes"
    progress(f"conformance: chunk {chunk.index}: {len(chunk.specs)} of the {len(plan.specs)} selected specs in "
             f"{where}; log: {report_dir / LOG_NAME}, results: {report_dir / RESULTS_NAME}")
    stream = SpecStream(plan.specs)
    started, code = time.monotonic(), None
    try:
        with ResultsFile(report_dir, chunk.index) as results:
            code = run_suite(argv, report_dir, progress, stream=stream, results=results)
    finally:  # an interrupted chunk keeps its wall time too; its exit status stays unknown (None)
        record = dataclasses.replace(record, returncode=code, seconds=round(time.monotonic() - started, 1))
        plan = plan.with_chunk(record)
        plan.save(report_dir)
    if stream.total is not None and stream.total != len(chunk.specs):
        progress(f"conformance: chunk {chunk.index} ran {stream.total} specs where the plan expected "
                 f"{len(chunk.specs)}; the specs outside the plan are not counted")
    return plan, code, stream


def _finish(
    plan: RunPlan,
    report_dir: Path,
    *,
    returncode: int,
    seconds: float,
    command: Sequence[str],
    own: Sequence[int],
    suite_nodes: dict[int, list[SpecResult]],
    notes: Sequence[str],
) -> ConformanceReport:
    """Judge every chunk's results against the plan; write ``junit_merged.xml`` and ``summary.txt``."""
    report = build_report(report_dir, plan, returncode=returncode, seconds=seconds, command=command,
                          own_chunks=own, streamed_suite_nodes=suite_nodes, notes=notes)  # fmt: skip
    write_merged_junit(report, plan)
    (report_dir / SUMMARY_NAME).write_text(report.render() + "\n")
    return report
