"""The phases of a cluster launch: each timed, each failure named.

A launch (:mod:`pytest_smalltown.launcher`) runs in phases (``images``,
``switch``, ``node0-debug``, ...); their timings end up in the pytest summary,
the JUnit properties and the benchmark. A phase that does not finish raises
:class:`ClusterLaunchError`, which names the phase and shows every VM's
console tail, so a failed launch says where it stopped and what the guests
were doing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from pytest_smalltown.base.progress import Progress
from pytest_smalltown.launch.vm import LaunchError
from pytest_smalltown.spec import ClusterSpec

#: Console lines of each VM an error shows.
CONSOLE_TAIL = 40


class ClusterLaunchError(LaunchError):
    """A cluster did not come up; says which phase failed and shows every VM's console tail."""

    def __init__(self, spec: ClusterSpec, phase: str, cause: BaseException, consoles: dict[str, list[str]]) -> None:
        self.spec = spec
        self.phase = phase
        self.consoles = consoles
        parts = [f"{spec} cluster: phase '{phase}' did not finish: {cause}"]
        for name, lines in consoles.items():
            shown = "\n".join(f"    {line}" for line in lines[-CONSOLE_TAIL:]) or "    (no console output)"
            parts.append(f"  console of {name} (last {min(len(lines), CONSOLE_TAIL)} lines):\n{shown}")
        super().__init__("\n".join(parts))


def no_consoles() -> dict[str, list[str]]:
    """The consoles of a launch that has started no VM yet (its ``images`` phase)."""
    return {}


class Phases:
    """Times a launch's phases into :attr:`seconds` and turns a failure into a :class:`ClusterLaunchError`.

    ``consoles`` gives the console tails an error shows: the cluster's
    (:meth:`pytest_smalltown.cluster.Cluster.consoles`), so that they are
    read in one place.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        progress: Progress,
        consoles: Callable[[], dict[str, list[str]]] = no_consoles,
        deadline: float = float("inf"),
    ) -> None:
        self.spec = spec
        self.progress = progress
        self.consoles = consoles
        #: ``time.monotonic()`` by which the launch must be done (:meth:`remaining` counts down to it).
        self.deadline = deadline
        self.seconds: dict[str, float] = {}

    def remaining(self) -> float:
        """Seconds left until the deadline (at least one: a last try beats none)."""
        return max(1.0, self.deadline - time.monotonic())

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one phase: say it starts, time it, and name it in the error if it fails."""
        started = time.monotonic()
        self.progress(f"{self.spec} cluster: {name} ...")
        try:
            yield
        except Exception as error:
            raise ClusterLaunchError(self.spec, name, error, self.consoles()) from error
        self.seconds[name] = time.monotonic() - started
        self.progress(f"{self.spec} cluster: {name} done in {self.seconds[name]:.1f}s")
