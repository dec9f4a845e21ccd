"""Nothing outlives a pytest session that booted a VM, however the session ends.

Each case runs a real pytest session in a subprocess whose (tiny-VM) cluster
is launched through the plugin's pool, waits until the VM is up, then ends the
session with SIGINT (Ctrl-C), SIGTERM or SIGKILL, and checks that no QEMU
process and no temporary directory of that session remains.
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
import pytest
from pytest_smalltown.images.tinyvm import READY_LINE, TinyImage, build_tiny_image
from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
from pytest_smalltown.launch.vm import make_workdir, remove_workdir, start_vm

TOKEN = os.environ["CLEANUP_TOKEN"]

class TinyCluster:
    def __init__(self):
        image = build_tiny_image()
        self.workdir = make_workdir("st-cleanup-")
        config = VMConfig(name=f"cleanup-{TOKEN}", accel=os.environ.get("CLEANUP_ACCEL", "tcg"), memory_mib=256,
                          boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline()))
        self.vm = start_vm(config, self.workdir)
        self.vm.wait_for_console(READY_LINE, 120)

    def close(self):
        self.vm.stop()
        remove_workdir(self.workdir)

@pytest.fixture(scope="session")
def smalltown_launcher():
    return lambda spec: TinyCluster()
'''

INNER_TEST = r'''
import time
import pytest

@pytest.mark.smalltown(nodes=1)
def test_hold_cluster(smalltown_cluster):
    print(f"WORKDIR {smalltown_cluster.workdir}", flush=True)
    print(f"QEMU {smalltown_cluster.vm.pid}", flush=True)
    time.sleep(600)
'''


def processes_with(token: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if token in line and "ps -eo" not in line]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"])
def test_nothing_survives_the_session(tmp_path: Path, accel: str, how: signal.Signals) -> None:
    token = uuid.uuid4().hex[:12]
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_hold.py").write_text(INNER_TEST)
    env = {**os.environ, "CLEANUP_TOKEN": token, "CLEANUP_ACCEL": accel}
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # like a terminal job; signals go to pytest itself
    )
    workdir: Path | None = None
    qemu_pid: int | None = None
    output: list[str] = []
    assert session.stdout is not None
    try:
        for line in session.stdout:
            output.append(line)
            if "WORKDIR " in line:
                workdir = Path(line.split("WORKDIR ")[1].strip())
            if "QEMU " in line:
                qemu_pid = int(line.split("QEMU ")[1])
                break
        assert workdir is not None and qemu_pid is not None, "".join(output)
        assert workdir.exists() and processes_with(token)
        session.send_signal(how)
        session.wait(60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    deadline = time.monotonic() + 20
    while (processes_with(token) or workdir.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == [], f"QEMU survived {how.name}"
    assert not workdir.exists(), f"{workdir} survived {how.name}"
    if how != signal.SIGKILL:
        rest = session.stdout.read()
        assert "Interrupted" in rest or "KeyboardInterrupt" in rest, rest[-2000:]
