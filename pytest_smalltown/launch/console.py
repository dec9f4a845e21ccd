"""A VM's serial console as the harness reads it: its last lines, and those since the machine last restarted.

Two sources, one reading: :class:`ConsoleTail` keeps the lines of a VM this
process runs in memory as QEMU prints them (:class:`~pytest_smalltown.launch.vm.VM`
feeds it); :class:`ConsoleLog` reads a console log file, for a VM another
process runs (a kept cluster's node). Health checks read only the lines since
the last restart (:meth:`note_reset`): the console is one stream across
reboots, and a soft lockup of a boot that was reset away is no hang of this one.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

#: How many console lines a running VM keeps in memory (the full log is on disk).
CONSOLE_TAIL_LINES = 2000
#: How many of the latest console lines the health checks read: a lockup further back has passed.
#: Each lockup report carries a register dump and call trace (about 45 lines) per stuck CPU.
RECENT_CONSOLE_LINES = 300
_SOFT_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck for (\d+)s")


def longest_soft_lockup(lines: Sequence[str]) -> int:
    """Seconds of the longest soft lockup the kernel reports in the last :data:`RECENT_CONSOLE_LINES` of ``lines``."""
    recent = lines[-RECENT_CONSOLE_LINES:]
    return max((int(match.group(1)) for line in recent if (match := _SOFT_LOCKUP.search(line))), default=0)


class Console(Protocol):
    """What the health checks read of a VM's console, wherever it comes from."""

    name: str

    def console_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` lines, across restarts (error messages show them)."""

    def this_boot(self, lines: int = RECENT_CONSOLE_LINES) -> list[str]:
        """The last ``lines`` lines printed since the machine last restarted."""

    def note_reset(self) -> None:
        """The machine restarts now: :meth:`this_boot` starts over."""


class ConsoleTail:
    """The last lines of a running VM's console, in memory; safe to read while QEMU's output is appended.

    ``history`` is console output from before this VM existed (one restored
    from a snapshot continues the console of the VM that was saved).
    """

    def __init__(self, name: str, history: Sequence[str] = (), keep: int = CONSOLE_TAIL_LINES) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(history, maxlen=keep)
        #: Lines appended in all (they leave the deque, not this count): where a waiter left off.
        self._seen = len(self._lines)
        #: Lines appended since the machine last started (see :meth:`note_reset`).
        self._this_boot = len(self._lines)
        self._ended = False
        self._cond = threading.Condition()

    def append(self, line: str) -> None:
        """One more line of the console (or a note of the harness's, in ``[pytest-smalltown: ...]``)."""
        with self._cond:
            self._lines.append(line)
            self._seen += 1
            self._this_boot += 1
            self._cond.notify_all()

    def end(self) -> None:
        """The console's stream ended (QEMU exited): waiters stop waiting."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    def note_reset(self) -> None:
        """The machine restarts now (a reset or a reboot): health checks read only the new boot from here on.

        A line says so in the tail, so that the history still reads in order.
        """
        with self._cond:
            self._lines.append(f"[pytest-smalltown: {self.name} restarts]")
            self._this_boot = 1

    def console_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` lines (from memory)."""
        with self._cond:
            return list(self._lines)[-lines:]

    def this_boot(self, lines: int = RECENT_CONSOLE_LINES) -> list[str]:
        with self._cond:
            count = min(lines, self._this_boot)
            return list(self._lines)[-count:] if count else []

    def search(self, regex: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """Block until a line (seen at any time since boot) matches ``regex``; None on the deadline or the end.

        Waits on the lines as they come, without polling; :attr:`ended` tells
        the two Nones apart.
        """
        deadline = time.monotonic() + timeout
        checked = 0
        with self._cond:
            while True:
                lines = list(self._lines)
                # Only look at lines added since the last pass (all of them the first time).
                fresh = lines[max(0, len(lines) - (self._seen - checked)) :] if checked else lines
                for line in fresh:
                    match = regex.search(line)
                    if match:
                        return match
                checked = self._seen
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 1.0))


class ConsoleLog:
    """A VM's console read from its log file: for a VM that another process runs (a kept cluster's node)."""

    def __init__(self, name: str, path: Path | None) -> None:
        self.name = name
        self.path = path
        self._reset_at = 0  # bytes of the log before the last restart

    def _read(self, start: int = 0) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as log:
                log.seek(start)
                return log.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def note_reset(self) -> None:
        """Health checks read what the log gains from now on."""
        try:
            self._reset_at = self.path.stat().st_size if self.path is not None else 0
        except OSError:
            self._reset_at = 0

    def console_tail(self, lines: int = 50) -> list[str]:
        """The log's last ``lines`` lines (none if it cannot be read)."""
        return self._read()[-lines:]

    def this_boot(self, lines: int = RECENT_CONSOLE_LINES) -> list[str]:
        return self._read(self._reset_at)[-lines:]
