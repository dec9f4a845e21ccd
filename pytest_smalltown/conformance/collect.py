"""A report directory's results as they stand: every chunk's, judged against the plan.

Chunk by chunk, a chunk's JUnit (written by ``e2e.test``) is the authority for
the specs it names, its lines of ``results.jsonl`` for the others (a chunk cut
short wrote no JUnit); a later chunk's result replaces an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import RESULTS_NAME
from pytest_smalltown.conformance.junit import parse_junit
from pytest_smalltown.conformance.plan import ChunkRecord, RunPlan
from pytest_smalltown.conformance.report import ConformanceReport, duration_text
from pytest_smalltown.conformance.results import SpecResult, read_results


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
    took = duration_text(chunk.seconds or 0.0)
    return (f"chunk {chunk.index}: {results} results of its {chunk.specs} specs in {took}"
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
