"""Per-component log ring buffers with follow (subscribe) support.

Every supervised component writes its combined stdout/stderr into one
:class:`LogBuffer`. The buffer is bounded twice over, because a node runs for
hours under emulation and a chatty component must not eat the guest's memory:
at most ``capacity`` lines (5000 by default, like the original Smalltown
logbuffer) and at most ``max_line_length`` characters per line. A truncated
line keeps its original length so that a reader can tell it was cut.

Entries carry a monotonically increasing sequence number. Readers that follow
a buffer remember the last sequence number they saw and wait on a condition
variable for newer ones; taking the backlog and the follow position in one
locked step (:meth:`LogBuffer.snapshot_and_position`) is what makes
"backlog, then stream" free of gaps and duplicates.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DEFAULT_CAPACITY = 5000
DEFAULT_MAX_LINE_LENGTH = 1024


@dataclass(frozen=True)
class Entry:
    """One buffered line.

    ``original_length`` is the length of the line as written when it was
    truncated, and 0 when ``line`` is complete (the protobuf convention: an
    unset field means "not truncated").
    """

    seq: int
    line: str
    timestamp_ns: int
    original_length: int = 0

    @property
    def truncated(self) -> bool:
        return self.original_length > 0


class LogBuffer:
    """A thread-safe, bounded ring of log lines that readers can follow."""

    def __init__(
        self,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        if max_line_length <= 0:
            raise ValueError("max_line_length must be positive")
        self.name = name
        self.capacity = capacity
        self.max_line_length = max_line_length
        self._entries: deque[Entry] = deque(maxlen=capacity)
        self._next_seq = 0
        self._closed = False
        self._cond = threading.Condition()

    def write(self, line: str, original_length: int | None = None) -> Entry:
        """Append one line (a trailing newline is stripped); return the stored entry.

        ``original_length`` is for callers that could only keep the head of a
        huge line (the supervisor never reads more than a chunk into memory):
        the entry then reports that length rather than the head's.
        """
        line = line.rstrip("\r\n")
        full = len(line) if original_length is None else max(original_length, len(line))
        original = 0
        if full > self.max_line_length:
            original = full
            line = line[: self.max_line_length]
        with self._cond:
            entry = Entry(self._next_seq, line, time.time_ns(), original)
            self._next_seq += 1
            self._entries.append(entry)
            self._cond.notify_all()
        return entry

    def write_bytes(self, data: bytes) -> Entry:
        """Append one line of raw process output, decoding leniently.

        Components print whatever bytes they like; a log reader is better
        served by a replacement character than by a lost line.
        """
        return self.write(data.decode("utf-8", errors="replace"))

    def tail(self, count: int = 0) -> list[Entry]:
        """The last ``count`` entries, oldest first; ``count <= 0`` means all."""
        with self._cond:
            entries = list(self._entries)
        if count > 0:
            entries = entries[-count:]
        return entries

    def lines(self, count: int = 0) -> list[str]:
        """Like :meth:`tail` but only the text."""
        return [e.line for e in self.tail(count)]

    def snapshot_and_position(self, count: int = 0) -> tuple[list[Entry], int]:
        """The backlog (as :meth:`tail`) and the sequence number a follower starts at."""
        with self._cond:
            entries = list(self._entries)
            position = self._next_seq
        if count > 0:
            entries = entries[-count:]
        return entries, position

    def wait_newer(self, position: int, timeout: float) -> tuple[list[Entry], int]:
        """Entries with ``seq >= position`` (waiting up to ``timeout`` for the first one).

        Returns the entries and the next position. If the reader fell more
        than ``capacity`` lines behind, the lines it missed are gone; it gets
        what is still buffered rather than an error, which is what a person
        tailing a log expects.
        """
        with self._cond:
            if self._next_seq <= position and not self._closed:
                self._cond.wait(timeout)
            if self._next_seq <= position:
                return [], position
            newer = [e for e in self._entries if e.seq >= position]
            return newer, self._next_seq

    def follow(
        self, position: int, still_wanted: Callable[[], bool], poll: float = 0.5
    ) -> Iterator[list[Entry]]:
        """Yield batches of new entries from ``position`` until ``still_wanted()`` is false."""
        while still_wanted():
            batch, position = self.wait_newer(position, poll)
            if batch:
                yield batch
            elif self._closed:
                return

    def close(self) -> None:
        """Wake followers and make them stop once they are drained (used in tests/shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)


class LogRegistry:
    """All buffers of a node, by dotted component path (``kube.kubelet``)."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    ) -> None:
        self._capacity = capacity
        self._max_line_length = max_line_length
        self._buffers: dict[str, LogBuffer] = {}
        self._lock = threading.Lock()

    def get_or_create(self, path: str) -> LogBuffer:
        with self._lock:
            buf = self._buffers.get(path)
            if buf is None:
                buf = LogBuffer(path, self._capacity, self._max_line_length)
                self._buffers[path] = buf
            return buf

    def get(self, path: str) -> LogBuffer | None:
        with self._lock:
            return self._buffers.get(path)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._buffers)
