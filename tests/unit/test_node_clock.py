"""The node agent's wall clock follows the VM's hardware clock (node/clock.py)."""

from __future__ import annotations

import time

from pytest_smalltown.node import clock


def test_the_wall_clock_follows_the_hardware_clock_only_when_they_diverge() -> None:
    logged: list[str] = []
    stepped: list[float] = []
    now = time.time()
    # Within the RTC's whole-second resolution: left alone.
    assert clock.step_to_hardware_clock(logged.append, lambda: float(int(now)), stepped.append) == 0.0
    # A VM restored from a snapshot saved an hour ago: the RTC (host time) is an hour ahead.
    step = clock.step_to_hardware_clock(logged.append, lambda: float(int(now + 3600)), stepped.append)
    assert 3597 < step < 3602 and len(stepped) == 1 and abs(stepped[0] - (now + 3600)) < 3
    assert logged[0].startswith("wall clock stepped by +3") and "hardware clock" in logged[0]
    # No RTC: nothing to follow.
    assert clock.step_to_hardware_clock(logged.append, lambda: None, stepped.append) == 0.0
    assert len(stepped) == 1
