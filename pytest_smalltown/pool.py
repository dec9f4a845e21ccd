"""One live cluster per spec, launched when first needed, closed when no longer needed.

Booting a cluster under emulation costs a minute or more, so tests with the
same :class:`~pytest_smalltown.spec.ClusterSpec` share one. The pool is told
up front how many tests will use each spec (:meth:`ClusterPool.plan`); it
launches a spec's cluster on the first :meth:`acquire` and closes it on the
release by its last user, so at most one cluster runs at a time when tests are
grouped by spec (the plugin reorders them so). A launch that failed is
remembered: every later test of that spec fails at once with the original
error instead of booting again for another long timeout. The same holds for
a cluster that died after its launch (a VM exited): the pool checks a live
cluster before handing it out, closes it, and fails the tests of that spec at
once with the VM's exit status and console tail, while other specs still run.

A test may also ask for a cluster of its own (``smalltown(fresh=True)``):
:meth:`ClusterPool.launch_own` launches one for it alone, outside the use
counting, and :meth:`ClusterPool.close_own` closes it after the test. Such a
cluster restores the same snapshot as its spec's shared one; its launch
failing still fails the spec's later tests at once, as the same inputs would
fail again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.spec import ClusterSpec

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from pytest_smalltown.debug import DebugClient
    from pytest_smalltown.faults import FaultRecord
    from pytest_smalltown.launch.ports import PortMap
    from pytest_smalltown.lifecycle import RebootResult
    from pytest_smalltown.snapshots import SavedSnapshot


class ClusterHandle(Protocol):
    """What the pool needs of a cluster: a health check and a way to close it."""

    def check_alive(self) -> None:
        """Raise (naming the VM, its exit status and console tail) if any VM of the cluster has exited."""

    def close(self) -> None: ...


@runtime_checkable
class EvidenceSource(Protocol):
    """What a failed test's evidence is read from (:mod:`pytest_smalltown.evidence`)."""

    spec: ClusterSpec
    debug: DebugClient
    kube: ApiClient

    def consoles(self, lines: int = ...) -> dict[str, list[str]]:
        """The last ``lines`` console lines of every VM, by VM name."""

    def node_debug(self, index: int) -> DebugClient:
        """A new debug client for node ``index`` (close it when done)."""

    def dump(self, directory: Path) -> list[Path]:
        """Copy every console log into ``directory``; returns the copies."""


@runtime_checkable
class SnapshotSource(Protocol):
    """A cluster that can save itself whole and run on (``--smalltown-snapshot-on-failure``).

    :class:`~pytest_smalltown.cluster.Cluster` is one; a kept cluster a
    session attached to is not (its VMs belong to another process).
    """

    def save_snapshot(self, directory: Path) -> SavedSnapshot:
        """Save every VM's RAM and disk, and what a restore needs besides, into the new ``directory``."""


@runtime_checkable
class SmalltownCluster(ClusterHandle, EvidenceSource, Protocol):
    """What a test gets as ``smalltown_cluster``: a launched cluster, or the kept one it attached to.

    :class:`~pytest_smalltown.cluster.Cluster` and
    :class:`~pytest_smalltown.attached.AttachedCluster` both are one.
    """

    kubeconfig_path: Path
    ports: PortMap

    @property
    def debug_token_path(self) -> Path | None:
        """The file (0600) with the cluster's debug token, which its nodes require (None: they require none)."""

    def load_image(self, archive: Path, nodes: Iterable[int] | None = None) -> None:
        """Import a container image archive into ``nodes`` (default: all)."""

    def forward_node_port(self, node_port: int) -> int:
        """A 127.0.0.1 host port forwarded to NodePort ``node_port``."""

    def reboot_node(self, index: int, hard: bool = False, timeout: float | None = None) -> RebootResult:
        """Reboot node ``index`` and wait until it is Ready again."""

    def stop_node(self, index: int) -> None:
        """Power node ``index`` off, it alone, for the rest of the session (a kept cluster's: of its life).

        Not a death of the cluster: its other nodes run on, and tests of the spec still get it.
        """

    def frozen(self, index: int) -> AbstractContextManager[FaultRecord]:
        """Node ``index`` stalled (vCPUs stopped) for the with block, then running on (:mod:`pytest_smalltown.faults`)."""


class ClusterLaunchFailed(SmalltownError, RuntimeError):
    """The cluster for a spec failed to launch, or died, earlier in this session."""


class ClusterDied(SmalltownError, RuntimeError):
    """A cluster that had launched lost a VM; the message carries the VM's exit status and console tail."""


Launcher = Callable[[ClusterSpec], ClusterHandle]


@dataclass
class PoolRecord:
    """What happened to one spec's cluster, for the terminal summary."""

    spec: ClusterSpec
    #: The test a fresh cluster was launched for (None: the spec's shared cluster).
    test: str | None = None
    launch_seconds: float | None = None
    close_seconds: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    #: How the cluster came up: booted (and why not restored), saved as a snapshot, restored from one.
    how: str = ""
    error: str | None = None

    def summary_line(self) -> str:
        """One line for the terminal summary: how long the launch took, phase by phase, or why it failed."""
        name = f"{self.spec} cluster" if self.test is None else f"{self.spec} fresh cluster of {self.test}"
        if self.error is not None:
            what = "FAILED to launch" if self.launch_seconds is None else "FAILED after its launch"
            return f"{name}: {what}: {self.error.splitlines()[0] if self.error else 'unknown error'}"
        line = f"{name}: launched in {self.launch_seconds or 0:.1f}s"
        if self.how:
            line += f", {self.how}"
        if self.phases:
            line += " (" + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phases.items()) + ")"
        if self.close_seconds is not None:
            line += f", closed in {self.close_seconds:.1f}s"
        return line


class ClusterPool:
    """Lazily launched clusters keyed by spec, with use counting; and clusters launched for one test alone."""

    def __init__(self) -> None:
        self._remaining: Counter[ClusterSpec] = Counter()
        self._live: dict[ClusterSpec, ClusterHandle] = {}
        self._failed: dict[ClusterSpec, BaseException] = {}
        self.records: dict[ClusterSpec, PoolRecord] = {}
        self._kept: set[ClusterSpec] = set()
        #: Clusters of :meth:`launch_own` not closed yet, with their records (by ``id``: handles need not hash).
        self._own: dict[int, tuple[ClusterHandle, PoolRecord]] = {}
        #: Records of every cluster :meth:`launch_own` started, in launch order.
        self.own_records: list[PoolRecord] = []
        #: The ``id`` of each own cluster :meth:`keep_own` held back.
        self._kept_own: set[int] = set()

    def plan(self, specs: Iterable[ClusterSpec]) -> None:
        """Record one upcoming use per element of ``specs``."""
        self._remaining.update(specs)

    def acquire(self, spec: ClusterSpec, launcher: Launcher) -> ClusterHandle:
        """The live cluster for ``spec``, launching it with ``launcher`` if needed."""
        self._check_not_failed(spec)
        if spec in self._live:
            self._check_alive(spec)
        if spec not in self._live:
            self._live[spec] = self._launch(self.records.setdefault(spec, PoolRecord(spec)), launcher)
        return self._live[spec]

    def launch_own(self, spec: ClusterSpec, launcher: Launcher, test: str) -> ClusterHandle:
        """A new cluster of ``spec`` for ``test`` alone: never handed out again, closed by :meth:`close_own`.

        Not a planned use of ``spec``: the shared cluster still closes after its last shared test.
        """
        self._check_not_failed(spec)
        record = PoolRecord(spec, test=test)
        self.own_records.append(record)
        cluster = self._launch(record, launcher)
        self._own[id(cluster)] = (cluster, record)
        return cluster

    def close_own(self, cluster: ClusterHandle) -> None:
        """Close a cluster of :meth:`launch_own` (its test is over)."""
        _, record = self._own.pop(id(cluster))
        self._kept_own.discard(id(cluster))
        self._timed_close(cluster, record)

    def _check_not_failed(self, spec: ClusterSpec) -> None:
        if spec in self._failed:
            original = self._failed[spec]
            raise ClusterLaunchFailed(
                f"the {spec} cluster failed earlier in this session: {original}"
            ) from original

    def _launch(self, record: PoolRecord, launcher: Launcher) -> ClusterHandle:
        """Launch a cluster of ``record.spec``, timing it into ``record``; a failed launch is remembered."""
        # Tests are grouped by spec, but a plan can still interleave
        # (e.g. pytest -p no:randomly off, or an explicit order): close
        # clusters nobody needs any more before starting another.
        for other in [s for s in self._live if self._remaining[s] <= 0 and s not in self._kept]:
            self._close(other)
        started = time.monotonic()
        try:
            cluster = launcher(record.spec)
        except BaseException as error:
            # A KeyboardInterrupt has no message: name the exception instead.
            record.error = str(error) or type(error).__name__
            if isinstance(error, Exception):
                self._failed[record.spec] = error
            raise
        record.launch_seconds = time.monotonic() - started
        record.phases = dict(getattr(cluster, "phase_seconds", {}) or {})
        record.how = str(getattr(cluster, "how", "") or "")
        return cluster

    def _check_alive(self, spec: ClusterSpec) -> None:
        """Close and remember a live cluster whose VMs are no longer all running."""
        try:
            self._live[spec].check_alive()
        except Exception as cause:
            died = ClusterDied(f"the {spec} cluster died after its launch: {cause}")
            died.__cause__ = cause
            self._failed[spec] = died
            self.records.setdefault(spec, PoolRecord(spec)).error = str(died).splitlines()[0]
            self._close(spec)
            raise died from cause

    def release(self, spec: ClusterSpec) -> None:
        """One planned use of ``spec`` is over; close its cluster after the last one (unless kept)."""
        self._remaining[spec] -= 1
        if self._remaining[spec] <= 0 and spec in self._live and spec not in self._kept:
            self._close(spec)

    def keep(self, spec: ClusterSpec) -> None:
        """Do not close the cluster of ``spec`` when its tests are done (only :meth:`close_all` does)."""
        self._kept.add(spec)

    def keep_own(self, cluster: ClusterHandle) -> None:
        """Do not close a cluster of :meth:`launch_own` when its test is over (only :meth:`close_all` does)."""
        if id(cluster) in self._own:
            self._kept_own.add(id(cluster))

    def is_kept(self, cluster: ClusterHandle) -> bool:
        """Whether :meth:`keep_own` held back this cluster of :meth:`launch_own`."""
        return id(cluster) in self._kept_own

    def kept_clusters(self) -> list[tuple[str, ClusterHandle]]:
        """The live clusters held back, each with a name for humans: shared ones by spec, then tests' own."""
        kept = [(str(spec), cluster) for spec, cluster in sorted(self._live.items()) if spec in self._kept]
        kept += [(f"{record.spec} (fresh, of {record.test})", cluster)
                 for key, (cluster, record) in self._own.items() if key in self._kept_own]  # fmt: skip
        return kept

    def live(self, spec: ClusterSpec) -> ClusterHandle | None:
        """The running cluster of ``spec``, if any (without launching one)."""
        return self._live.get(spec)

    def _close(self, spec: ClusterSpec) -> None:
        self._timed_close(self._live.pop(spec), self.records.setdefault(spec, PoolRecord(spec)))

    @staticmethod
    def _timed_close(cluster: ClusterHandle, record: PoolRecord) -> None:
        started = time.monotonic()
        try:
            cluster.close()
        finally:
            record.close_seconds = time.monotonic() - started

    def close_all(self) -> None:
        """Close every live cluster, shared or a test's own (end of session, interrupt); errors are raised after all are closed."""
        errors: list[BaseException] = []
        closes: list[Callable[[], None]] = [partial(self._close, spec) for spec in self._live]
        closes += [partial(self.close_own, cluster) for cluster, _ in self._own.values()]
        for close in closes:
            try:
                close()
            except Exception as error:  # keep closing the others
                errors.append(error)
        if errors:
            raise errors[0]
