"""The JUnit files: reading a chunk's (as ``e2e.test`` wrote it) and merging every chunk's into one.

The JUnit files that ``e2e.test`` writes stay the authority for the specs they
cover; ``results.jsonl`` stands in for the chunks that wrote none.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import MERGED_JUNIT_NAME, RESULTS_NAME
from pytest_smalltown.conformance.plan import RunPlan
from pytest_smalltown.conformance.report import ConformanceReport
from pytest_smalltown.conformance.results import SpecResult, now

def parse_junit(path: Path) -> list[SpecResult]:
    """Read the test cases of a JUnit file as written by ``e2e.test --report-dir``."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise ConformanceError(f"cannot read the JUnit report {path}: {error}") from error
    return [case_result(case, path.name) for case in root.iter("testcase")]


def case_result(case: ET.Element, source: str, kept_in: str = "") -> SpecResult:
    """One test case as a result.

    Ginkgo writes a ``status`` attribute on every case; a ``failure`` or
    ``error`` element carries the failure text, a ``skipped`` element's
    message is ``skipped`` or ``skipped - <reason>``.
    """
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
    return SpecResult(case.get("name", "?"), case.get("status") or status, float(case.get("time") or 0.0), detail,
                      source, kept_in)  # fmt: skip


@dataclass(frozen=True)
class MergedJunit:
    """A ``junit_merged.xml`` as a later merge reads it: the chunk JUnit files it merged, and its test cases.

    A report directory may be committed without the chunks' own JUnit files
    (they are large; see ``docs/conformance/run-2026-12/.gitignore``): the
    merged file then holds the only copy of their test cases.
    """

    #: The chunks' JUnit files it names in its ``SmalltownMergedFrom`` property.
    sources: tuple[str, ...]
    #: Its test cases by name, each as ``e2e.test`` wrote it.
    cases: dict[str, ET.Element]

    @classmethod
    def read(cls, report_dir: Path) -> MergedJunit | None:
        """The report directory's merged JUnit, or None when there is none that can be read."""
        try:
            root = ET.parse(report_dir / MERGED_JUNIT_NAME).getroot()
        except (OSError, ET.ParseError):
            return None
        merged_from = next((p.get("value", "") for p in root.iter("property")
                            if p.get("name") == "SmalltownMergedFrom"), "")  # fmt: skip
        return cls(tuple(merged_from.split()), {case.get("name", "?"): case for case in root.iter("testcase")})

    def kept_results(self, junit: str, streamed: Iterable[SpecResult]) -> list[SpecResult]:
        """The test cases of chunk JUnit file ``junit`` (gone now) that this file kept, as results.

        A case counts as that chunk's when this file merged ``junit`` and the
        chunk's own line in ``results.jsonl`` for the spec has the case's state:
        a case another chunk gave would differ, or that chunk would be the one
        whose result stands.
        """
        if junit not in self.sources:
            return []
        kept = []
        for line in streamed:
            case = self.cases.get(line.name)
            if case is not None and case.get("status") == line.status:
                kept.append(case_result(case, junit, kept_in=MERGED_JUNIT_NAME))
        return kept


_JUNIT_FAILURES = {"failed", "timedout"}
_JUNIT_ERRORS = {"interrupted", "aborted", "panicked"}


def write_merged_junit(report: ConformanceReport, plan: RunPlan) -> Path:
    """``junit_merged.xml``: every chunk's JUnit in one, each test case as ``e2e.test`` wrote it.

    One case per spec with a result (from the chunk that gave it), then the
    suite-level nodes of this invocation's chunks. The cases of a chunk whose
    JUnit file is gone are taken from the ``junit_merged.xml`` that merged it
    (:meth:`MergedJunit.kept_results`), which still names that file as a source. Specs whose result exists
    only in ``results.jsonl`` (their chunk wrote no JUnit) are counted in a
    property, not made up as cases; so are the specs not run. The file says
    that it is merged, and from which files.
    """
    wanted: dict[str, set[str]] = {}
    kept: dict[str, set[str]] = {}
    for result in report.results:
        if result.source.endswith(".xml"):
            (kept if result.kept_in else wanted).setdefault(result.source, set()).add(result.name)
    sources = [chunk.junit for chunk in plan.chunks if chunk.junit in wanted or chunk.junit in kept]
    previous = MergedJunit.read(report.report_dir) if kept else None
    cases = []
    for source in sources:
        if source in kept:
            cases += [copy.deepcopy(case) for name, case in (previous.cases if previous else {}).items()
                      if name in kept[source]]  # fmt: skip
            continue
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
                                              "timestamp": plan.chunks[0].started if plan.chunks else now()})
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
    named = [f"{source} [gone: its cases as the previous {MERGED_JUNIT_NAME} kept them]" if source in kept else source
             for source in sources]  # fmt: skip
    comment = (f"<!-- Merged by pytest-smalltown from {', '.join(named) or 'no JUnit file'} (each kept as "
               f"e2e.test wrote it): one test case per spec with a result, from the chunk that gave it. -->\n")
    # Whole or not at all: when a chunk's own JUnit is gone, this file holds the only copy of its cases.
    path = report.report_dir / MERGED_JUNIT_NAME
    tmp = report.report_dir / f".{MERGED_JUNIT_NAME}.tmp"
    tmp.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + comment + ET.tostring(root, encoding="unicode") + "\n")
    tmp.replace(path)
    return path
