"""The JUnit files: reading a chunk's (as ``e2e.test`` wrote it) and merging every chunk's into one.

The JUnit files that ``e2e.test`` writes stay the authority for the specs they
cover; ``results.jsonl`` stands in for the chunks that wrote none.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import MERGED_JUNIT_NAME, RESULTS_NAME
from pytest_smalltown.conformance.plan import RunPlan
from pytest_smalltown.conformance.report import ConformanceReport
from pytest_smalltown.conformance.results import SpecResult, now

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
    path = report.report_dir / MERGED_JUNIT_NAME
    comment = (f"<!-- Merged by pytest-smalltown from {', '.join(sources) or 'no JUnit file'} (each kept as "
               f"e2e.test wrote it): one test case per spec with a result, from the chunk that gave it. -->\n")
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + comment + ET.tostring(root, encoding="unicode") + "\n")
    return path
