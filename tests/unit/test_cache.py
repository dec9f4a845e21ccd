"""The content-addressed build cache: hashing, atomic builds, pruning."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_smalltown.images import cache
from pytest_smalltown.images.cache import cached_build, hash_inputs, prune


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_hash_covers_contents_and_names(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "a.go").write_text("package main")
    first = hash_inputs([tree, "flags=-s"])
    assert hash_inputs([tree, "flags=-s"]) == first
    assert hash_inputs([tree, "flags=-w"]) != first
    (tree / "a.go").write_text("package main // changed")
    assert hash_inputs([tree, "flags=-s"]) != first
    (tree / "a.go").rename(tree / "b.go")
    assert hash_inputs([tree, "flags=-s"]) != first


def test_build_runs_once_and_failed_builds_leave_nothing(private_cache: Path) -> None:
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "artifact").write_text("ok")

    path = cached_build("thing", "0123456789abcdef", build, progress=lambda _: None)
    assert (path / "artifact").read_text() == "ok"
    assert cached_build("thing", "0123456789abcdef", build, progress=lambda _: None) == path
    assert len(calls) == 1

    def broken(out: Path) -> None:
        (out / "half").write_text("partial")
        raise RuntimeError("mirror unreachable")

    with pytest.raises(RuntimeError, match="mirror unreachable"):
        cached_build("thing", "fedcba9876543210", broken, progress=lambda _: None)
    assert not (private_cache / "thing-fedcba9876543210").exists()
    assert [p.name for p in private_cache.iterdir() if not p.name.endswith(".lock")] == ["thing-0123456789abcdef"]


def test_prune_keeps_the_newest_builds(private_cache: Path) -> None:
    for i in range(4):
        cached_build("img", f"{i:016x}", lambda out: None, progress=lambda _: None)
        marker = private_cache / f"img-{i:016x}" / ".complete"
        os.utime(marker, (time.time() - 100 + i, time.time() - 100 + i))
    cached_build("img-other", f"{9:016x}", lambda out: None, progress=lambda _: None)
    prune("img", keep=2)
    left = sorted(p.name for p in private_cache.iterdir() if not p.name.startswith("."))
    assert left == ["img-0000000000000002", "img-0000000000000003", "img-other-0000000000000009"]


def test_prune_removes_dead_builds_leftovers_but_not_a_build_in_progress(private_cache: Path) -> None:
    cached_build("img", f"{1:016x}", lambda out: None, progress=lambda _: None)
    dead = private_cache / f".img-{2:016x}.k1ll3d"  # what a SIGKILLed build leaves
    dead.mkdir()
    (dead / "half.raw").write_text("partial")
    busy = private_cache / f".img-{3:016x}.bu5y00"
    busy.mkdir()
    with open(private_cache / f".img-{3:016x}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another session is building key 3
        removed = prune("img", keep=2)
        assert busy.exists()
    assert removed == [dead] and not dead.exists()
    assert (private_cache / f"img-{1:016x}").exists()


def test_a_build_waiting_for_another_process_says_once_who_holds_the_lock(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session building the same artifact: after LOCK_PATIENCE the waiter says once what it waits for and
    for whom (pid, command), then keeps waiting until the lock is free."""
    monkeypatch.setattr(cache, "LOCK_PATIENCE", 0.2, raising=False)
    private_cache.mkdir(parents=True)
    holder_script = ("import fcntl, sys, time\n"
                     "lock = open(sys.argv[1], 'w'); fcntl.flock(lock, fcntl.LOCK_EX); print('held', flush=True)\n"
                     "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", holder_script, str(private_cache / f".img-{7:016x}.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "held\n"
        said: list[str] = []
        built: list[Path] = []
        waiter = threading.Thread(target=lambda: built.append(
            cached_build("img", f"{7:016x}", lambda out: None, progress=said.append)))
        waiter.start()
        deadline = time.monotonic() + 5
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # long enough for a second message, which must not come
        assert not built, "the waiter went on while the lock was held"
        holder.stdin.close()  # the other session ends
        holder.wait(5)
        waiter.join(5)
    finally:
        holder.kill()
        holder.wait()
    assert len(said) >= 1 and "waiting" in said[0], said
    assert f"pid {holder.pid}" in said[0] and "img" in said[0] and "python" in said[0]
    assert sum(message.startswith("waiting") for message in said) == 1, said
    assert built == [private_cache / f"img-{7:016x}"]
