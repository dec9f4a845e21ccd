"""Per-spec results: :class:`SpecResult`, and ``results.jsonl``, written as each spec finishes.

Ginkgo's own report files and the e2e framework's JUnit are written only when
the suite ends, which an interrupted run may never reach; the framework's
``--progress-report-url`` posts per spec but names only passed and failed
specs and carries neither durations nor failure text. So the runner appends
every finished spec to ``results.jsonl`` itself (read from Ginkgo's verbose
output, :mod:`stream`), flushed to disk before the next one starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_smalltown.conformance.files import RESULTS_NAME

#: How Ginkgo (and its JUnit) names a spec: ``[It] <full name>``; suite-level nodes are ``[<node type>]``.
SPEC_PREFIX = "[It] "
#: Ginkgo states that are a failing verdict. "interrupted" is not one: the run
#: was stopped while the spec ran (Ctrl-C, SIGTERM), so it has no verdict and
#: ``--resume`` runs it again.
FAILED_STATUSES = frozenset({"failed", "timedout", "aborted", "panicked"})


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
    #: When ``source`` (a chunk's JUnit) is gone: the file its test case was kept in,
    #: the ``junit_merged.xml`` that merged it (:func:`junit.kept_results`).
    kept_in: str = ""

    @property
    def is_spec(self) -> bool:
        return self.name.startswith(SPEC_PREFIX)

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
        return self.name.removeprefix(SPEC_PREFIX)

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    @property
    def from_junit(self) -> bool:
        """Whether ``e2e.test``'s own JUnit holds this result (a chunk's, or its case kept in ``junit_merged.xml``).

        False when it was read only from Ginkgo's verbose output (``results.jsonl``):
        issue 22 counts a spec from the JUnit that ``e2e.test`` wrote, so the report
        says how many results lack one and ``--rerun-without-junit`` runs them again.
        """
        return self.source != RESULTS_NAME

    @property
    def verdict(self) -> str | None:
        """passed, failed or skipped; None when the spec was interrupted or not selected: no result."""
        if not self.selected or self.status == "interrupted":
            return None
        return "failed" if self.failed else self.status


def now() -> str:
    """The time as run.json and results.jsonl record it: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsFile:
    """``results.jsonl``: one JSON line per finished spec, appended and flushed to disk as it finishes.

    Append-only, so that whatever stops the run (Ctrl-C, SIGKILL, a host that
    goes away) loses at most the spec that was running. Each line opens the
    file by its name again: a run lasts hours in a directory that may be a
    git checkout, and a ``git stash`` or ``checkout`` meanwhile replaces the
    file; a descriptor held open would write on into the replaced, deleted
    one (chunk 5 of run-2026-12 lost 59 results to the disk that way until
    they were copied back from ``/proc``).
    """

    def __init__(self, report_dir: Path, chunk: int) -> None:
        self.path = report_dir / RESULTS_NAME
        self.chunk = chunk
        self._recording = False

    def __enter__(self) -> ResultsFile:
        self.path.touch()
        self._recording = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._recording = False

    def append(self, result: SpecResult) -> None:
        if not self._recording or not result.is_spec:
            return
        entry: dict[str, Any] = {
            "name": result.title, "state": result.verdict or result.status, "seconds": result.seconds,
            "ginkgo_state": result.status, "chunk": self.chunk, "finished": now(),
        }  # fmt: skip
        if result.detail:
            entry["reason" if result.status == "skipped" else "failure"] = result.detail
        with open(self.path, "a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())


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
            result = SpecResult(f"{SPEC_PREFIX}{entry['name']}", entry["ginkgo_state"], float(entry["seconds"]),
                                detail, RESULTS_NAME)  # fmt: skip
            results.append((int(entry["chunk"]), result))
        except (ValueError, KeyError, TypeError):
            continue
    return results
