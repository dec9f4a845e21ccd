"""The report of a run: its counts, judged against the plan, and the one screen of text in ``summary.txt``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.files import LOG_NAME, MERGED_JUNIT_NAME, RESULTS_NAME
from pytest_smalltown.conformance.results import SpecResult


def duration_text(seconds: float) -> str:
    """A duration as a person reads it: ``1h06m``, ``4m05s``, ``12.3s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut: one screen stays one screen."""
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
    #: Full names of the specs that had failed and ran again (``--rerun-failed``); their latest result counts.
    rerun: tuple[str, ...] = ()

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
    def rerun_passed(self) -> int:
        """How many of the re-run specs passed when they ran again."""
        rerun = set(self.rerun)
        return sum(r.verdict == "passed" for r in self.judged if r.title in rerun)

    def sources_text(self) -> str:
        """Where the passed and the failed results come from, in one line: e2e.test's JUnit or results.jsonl only.

        Only a result in the JUnit that ``e2e.test`` wrote is evidence a
        certification counts; one read from its verbose output alone (a chunk
        cut short wrote no JUnit) is shown apart, so the gap stays visible.
        """
        passed = [r for r in self.judged if r.verdict == "passed"]

        def counts(in_junit: bool) -> str:
            return (f"{sum(r.from_junit == in_junit for r in passed)} passed, "
                    f"{sum(r.from_junit == in_junit for r in self.failures)} failed")

        return f"counted from e2e.test's JUnit: {counts(True)}; from {RESULTS_NAME} only: {counts(False)}"

    @property
    def ok(self) -> bool:
        """True only if the suite exited cleanly, every selected spec has a result, none failed, one passed."""
        return self.returncode == 0 and not self.failures and self.passed > 0 and self.not_run == 0

    def render(self, width: int = 100, max_slowest: int = 5, max_failures: int = 8, failure_lines: int = 3) -> str:
        """One screen of text: the verdict, the counts, the slowest specs and the first failures."""
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [
            f"conformance {verdict}: {self.passed} passed, {self.failed} failed, {self.skipped} skipped, "
            f"{self.not_run} not run of {self.total} specs in {duration_text(self.seconds)} "
            f"(exit status {self.returncode})",
            f"report: {self.report_dir}  (results: {RESULTS_NAME}, JUnit: {MERGED_JUNIT_NAME}, log: {LOG_NAME})",
        ]
        if self.passed or self.failures:
            lines.append(self.sources_text())
        lines += [clip(note, width) for note in self.notes]
        if self.rerun:
            lines.append(f"re-run: {len(self.rerun)} specs that had failed ran again; {self.rerun_passed} of them "
                         f"passed then (each spec's latest result counts; {RESULTS_NAME} keeps every one)")
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
            lines += [clip(f"  {r.seconds:7.1f}s  {r.title}", width) for r in ran[:max_slowest]]
        if self.failures:
            lines += ["", f"failures ({self.failed}):"]
            for result in self.failures[:max_failures]:
                lines.append(f"  {result.title}")  # whole: it is what --focus takes to rerun it
                text = [line.strip() for line in result.detail.splitlines() if line.strip()]
                lines += [clip(f"      {line}", width) for line in text[:failure_lines]]
            if self.failed > max_failures:
                lines.append(f"  ... and {self.failed - max_failures} more in {MERGED_JUNIT_NAME} and {RESULTS_NAME}")
        return "\n".join(lines)
