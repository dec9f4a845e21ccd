"""The node agent's wall clock follows the VM's hardware clock, or stays off it as a test asked (node/clock.py)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from pytest_smalltown.debug import DebugClient
from pytest_smalltown.faults import FaultLog, clock_stepped, parse_clock_offset
from pytest_smalltown.node import clock
from pytest_smalltown.node.debug_service import Conditions, DebugServicer, serve
from pytest_smalltown.node.logbuffer import LogRegistry


def test_the_wall_clock_follows_the_hardware_clock_only_when_they_diverge() -> None:
    logged: list[str] = []
    stepped: list[float] = []
    now = time.time()
    # Within the RTC's whole-second resolution: left alone.
    assert clock.ClockOffset(logged.append, lambda: float(int(now)), stepped.append).step() == 0.0
    # A VM restored from a snapshot saved an hour ago: the RTC (host time) is an hour ahead.
    step = clock.ClockOffset(logged.append, lambda: float(int(now + 3600)), stepped.append).step()
    assert 3597 < step < 3602 and len(stepped) == 1 and abs(stepped[0] - (now + 3600)) < 3
    assert logged[0].startswith("wall clock stepped by +3") and "paused or restored" in logged[0]
    # No RTC: nothing to follow.
    assert clock.ClockOffset(logged.append, lambda: None, stepped.append).step() == 0.0
    assert len(stepped) == 1


def test_an_offset_a_test_asked_for_is_held_against_the_resync_and_0_puts_the_clock_back() -> None:
    logged: list[str] = []
    host = 1_800_000_000.0
    wall = [host]  # the guest's wall clock, on the host's to start with
    offset = clock.ClockOffset(logged.append, lambda: float(int(host)), wall.append, lambda: wall[-1])
    assert 3597 < offset.set(3600) < 3602 and abs(wall[-1] - (host + 3600)) < 2
    assert "+3600s off it, as asked" in logged[-1]
    # The re-sync loop's next check leaves it there: an hour ahead is where it is meant to be.
    assert offset.step() == 0.0 and abs(wall[-1] - (host + 3600)) < 2
    # A restore meanwhile (the wall clock lags): back to the RTC plus the offset, not to the RTC.
    wall.append(host - 600)
    offset.step()
    assert abs(wall[-1] - (host + 3600)) < 2
    assert -3602 < offset.set(0) < -3597 and abs(wall[-1] - host) < 2


def test_an_offset_without_a_hardware_clock_is_refused() -> None:
    offset = clock.ClockOffset(lambda line: None, lambda: None, lambda seconds: None)
    with pytest.raises(RuntimeError, match="no hardware clock"):
        offset.set(60)


def _serve(offset: clock.ClockOffset | None) -> tuple[Any, DebugClient]:
    def unused(*args: object) -> Any:
        raise AssertionError("SetClockOffset needs no kubeconfig or ticket")

    server, port = serve(DebugServicer(LogRegistry(), Conditions(()), unused, unused, clock=offset),
                         "127.0.0.1:0", max_workers=2)  # fmt: skip
    return server, DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=2)


def test_set_clock_offset_through_the_debug_service_steps_the_agents_clock_and_faults_put_it_back() -> None:
    host = 1_800_000_000.0
    wall = [host]
    offset = clock.ClockOffset(lambda line: None, lambda: float(int(host)), wall.append, lambda: wall[-1])
    server, client = _serve(offset)
    try:
        log = FaultLog()
        with clock_stepped(client, log, "node1", 3600) as record:
            assert offset.seconds == 3600 and abs(wall[-1] - (host + 3600)) < 2
            assert record.description == "node1's wall clock +3600s off the host's"
        assert offset.seconds == 0 and abs(wall[-1] - host) < 2
        with pytest.raises(grpc.RpcError) as raised:
            client.set_clock_offset(400 * 24 * 3600)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    finally:
        client.close()
        server.stop(0)


def test_an_agent_that_does_not_keep_the_clock_says_so() -> None:
    server, client = _serve(None)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            client.set_clock_offset(60)
    finally:
        client.close()
        server.stop(0)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "does not keep its clock" in raised.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "seconds"), [("+1h", 3600), ("-30m", -1800), ("90s", 90), ("3600", 3600)])
def test_clock_offsets_read_as_the_cli_takes_them(text: str, seconds: float) -> None:
    assert parse_clock_offset(text) == seconds
