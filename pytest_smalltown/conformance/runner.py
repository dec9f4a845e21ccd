"""The runner: run (or resume) the suite against a cluster's kubeconfig, chunk by chunk, and write the report.

A run is cut short sometimes (Ctrl-C, SIGTERM, a host that goes away), and a
full run under emulation takes hours, so a run keeps what it learned: the plan
first (``run.json``, :mod:`plan`), every finished spec as it finishes
(``results.jsonl``, :mod:`results`), and whatever happens, the merged JUnit and
``summary.txt`` at the end. :func:`resume_conformance` runs only the planned
specs with no result yet (and on request the failed ones, or those whose result
no JUnit of ``e2e.test`` holds), as a new chunk whose JUnit gets its own name.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.collect import build_report, collect_results
from pytest_smalltown.conformance.command import (
    CONFORMANCE_FOCUS,
    RunOptions,
    SuiteBinaries,
    build_command,
    build_suite,
)
from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import LOG_NAME, PLAN_NAME, RESULTS_NAME, SUMMARY_NAME
from pytest_smalltown.conformance.junit import write_merged_junit
from pytest_smalltown.conformance.plan import Chunk, ChunkRecord, RunPlan, SelectedSpec, list_specs, plan_chunks
from pytest_smalltown.conformance.process import INTERRUPT_GRACE, start_suite
from pytest_smalltown.conformance.report import ConformanceReport, clip
from pytest_smalltown.conformance.results import ResultsFile, SpecResult, now
from pytest_smalltown.conformance.stream import SpecStream
from pytest_smalltown.base.progress import Progress, stderr_progress


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
    progress(f"conformance: {len(specs)} specs selected by focus {clip(focus, 60)!r}"
             f"{f' and skip {clip(skip, 40)!r}' if skip else ''}; the list: {report_dir / PLAN_NAME}")
    return _run_plan(kubeconfig, plan, report_dir, procs, suite, progress, Rerun())


def resume_conformance(
    kubeconfig: Path,
    *,
    report_dir: Path,
    procs: int | None = None,
    rerun_failed: bool = False,
    rerun_without_junit: bool = False,
    progress: Progress = stderr_progress,
    binaries: SuiteBinaries | None = None,
) -> ConformanceReport:
    """Run the specs of ``report_dir``'s run that have no result yet (never run, or interrupted).

    With ``rerun_failed``, also those whose result is failed; with
    ``rerun_without_junit``, also those whose result is only in
    ``results.jsonl`` (their chunk wrote no JUnit), so that the run's JUnit
    can be made whole. A new result is appended (``results.jsonl`` keeps every
    one) and the latest counts. Same focus and skip as the run it continues (from ``run.json``),
    same process count unless ``procs`` is given; the results go to the same
    files, the JUnit to a new chunk's file, and the report covers every chunk.
    """
    report_dir = report_dir.absolute()
    plan = RunPlan.load(report_dir)
    procs = procs or plan.procs
    _check_run(kubeconfig, procs)
    suite = binaries or build_suite(procs, progress)
    rerun = Rerun(failed=rerun_failed, without_junit=rerun_without_junit)
    return _run_plan(kubeconfig, plan, report_dir, procs, suite, progress, rerun)


@dataclass(frozen=True)
class Rerun:
    """Which specs that have a result a resumed run runs again; a spec's latest result counts."""

    #: Those whose result is failed (``--rerun-failed``).
    failed: bool = False
    #: Those whose result is only in ``results.jsonl``, in no JUnit of ``e2e.test`` (``--rerun-without-junit``).
    without_junit: bool = False


def _pending_specs(plan: RunPlan, report_dir: Path, rerun: Rerun, progress: Progress) -> list[SelectedSpec]:
    """The planned specs to run now: those without a result, and those ``rerun`` asks for."""
    latest = {result.title: result for result in collect_results(report_dir, plan).results if result.is_spec}
    failed = {name for name, result in latest.items() if rerun.failed and result.verdict == "failed"}
    unproven = {name for name, result in latest.items() if rerun.without_junit and not result.from_junit}
    pending = [spec for spec in plan.specs if spec.name not in latest or spec.name in failed | unproven]
    if plan.specs and not pending:
        conditions = (" and none failed" if rerun.failed else "") + (
            " and each is in e2e.test's JUnit" if rerun.without_junit else "")
        progress(f"conformance: every one of the {len(plan.specs)} selected specs has a result{conditions}; "
                 "nothing to run")
        return pending
    if failed:
        progress(f"conformance: {len(failed)} specs whose result is failed run again (--rerun-failed)")
    if unproven:
        progress(f"conformance: {len(unproven)} specs whose result is only in {RESULTS_NAME}, in no JUnit of "
                 "e2e.test, run again (--rerun-without-junit)")
    return pending


def _run_plan(
    kubeconfig: Path,
    plan: RunPlan,
    report_dir: Path,
    procs: int,
    suite: SuiteBinaries,
    progress: Progress,
    rerun: Rerun,
) -> ConformanceReport:
    """Run the planned specs without a result and those ``rerun`` asks for, chunk by chunk; always write the report."""
    started = time.monotonic()
    pending = _pending_specs(plan, report_dir, rerun, progress)
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
    record = ChunkRecord(chunk.index, chunk.junit, chunk.procs, len(chunk.specs), now())
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
