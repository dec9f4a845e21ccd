"""Nothing outlives a pytest session that booted a VM, however the session ends.

Each case runs a real pytest session in a subprocess whose (tiny-VM) cluster
is launched through the plugin's pool, and ends the session with SIGINT
(Ctrl-C), SIGTERM or SIGKILL at one of three moments: while an image build
tool runs (a process that itself started a child, as ``go build`` does),
while the VM boots, or once the cluster is up and a test holds it. It then
checks that no process and no temporary directory of that session remains.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

INNER_CONFTEST = r'''
import os
import sys
import pytest
from pytest_smalltown.images.tinyvm import READY_LINE, TinyImage, build_tiny_image
from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
from pytest_smalltown.launch.vm import make_workdir, remove_workdir, start_vm

from pytest_smalltown.base.processes import run_supervised

TOKEN = os.environ["CLEANUP_TOKEN"]
PHASE = os.environ["CLEANUP_PHASE"]
# A build tool that starts a worker of its own (go build -> compile), both named by the token.
BUILD = ("import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', 'worker-' + sys.argv[1]]); "
         "time.sleep(600)")

class TinyCluster:
    def __init__(self):
        image = build_tiny_image()
        self.workdir = make_workdir("st-cleanup-")
        print(f"WORKDIR {self.workdir}", flush=True)
        if PHASE == "build":
            print("BLOCKING in a build", flush=True)
            run_supervised([sys.executable, "-c", BUILD, TOKEN])
        config = VMConfig(name=f"cleanup-{TOKEN}", accel=os.environ.get("CLEANUP_ACCEL", "tcg"), memory_mib=256,
                          boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline()))
        self.vm = start_vm(config, self.workdir)
        if PHASE == "boot":
            print("BLOCKING in a boot", flush=True)
            self.vm.wait_for_console("a line that never comes", 600)
        self.vm.wait_for_console(READY_LINE, 120)

    def close(self):
        self.vm.stop()
        remove_workdir(self.workdir)

    def check_alive(self):
        self.vm.check_running()

@pytest.fixture(scope="session")
def smalltown_launcher():
    def launch(spec):
        cluster = TinyCluster()
        with open(os.environ["CLEANUP_EVENTS"], "a") as events:
            events.write(f"{spec} {os.environ.get('PYTEST_XDIST_WORKER', '-')} {cluster.workdir}\n")
        return cluster
    return launch
'''

INNER_TEST = r'''
import time
import pytest

@pytest.mark.smalltown(nodes=1)
def test_hold_cluster(smalltown_cluster):
    print("BLOCKING in a test", flush=True)
    time.sleep(600)
'''


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_with(token: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if token in line and "ps -eo" not in line]


@pytest.mark.parametrize("phase", ["build", "boot", "test"])
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"])
def test_nothing_survives_the_session(tmp_path: Path, accel: str, how: signal.Signals, phase: str) -> None:
    token = uuid.uuid4().hex[:12]
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_hold.py").write_text(INNER_TEST)
    env = {**os.environ, "CLEANUP_TOKEN": token, "CLEANUP_ACCEL": accel, "CLEANUP_PHASE": phase,
           "CLEANUP_EVENTS": str(tmp_path / "events")}  # fmt: skip
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # like a terminal job; signals go to pytest itself
        # A terminal job's Ctrl-C is not ignored. A shell that starts this run in the
        # background (nohup, `cmd &` in a script) ignores SIGINT for it, and Python
        # then installs no KeyboardInterrupt handler: undo that for the session under test.
        preexec_fn=default_sigint,
    )
    workdir: Path | None = None
    blocked = False
    output: list[str] = []
    assert session.stdout is not None
    try:
        for line in session.stdout:
            output.append(line)
            if "WORKDIR " in line:
                workdir = Path(line.split("WORKDIR ")[1].strip())
            if f"BLOCKING in a {phase}" in line:
                blocked = True
                break
        assert workdir is not None and blocked, "".join(output)
        # What the session must clean up is there: the build and its worker, or QEMU.
        deadline = time.monotonic() + 30
        while len(processes_with(token)) < (2 if phase == "build" else 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workdir.exists() and len(processes_with(token)) >= (2 if phase == "build" else 1), processes_with(token)
        session.send_signal(how)
        session.wait(60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    deadline = time.monotonic() + 20
    while (processes_with(token) or workdir.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == [], f"processes survived {how.name} during the {phase}"
    assert not workdir.exists(), f"{workdir} survived {how.name}"
    if how != signal.SIGKILL:
        rest = session.stdout.read()
        assert "Interrupted" in rest or "KeyboardInterrupt" in rest, rest[-2000:]


TWO_SPECS = r'''
import pytest

@pytest.mark.smalltown(nodes=1)
@pytest.mark.parametrize("i", range(3))
def test_first_spec(smalltown_cluster, i):
    assert smalltown_cluster.vm.returncode is None

@pytest.mark.smalltown(nodes=2)
@pytest.mark.parametrize("i", range(3))
def test_second_spec(smalltown_cluster, i):
    assert smalltown_cluster.vm.returncode is None
'''


def test_xdist_launches_each_spec_once_on_one_worker_and_leaks_nothing(tmp_path: Path, accel: str) -> None:
    """``pytest -n 2`` over two specs: one (tiny-VM) cluster per spec, each on its own worker."""
    token = uuid.uuid4().hex[:12]
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_two_specs.py").write_text(TWO_SPECS)
    events = tmp_path / "events"
    env = {**os.environ, "CLEANUP_TOKEN": token, "CLEANUP_ACCEL": accel, "CLEANUP_PHASE": "none",
           "CLEANUP_EVENTS": str(events)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "6 passed" in result.stdout
    launches = [line.split() for line in events.read_text().splitlines()]
    assert sorted(spec for spec, _, _ in launches) == ["1-node", "2-node"], launches
    assert {worker for _, worker, _ in launches} == {"gw0", "gw1"}, "the two specs ran side by side"
    assert processes_with(token) == []
    assert not any(Path(workdir).exists() for _, _, workdir in launches)
