"""The files of a report directory: every name the writers and the readers use, in one place.

A report directory is committed to git at times and resumed by a later
session (or an older or newer pytest-smalltown), so these names are a format:
change none of them.
"""

from __future__ import annotations

#: The run's plan: focus, skip, process count, the selected specs and every chunk (:class:`plan.RunPlan`).
PLAN_NAME = "run.json"
#: One JSON line per finished spec, appended as it finishes (:class:`results.ResultsFile`).
RESULTS_NAME = "results.jsonl"
#: Every chunk's JUnit in one (:func:`junit.write_merged_junit`).
MERGED_JUNIT_NAME = "junit_merged.xml"
#: The suite's full console output, every chunk's after the one before.
LOG_NAME = "e2e.log"
#: One screen of text: the counts, the slowest specs, the first failures (:meth:`report.ConformanceReport.render`).
SUMMARY_NAME = "summary.txt"


def chunk_report_prefix(index: int) -> str:
    """``e2e.test --report-prefix`` of chunk ``index``: none for the first, ``chunkNN_`` for later ones.

    ``e2e.test`` names its JUnit ``junit_<report-prefix>01.xml``, so the first
    chunk writes ``junit_01.xml`` and a resumed one ``junit_chunk02_01.xml``.
    """
    return "" if index == 1 else f"chunk{index:02d}_"


def chunk_junit_name(index: int) -> str:
    """The JUnit file ``e2e.test`` writes for chunk ``index`` (see :func:`chunk_report_prefix`)."""
    return f"junit_{chunk_report_prefix(index)}01.xml"
