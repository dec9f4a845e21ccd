"""What a run selects and how it runs: the dry run, the command line, the smoke focus, chunks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_smalltown.cli import main
from pytest_smalltown.conformance import smoke
from pytest_smalltown.conformance.command import RunOptions, SuiteBinaries, build_command
from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.plan import (
    ChunkRecord,
    RunPlan,
    SelectedSpec,
    go_regexp_quote,
    parse_dry_run,
    plan_chunks,
)
from pytest_smalltown.conformance.smoke import smoke_focus

from .recordings import DRY_RUN_JSON, STANDIN_SPECS


def test_the_dry_run_report_lists_the_selected_specs_with_their_labels(tmp_path: Path) -> None:
    (tmp_path / "dry.json").write_text(DRY_RUN_JSON)
    specs = parse_dry_run(tmp_path / "dry.json")
    assert specs == [STANDIN_SPECS[8]], "the suite node and the filtered spec are not selected"
    assert specs[0].display == (
        "[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching "
        "[Conformance] [sig-scheduling, Serial, Conformance]"
    )
    assert specs[0].serial and specs[0].serial_decorated
    with pytest.raises(ConformanceError, match="cannot read the dry run"):
        parse_dry_run(tmp_path / "missing.json")


# --- command line -------------------------------------------------------------------

BINARIES = SuiteBinaries(e2e=Path("/c/e2e.test"), kube=Path("/c/kube"), ginkgo=Path("/c/ginkgo"))
OPTIONS = RunOptions(kubeconfig=Path("/k/kubeconfig"), report_dir=Path("/r"), kubectl=Path("/t/kubectl"))
FRAMEWORK = [
    "--kubeconfig=/k/kubeconfig", "--provider=skeleton", "--kubectl-path=/t/kubectl", "--report-dir=/r",
    "--e2e-output-dir=/r", "--minStartupPods=-1", "--disable-log-dump=true",
]  # fmt: skip


def test_serial_command_is_e2e_test_alone_and_verbose() -> None:
    assert build_command(BINARIES, OPTIONS) == [
        "/c/e2e.test", "--ginkgo.timeout=24h", "--ginkgo.no-color", "--ginkgo.force-newlines", "--ginkgo.v",
        r"--ginkgo.focus=\[Conformance\]", *FRAMEWORK,
    ]  # fmt: skip


def test_parallel_command_runs_the_ginkgo_cli_over_the_binary() -> None:
    options = RunOptions(OPTIONS.kubeconfig, OPTIONS.report_dir, OPTIONS.kubectl, focus="Pods", skip="Serial", procs=3,
                         report_prefix="chunk02_")  # fmt: skip
    assert build_command(BINARIES, options) == [
        "/c/ginkgo", "--procs=3", "--timeout=24h", "--no-color", "--force-newlines", "--v",
        "--focus=Pods", "--skip=Serial", "/c/e2e.test", "--", *FRAMEWORK, "--report-prefix=chunk02_",
    ]  # fmt: skip
    with pytest.raises(ConformanceError, match="needs the Ginkgo CLI"):
        build_command(SuiteBinaries(e2e=BINARIES.e2e, kube=BINARIES.kube), options)


def test_smoke_focus_matches_exactly_the_listed_specs() -> None:
    with pytest.raises(ConformanceError, match="smoke subset is empty"):
        smoke_focus(())
    listed = ["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]", "[sig-x] a.b (c)"]
    focus = re.compile(smoke_focus(listed))  # this subset of RE2 means the same in Python
    # Ginkgo matches "<suite description> <spec text>".
    assert all(focus.search(f"Kubernetes e2e suite {name}") for name in listed)
    for other in ("[sig-node] Pods should get a host IP [NodeConformance] [Conformance] [Slow]",
                  "[sig-x] aXb (c)", "[sig-node] Pods should get a host IP"):
        assert not focus.search(f"Kubernetes e2e suite {other}"), other
    assert go_regexp_quote("x y#z") == "x y#z"  # RE2 rejects Python's escaped space and hash


def test_cli_smoke_with_an_empty_list_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(smoke, "SMOKE_TESTS", ())
    assert main(["conformance", "--smoke", "--kubeconfig", "/nonexistent"]) == 2
    assert "smoke subset is empty" in capsys.readouterr().err
    assert main(["conformance", "--smoke", "--focus", "x"]) == 2


def _plan(specs: tuple[SelectedSpec, ...], focus: str = r"\[Conformance\]", chunks: int = 0) -> RunPlan:
    records = tuple(ChunkRecord(i, f"junit_{i}.xml", 2, 1, "t") for i in range(1, chunks + 1))
    return RunPlan(focus, "Flaky", 2, specs, records)


def test_the_first_chunk_runs_the_plans_focus_a_resumed_one_the_exact_names_left() -> None:
    plan = _plan(STANDIN_SPECS)
    (first,) = plan_chunks(plan, STANDIN_SPECS, procs=2)
    assert (first.index, first.focus, first.skip, first.procs, first.junit) == (
        1, r"\[Conformance\]", "Flaky", 2, "junit_01.xml")  # fmt: skip
    (resumed,) = plan_chunks(_plan(STANDIN_SPECS, chunks=1), STANDIN_SPECS[3:5], procs=2)
    assert (resumed.index, resumed.junit, resumed.report_prefix) == (2, "junit_chunk02_01.xml", "chunk02_")
    focus = re.compile(resumed.focus)
    assert [spec.name for spec in STANDIN_SPECS if focus.search(f"Kubernetes e2e suite {spec.name}")] == [
        STANDIN_SPECS[3].name, STANDIN_SPECS[4].name]  # fmt: skip


def test_serial_specs_are_left_to_ginkgo_when_it_knows_them_and_run_apart_when_it_does_not() -> None:
    """Every [Serial] conformance spec carries Ginkgo's Serial decorator (the framework adds it with the label):
    Ginkgo runs them on one process after the others. A [Serial] name without it gets a serial chunk of its own."""
    decorated = STANDIN_SPECS[8]
    undecorated = SelectedSpec("[sig-x] Things [Serial] should be alone [Conformance]", ("sig-x", "Conformance"))
    specs = (*STANDIN_SPECS[:2], decorated, undecorated)
    chunks = plan_chunks(_plan(specs), specs, procs=2)
    assert [(c.index, [s.name for s in c.specs], c.procs) for c in chunks] == [
        (1, [specs[0].name, specs[1].name, decorated.name], 2),
        (2, [undecorated.name], 1),
    ]
    assert re.search(chunks[1].focus, f"Kubernetes e2e suite {undecorated.name}")
    assert len(plan_chunks(_plan(specs), specs, procs=1)) == 1, "one process runs everything in turn anyway"

