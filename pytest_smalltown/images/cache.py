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
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import userns

T = TypeVar("T")

#: How many builds of one artifact to keep: the current one and the one before
#: (another checkout or session may still be using it).
KEEP_PER_NAME = 2


def cleanup_hint() -> str:
    """What a user whose disk filled up during a build may remove, and how (for error messages).

    Everything in the cache is rebuilt on demand, so with nothing running
    from it all of it may go. A tree a non-root build made holds files of
    its subordinate ids, which only the build's user namespace can remove:
    the command given is the one that works for this user.
    """
    root = cache_root()
    try:
        remove = " ".join(userns.as_root(["rm", "-rf", "--one-file-system", str(root)]))
    except RuntimeError:  # no subordinate ids or unshare: say the plain command
        remove = f"rm -rf {root}"
    return (f"If the disk is full: everything in the image cache {root} (saved clusters included) is rebuilt on "
            f"demand, so while no pytest-smalltown session, build or `smalltown up` cluster runs, `{remove}` frees it; "
            f"builds also write to {tempfile.gettempdir()}.")


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


#: How many answers each memo of :func:`remembered` keeps, newest last: enough
#: for the current inputs of every image and a few earlier states, small
#: enough that reading the memo costs microseconds.
MEMO_ENTRIES = 64

#: A file whose mtime or ctime is this recent when it is hashed is not
#: remembered by :func:`file_digest`: file timestamps tick in jiffies, so a
#: write in the same tick as the one before could leave the signature as it was.
RACY_SECONDS = 2.0


def remembered(kind: str, token: str, compute: Callable[[], T]) -> T:
    """``compute()``, or the answer an earlier call (in any process) got for the same ``token``.

    For inputs of cache keys that are slow to find out but cheap to recognise
    as unchanged (apt's candidate versions, the digest of a 130 MB binary):
    every cluster launch looks its images up, and a warm lookup must take
    milliseconds, not seconds. ``token`` must change whenever the answer
    could (a stat signature, apt's state). Answers must be JSON values; they
    live in ``<cache root>/memo-<kind>.json``. Concurrent writers may drop each
    other's newest entry, and a cache directory we cannot write (a cache built
    by root, used by someone else) keeps nothing: both only cost a recomputation.
    A ``compute`` that raises leaves nothing behind.
    """
    path = cache_root() / f"memo-{kind}.json"
    try:
        entries: dict[str, Any] = json.loads(path.read_text())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    if token in entries:
        found: T = entries[token]
        return found
    value = compute()
    entries[token] = value
    kept = dict(list(entries.items())[-MEMO_ENTRIES:])
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(kept))
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
    return value


def stat_signature(info: os.stat_result) -> str:
    """Device, inode, size, mtime and ctime: what changes whenever a file's contents may have.

    The ctime is there because tools that keep mtimes (``cp -p``, ``tar``,
    ``rsync -t``) cannot set it back: replacing a file always shows.
    """
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The sha256 (hex) of the contents of file ``path``, remembered for as long as its stat signature holds.

    Image keys cover built binaries and archives by content, so that a rebuild
    with the same bytes keeps the images built on it; reading the kube binary
    (130 MB) for that on every lookup cost more than all else a warm lookup did.
    """
    resolved = path.resolve()
    info = os.stat(resolved)
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < RACY_SECONDS * 1e9:
        return _sha256_file(resolved)
    return remembered("sha256", f"{resolved}:{stat_signature(info)}", lambda: _sha256_file(resolved))


#: How long a lock wait may stay silent: past this, the waiter says what it waits for and who holds it.
LOCK_PATIENCE = 2.0


def lock_holders(fd: int) -> list[int]:
    """Pids holding a lock (flock, POSIX or OFD) on the file open as ``fd``, as ``/proc/locks`` lists them.

    A pid is that of the process that took the lock (a child that inherited
    it is not listed); one in another pid namespace may read as 0 or -1, and
    is left out.
    """
    info = os.fstat(fd)
    file_id = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 2277 fe:00:10037487 0 EOF"; waiters read "1: -> FLOCK ..." and are skipped.
        if len(fields) >= 6 and fields[1] != "->" and fields[5] == file_id and fields[4].lstrip("-").isdigit():
            pid = int(fields[4])
            if pid > 0 and pid != os.getpid():
                holders.append(pid)
    return holders


def describe_process(pid: int) -> str:
    """``pid 1234 (python3 -m pytest e2e/)``: enough for a user to find the other session."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command = " ".join(" ".join(arg.decode(errors="replace").split()) for arg in argv)  # one line
    except OSError:
        command = ""
    return f"pid {pid} ({command[:120]})" if command else f"pid {pid}"


def flock_announced(fd: int, path: Path, what: str, progress: Progress = stderr_progress,
                    shared: bool = False) -> None:
    """Take an flock on ``fd`` (the file ``path``), waiting as long as it takes, but not without a word.

    Another session may hold it for many minutes (a Kubernetes build, a
    cluster being saved); a wait that says nothing looks like a hang. If the
    lock is not free within :data:`LOCK_PATIENCE` seconds, ``progress`` is
    told once what is waited for (``what``) and who holds it, then the wait
    goes on.
    """
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    holders = ", ".join(describe_process(pid) for pid in lock_holders(fd)) or "another process (pid not known)"
    progress(f"waiting for {what}: {holders} holds {path}; waiting until it is done")
    fcntl.flock(fd, mode)


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
        flock_announced(lock.fileno(), lock_path, f"the build of {name} ({key})", progress)
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
                userns.remove_tree(final)
            os.rename(work, final)
        except BaseException:
            _remove_quietly(work)
            raise
        progress(f"built {name} in {time.monotonic() - started:.1f}s -> {final}")
    prune(name, keep=KEEP_PER_NAME)
    return final


def _remove_quietly(path: Path) -> None:
    """Remove a build's directory on the way out of an error or a prune, without masking what went wrong."""
    try:
        userns.remove_tree(path)
    except (OSError, RuntimeError) as error:
        print(f"[smalltown] could not remove {path}: {error}", file=sys.stderr)


def prune(name: str, keep: int = KEEP_PER_NAME, root: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest complete builds of ``name``, and dead builds' leftovers.

    Images are hundreds of MiB each and every input change makes a new one,
    so without this the cache grows without bound during development. Each
    removal takes the lock :func:`cached_build` holds for that key, without
    waiting: a build another session is making (or re-making) right now is
    left alone. A work directory (``.name-key.*``) whose lock nobody holds
    belongs to a build that was killed (SIGKILL leaves no chance to clean up)
    and is removed. ``root`` is the directory the artifacts are in (default:
    :func:`cache_root`). Returns what was removed.
    """
    root = root or cache_root()
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
            _remove_quietly(victim)
            removed.append(victim)
        finally:
            os.close(lock)
    return removed
