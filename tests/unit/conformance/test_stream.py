"""Results as specs finish: Ginkgo's verbose output (recorded and stand-in) read into one result per spec."""

from __future__ import annotations

import pytest

from pytest_smalltown.conformance.plan import SelectedSpec
from pytest_smalltown.conformance.stream import SpecStream, failure_text, guess_name

from .recordings import (
    RECORDED_FAILING_RUN,
    RECORDED_NO_CLUSTER,
    RECORDED_PARALLEL_HEAD,
    STANDIN_OUTCOMES,
    STANDIN_PARALLEL,
    STANDIN_SERIAL,
    STANDIN_SERIAL_INTERRUPTED,
    STANDIN_SPECS,
)


def _stream(text: str, specs: tuple[SelectedSpec, ...] = STANDIN_SPECS) -> tuple[SpecStream, list[str]]:
    stream = SpecStream(specs)
    messages = [event.message for event in map(stream.feed, text.splitlines(keepends=True)) if event]
    return stream, messages


@pytest.mark.parametrize("recorded", [STANDIN_SERIAL, STANDIN_PARALLEL], ids=["serial", "parallel"])
def test_every_finished_spec_is_read_with_its_name_state_and_duration(recorded: str) -> None:
    stream, messages = _stream(recorded)
    specs = {r.title: r for r in stream.results if r.is_spec}
    assert {name: r.status for name, r in specs.items()} == STANDIN_OUTCOMES
    assert len([r for r in stream.results if r.is_spec]) == 10, "each once: a delimiter or bullet in a timeline is not"
    assert specs[STANDIN_SPECS[0].name].seconds == pytest.approx(0.2, abs=0.01)
    assert specs[STANDIN_SPECS[5].name].seconds == pytest.approx(0.301)
    assert specs[STANDIN_SPECS[1].name].detail.splitlines()[:2] == [
        "[FAILED] pod was not updated", "second line of the failure"]  # fmt: skip
    assert specs[STANDIN_SPECS[1].name].detail.splitlines()[-1].startswith("In [It] at: /tmp/ginkgo-standin/")
    assert specs[STANDIN_SPECS[3].name].detail.startswith(
        "[FAILED] unexpected error while creating namespace: fake API server: not implemented\nIn [BeforeEach] at:")
    assert specs[STANDIN_SPECS[4].name].detail.startswith("[SKIPPED] Only supported for providers [gce] (not skeleton)")
    assert specs[STANDIN_SPECS[6].name].detail.splitlines()[-1] == "assignment to entry in nil map"
    assert specs[STANDIN_SPECS[5].name].detail.startswith("[TIMEDOUT] A node timeout occurred")
    assert messages[0] == "will run 10 of 11 specs"
    assert sum(m.startswith(("FAILED", "TIMEDOUT", "PANICKED")) for m in messages) == 4
    assert messages[-1] == "10/10 specs done, 4 failed"


def test_in_parallel_ginkgo_runs_the_serial_specs_last() -> None:
    stream, _ = _stream(STANDIN_PARALLEL)
    order = [r.title for r in stream.results if r.is_spec]
    assert set(order[-2:]) == {STANDIN_SPECS[8].name, STANDIN_SPECS[9].name}


def test_an_interrupted_spec_is_read_as_interrupted_not_failed() -> None:
    stream, messages = _stream(STANDIN_SERIAL_INTERRUPTED)
    (result,) = [r for r in stream.results if r.is_spec]
    assert (result.title, result.status, result.verdict, result.failed) == (
        STANDIN_SPECS[7].name, "interrupted", None, False)  # fmt: skip
    assert result.detail.splitlines()[0] == "[INTERRUPTED] Interrupted by User"
    assert messages == [f"INTERRUPTED {STANDIN_SPECS[7].name} (1/? specs done, 0 failed)"]


def test_e2e_tests_own_failure_blocks_name_the_spec_exactly() -> None:
    """The real e2e.test's output (default verbosity): labels and the [BeforeEach] mark come off the name."""
    specs = (
        SelectedSpec("[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                     ("sig-node", "NodeConformance", "Conformance")),
        SelectedSpec("[sig-api-machinery] Discovery should validate PreferredVersion for each APIGroup [Conformance]",
                     ("sig-api-machinery", "Conformance")),
    )  # fmt: skip
    stream, messages = _stream(RECORDED_FAILING_RUN, specs)
    assert [(r.title, r.status) for r in stream.results] == [(specs[0].name, "failed"), (specs[1].name, "failed")]
    assert stream.results[0].detail == (
        "[FAILED] context deadline exceeded\n"
        "In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23"
    )
    assert messages == ["will run 2 of 7144 specs", f"FAILED {specs[0].name} (1/2 specs done, 1 failed)",
                        f"FAILED {specs[1].name} (2/2 specs done, 2 failed)"]  # fmt: skip
    stream, _ = _stream(RECORDED_FAILING_RUN, ())
    assert [r.title for r in stream.results] == [s.name for s in specs], "without the plan, the name is guessed"


def test_a_failed_suite_setup_is_reported() -> None:
    stream, messages = _stream(RECORDED_NO_CLUSTER)
    assert (stream.total, stream.done, stream.failed) == (1, 0, ["[SynchronizedBeforeSuite]"])
    assert messages[-1] == "SynchronizedBeforeSuite FAILED: the suite cannot run its specs (see the log)"
    assert stream.results[0].detail.startswith("[FAILED] context deadline exceeded\nIn [SynchronizedBeforeSuite] at:")


def test_progress_under_the_ginkgo_cli() -> None:
    stream, messages = _stream(RECORDED_PARALLEL_HEAD)
    stream.finish()
    assert (stream.total, stream.done) == (2, 1)
    assert messages[0] == "will run 2 of 7144 specs"


def test_names_are_guessed_by_the_frameworks_rule_when_no_plan_knows_them() -> None:
    assert guess_name("[sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] "
                      "[sig-node, NodeConformance, Conformance]") == (
        "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]")  # fmt: skip
    assert guess_name("TOP-LEVEL [BeforeEach] [sig-x] Y [It] should z [Conformance] [sig-x, Conformance]") == (
        "[sig-x] Y should z [Conformance]")  # fmt: skip
    assert guess_name("[sig-x] y should keep [its tag]") == "[sig-x] y should keep [its tag]", "not a label list"


def test_failure_text_keeps_the_first_lines_and_where() -> None:
    lines = ["name", "loc", "", "  Timeline >>", "  [FAILED] in [It] - x.go:1 @ t", "  << Timeline", "",
             *(f"  [FAILED] line {i}" if i == 0 else f"  line {i}" for i in range(9)), "  In [It] at: x.go:1 @ t"]
    assert failure_text(lines).splitlines() == ["[FAILED] line 0", "line 1", "line 2", "line 3", "In [It] at: x.go:1 @ t"]
    assert failure_text(["name", "loc"]) == ""

