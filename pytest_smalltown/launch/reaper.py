"""A watchdog process that cleans up after its parent, however the parent dies.

PDEATHSIG makes the kernel kill each VM when the process that started it
dies, but nothing makes the kernel delete temporary directories. So the first
launch in a process starts this small watchdog and tells it, through a pipe,
which process groups and directories it owns. When the pipe reaches EOF —
because the parent exited, crashed, or was SIGKILLed — the watchdog kills the
process groups still registered and removes the directories still
registered, then exits. Orderly teardown unregisters things first, so in the
normal case the watchdog has nothing left to do.

It runs in its own session so that a Ctrl-C in the terminal, which signals
the whole foreground process group, does not kill it before it has cleaned up.

Protocol (one command per line on stdin): ``pgid N``, ``path P``,
``forget-pgid N``, ``forget-path P``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path


class Reaper:
    """The parent's handle on its watchdog (one per process, see :func:`reaper`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_smalltown.launch.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            # The child must import this package even when the parent found it
            # through sys.path tweaks (pytester, a checkout without install).
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)},
        )

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def watch_process_group(self, pgid: int) -> None:
        self._send(f"pgid {pgid}")

    def forget_process_group(self, pgid: int) -> None:
        self._send(f"forget-pgid {pgid}")

    def watch_path(self, path: Path) -> None:
        self._send(f"path {path}")

    def forget_path(self, path: Path) -> None:
        self._send(f"forget-path {path}")

    @property
    def pid(self) -> int:
        return self._proc.pid


_reaper: Reaper | None = None
_reaper_pid_owner: int | None = None
_reaper_lock = threading.Lock()


def reaper() -> Reaper:
    """This process's watchdog, started on first use (and again after a fork)."""
    global _reaper, _reaper_pid_owner
    with _reaper_lock:
        if _reaper is None or _reaper_pid_owner != os.getpid():
            _reaper = Reaper()
            _reaper_pid_owner = os.getpid()
        return _reaper


def _clean(pgids: set[int], paths: set[str]) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    """Watchdog loop: record registrations until EOF, then clean up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pgids: set[int] = set()
    paths: set[str] = set()
    for line in sys.stdin:
        verb, _, arg = line.rstrip("\n").partition(" ")
        if verb == "pgid":
            pgids.add(int(arg))
        elif verb == "forget-pgid":
            pgids.discard(int(arg))
        elif verb == "path":
            paths.add(arg)
        elif verb == "forget-path":
            paths.discard(arg)
    _clean(pgids, paths)


if __name__ == "__main__":
    main()
