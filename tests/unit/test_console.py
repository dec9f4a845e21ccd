"""The console tail: what the hung-guest check reads of a VM's console, in memory or from a kept node's log file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_smalltown.attached import KeptNodeConsole
from pytest_smalltown.launch.console import ConsoleLog, ConsoleTail
from pytest_smalltown.launch.vm import GuestHungError, check_console_not_hung


def test_a_long_soft_lockup_is_a_hung_guest_a_short_one_is_load() -> None:
    busy = ConsoleTail("node0", ["[  60.1] watchdog: BUG: soft lockup - CPU#1 stuck for 48s! [kube:279]"])
    check_console_not_hung(busy)
    hung = ConsoleTail("node0", ["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]",
                                 "[ 171.0] rcu: ..."])  # fmt: skip
    with pytest.raises(GuestHungError, match="node0.*stuck for 131s"):
        check_console_not_hung(hung)


def test_a_hang_reads_as_one_behind_the_register_dumps_and_traces_of_its_reports() -> None:
    def report(cpu: int, seconds: int) -> list[str]:
        return [f"[ 164.4] watchdog: BUG: soft lockup - CPU#{cpu} stuck for {seconds}s! [iptables:28{cpu}]",
                *(f"[ 164.4]  trace line {n}" for n in range(45))]  # fmt: skip

    stalls = [f"[ 170.8] rcu: stall detail {n}" for n in range(20)]
    with pytest.raises(GuestHungError, match="stuck for 131s"):
        check_console_not_hung(ConsoleTail("node0", [*report(0, 131), *report(1, 131), *stalls]))


def test_after_a_reset_only_the_new_boot_can_read_as_hung() -> None:
    console = ConsoleTail("node0", ["[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]"])
    console.note_reset()
    check_console_not_hung(console)  # the lockup was the boot before the reset
    assert console.console_tail()[0].endswith("stuck for 131s! [iptables:293]"), "the history stays for error messages"
    console.append("[ 150.0] watchdog: BUG: soft lockup - CPU#1 stuck for 124s! [kubelet:301]")
    with pytest.raises(GuestHungError, match="stuck for 124s"):
        check_console_not_hung(console)


def test_a_kept_nodes_console_log_reads_as_hung_only_for_lockups_after_the_reset(tmp_path: Path) -> None:
    """``smalltown reboot`` reads a kept node's console from its log file, which spans every boot."""
    log = tmp_path / "node1.console.log"
    log.write_text("[ 170.2] watchdog: BUG: soft lockup - CPU#0 stuck for 131s! [iptables:293]\n")
    console = KeptNodeConsole("node1", log)
    console.note_reset()
    console.check_not_hung()
    with log.open("a") as append:
        append.write("[  20.1] watchdog: BUG: soft lockup - CPU#1 stuck for 48s! [kubelet:301]\n")
    console.check_not_hung()  # a short one is load
    with log.open("a") as append:
        append.write("[ 150.0] watchdog: BUG: soft lockup - CPU#1 stuck for 124s! [kubelet:301]\n")
    with pytest.raises(GuestHungError, match="node1.*stuck for 124s"):
        console.check_not_hung()
    assert console.console_tail(3)[0].endswith("[iptables:293]")
    assert ConsoleLog("node9", tmp_path / "missing.log").console_tail() == []


def test_a_wait_sees_lines_as_they_come_and_ends_with_the_stream() -> None:
    import re
    import threading

    console = ConsoleTail("node0", ["early: hello"])
    assert console.search(re.compile("hello"), 0.1) is not None, "lines from before the wait count"
    threading.Timer(0.1, console.append, ["late: ready"]).start()
    match = console.search(re.compile("ready"), 5)
    assert match is not None and match.string == "late: ready"
    threading.Timer(0.1, console.end).start()
    assert console.search(re.compile("never"), 5) is None and console.ended
