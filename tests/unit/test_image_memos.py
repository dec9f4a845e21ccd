"""Memos that make a warm image lookup fast, and what invalidates each of them."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from pytest_smalltown.base.paths import CACHE_ENV
from pytest_smalltown.images import cache, debian, gobuild


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- cache.remembered ------------------------------------------------------------

def test_an_answer_is_remembered_per_token(private_cache: Path) -> None:
    calls: list[str] = []

    def compute(answer: str) -> str:
        calls.append(answer)
        return answer

    assert cache.remembered("t", "state-1", lambda: compute("one")) == "one"
    assert cache.remembered("t", "state-1", lambda: compute("other")) == "one"
    assert calls == ["one"]
    assert cache.remembered("t", "state-2", lambda: compute("two")) == "two"
    assert calls == ["one", "two"]
    assert (private_cache / "memo-t.json").is_file()


def test_a_failed_computation_leaves_nothing() -> None:
    def fail() -> str:
        raise RuntimeError("apt is broken")

    with pytest.raises(RuntimeError):
        cache.remembered("t", "state", fail)
    assert cache.remembered("t", "state", lambda: "fixed") == "fixed"


def test_a_memo_keeps_only_the_newest_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MEMO_ENTRIES", 2)
    for token in ("a", "b", "c"):
        cache.remembered("t", token, lambda: token)
    assert cache.remembered("t", "c", lambda: "recomputed") == "c"
    assert cache.remembered("t", "a", lambda: "recomputed") == "recomputed"


def test_a_memo_that_cannot_be_written_only_costs_a_recomputation(private_cache: Path) -> None:
    (private_cache / "memo-t.json").mkdir(parents=True)  # neither readable nor replaceable as a file
    assert cache.remembered("t", "state", lambda: "answer") == "answer"
    assert cache.remembered("t", "state", lambda: "again") == "again"
    assert [p.name for p in private_cache.iterdir()] == ["memo-t.json"]  # no temporary file left


# --- cache.file_digest -------------------------------------------------------------

def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = cache._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(cache, "_sha256_file", counting)
    return hashed


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    hashed = _count_hashing(monkeypatch)
    binary = tmp_path / "kube"
    binary.write_bytes(b"version one")
    assert cache.file_digest(binary) == hashlib.sha256(b"version one").hexdigest()
    assert cache.file_digest(binary) == hashlib.sha256(b"version one").hexdigest()
    assert len(hashed) == 1
    # Same size, and the old mtime put back (as cp -p or tar would): the ctime still tells.
    before = binary.stat()
    binary.write_bytes(b"version two")
    os.utime(binary, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.file_digest(binary) == hashlib.sha256(b"version two").hexdigest()
    assert len(hashed) == 2


def test_a_file_written_just_now_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within one timestamp tick a second write could leave the stat signature as it was."""
    hashed = _count_hashing(monkeypatch)
    fresh = tmp_path / "fresh"
    fresh.write_bytes(b"being built")
    cache.file_digest(fresh)
    cache.file_digest(fresh)
    assert len(hashed) == 2


# --- debian.candidates -------------------------------------------------------------

@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[tuple[str, ...]]]:
    """apt state in ``tmp_path/lists``; apt itself answers version N on its N-th call."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Packages").write_text("one")
    monkeypatch.setattr(debian, "APT_STATE", (str(lists / "*"),))
    monkeypatch.delenv("APT_CONFIG", raising=False)
    calls: list[tuple[str, ...]] = []

    def ask_apt(packages: tuple[str, ...]) -> dict[str, dict[str, str]]:
        calls.append(tuple(packages))
        return {name: {"Package": name, "Version": str(len(calls))} for name in packages}

    monkeypatch.setattr(debian, "_ask_apt", ask_apt)
    return lists, calls


def test_apt_is_asked_once_per_apt_state(fake_apt: tuple[Path, list[tuple[str, ...]]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lists, calls = fake_apt
    assert debian.versions(("containerd", "runc")) == ["containerd=1", "runc=1"]
    assert debian.versions(("containerd", "runc")) == ["containerd=1", "runc=1"]
    assert debian.candidate("containerd") == ("2", "")  # another package set: asked once too
    assert debian.candidate("containerd") == ("2", "")
    assert len(calls) == 2
    (lists / "Packages").write_text("two, after apt-get update")
    assert debian.versions(("containerd", "runc")) == ["containerd=3", "runc=3"]
    monkeypatch.setenv("APT_CONFIG", "/elsewhere/apt.conf")
    assert debian.versions(("containerd", "runc")) == ["containerd=4", "runc=4"]
    assert len(calls) == 4


def test_a_package_apt_does_not_know_is_asked_again(fake_apt: tuple[Path, list[tuple[str, ...]]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, calls = fake_apt

    def unknown(packages: tuple[str, ...]) -> dict[str, dict[str, str]]:
        calls.append(tuple(packages))
        raise debian.PackageError("unknown to apt")

    monkeypatch.setattr(debian, "_ask_apt", unknown)
    for _ in range(2):
        with pytest.raises(debian.PackageError):
            debian.candidates(["no-such-package"])
    assert len(calls) == 2


def test_apt_state_covers_what_decides_a_candidate() -> None:
    """Lists (apt-get update), sources, pins, configuration and installed packages (no downgrades)."""
    for pattern in ("/var/lib/apt/lists/*", "/etc/apt/sources.list.d/*", "/etc/apt/preferences.d/*",
                    "/etc/apt/apt.conf.d/*", "/var/lib/dpkg/status"):
        assert pattern in debian.APT_STATE


# --- gobuild.go_version --------------------------------------------------------------

def test_go_version_is_asked_again_when_the_binary_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    echo = shutil.which("echo")
    if echo is None:
        pytest.skip("needs an echo binary")
    with open(os.path.realpath(echo), "rb") as handle:
        if handle.read(4) != b"\x7fELF":
            pytest.skip("echo is not an ELF binary here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    shutil.copy(echo, go)  # "go version" prints "version"
    monkeypatch.setenv("PATH", str(bin_dir))
    gobuild._remembered_go_version.cache_clear()
    asked: list[str] = []
    real = gobuild._ask_go_version

    def counting(binary: str) -> str:
        asked.append(binary)
        return real(binary)

    monkeypatch.setattr(gobuild, "_ask_go_version", counting)
    assert gobuild.go_version() == gobuild.go_version() == "version"
    assert len(asked) == 1
    go.unlink()
    shutil.copy(echo, go)  # a new toolchain in the same place
    assert gobuild.go_version() == "version"
    assert len(asked) == 2
    gobuild._remembered_go_version.cache_clear()


def test_a_go_script_is_asked_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version manager's shim may pick another toolchain on each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    answer = tmp_path / "answer"
    answer.write_text("go version go1.26.8 linux/amd64\n")
    go = bin_dir / "go"
    go.write_text(f"#!/bin/sh\nexec /bin/cat {answer}\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert gobuild.go_version() == "go version go1.26.8 linux/amd64"
    answer.write_text("go version go1.26.9 linux/amd64\n")
    assert gobuild.go_version() == "go version go1.26.9 linux/amd64"
