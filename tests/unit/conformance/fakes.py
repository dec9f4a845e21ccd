"""A fake ``e2e.test`` that prints what Ginkgo prints, and :class:`FakeSuite`, a test's handle on it.

The fake (:data:`FAKE_E2E`) prints what the stand-in suite printed
(``recordings.STANDIN_SERIAL``) for the specs and outcomes a test gives it,
answers the dry run with Ginkgo's JSON report, and writes the e2e framework's
JUnit (also when interrupted).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_smalltown.conformance.command import SuiteBinaries
from pytest_smalltown.conformance.plan import SelectedSpec
from pytest_smalltown.conformance.report import ConformanceReport
from pytest_smalltown.conformance.runner import resume_conformance, run_conformance

REPO = Path(__file__).resolve().parents[3]

#: Stands in for e2e.test. CONFIG (a JSON file) gives the suite's specs (name, labels) and
#: each one's outcome (passed, failed, skipped, hang: runs until SIGINT); a selected spec is
#: printed as Ginkgo -v prints it when run serially (STANDIN_SERIAL); on SIGINT the running
#: spec ends INTERRUPTED and the JUnit is written, as Ginkgo's first interrupt does.
FAKE_E2E = r'''
import json, os, re, signal, sys, time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

config = json.loads(Path(CONFIG).read_text())
flags = {}
for arg in sys.argv[1:]:
    key, _, value = arg.lstrip("-").partition("=")
    flags[key] = value
specs = config["specs"]

def display(spec, mark=""):
    labels = f" [{', '.join(spec['labels'])}]" if spec["labels"] else ""
    return mark + spec["name"] + labels

def selected(spec):
    text = "Kubernetes e2e suite " + spec["name"]
    skip = flags.get("ginkgo.skip")
    return re.search(flags["ginkgo.focus"], text) and not (skip and re.search(skip, text))

chosen = [spec for spec in specs if selected(spec)]
if "ginkgo.dry-run" in flags:
    reports = [{"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"}]
    reports += [{"ContainerHierarchyTexts": [], "ContainerHierarchyLabels": [], "LeafNodeType": "It",
                 "LeafNodeText": s["name"], "LeafNodeLabels": s["labels"],
                 "State": "passed" if s in chosen else "skipped"} for s in specs]
    Path(flags["ginkgo.json-report"]).write_text(json.dumps([{"SpecReports": reports}]))
    print(f"Will run {len(chosen)} of {len(specs)} specs")
    sys.exit(0)

report_dir = Path(flags["report-dir"])
prefix = flags.get("report-prefix", "")
(report_dir / f"argv-{prefix or 'first'}.json").write_text(json.dumps(sys.argv))
(report_dir / f"pid-{prefix or 'first'}").write_text(str(os.getpid()))
done, current = [], None

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

def write_junit():
    cases = ['<testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1">'
             '</testcase>']
    judged = {spec["name"]: (status, detail) for spec, status, detail in done}
    for spec in specs:
        status, detail = judged.get(spec["name"], ("skipped", ""))
        inner = {"failed": f'<failure type="failed">{escape(detail)}</failure>',
                 "interrupted": f'<error type="interrupted">{escape(detail)}</error>',
                 "skipped": f'<skipped message={quoteattr(("skipped - " + detail) if detail else "skipped")}></skipped>',
                 }.get(status, "")
        cases.append(f'<testcase name={quoteattr("[It] " + spec["name"])} classname="Kubernetes e2e suite" '
                     f'status="{status}" time="1.5">{inner}</testcase>')
    (report_dir / f"junit_{prefix}01.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="Kubernetes e2e suite" '
        f'tests="{len(cases)}">\n' + "\n".join(cases) + "\n</testsuite></testsuites>\n")

def block(spec, status, message):
    header = {"failed": "• [FAILED]", "skipped": "S [SKIPPED]", "interrupted": "• [INTERRUPTED]"}[status]
    say(f"{header} [1.500 seconds]")
    say(display(spec, "[It] "))
    say("k8s.io/kubernetes/test/e2e/fake.go:41")
    say("")
    say(f"  [{status.upper()}] {message}")
    say("  In [It] at: k8s.io/kubernetes/test/e2e/fake.go:42 @ 12/07/26 11:44:06.535")

def interrupted(*_):
    if current is not None:
        block(current, "interrupted", "Interrupted by User")
        say("-" * 30)
        done.append((current, "interrupted", "[INTERRUPTED] Interrupted by User"))
    write_junit()
    os._exit(1)

signal.signal(signal.SIGINT, interrupted)
say("Running Suite: Kubernetes e2e suite - /fake")
say(f"Will run {len(chosen)} of {len(specs)} specs")
say("-" * 30)
for number, spec in enumerate(chosen):
    if config.get("wait_for_results"):  # the runner must have recorded every spec that finished
        results = report_dir / "results.jsonl"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(results.read_text().splitlines()) if results.exists() else 0) < number:
            time.sleep(0.02)
        with open(report_dir / "observed", "a") as observed:
            observed.write(f"{len(results.read_text().splitlines()) if results.exists() else 0}\n")
    outcome = config["outcomes"].get(spec["name"], "passed")
    say(display(spec))
    say("k8s.io/kubernetes/test/e2e/fake.go:41")
    say(f"  STEP: running {spec['name']} @ 12/07/26 11:44:06.535")
    current = spec
    if outcome == "hang":
        time.sleep(600)
    if outcome == "passed":
        say("• [1.500 seconds]")
        detail = ""
    else:
        detail = "it went wrong" if outcome == "failed" else "Only supported for providers [gce] (not skeleton)"
        block(spec, outcome, detail)
        detail = f"[{outcome.upper()}] {detail}" if outcome == "failed" else detail
    say("-" * 30)
    current = None
    done.append((spec, outcome, detail))
write_junit()
sys.exit(1 if any(status == "failed" for _, status, _ in done) else 0)
'''


SPECS = (
    SelectedSpec("[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                 ("sig-node", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-apps] Deployment should run the lifecycle of a Deployment [Conformance]",
                 ("sig-apps", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance]",
                 ("sig-cli", "Conformance")),
    SelectedSpec("[sig-network] DNS should provide DNS for services [Conformance]", ("sig-network", "Conformance")),
    SelectedSpec("[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if "
                 "matching [Conformance]", ("sig-scheduling", "Serial", "Conformance")),
    SelectedSpec("[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [LinuxOnly] [NodeConformance] "
                 "[Conformance]", ("sig-storage", "LinuxOnly", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-storage] CSI Volumes should mount [Feature:X]", ("sig-storage", "Feature:X")),
)  # fmt: skip



def quiet(message: str) -> None:
    """A progress callback that prints nothing."""


@dataclass(frozen=True)
class FakeSuite:
    """The fake e2e.test in a test's directory, the kubeconfig runs are given, and their report directory.

    :meth:`will` says what the next run does; :meth:`run` and :meth:`resume`
    call the runner with the fake, into :attr:`out` unless told otherwise.
    """

    workdir: Path

    @property
    def binaries(self) -> SuiteBinaries:
        return SuiteBinaries(e2e=self.workdir / "e2e.test", kube=self.workdir / "kube")

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    @classmethod
    def create(cls, workdir: Path) -> FakeSuite:
        """A fake suite of :data:`SPECS` in ``workdir`` whose specs all pass."""
        suite = cls(workdir)
        (workdir / "e2e.test").write_text(f"#!{sys.executable}\nCONFIG = {str(workdir / 'fake.json')!r}\n{FAKE_E2E}")
        (workdir / "e2e.test").chmod(0o755)
        (workdir / "kube").write_text("#!/bin/sh\n")
        (workdir / "kube").chmod(0o755)
        suite.kubeconfig.write_text("")
        suite.will()
        return suite

    def will(self, outcomes: dict[str, str] | None = None, specs: tuple[SelectedSpec, ...] = SPECS,
             **extra: Any) -> None:  # fmt: skip
        """What the next run does: the suite's ``specs`` and each one's outcome (passed unless named)."""
        (self.workdir / "fake.json").write_text(json.dumps({
            "specs": [{"name": s.name, "labels": list(s.labels)} for s in specs], "outcomes": outcomes or {}, **extra,
        }))  # fmt: skip

    def run(self, progress: Callable[[str], None] = quiet, **options: Any) -> ConformanceReport:
        options.setdefault("report_dir", self.out)
        return run_conformance(self.kubeconfig, progress=progress, binaries=self.binaries, **options)

    def resume(self, progress: Callable[[str], None] = quiet, **options: Any) -> ConformanceReport:
        options.setdefault("report_dir", self.out)
        return resume_conformance(self.kubeconfig, progress=progress, binaries=self.binaries, **options)

    def results(self) -> list[dict[str, Any]]:
        """The lines of ``out/results.jsonl``."""
        return [json.loads(line) for line in (self.out / "results.jsonl").read_text().splitlines()]

    def merged_cases(self) -> dict[str | None, str | None]:
        """The test cases of ``out/junit_merged.xml``: name -> status."""
        return {case.get("name"): case.get("status") for case in self._merged().iter("testcase")}

    def merged_properties(self) -> dict[str | None, str | None]:
        return {p.get("name"): p.get("value") for p in self._merged().iter("property")}

    def _merged(self) -> ET.ElementTree[ET.Element]:
        return ET.parse(self.out / "junit_merged.xml")
