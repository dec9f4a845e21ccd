#!/usr/bin/env python3
"""Run the restored e2e suite N times and report, per test, how often it failed.

Not a test and not part of CI: a soak finds what fails rarely (a flaky spec,
the TCG soft lockup that hangs a node's boot now and then) and measures its
rate. Each round is one ``pytest e2e/`` session against clusters restored
from their snapshots (booted and saved first if there are none), with its
own JUnit report and artifacts directory under ``--out``::

    python3 benchmarks/soak.py 10                       # ten rounds of the restored suite
    python3 benchmarks/soak.py 5 -- -k 'not reboot'     # pytest arguments after --
    python3 benchmarks/soak.py 3 --out /tmp/soak        # keep the reports somewhere else

At the end it prints each test that failed at least once (failures/rounds)
and, per round, how many node boots hung and were relaunched or reset
(counted from the sessions' output: the harness prints a line for each).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

#: What the harness prints when a launch relaunches a hung cluster or a reboot resets a hung boot.
HUNG_MARKERS = ("Launching it again, once", "hung and were reset again")


@dataclass
class Round:
    """One pytest session of the soak."""

    index: int
    exit_status: int
    seconds: float
    failed: list[str] = field(default_factory=list)
    tests: int = 0
    hung: int = 0


def junit_outcomes(report: Path) -> tuple[int, list[str]]:
    """(number of tests, ids of the failed or errored ones) from a pytest JUnit report."""
    if not report.exists():
        return 0, ["<no JUnit report: the session did not finish>"]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    total, failed = 0, []
    for case in cases:
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return total, failed


def run_round(index: int, out: Path, pytest_args: list[str]) -> Round:
    """Run one session, its output into ``out/round-N.log``; return what it showed."""
    directory = out / f"round-{index:02d}"
    directory.mkdir(parents=True, exist_ok=True)
    report = directory / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "e2e/", "--deselect", "e2e/test_conformance.py", "-p", "no:cacheprovider",
            f"--junitxml={report}", f"--smalltown-artifacts={directory / 'artifacts'}", *pytest_args]
    started = time.monotonic()
    with open(directory / "session.log", "w") as log:
        status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - started
    tests, failed = junit_outcomes(report)
    text = (directory / "session.log").read_text(errors="replace")
    hung = sum(text.count(marker) for marker in HUNG_MARKERS)
    return Round(index, status, seconds, failed, tests, hung)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int, help="how many sessions to run")
    parser.add_argument("--out", type=Path, default=Path(f"soak-{time.strftime('%Y%m%d-%H%M%S')}"),
                        help="where each round's log, JUnit and artifacts go (default ./soak-TIMESTAMP)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("rounds must be at least 1")
    rounds = []
    for index in range(1, args.rounds + 1):
        result = run_round(index, args.out, args.pytest_args)
        rounds.append(result)
        print(f"round {index}/{args.rounds}: exit {result.exit_status}, {result.tests} tests, "
              f"{len(result.failed)} failed, {result.hung} hung boots, {result.seconds:.0f}s", flush=True)
    failures = collections.Counter(test for result in rounds for test in result.failed)
    print(f"\n{len(rounds)} rounds, {sum(r.seconds for r in rounds) / 60:.1f} min; "
          f"hung boots per round: {[r.hung for r in rounds]}")
    if not failures:
        print("no test failed in any round")
    for test, count in failures.most_common():
        print(f"  {count}/{len(rounds)}  {test}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
