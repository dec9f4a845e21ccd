"""A new user of this host, not root, with a fresh virtualenv: builds the node image and boots a node.

Two ways a green run can hide a broken setup are closed here at once.

* **Not root.** A developer runs the tests as themselves. The steps of the
  image build that must act as root on a build tree run in a user namespace
  (``images/userns.py``); the one-time step is ``scripts/setup-host``, which
  grants the user subordinate ids. Run as root (CI), this test makes a
  throwaway user without any, lets setup-host grant them, and runs as that
  user; run by anyone else, it runs as them. The user's own cache is seeded
  with the stages that do not depend on who builds them (Go programs, kernel,
  container images: minutes of Go builds), and builds the rest itself: the
  rootfs (mmdebstrap) and the node disk (``mke2fs -d``), whose owners and
  set-user-ID bits must come out exactly as a root build makes them.
* **Nothing but the package.** The node image copies the host's versions of
  the agent's Python packages (grpcio, protobuf, cryptography) into the guest;
  a package that works only because the machine's Python happened to have one
  of them would fail its users at the first image build. The checkout is
  installed the way the README says, into an empty virtualenv (packages from
  PyPI), and everything runs with that environment's Python alone.

The e2e module runs with ``--smalltown-snapshots=off`` and its own snapshot
directory, which doubles as the proof of that setting against a real VM: the
cluster boots cold and nothing is saved.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_smalltown.base.paths import CACHE_ENV, cache_root
from pytest_smalltown.images.node import build_node_image
from pytest_smalltown.snapshots import SNAPSHOT_DIR_ENV

ROOT = Path(__file__).resolve().parents[2]

#: Cache entries a build makes the same whoever makes it (no tree with owners inside).
PRIVILEGE_FREE_STAGES = ("go-", "kernel-", "oci-images-", "deb-", "nanoswitch-", "tinyvm-")
#: What the user builds: only these hold trees whose owners depend on who builds them.
OWN_STAGES = ("node-rootfs", "node-image")
#: Seconds the throwaway user's processes get to stop after SIGTERM (a cluster closes in about one).
USER_STOP_GRACE = 30


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    home: Path
    python: str  # an interpreter this user can run, to make the virtualenv with


def _run(argv: list[str], timeout: float, *, user: User | None = None, cwd: Path = ROOT,
         env: dict[str, str] | None = None) -> str:
    """Run ``argv`` (as ``user`` if this is root and ``user`` another); its stdout, or a failure with its output."""
    if user is not None and os.geteuid() == 0 and user.uid != 0:
        argv = ["runuser", "-u", user.name, "--", *argv]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def new_user(tmp_path: Path) -> Iterator[User]:
    """Root: a throwaway user with no subordinate ids, removed afterwards. Anyone else: themselves."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        yield User(me.pw_name, me.pw_uid, tmp_path, sys.executable)
        return
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None, "Debian's python3 (with python3-venv) is what scripts/setup-host expects"
    name = f"st-{uuid.uuid4().hex[:8]}"
    _run(["useradd", "--create-home", "--shell", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
         timeout=60)
    entry = pwd.getpwnam(name)
    try:
        yield User(name, entry.pw_uid, Path(entry.pw_dir), python)
    finally:
        _remove_user(name, entry.pw_uid)


def _remove_user(name: str, uid: int) -> None:
    """Stop the user's processes as a user's Ctrl-C would, then remove the user and whatever it left in /tmp.

    SIGTERM first: the user's own session must get to close its clusters,
    and its watchdog to remove their work directories once that session is
    gone; a SIGKILL to all of them at once (an interrupted run of this test
    did that) left a work directory behind. What still runs after the grace
    period is killed, and what the user still owns in /tmp is removed.
    """
    subprocess.run(["pkill", "-TERM", "-u", name], capture_output=True)
    deadline = time.monotonic() + USER_STOP_GRACE
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-u", name], capture_output=True).returncode == 0:
        time.sleep(0.5)
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    for leftover in Path(tempfile.gettempdir()).glob("st-*"):
        if leftover.is_dir() and leftover.stat().st_uid == uid:
            shutil.rmtree(leftover, ignore_errors=True)
    subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_a_new_user_builds_the_node_image_and_boots_a_node(new_user: User) -> None:
    home = new_user.home
    # The one-time step of the README, as a user with sudo runs it.
    if os.geteuid() == 0:
        _run(["bash", "scripts/setup-host"], timeout=900, env={**os.environ, "SUDO_USER": new_user.name})
        owned = Path("/etc/subuid").read_text()
        assert re.search(rf"^{new_user.name}:\d+:65536$", owned, re.M), "setup-host grants the user subordinate ids"

    # The user's own copy of the checkout (pip writes its metadata beside the sources) and cache.
    repo, cache, snapshots = home / "repo", home / "cache", home / "snapshots"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "artifacts", "__pycache__", "*.egg-info",
                                                               ".mypy_cache", ".pytest_cache"))
    cache.mkdir()
    snapshots.mkdir()
    build_node_image(progress=lambda line: None)  # makes sure the privilege-free stages exist to seed from
    seeded = [p for p in cache_root().iterdir()
              if p.name.startswith(PRIVILEGE_FREE_STAGES) and (p / ".complete").exists()]
    for stage in seeded:
        shutil.copytree(stage, cache / stage.name, symlinks=True)
    assert any(p.name.startswith("go-kube-") for p in seeded)
    if os.geteuid() == 0:
        _run(["chown", "-R", f"{new_user.uid}:{new_user.uid}", str(home)], timeout=300)

    venv = home / "venv"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYENV", "VIRTUAL_ENV", "PYTHON", "SMALLTOWN_", "PYTEST_"))}
    env.update({"HOME": str(home), "USER": new_user.name, "LOGNAME": new_user.name, CACHE_ENV: str(cache),
                SNAPSHOT_DIR_ENV: str(snapshots),
                "PATH": f"{venv / 'bin'}:/usr/local/go/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    _run([new_user.python, "-m", "venv", str(venv)], timeout=120, user=new_user, cwd=home, env=env)
    python = str(venv / "bin" / "python")
    assert "cryptography" not in _run([python, "-m", "pip", "list"], timeout=60, user=new_user, cwd=home, env=env), \
        "the virtualenv starts empty"
    _run([python, "-m", "pip", "install", "-q", "-e", str(repo)], timeout=900, user=new_user, cwd=home, env=env)

    built = _run([str(venv / "bin" / "smalltown"), "image", "build", "--only", "node"], timeout=3600,
                 user=new_user, cwd=repo, env=env)
    assert "node: ready" in built
    for stage in OWN_STAGES:
        made = [p for p in cache.iterdir() if p.name.startswith(f"{stage}-") and (p / ".complete").exists()]
        assert made and all(p.stat().st_uid == new_user.uid for p in made), f"{stage} is the user's own build"
    # The disk's owners are the packages', not the builder's: su is root's and set-user-ID.
    (disk,) = cache.glob("node-image-*/disk.raw")
    su = subprocess.run(["debugfs", "-R", "stat /usr/bin/su", str(disk)], capture_output=True, text=True).stdout
    assert re.search(r"Mode:\s+04755", su) and re.search(r"User:\s+0\s+Group:\s+0\b", su), su

    # -P: nothing from the working directory on sys.path, only what the virtualenv has installed.
    tests = _run([python, "-P", "-m", "pytest", "e2e/test_node.py", "-p", "no:cacheprovider", "-q",
                  "--smalltown-snapshots=off"], timeout=1800, user=new_user, cwd=repo, env=env)
    assert " passed" in tests and "failed" not in tests, tests[-2000:]
    assert "1-node cluster: launched in" in tests and "booted (snapshots are off)" in tests, tests[-2000:]
    assert not list(snapshots.iterdir()), "snapshots are off: nothing is saved"
    if os.geteuid() == 0:
        # Live ones only: an exited watchdog may sit as a zombie until this machine's init reaps it.
        listed = subprocess.run(["ps", "-u", new_user.name, "-o", "pid=,stat=,args="], capture_output=True,
                                text=True).stdout.splitlines()
        alive = [line for line in listed if line.split()[1][0] != "Z"]
        assert not alive, "the session left processes of its user behind:\n" + "\n".join(alive)
