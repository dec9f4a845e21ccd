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


def step_to_hardware_clock(
    log: Callable[[str], None],
    read_rtc: Callable[[], float | None] = hardware_clock,
    set_wall_clock: Callable[[float], None] = lambda t: time.clock_settime(time.CLOCK_REALTIME, t),
) -> float:
    """Step the wall clock to the RTC if they differ by more than :data:`TOLERANCE_SECONDS`; return the step."""
    rtc = read_rtc()
    if rtc is None:
        return 0.0
    # The RTC counts whole seconds: the middle of its current second is the best guess of now.
    step = rtc + 0.5 - time.time()
    if abs(step) <= TOLERANCE_SECONDS:
        return 0.0
    set_wall_clock(time.time() + step)
    log(f"wall clock stepped by {step:+.1f}s to the hardware clock (the VM was paused or restored)")
    return step


def follow_hardware_clock(log: Callable[[str], None], stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """Check the wall clock against the RTC every ``interval`` seconds until ``stop`` is set (a daemon thread)."""

    def loop() -> None:
        if hardware_clock() is None:
            log(f"no hardware clock at {RTC_SINCE_EPOCH}: the wall clock will not follow the host's after a restore")
            return
        # stop.wait runs on the monotonic clock, which stands still while the VM
        # does, so the first check after a restore comes within ``interval``.
        while not stop.wait(interval):
            try:
                step_to_hardware_clock(log)
            except OSError as error:  # e.g. no CAP_SYS_TIME: say so once and give up
                log(f"cannot set the wall clock: {error}")
                return

    thread = threading.Thread(target=loop, name="clock", daemon=True)
    thread.start()
    return thread
