"""Faults a test provokes on purpose, and undoes: the stalls and breakages a node OS must survive.

Each fault is a context manager that undoes itself on exit, also when the
test fails inside it, so a failed test does not leave a broken cluster to the
tests that share it. Each is written into the cluster's :class:`FaultLog`
while it is on; a failed test's report lists the faults that were on during
it (section ``smalltown faults``), since "node 1 was frozen at the time" is
the first thing the reader of that failure needs to know.

Here: a frozen node (:func:`frozen`), a node's clock put off
(:func:`clock_stepped`); the network's faults are in
:mod:`pytest_smalltown.network`. docs/faults.md says what each fault
does at the vCPU and clock level, and what it does not model.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # QMP's client is loaded when a fault is used, not when the CLI starts
    from pytest_smalltown.debug import DebugClient
    from pytest_smalltown.launch.vmstate import Monitor

#: Seconds without a kubelet heartbeat before the node lifecycle controller
#: marks a Node NotReady: Kubernetes' default since v1.32 (40 before), which
#: Smalltown's controller-manager and the reference node's keep.
NODE_MONITOR_GRACE_SECONDS = 50
#: Faults a log remembers (a test that switches thousands on needs only the latest in its report).
FAULT_LOG_SIZE = 100


@dataclass
class FaultRecord:
    """One fault, switched on at ``started`` and off at ``ended`` (None: still on); times are ``time.time()``."""

    description: str
    started: float
    ended: float | None = None
    #: Packet captures made while it was on (a network fault's), copied into a failed test's artifacts.
    captures: tuple[Path, ...] = ()

    def overlaps(self, start: float, stop: float) -> bool:
        """Whether the fault was on at some instant between ``start`` and ``stop``."""
        return self.started <= stop and (self.ended is None or self.ended >= start)

    @property
    def seconds(self) -> float:
        """How long it was on (so far, if it still is)."""
        return (time.time() if self.ended is None else self.ended) - self.started

    def __str__(self) -> str:
        began = time.strftime("%H:%M:%S", time.localtime(self.started))
        if self.ended is None:
            return f"{self.description}: on since {began}"
        return f"{self.description}: {began} for {self.seconds:.1f}s"


class FaultLog:
    """The faults a cluster had, newest last: what a failed test's report shows."""

    def __init__(self) -> None:
        self.records: deque[FaultRecord] = deque(maxlen=FAULT_LOG_SIZE)

    @contextlib.contextmanager
    def on(self, description: str) -> Iterator[FaultRecord]:
        """Record ``description`` as on for the duration of the with block."""
        record = FaultRecord(description, time.time())
        self.records.append(record)
        try:
            yield record
        finally:
            record.ended = time.time()

    def during(self, start: float, stop: float) -> list[FaultRecord]:
        """The faults that were on at some time between ``start`` and ``stop``."""
        return [record for record in self.records if record.overlaps(start, stop)]


_OFFSET = re.compile(r"^(?P<value>[+-]?\d+(?:\.\d+)?)(?P<unit>[smh]?)$")


def parse_clock_offset(text: str) -> float:
    """A clock offset as the CLI takes it (``+1h``, ``-30m``, ``90s``, ``3600``: seconds) in seconds."""
    found = _OFFSET.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a clock offset such as +1h, -30m or 90s")
    return float(found["value"]) * {"": 1, "s": 1, "m": 60, "h": 3600}[found["unit"]]


@contextlib.contextmanager
def clock_stepped(debug: DebugClient, log: FaultLog, name: str, seconds: float) -> Iterator[FaultRecord]:
    """Keep a node's wall clock ``seconds`` off the host's for the with block; back on it after, whatever happened.

    The node agent steps the wall clock (``CLOCK_REALTIME``) and holds it
    there against its own re-sync to the hardware clock: everything on the
    node that reads the time (the kubelet's Lease renewals and status
    timestamps, certificates it checks, logs) sees the stepped clock, while
    monotonic clocks, which timers and timeouts run on, do not move. See
    ``node/clock.py``.
    """
    debug.set_clock_offset(seconds)
    try:
        with log.on(f"{name}'s wall clock {seconds:+g}s off the host's") as record:
            yield record
    finally:
        debug.set_clock_offset(0)


@contextlib.contextmanager
def frozen(monitor: Monitor, log: FaultLog, name: str) -> Iterator[FaultRecord]:
    """Stop a VM's vCPUs (QMP ``stop``) for the with block; they run on after it, whatever happened inside.

    To the rest of the cluster the node is a machine that stalled: it
    answers nothing (not even ARP), its kubelet stops renewing its lease,
    and after the node-monitor grace period the node lifecycle controller
    marks it NotReady. Its QEMU, devices and network link stay up, and
    nothing in the guest is told. Its clocks stand still meanwhile (QEMU's
    virtual clock stops with the vCPUs): after the thaw the node agent steps
    its wall clock to the hardware clock within a second (``node/clock.py``),
    as NTP would on a real machine after a stall, while its monotonic clocks
    simply lost the frozen time.
    """
    from pytest_smalltown.launch.vmstate import pause, resume

    pause(monitor)
    try:
        with log.on(f"{name} frozen (vCPUs stopped)") as record:
            yield record
    finally:
        resume(monitor)
