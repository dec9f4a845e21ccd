"""A report directory's results as they stand: every chunk's, judged against the plan.

Chunk by chunk, a chunk's JUnit (written by ``e2e.test``) is the authority for
the specs it names, its lines of ``results.jsonl`` for the others (a chunk cut
short wrote no JUnit); a later chunk's result replaces an earlier one. A
report directory committed without its chunks' JUnit files (they are large)
keeps their test cases in ``junit_merged.xml``, which then stands in for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import MERGED_JUNIT_NAME, RESULTS_NAME
from pytest_smalltown.conformance.junit import MergedJunit, parse_junit
from pytest_smalltown.conformance.plan import ChunkRecord, RunPlan
from pytest_smalltown.conformance.report import ConformanceReport, duration_text
from pytest_smalltown.conformance.results import SpecResult, read_results


@dataclass(frozen=True)
class Collected:
    """A report directory's results as they stand, and what the counts alone do not say."""

    #: Each planned spec's latest result, then the suite-level nodes of the chunks this invocation ran.
    results: list[SpecResult]
    #: One line per chunk (how it went), then where results came from when a chunk's JUnit is missing.
    notes: list[str]
    #: Full names of the specs whose failure a later chunk ran again (``--rerun-failed``).
    rerun: tuple[str, ...]


def collect_results(
    report_dir: Path,
    plan: RunPlan,
    own_chunks: Iterable[int] = (),
    streamed_suite_nodes: dict[int, list[SpecResult]] | None = None,
) -> Collected:
    """Each planned spec's result over every chunk, then the suite-level nodes of ``own_chunks``; and notes.

    Chunk by chunk, a chunk's JUnit (written by ``e2e.test``) is the authority
    for the specs it names, its lines of ``results.jsonl`` for the others (a
    chunk cut short wrote no JUnit); a later chunk's result replaces an
    earlier one (``--resume`` runs only specs without one and interrupted ones,
    and with ``--rerun-failed`` the failed ones too). When a chunk's JUnit is
    gone, the test cases the previous ``junit_merged.xml`` kept of it stand in.
    """
    planned = {spec.name for spec in plan.specs}
    own = set(own_chunks)
    streamed: dict[int, list[SpecResult]] = {}
    for index, result in read_results(report_dir):
        streamed.setdefault(index, []).append(result)
    previous = MergedJunit.read(report_dir)
    verdicts: dict[str, SpecResult] = {}
    rerun: dict[str, None] = {}  # ordered set
    suite_nodes: list[SpecResult] = []
    notes = [_chunk_line(chunk, streamed.get(chunk.index, ())) for chunk in plan.chunks]
    for chunk in plan.chunks:
        lines = streamed.get(chunk.index, [])
        cases, from_junit = _chunk_cases(report_dir, chunk, lines, previous, notes)
        chunk_verdicts = {r.title: r for r in lines if r.title in planned and r.verdict}
        chunk_verdicts.update({r.title: r for r in cases if r.is_spec and r.title in planned and r.verdict})
        rerun.update(dict.fromkeys(name for name in chunk_verdicts
                                   if name in verdicts and verdicts[name].verdict == "failed"))  # fmt: skip
        verdicts.update(chunk_verdicts)
        if chunk.index in own:
            own_nodes = cases if from_junit else (streamed_suite_nodes or {}).get(chunk.index, [])
            suite_nodes += [r for r in own_nodes if not r.is_spec]
    results = [verdicts[spec.name] for spec in plan.specs if spec.name in verdicts] + suite_nodes
    return Collected(results, notes, tuple(rerun))


def _chunk_line(chunk: ChunkRecord, streamed: Iterable[SpecResult]) -> str:
    """How a chunk went: its results, wall time, pace and how it ended."""
    results = sum(result.verdict is not None for result in streamed)
    ended = "interrupted" if chunk.returncode is None else f"exit status {chunk.returncode}"
    pace = f" ({results / chunk.seconds * 60:.1f} specs/min)" if chunk.seconds else ""
    took = duration_text(chunk.seconds or 0.0)
    return (f"chunk {chunk.index}: {results} results of its {chunk.specs} specs in {took}"
            f"{pace}, {chunk.procs} process{'es' if chunk.procs > 1 else ''}, {ended}")


def _chunk_cases(
    report_dir: Path,
    chunk: ChunkRecord,
    streamed: Sequence[SpecResult],
    previous: MergedJunit | None,
    notes: list[str],
) -> tuple[list[SpecResult], bool]:
    """The test cases of a chunk's JUnit (and True); without one, those a previous merge kept (and False).

    A chunk without a JUnit that can be read gets a note saying where its
    results come from instead.
    """
    path = report_dir / chunk.junit
    try:
        return parse_junit(path), True
    except ConformanceError as error:
        kept = previous.kept_results(chunk.junit, streamed) if previous is not None else []
        if not kept:
            why = "wrote no JUnit" if not path.exists() else f"left an unreadable JUnit ({error})"
            notes.append(f"note: chunk {chunk.index} {why}; its results come from {RESULTS_NAME}")
            return [], False
        why = "is gone" if not path.exists() else "is unreadable"
        detail = "" if not path.exists() else f" ({error})"
        names = {result.name for result in kept}
        rest = sum(1 for result in streamed if result.verdict and result.name not in names)
        notes.append(f"note: chunk {chunk.index}'s JUnit {why}; {MERGED_JUNIT_NAME} kept {len(kept)} of its results, "
                     f"{RESULTS_NAME} has {rest} more{detail}")
        return kept, False


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
    collected = collect_results(report_dir, plan, own_chunks, streamed_suite_nodes)
    return ConformanceReport(tuple(collected.results), returncode, report_dir, seconds, tuple(command),
                             tuple(spec.name for spec in plan.specs), (*notes, *collected.notes),
                             rerun=collected.rerun)  # fmt: skip


def load_report(report_dir: Path) -> ConformanceReport:
    """The counts of a report directory's run so far (spec results only; e.g. after an interruption)."""
    plan = RunPlan.load(report_dir)
    last = plan.chunks[-1].returncode if plan.chunks else None
    seconds = sum(chunk.seconds or 0.0 for chunk in plan.chunks)
    return build_report(report_dir, plan, returncode=last or 0, seconds=seconds)
