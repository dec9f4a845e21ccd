"""Content-addressed build cache for images.

An artifact lives in ``<cache_root>/<name>-<hash>/`` where the hash covers
every input of its build (source files, package versions, build flags). A
build runs in a sibling temporary directory that is renamed into place only
when it succeeded, so an interrupted build never leaves a half-made image that
looks complete. A file lock serialises concurrent builders of the same
artifact (two pytest sessions, or pytest and ``smalltown image build``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CACHE_ENV = "SMALLTOWN_CACHE_DIR"
#: How many builds of one artifact to keep: the current one and the one before
#: (another checkout or session may still be using it).
KEEP_PER_NAME = 2


def cache_root() -> Path:
    """The user's cache directory for pytest-smalltown (created on demand).

    ``$SMALLTOWN_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/pytest-smalltown``,
    then ``~/.cache/pytest-smalltown``.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "pytest-smalltown"
    root.mkdir(parents=True, exist_ok=True)
    return root


def hash_inputs(parts: Iterable[str | bytes | Path]) -> str:
    """A short stable hash over strings, bytes and file or directory contents.

    Directories are walked in sorted order and both relative names and
    contents are hashed, so renaming a file changes the hash too.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for file in sorted(p for p in part.rglob("*") if p.is_file()):
                    if "__pycache__" in file.parts:
                        continue
                    digest.update(b"F" + str(file.relative_to(part)).encode() + b"\0")
                    digest.update(file.read_bytes())
            else:
                digest.update(b"F" + part.name.encode() + b"\0" + part.read_bytes())
        elif isinstance(part, bytes):
            digest.update(b"B" + part)
        else:
            digest.update(b"S" + part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress reporter: one line on stderr, visible under pytest -s too."""
    print(f"[smalltown] {message}", file=sys.stderr, flush=True)


def cached_build(
    name: str,
    key: str,
    build: Callable[[Path], None],
    progress: Progress = stderr_progress,
) -> Path:
    """Return the directory of artifact ``name`` for input hash ``key``, building it if missing.

    ``build`` receives an empty directory to fill. It is only called when no
    complete artifact exists for ``key``.
    """
    root = cache_root()
    final = root / f"{name}-{key}"
    if (final / ".complete").exists():
        return final
    lock_path = root / f".{name}-{key}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
        started = time.monotonic()
        progress(f"building {name} ({key}) ...")
        try:
            build(work)
            (work / ".complete").write_text(f"{time.time():.0f}\n")
            os.chmod(work, 0o755)  # mkdtemp made it 0700: a cache built as root serves other users too
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        progress(f"built {name} in {time.monotonic() - started:.1f}s -> {final}")
    prune(name, keep=KEEP_PER_NAME)
    return final


def prune(name: str, keep: int = KEEP_PER_NAME) -> list[Path]:
    """Remove all but the ``keep`` newest complete builds of ``name``, and dead builds' leftovers.

    Images are hundreds of MiB each and every input change makes a new one,
    so without this the cache grows without bound during development. Each
    removal takes the lock :func:`cached_build` holds for that key, without
    waiting: a build another session is making (or re-making) right now is
    left alone. A work directory (``.name-key.*``) whose lock nobody holds
    belongs to a build that was killed (SIGKILL leaves no chance to clean up)
    and is removed. Returns what was removed.
    """
    root = cache_root()
    pattern = re.compile(rf"^{re.escape(name)}-([0-9a-f]{{16}})$")
    builds = [p for p in root.iterdir() if pattern.match(p.name) and (p / ".complete").exists()]
    builds.sort(key=lambda p: (p / ".complete").stat().st_mtime, reverse=True)
    work_pattern = re.compile(rf"^\.{re.escape(name)}-([0-9a-f]{{16}})\.(?!lock$).+$")
    leftovers = [p for p in root.iterdir() if work_pattern.match(p.name) and p.is_dir()]
    removed = []
    for victim in [*builds[keep:], *leftovers]:
        match = pattern.match(victim.name) or work_pattern.match(victim.name)
        assert match is not None
        # Read-only is enough for flock, and works on a lock file another user created.
        lock = os.open(root / f".{name}-{match.group(1)}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built right now
            shutil.rmtree(victim, ignore_errors=True)
            removed.append(victim)
        finally:
            os.close(lock)
    return removed
