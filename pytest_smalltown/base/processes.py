"""Child processes that cannot outlive us: the watchdog, supervised starts and bounded tool runs.

Everything of ours that starts a process (VMs and swtpm in ``launch/``, build
tools in ``images/``, the conformance suite) starts it here, so one policy
holds for all of them: its own session, PDEATHSIG, and a watchdog.

PDEATHSIG makes the kernel kill each child when the process that started it
dies, but nothing makes the kernel delete temporary directories. So the first
launch in a process starts this small watchdog (the reaper: this module run
with ``-m``) and tells it, through a pipe, which process groups and
directories it owns. When the pipe reaches EOF — because the parent exited,
crashed, or was SIGKILLed — the watchdog kills the process groups still
registered and removes the directories still registered, then exits. Orderly
teardown unregisters things first, so in the normal case the watchdog has
nothing left to do.

It runs in its own session so that a Ctrl-C in the terminal, which signals
the whole foreground process group, does not kill it before it has cleaned up.

Protocol (one command per line on stdin): ``pgid N``, ``path P``,
``forget-pgid N``, ``forget-path P``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Reaper:
    """The parent's handle on its watchdog (one per process, see :func:`reaper`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pytest_smalltown.base.processes"],
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


# --- starting processes that die with us ------------------------------------------

_PR_SET_PDEATHSIG = 1
# Resolved once, here, before any fork: the child then only calls a function
# that is already loaded (no dlopen between fork and exec, where another
# thread of ours may have held the loader's lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs the child
    # when the thread that started it dies, even by SIGKILL.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def supervised_popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` as the leader of a new process group that cannot outlive us.

    Its own session, so that a Ctrl-C in the terminal reaches only pytest,
    which then stops it in order; PDEATHSIG, so that the kernel kills it if
    we die; and the group is registered with the watchdog, which kills what
    the leader started (Go's compilers, apt's methods, Ginkgo's workers) if
    we die without cleaning up. Whoever calls this must call
    :func:`stop_group` when done with it.
    """
    popen = subprocess.Popen(list(argv), start_new_session=True, preexec_fn=die_with_parent, **kwargs)
    reaper().watch_process_group(popen.pid)
    pass_on_niceness(popen.pid)
    return popen


def pass_on_niceness(session_leader: int) -> None:
    """Make a new session's process as nice as we are, as ``nice -n 19 pytest e2e/`` means.

    With the kernel's ``sched_autogroup`` on (the default of Debian's and
    most distributions' kernels), the CPU is shared between sessions first
    and by niceness only within one: a VM started in its own session (as
    :func:`supervised_popen` does) takes a full share of the host beside a
    conformance run, however nice its pytest was. Seen here: the node VMs
    of a ``nice -n 19`` session took 55 % and 27 % of a CPU (their first
    seven minutes) beside a conformance run's 90 % and 50 %, and made its
    specs time out; with their sessions' niceness set to 19 they took 21 %
    and 7 % beside 109 % and 59 %. A session's niceness is set through
    ``/proc/<pid>/autogroup``; a kernel without autogroups has no such
    file, and there niceness needs nothing more.
    """
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0:
        return
    try:
        Path(f"/proc/{session_leader}/autogroup").write_text(f"{niceness}\n")
    except OSError:
        pass  # no autogroups (or the process is gone already): nothing to pass on


def stop_group(popen: subprocess.Popen[Any]) -> int:
    """SIGKILL what is left of the group of ``popen``, reap it, and forget it; returns its exit status."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    returncode = popen.wait()
    reaper().forget_process_group(popen.pid)
    return returncode


#: How long a tool run by :func:`run_supervised` may take when its caller names no bound of its own. Every
#: build step measured so far takes minutes at most (the slowest, a cold Kubernetes build, passes its own);
#: one still running after an hour is stuck (a mirror that stopped sending, a lock never released).
TOOL_TIMEOUT = 3600.0
#: How long to collect what a stopped tool printed before giving up on it.
_DRAIN_SECONDS = 5.0


def run_supervised(
    argv: Sequence[str], *, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
    input: str | None = None, timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a build tool to completion like :func:`subprocess.run` (text output captured), supervised and bounded.

    Image builds run go, apt-get, mmdebstrap and friends for minutes; if the
    session is interrupted or killed meanwhile, they must not go on building
    (and holding the cache lock) behind it. Nor may one that hangs hold the
    session forever: after ``timeout`` seconds (default :data:`TOOL_TIMEOUT`;
    there is no unbounded run) its whole process group is killed and
    :class:`subprocess.TimeoutExpired` raised, carrying what it printed until then.
    """
    limit = TOOL_TIMEOUT if timeout is None else timeout
    stdin = subprocess.DEVNULL if input is None else subprocess.PIPE
    popen = supervised_popen(argv, cwd=cwd, env=env, stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        stdout, stderr = popen.communicate(input, timeout=limit)
    except subprocess.TimeoutExpired:
        stdout, stderr = _output_of_stopped(popen)
        raise subprocess.TimeoutExpired(list(argv), limit, stdout, stderr) from None
    finally:
        returncode = stop_group(popen)
    return subprocess.CompletedProcess(list(argv), returncode, stdout, stderr)


def _output_of_stopped(popen: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill the group of a tool that ran out of time; what it printed (empty if its pipes stay open elsewhere)."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        stdout, stderr = popen.communicate(timeout=_DRAIN_SECONDS)
    except subprocess.TimeoutExpired:  # a grandchild that left the group still holds the pipes
        return "", ""
    return stdout or "", stderr or ""


def timeout_message(what: str, expired: subprocess.TimeoutExpired, hint: str = "") -> str:
    """What a step stopped by its bound says: the step, the bound, the command, its last words and what to do."""
    seconds = expired.timeout
    bound = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:g} s"
    command = expired.cmd if isinstance(expired.cmd, str) else " ".join(str(arg) for arg in expired.cmd)
    output = _text(expired.stderr).strip() or _text(expired.output).strip() or "(it printed nothing)"
    return (f"{what} did not finish within {bound} and was stopped: {command}\n{output[-2000:]}\n"
            + (hint or "Run it again; if it stops at the same point, run the command above by hand to see "
                       "what it waits for."))


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


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
