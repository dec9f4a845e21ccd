"""Keep the node's wall clock on its hardware clock, which follows the host's.

A VM restored from a snapshot (or paused while one is saved) resumes with
its system clock where it stopped: under QEMU the guest's clocks run on a
virtual clock that stands still while the VM does. The emulated RTC,
though, is driven by the host's clock (QEMU's default ``-rtc clock=host``),
so after a restore it reads the host's now while the system clock lags by
the snapshot's age. Left alone, certificates made on the host (a test's
webhook server, say) are "not yet valid" to the API server, and cluster
timestamps make no sense next to the host's.

So the agent steps the wall clock (``CLOCK_REALTIME``) to the RTC whenever
they differ by more than the RTC's one-second resolution allows. Only the
wall clock moves: monotonic clocks, which every timer, lease and timeout in
Kubernetes measures durations with, do not jump, so nothing expires or flaps.

A test can also put the wall clock off on purpose (:class:`ClockOffset`,
the debug service's ``SetClockOffset``): the agent then keeps it that far
from the RTC, as a node whose clock jumped would be, until told 0 again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

#: Seconds since the epoch by the first RTC (UTC: QEMU's default ``-rtc base=utc``).
RTC_SINCE_EPOCH = Path("/sys/class/rtc/rtc0/since_epoch")
#: A larger difference is a VM that stood still; a smaller one is the RTC's whole-second reads.
TOLERANCE_SECONDS = 2.0


def hardware_clock(path: Path = RTC_SINCE_EPOCH) -> float | None:
    """The RTC's time (whole seconds since the epoch), or None if this machine has no readable RTC."""
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def set_wall_clock(seconds: float) -> None:
    """Set ``CLOCK_REALTIME`` (needs CAP_SYS_TIME: the agent is the machine's init)."""
    time.clock_settime(time.CLOCK_REALTIME, seconds)


class ClockOffset:
    """How far the wall clock is kept from the RTC: 0, unless a test put it off on purpose.

    Shared by the re-sync loop and the debug service; :meth:`step` is the
    one place the wall clock is set, under a lock, so the two never undo
    each other's step.
    """

    def __init__(self, log: Callable[[str], None], read_rtc: Callable[[], float | None] = hardware_clock,
                 set_clock: Callable[[float], None] = set_wall_clock,
                 read_clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.log = log
        self.read_rtc = read_rtc
        self.set_clock = set_clock
        self.read_clock = read_clock
        self.seconds = 0.0
        self._lock = threading.Lock()

    def step(self) -> float:
        """Step the wall clock to the RTC plus the offset if it is off by more than :data:`TOLERANCE_SECONDS`; the step."""
        with self._lock:
            rtc = self.read_rtc()
            if rtc is None:
                return 0.0
            # The RTC counts whole seconds: the middle of its current second is the best guess of now.
            step = rtc + 0.5 + self.seconds - self.read_clock()
            if abs(step) <= TOLERANCE_SECONDS:
                return 0.0
            self.set_clock(self.read_clock() + step)
        why = f"{self.seconds:+.0f}s off it, as asked" if self.seconds else "the VM was paused or restored"
        self.log(f"wall clock stepped by {step:+.1f}s to the hardware clock ({why})")
        return step

    def set(self, seconds: float) -> float:
        """Keep the wall clock ``seconds`` from the RTC from now on, stepping it there at once; the step.

        Raises :class:`RuntimeError` on a machine without a readable RTC,
        where there is nothing to be off from.
        """
        if self.read_rtc() is None:
            raise RuntimeError(f"no hardware clock at {RTC_SINCE_EPOCH}: the wall clock has nothing to be off from")
        with self._lock:
            self.seconds = seconds
        return self.step()


def follow_hardware_clock(offset: ClockOffset, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """Keep the wall clock on the RTC plus ``offset``, checking every ``interval`` seconds until ``stop`` is set."""

    def loop() -> None:
        if offset.read_rtc() is None:
            offset.log(f"no hardware clock at {RTC_SINCE_EPOCH}: the wall clock will not follow the host's "
                       "after a restore")  # fmt: skip
            return
        # stop.wait runs on the monotonic clock, which stands still while the VM
        # does, so the first check after a restore comes within ``interval``.
        while not stop.wait(interval):
            try:
                offset.step()
            except OSError as error:  # e.g. no CAP_SYS_TIME: say so once and give up
                offset.log(f"cannot set the wall clock: {error}")
                return

    thread = threading.Thread(target=loop, name="clock", daemon=True)
    thread.start()
    return thread
