"""The suite's processes: stopped with their children on Ctrl-C, SIGKILL of the runner, and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_smalltown.conformance.runner import run_suite

from .fakes import REPO, SPECS, FakeSuite


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SLEEPER = """
child = subprocess.Popen(['sleep', '300'])
(report_dir / 'pids').write_text(f'{os.getpid()} {child.pid}')
print('Will run 3 of 10 specs', flush=True)
time.sleep(300)
"""


def _sleeper(tmp_path: Path, ignore_sigint: bool) -> Path:
    script = tmp_path / "e2e.test"
    script.write_text(
        f"#!{sys.executable}\nimport os, sys, time, subprocess, signal\nfrom pathlib import Path\n"
        f"report_dir = Path({str(tmp_path)!r})\n"
        + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignore_sigint else "") + textwrap.dedent(SLEEPER)
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_interrupting_the_runner_kills_the_suite_and_its_children(tmp_path: Path, ignore_sigint: bool) -> None:
    script = _sleeper(tmp_path, ignore_sigint)

    def interrupt(message: str) -> None:
        if "will run" in message:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_suite([str(script)], tmp_path, interrupt, grace=1.0)
    assert time.monotonic() - started < 30
    suite, grandchild = map(int, (tmp_path / "pids").read_text().split())
    assert _wait_dead(suite) and _wait_dead(grandchild)


def test_suite_dies_with_a_sigkilled_runner(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: no orderly teardown runs, the kernel still kills e2e.test."""
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pytest_smalltown.conformance.process import start_suite
            process = start_suite(['sleep', '300'], Path({str(tmp_path)!r}), watch=False)
            print(process.popen.pid, flush=True)
            time.sleep(300)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    assert runner.stdout is not None
    suite = int(runner.stdout.readline())
    assert _alive(suite)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert _wait_dead(suite)


# --- SIGTERM: a clean stop, exit 130, one line -------------------------------------------

#: Runs `smalltown conformance` with a fake suite and a fake cluster launch (argv[1]: what the
#: launch does; argv[2]: a work directory with the fake suite), writing markers there.
SIGTERM_DRIVER = r"""
import sys, time
from pathlib import Path
from pytest_smalltown import cli, launcher
from pytest_smalltown.conformance import command

how, work = sys.argv[1], Path(sys.argv[2])

class FakeCluster:
    kubeconfig_path = work / "kubeconfig"

    def close(self):
        (work / "cluster-closed").write_text("yes")

    def dump(self, where):
        pass

def launch(spec, settings, progress=None):
    (work / "launching").write_text("yes")
    if how == "retrying-wait":  # a wait that retries on any Exception, as the launch's waits do
        while True:
            try:
                time.sleep(0.05)
            except Exception:
                pass
    if how == "phase-wrapper":  # a launch phase that wraps any Exception, as ClusterLaunchError does
        try:
            time.sleep(60)
        except Exception as error:
            raise RuntimeError("launch phase failed") from error
    return FakeCluster()

command.build_suite = lambda procs, progress: command.SuiteBinaries(work / "e2e.test", work / "kube")
launcher.launch_cluster = launch
sys.exit(cli.main(["conformance", "--report-dir", str(work / "out")]))
"""


def _run_until(fake: FakeSuite, how: str, ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    driver = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, how, str(fake.workdir)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready(), "the command did not get where it should be signalled"
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=30)
    finally:
        driver.kill()
        driver.wait()
    return subprocess.CompletedProcess(driver.args, driver.returncode, out, err)


def _own_lines(stderr: str) -> list[str]:
    """What the command printed itself, without the progress lines."""
    return [line for line in stderr.splitlines() if not line.startswith("[smalltown]")]


@pytest.mark.parametrize("how", ["retrying-wait", "phase-wrapper"])
def test_sigterm_during_the_launch_is_a_clean_exit_130_not_swallowed_or_wrapped(fake: FakeSuite, how: str) -> None:
    result = _run_until(fake, how, (fake.workdir / "launching").exists)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert _own_lines(result.stderr) == ["conformance: interrupted (SIGTERM) before the suite ran; nothing was recorded"]


def test_sigterm_during_the_suite_stops_e2e_test_and_the_cluster(fake: FakeSuite) -> None:
    fake.will({SPECS[1].name: "hang"})
    out = fake.out
    results = out / "results.jsonl"
    result = _run_until(fake, "launch", lambda: results.exists() and bool(results.read_text().strip()))
    assert result.returncode == 130, result.stderr
    (line,) = _own_lines(result.stderr)
    assert line.startswith("conformance: interrupted (SIGTERM); the suite and the cluster were stopped; "
                           "1 passed, 0 failed, 0 skipped, 5 not run of 6; ")  # fmt: skip
    assert line.endswith(f"continue with: smalltown conformance --resume {out}")
    assert (fake.workdir / "cluster-closed").exists()
    assert not _alive(int((out / "pid-first").read_text())), "e2e.test was stopped"
    assert "5 not run" in (out / "summary.txt").read_text()

