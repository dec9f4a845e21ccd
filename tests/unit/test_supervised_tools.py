"""Long-running children (apt, mmdebstrap, go, qemu-img): bounded in time, supervised, and named when stuck.

The tools are stand-ins on PATH that note their pid and session, then hang
for :data:`HANG` seconds; the bounds are shrunk to a fraction of that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_smalltown.base import processes
from pytest_smalltown.base.paths import CACHE_ENV
from pytest_smalltown.base.processes import run_supervised
from pytest_smalltown.images import conformance, debian, gobuild, rootfs, switch, userns
from pytest_smalltown.images.tools import BuildError, run_tool
from pytest_smalltown.launch import vmstate

#: How long a stand-in hangs: longer than any bound the tests set, short enough that a run without one ends.
HANG = 4.0
BOUND = 0.5

STAND_IN = """#!{python}
import os, sys, time
if sys.argv[1:2] == ["version"]:  # go version
    print("go version go1.0-standin linux/amd64")
    sys.exit(0)
with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}} {{os.getsid(0)}} {{os.path.basename(sys.argv[0])}}\\n")
print("started, now waiting for a mirror", flush=True)
time.sleep({hang})
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH directory whose go, apt-get, mmdebstrap and qemu-img hang; yields the log of their starts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "started.log"
    for name in ("go", "apt-get", "mmdebstrap", "qemu-img"):
        tool = bin_dir / name
        tool.write_text(STAND_IN.format(python=sys.executable, log=str(log), hang=HANG))
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(processes, "TOOL_TIMEOUT", BOUND, raising=False)
    monkeypatch.setattr(gobuild, "GO_TIMEOUT", BOUND, raising=False)
    monkeypatch.setattr(vmstate, "QEMU_IMG_TIMEOUT", BOUND, raising=False)
    monkeypatch.setattr(rootfs, "MMDEBSTRAP_TIMEOUT", BOUND, raising=False)
    yield log


def test_run_supervised_stops_the_whole_group_at_its_bound() -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        run_supervised(["sh", "-c", "sleep 60 & echo $!; wait"], timeout=BOUND)
    assert time.monotonic() - started < HANG
    grandchild = int(str(caught.value.output).split()[0])  # what it printed before it was stopped
    assert _gone(grandchild), "a child of the stopped tool outlived it"


def test_run_tool_names_the_stuck_step_and_what_to_do() -> None:
    with pytest.raises(BuildError) as caught:
        run_tool(["sh", "-c", "echo fetching index; sleep 60"], "reading the index", timeout=BOUND,
                 hint="check the mirror")
    message = str(caught.value)
    assert "reading the index did not finish within" in message
    assert "fetching index" in message and "check the mirror" in message


def _nanoswitch(tmp_path: Path) -> None:
    switch.build_nanoswitch(tmp_path / "nanoswitch", lambda _: None)


def _conformance_go_build(tmp_path: Path) -> None:
    conformance.go_build("nnp", conformance.AGNHOST_MODULE, "./nnp", lambda _: None)


def _module_download(tmp_path: Path) -> None:
    conformance.kubernetes_source()


def _node_program(tmp_path: Path) -> None:
    gobuild.build_program("etcd", lambda _: None)


def _apt_download(tmp_path: Path) -> None:
    debian.download(["busybox-static"], tmp_path / "debs")


def _private_apt(tmp_path: Path) -> None:
    debian.PrivateApt(debian.Suite("trixie", "http://mirror.example/debian"), tmp_path / "apt").update()


def _mmdebstrap(tmp_path: Path) -> None:
    rootfs.make_tree(tmp_path / "rootfs", [], lambda _: None)


def _qemu_img(tmp_path: Path) -> None:
    backing = tmp_path / "disk.raw"
    backing.write_bytes(b"\0" * 4096)
    vmstate.create_overlay(backing, "raw", tmp_path / "overlay.qcow2")


STEPS: dict[str, tuple[Callable[[Path], None], str]] = {
    "switch go build": (_nanoswitch, "go build nanoswitch"),
    "conformance go build": (_conformance_go_build, "go build nnp"),
    "conformance module download": (_module_download, "go mod download"),
    "node go build": (_node_program, "go build etcd"),
    "apt-get download": (_apt_download, "apt-get download busybox-static"),
    "private apt": (_private_apt, "reading Debian trixie's index"),
    "mmdebstrap": (_mmdebstrap, "mmdebstrap"),
    "qemu-img": (_qemu_img, "qemu-img create"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_stuck_step_is_stopped_within_its_bound_and_named(
    step: str, stand_ins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step runs under the reaper (its own session, killed with its group) and fails at its bound, saying so."""
    monkeypatch.setattr(userns, "as_root", lambda argv: argv)
    monkeypatch.setattr(userns, "check", lambda: None)
    run, what = STEPS[step]
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        run(tmp_path)
    assert time.monotonic() - started < HANG, f"{step} ran unbounded"
    assert f"{what}" in str(caught.value) and "did not finish within" in str(caught.value), str(caught.value)
    (line,) = stand_ins.read_text().splitlines()
    pid, session, _ = line.split()
    assert pid == session, f"{step}'s tool was not started supervised (in a session of its own)"
    assert _gone(int(pid)), f"{step}'s tool outlived its bound"


def test_every_go_build_shares_one_heartbeat(stand_ins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent go build says it is alive, wherever it is started from."""
    monkeypatch.setattr(gobuild, "GO_TIMEOUT", 1.5, raising=False)
    monkeypatch.setattr(gobuild, "HEARTBEAT_SECONDS", 0.3, raising=False)
    for build in (lambda progress: switch.build_nanoswitch(tmp_path / "nanoswitch", progress),
                  lambda progress: conformance.go_build("nnp", conformance.AGNHOST_MODULE, "./nnp", progress)):
        said: list[str] = []
        with pytest.raises(BuildError):
            build(said.append)
        assert any("still running" in message for message in said), said
