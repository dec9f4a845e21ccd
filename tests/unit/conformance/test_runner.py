"""The runner over a fake e2e.test: plan, stream, record, resume, re-run, merge, report, and the CLI's exits."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_smalltown.cli import main
from pytest_smalltown.conformance import collect, command, smoke
from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.junit import write_merged_junit
from pytest_smalltown.conformance.plan import RunPlan

from .fakes import REPO, SPECS, FakeSuite


def test_a_run_plans_streams_records_and_reports(fake: FakeSuite) -> None:
    fake.will({SPECS[1].name: "failed", SPECS[2].name: "skipped"})
    messages: list[str] = []
    out = fake.out
    report = fake.run(messages.append)
    plan = RunPlan.load(out)
    assert [spec.name for spec in plan.specs] == [spec.name for spec in SPECS[:6]], "the dry run's selection"
    assert (plan.focus, plan.skip, plan.procs, [c.junit for c in plan.chunks]) == (
        r"\[Conformance\]", None, 1, ["junit_01.xml"])  # fmt: skip
    assert plan.chunks[0].returncode == 1
    results = fake.results()
    assert [(r["name"], r["state"]) for r in results] == [
        (SPECS[0].name, "passed"), (SPECS[1].name, "failed"), (SPECS[2].name, "skipped"),
        (SPECS[3].name, "passed"), (SPECS[4].name, "passed"), (SPECS[5].name, "passed"),
    ]  # fmt: skip
    assert results[1]["failure"].startswith("[FAILED] it went wrong\nIn [It] at: k8s.io/kubernetes/test/e2e/fake.go")
    assert results[2]["reason"].startswith("[SKIPPED] Only supported") and results[0]["seconds"] == 1.5
    assert (report.passed, report.failed, report.skipped, report.not_run, report.ok) == (4, 1, 1, 0, False)
    assert all(r.source == "junit_01.xml" for r in report.judged), "e2e.test's JUnit is the authority"
    assert (out / "summary.txt").read_text() == report.render() + "\n"
    assert any(m.startswith("conformance: will run 6 of 7 specs") for m in messages)
    assert f"FAILED {SPECS[1].name} (2/6 specs done, 1 failed)" in " ".join(messages)
    log = (out / "e2e.log").read_text()
    assert log.startswith("$ ") and "--ginkgo.v" in log.splitlines()[0]
    with pytest.raises(ConformanceError, match="holds a run already: continue it with smalltown conformance --resume"):
        fake.run(messages.append)
    (out / "run.json").unlink()
    with pytest.raises(ConformanceError, match="holds a run already"):  # its results alone are a run too
        fake.run(messages.append)


def test_each_result_is_on_disk_before_the_next_spec_starts(fake: FakeSuite) -> None:
    """Flushed per spec: the fake waits, before each spec, until results.jsonl holds every earlier one."""
    fake.will(wait_for_results=True)
    fake.run()
    assert (fake.out / "observed").read_text().split() == ["0", "1", "2", "3", "4", "5"]


def _interrupt_after(specs_done: int) -> Callable[[str], None]:
    def progress(message: str) -> None:
        if f"{specs_done}/" in message and "specs done" in message:
            raise KeyboardInterrupt

    return progress


def test_an_interrupted_run_keeps_its_results_and_resume_runs_only_the_rest(fake: FakeSuite) -> None:
    out = fake.out
    fake.will({SPECS[1].name: "failed", SPECS[3].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        fake.run(_interrupt_after(3))
    # What the interrupted run learned: three results, the spec it stopped is not one, the rest not run.
    assert [(r["name"], r["state"]) for r in fake.results()] == [
        (SPECS[0].name, "passed"), (SPECS[1].name, "failed"), (SPECS[2].name, "passed"),
        (SPECS[3].name, "interrupted"),
    ]  # fmt: skip
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("conformance FAILED: 2 passed, 1 failed, 0 skipped, 3 not run of 6 specs")
    assert "note: the run was interrupted; e2e.test was stopped" in summary
    assert (out / "junit_01.xml").exists(), "Ginkgo writes its report on the first interrupt"

    fake.will({SPECS[1].name: "passed"})  # would pass now: it must not run again
    messages: list[str] = []
    report = fake.resume(messages.append)
    argv = json.loads((out / "argv-chunk02_.json").read_text())
    focus = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--ginkgo.focus="))
    assert [s.name for s in SPECS if re.search(focus, f"Kubernetes e2e suite {s.name}")] == [
        SPECS[3].name, SPECS[4].name, SPECS[5].name]  # fmt: skip
    assert (report.passed, report.failed, report.skipped, report.not_run) == (5, 1, 0, 0)
    assert not report.ok, "the failure of the first chunk stands"
    text = report.render()
    assert re.search(r"^chunk 1: 3 results of its 6 specs in [\d.]+s( \([\d.]+ specs/min\))?, 1 process, "
                     r"interrupted$", text, re.M), text
    assert re.search(r"^chunk 2: 3 results of its 3 specs in .*, exit status 0$", text, re.M), text
    assert [c.junit for c in RunPlan.load(out).chunks] == ["junit_01.xml", "junit_chunk02_01.xml"]
    assert (out / "junit_chunk02_01.xml").exists() and (out / "junit_01.xml").exists(), "each chunk's JUnit is kept"
    merged = ET.parse(out / "junit_merged.xml").getroot()
    assert fake.merged_cases() == {"[It] " + SPECS[0].name: "passed", "[It] " + SPECS[1].name: "failed",
                     "[It] " + SPECS[2].name: "passed", "[It] " + SPECS[3].name: "passed",
                     "[It] " + SPECS[4].name: "passed", "[It] " + SPECS[5].name: "passed",
                     "[SynchronizedBeforeSuite]": "passed"}  # fmt: skip
    properties = fake.merged_properties()
    assert properties["SmalltownMerged"] == "true"
    assert properties["SmalltownMergedFrom"] == "junit_01.xml junit_chunk02_01.xml"
    assert (properties["SmalltownSpecsSelected"], properties["SmalltownSpecsNotRun"]) == ("6", "0")
    assert "Merged by pytest-smalltown" in (out / "junit_merged.xml").read_text()
    assert merged.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


def test_a_chunk_that_wrote_no_junit_is_judged_by_its_streamed_results(fake: FakeSuite) -> None:
    """SIGKILLed (or stopped before Ginkgo wrote its report): results.jsonl stands in, and says so."""
    out = fake.out
    fake.will({SPECS[2].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        fake.run(_interrupt_after(2))
    (out / "junit_01.xml").unlink()
    (out / "junit_merged.xml").unlink()  # a SIGKILLed runner merges nothing either
    report = collect.load_report(out)
    assert (report.passed, report.not_run) == (2, 4)
    assert {r.source for r in report.judged} == {"results.jsonl"}
    assert "note: chunk 1 wrote no JUnit; its results come from results.jsonl" in report.render()


def test_a_merge_keeps_the_cases_of_a_chunk_whose_junit_is_gone(fake: FakeSuite) -> None:
    """A report directory committed without its chunks' JUnit (.gitignore): junit_merged.xml holds their cases."""
    out = fake.out
    fake.will({SPECS[1].name: "failed", SPECS[3].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        fake.run(_interrupt_after(3))
    first = fake.merged_cases()
    assert len(first) == 4 and first["[It] " + SPECS[1].name] == "failed"
    (out / "junit_01.xml").unlink()  # left out of git

    fake.will()
    report = fake.resume()
    cases = fake.merged_cases()
    specs_of_chunk_1 = {name: status for name, status in first.items() if name and name.startswith("[It] ")}
    assert {name: cases[name] for name in specs_of_chunk_1 if name in cases} == specs_of_chunk_1, "chunk 1's are kept"
    assert len([name for name in cases if name and name.startswith("[It] ")]) == 6, "and chunk 2's are added"
    assert fake.merged_properties()["SmalltownMergedFrom"] == "junit_01.xml junit_chunk02_01.xml"
    assert fake.merged_properties()["SmalltownResultsOnlyInResultsJsonl"] == "0"
    assert "junit_01.xml [gone: its cases as the previous junit_merged.xml kept them]" in (
        out / "junit_merged.xml").read_text()
    assert (report.passed, report.failed, report.not_run) == (5, 1, 0)
    assert {r.source for r in report.judged} == {"junit_01.xml", "junit_chunk02_01.xml"}
    text = report.render()
    assert "note: chunk 1's JUnit is gone; junit_merged.xml kept 3 of its results, results.jsonl has 0 more" in text
    assert "[FAILED] it went wrong" in text, "a kept case's failure text is the JUnit's"

    # Merging again (the next resume, or one more commit) keeps them still.
    again = fake.resume()
    assert {name: status for name, status in fake.merged_cases().items() if name != "[SynchronizedBeforeSuite]"} == {
        name: status for name, status in cases.items() if name != "[SynchronizedBeforeSuite]"}  # fmt: skip
    assert "note: chunk 1's JUnit is gone; junit_merged.xml kept 3 of its results" in again.render()


def test_the_committed_run_keeps_every_merged_case_when_merged_again(tmp_path: Path) -> None:
    """docs/conformance/run-2026-12 is in git without its chunks' JUnit: merging it again loses no test case."""
    committed = REPO / "docs" / "conformance" / "run-2026-12"
    if not (committed / "junit_merged.xml").exists():
        pytest.skip("no committed run in this checkout")
    copy = tmp_path / "run"
    shutil.copytree(committed, copy)
    for chunk_junit in [*copy.glob("junit_0*.xml"), *copy.glob("junit_chunk*.xml")]:
        chunk_junit.unlink()  # as in a clean checkout: git holds none of them

    def spec_cases() -> dict[str | None, str | None]:
        # Suite-level nodes ([SynchronizedBeforeSuite]...) belong to the invocation that ran them; a spec's case stays.
        cases = ET.parse(copy / "junit_merged.xml").iter("testcase")
        return {case.get("name"): case.get("status") for case in cases if (case.get("name") or "").startswith("[It]")}

    before = spec_cases()
    report = collect.load_report(copy)
    write_merged_junit(report, RunPlan.load(copy))
    after = spec_cases()
    assert before and {name: after.get(name) for name in before} == before


def test_a_merge_without_the_chunks_junit_or_a_merged_file_that_names_it_keeps_no_case(fake: FakeSuite) -> None:
    """A merged file that did not merge the chunk's JUnit holds none of its cases: results.jsonl alone counts."""
    out = fake.out
    fake.run()
    merged = (out / "junit_merged.xml").read_text()
    (out / "junit_merged.xml").write_text(merged.replace('value="junit_01.xml"', 'value=""'))
    (out / "junit_01.xml").unlink()
    report = collect.load_report(out)
    assert {r.source for r in report.judged} == {"results.jsonl"} and report.passed == 6
    assert "note: chunk 1 wrote no JUnit; its results come from results.jsonl" in report.render()


def test_rerun_failed_runs_the_failed_specs_again_and_the_latest_result_counts(fake: FakeSuite) -> None:
    out = fake.out
    fake.will({SPECS[1].name: "failed", SPECS[4].name: "failed"})
    assert not fake.run().ok
    messages: list[str] = []
    fake.resume(messages.append)
    assert messages == ["conformance: every one of the 6 selected specs has a result; nothing to run"]

    fake.will({SPECS[4].name: "failed"})  # SPECS[1] passes now, SPECS[4] fails again
    messages.clear()
    report = fake.resume(messages.append, rerun_failed=True)
    assert "conformance: 2 specs whose result is failed run again (--rerun-failed)" in messages
    argv = json.loads((out / "argv-chunk02_.json").read_text())
    focus = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--ginkgo.focus="))
    assert [s.name for s in SPECS if re.search(focus, f"Kubernetes e2e suite {s.name}")] == [
        SPECS[1].name, SPECS[4].name]  # fmt: skip
    history = [(r["name"], r["state"], r["chunk"]) for r in fake.results()]
    assert history[6:] == [(SPECS[1].name, "passed", 2), (SPECS[4].name, "failed", 2)], "appended: history stays"
    assert history[1] == (SPECS[1].name, "failed", 1)
    assert (report.passed, report.failed, report.not_run, report.rerun) == (5, 1, 0, (SPECS[1].name, SPECS[4].name))
    assert report.rerun_passed == 1
    text = (out / "summary.txt").read_text()
    assert "re-run: 2 specs that had failed ran again; 1 of them passed then" in text
    assert fake.merged_cases()["[It] " + SPECS[1].name] == "passed", "the merged JUnit takes the latest result"

    fake.will()
    report = fake.resume(rerun_failed=True)
    assert report.ok and report.rerun_passed == 2 and report.passed == 6
    messages.clear()
    fake.resume(messages.append, rerun_failed=True)
    assert messages == ["conformance: every one of the 6 selected specs has a result and none failed; nothing to run"]


def test_cli_rerun_failed_goes_with_resume(
    fake: FakeSuite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fake.out
    fake.will({SPECS[1].name: "failed"}, specs=SPECS[:2])
    monkeypatch.setattr(command, "build_suite", lambda procs, progress: fake.binaries)
    kubeconfig = ["--kubeconfig", str(fake.kubeconfig)]
    assert main(["conformance", "--rerun-failed", "--report-dir", str(out), *kubeconfig]) == 2
    assert "--rerun-failed runs the failed specs of a run again; give the run with --resume DIR" in capsys.readouterr().err
    assert main(["conformance", "--report-dir", str(out), *kubeconfig]) == 1
    fake.will(specs=SPECS[:2])
    assert main(["conformance", "--resume", str(out), *kubeconfig]) == 1, "without it, the failure stands"
    capsys.readouterr()
    assert main(["conformance", "--resume", str(out), "--rerun-failed", *kubeconfig]) == 0
    assert "re-run: 1 specs that had failed ran again; 1 of them passed then" in capsys.readouterr().out


def test_rerun_without_junit_runs_again_the_specs_only_results_jsonl_holds(fake: FakeSuite) -> None:
    """A chunk that wrote no JUnit leaves results only in results.jsonl; the summary says so and a resume mends it."""
    out = fake.out
    fake.will({SPECS[1].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        fake.run(_interrupt_after(1))
    (out / "junit_01.xml").unlink()
    report = collect.load_report(out)
    assert [r.from_junit for r in report.judged] == [True], "junit_merged.xml kept chunk 1's case: it counts as JUnit"
    (out / "junit_merged.xml").unlink()  # now chunk 1 is as if it wrote no JUnit: SPECS[0] is in results.jsonl only
    fake.will({SPECS[2].name: "failed"})
    report = fake.resume()
    line = "counted from e2e.test's JUnit: 4 passed, 1 failed; from results.jsonl only: 1 passed, 0 failed"
    assert line in report.render().splitlines() and line in (out / "summary.txt").read_text()
    messages: list[str] = []
    fake.resume(messages.append)
    assert messages == ["conformance: every one of the 6 selected specs has a result; nothing to run"]

    fake.will()
    messages.clear()
    report = fake.resume(messages.append, rerun_without_junit=True, rerun_failed=True)
    assert messages[:2] == [
        "conformance: 1 specs whose result is failed run again (--rerun-failed)",
        "conformance: 1 specs whose result is only in results.jsonl, in no JUnit of e2e.test, run again "
        "(--rerun-without-junit)",
    ]  # fmt: skip
    argv = json.loads((out / "argv-chunk03_.json").read_text())
    focus = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--ginkgo.focus="))
    assert [s.name for s in SPECS if re.search(focus, f"Kubernetes e2e suite {s.name}")] == [
        SPECS[0].name, SPECS[2].name]  # fmt: skip
    assert [(r["name"], r["chunk"]) for r in fake.results()].count((SPECS[0].name, 1)) == 1, "history stays"
    assert report.ok and report.passed == 6 and all(r.from_junit for r in report.judged)
    assert "counted from e2e.test's JUnit: 6 passed, 0 failed; from results.jsonl only: 0 passed, 0 failed" in \
        report.render()
    assert fake.merged_properties()["SmalltownResultsOnlyInResultsJsonl"] == "0"
    assert "[It] " + SPECS[0].name in fake.merged_cases(), "the merged JUnit is whole"
    messages.clear()
    fake.resume(messages.append, rerun_without_junit=True)
    assert messages == ["conformance: every one of the 6 selected specs has a result and each is in e2e.test's "
                        "JUnit; nothing to run"]  # fmt: skip


def test_cli_rerun_without_junit_goes_with_resume(
    fake: FakeSuite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fake.out
    fake.will(specs=SPECS[:2])
    monkeypatch.setattr(command, "build_suite", lambda procs, progress: fake.binaries)
    kubeconfig = ["--kubeconfig", str(fake.kubeconfig)]
    assert main(["conformance", "--rerun-without-junit", "--report-dir", str(out), *kubeconfig]) == 2
    assert ("--rerun-without-junit runs again the specs of a run whose result is only in results.jsonl; give the run "
            "with --resume DIR") in capsys.readouterr().err  # fmt: skip
    assert main(["conformance", "--report-dir", str(out), *kubeconfig]) == 0
    (out / "junit_01.xml").unlink()
    (out / "junit_merged.xml").unlink()
    capsys.readouterr()
    assert main(["conformance", "--resume", str(out), *kubeconfig]) == 0
    assert "counted from e2e.test's JUnit: 0 passed, 0 failed; from results.jsonl only: 2 passed" in capsys.readouterr().out
    assert main(["conformance", "--resume", str(out), "--rerun-without-junit", *kubeconfig]) == 0
    assert "counted from e2e.test's JUnit: 2 passed, 0 failed; from results.jsonl only: 0 passed" in capsys.readouterr().out


def test_resuming_a_finished_run_runs_nothing(fake: FakeSuite) -> None:
    out = fake.out
    assert fake.run().ok
    messages: list[str] = []
    report = fake.resume(messages.append)
    assert report.ok and report.passed == 6
    assert messages == ["conformance: every one of the 6 selected specs has a result; nothing to run"]
    with pytest.raises(ConformanceError, match="holds no conformance run"):
        fake.resume(messages.append, report_dir=fake.workdir)


def test_a_focus_that_selects_nothing_runs_nothing_and_is_no_pass(fake: FakeSuite) -> None:
    report = fake.run(focus="nothing-matches")
    assert not report.ok and "no spec matched the focus" in report.render()
    assert not (fake.out / "e2e.log").exists(), "e2e.test was not started for nothing"


def test_cli_exit_status_follows_the_report(
    fake: FakeSuite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.will(specs=SPECS[:2])
    monkeypatch.setattr(command, "build_suite", lambda procs, progress: fake.binaries)
    argv = ["conformance", "--kubeconfig", str(fake.kubeconfig), "--report-dir", str(fake.out)]
    assert main(argv) == 0
    assert "conformance PASSED: 2 passed, 0 failed, 0 skipped, 0 not run of 2 specs" in capsys.readouterr().out
    assert main(argv) == 2, "a directory that holds a run is not written over"
    assert "--resume" in capsys.readouterr().err
    # Nothing ran: not a pass.
    assert main([*argv[:-1], str(fake.workdir / "other"), "--focus", "nothing"]) == 1


def test_cli_resume_runs_the_rest_and_fails_while_specs_are_not_run(
    fake: FakeSuite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = fake.out
    fake.will({SPECS[1].name: "hang"})
    monkeypatch.setattr(command, "build_suite", lambda procs, progress: fake.binaries)
    with pytest.raises(KeyboardInterrupt):
        fake.run(_interrupt_after(1))
    assert main(["conformance", "--resume", str(out), "--focus", "x"]) == 2
    assert "--focus cannot change them" in capsys.readouterr().err
    assert main(["conformance", "--resume", str(fake.workdir / "nothing")]) == 2
    assert "holds no conformance run" in capsys.readouterr().err
    fake.will()
    assert main(["conformance", "--resume", str(out), "--kubeconfig", str(fake.kubeconfig)]) == 0
    assert "conformance PASSED: 6 passed, 0 failed, 0 skipped, 0 not run of 6 specs" in capsys.readouterr().out


# --- the smoke test's report directory ---------------------------------------------------


def _e2e_module() -> Any:
    spec = importlib.util.spec_from_file_location("e2e_test_conformance", REPO / "e2e" / "test_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_reports_of_two_sessions_do_not_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session writes its smoke report under its own run's artifacts directory."""
    from pytest_smalltown.features.session import SESSION_KEY

    module = _e2e_module()
    used: list[Path] = []

    def fake_run(kubeconfig: Path, **kwargs: Any) -> Any:
        used.append(kwargs["report_dir"])
        return SimpleNamespace(ok=True, passed=len(smoke.SMOKE_TESTS), render=lambda: "ok")

    monkeypatch.setattr(module, "run_conformance", fake_run)
    for run_id in ("20261207-114400-101", "20261207-114400-202"):
        stash = {SESSION_KEY: SimpleNamespace(run_id=run_id)}
        request = SimpleNamespace(config=SimpleNamespace(rootpath=tmp_path, stash=stash))
        settings = SimpleNamespace(artifacts=None)
        module.test_conformance_smoke_subset_passes(SimpleNamespace(kubeconfig_path=tmp_path), settings,
                                                    lambda message: None, request)  # fmt: skip
    assert used[0] != used[1]
    assert used == [tmp_path / "artifacts" / run / "conformance-smoke"
                    for run in ("20261207-114400-101", "20261207-114400-202")]  # fmt: skip

