"""The agent's own log: one timestamped line per step on the serial console.

The serial console is the only thing a harness has when a boot hangs before
the debug service is up, so every important step prints one short line
prefixed with ``smalltown:`` and the seconds since boot (``/proc/uptime``,
falling back to time since the agent started when not running as a VM's
init). The same lines go into the ``agent`` log buffer, so that
GetComponentLogs/GetLogs can show them once the debug service is up.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from pytest_smalltown.node.logbuffer import LogBuffer

_START = time.monotonic()


def seconds_since_boot() -> float:
    """Kernel uptime if readable (the figure a boot-time budget is about), else agent uptime."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _START


class Console:
    """Writes ``smalltown: [  12.34] message`` lines to a stream and a buffer."""

    def __init__(
        self,
        buffer: LogBuffer | None = None,
        stream: TextIO | None = None,
        use_kernel_uptime: bool = True,
    ) -> None:
        self.buffer = buffer
        self.stream = stream if stream is not None else sys.stdout
        self.use_kernel_uptime = use_kernel_uptime
        self._lock = threading.Lock()

    def now(self) -> float:
        return seconds_since_boot() if self.use_kernel_uptime else time.monotonic() - _START

    def log(self, message: str) -> None:
        """One step line, on the console and (identically) in the agent buffer."""
        line = f"smalltown: [{self.now():8.2f}] {message}"
        self._emit(line)
        if self.buffer is not None:
            self.buffer.write(line)

    def raw(self, line: str) -> None:
        """A line printed exactly as given (for marker lines a harness matches verbatim)."""
        self._emit(line)
        if self.buffer is not None:
            self.buffer.write(line)

    def _emit(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed console must never take the node down
