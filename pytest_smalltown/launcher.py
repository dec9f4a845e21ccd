"""Launching a whole Smalltown cluster: plan it, then restore it from a snapshot or boot it.

``launch_cluster`` is what the pytest fixtures and ``smalltown up`` call:

1. :meth:`ClusterPlan.resolve <pytest_smalltown.plan.ClusterPlan.resolve>`
   reads the settings, checks the host, resolves QEMU and builds or finds the
   images (phase ``images``);
2. with snapshots on, a cluster saved from the same plan is restored
   (:mod:`pytest_smalltown.restore`); otherwise, or when that fails, the
   cluster is booted (:mod:`pytest_smalltown.boot`) and saved once Ready.

A phase that does not finish raises
:class:`~pytest_smalltown.phases.ClusterLaunchError`, which names the phase and
shows every VM's console tail; everything started is stopped before the error
propagates (:meth:`Cluster.close <pytest_smalltown.cluster.Cluster.close>`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from pytest_smalltown.boot import boot
from pytest_smalltown.cluster import Cluster
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.launch.vm import GuestHungError
from pytest_smalltown.lifecycle import HUNG_BOOT_RESETS
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.restore import restore
from pytest_smalltown.settings import Settings
from pytest_smalltown.snapshots import (RestoreRequiredError, SnapshotMissing, SnapshotRefused, SnapshotStore,
                                        SnapshotWarning, changed_inputs, open_saved)
from pytest_smalltown.spec import ClusterSpec


def launch_cluster(spec: ClusterSpec, settings: Settings, progress: Progress = stderr_progress) -> Cluster:
    """Launch a cluster of ``spec.nodes`` nodes behind a Nanoswitch and wait until it is ready.

    With ``settings.snapshots`` at ``auto`` (the default) a cluster saved by
    an earlier launch with the same plan is restored instead of booted; a
    snapshot that cannot be used is refused with a :class:`SnapshotWarning`
    and the cluster is booted cold and saved anew (``refresh`` always does
    that, ``off`` never saves nor restores, ``require`` raises
    :class:`RestoreRequiredError` instead of booting). See :mod:`pytest_smalltown.snapshots`.

    A guest whose kernel hangs while booting (both vCPUs of a reference
    node stuck for minutes in a soft lockup, seen once under TCG) fails the
    launch as soon as the kernel reports it, and the cluster is launched
    once more from scratch (:data:`~pytest_smalltown.lifecycle.HUNG_BOOT_RESETS`
    times, as a reboot resets a hung boot); the terminal summary shows the
    relaunch as the ``hung-relaunch`` phase. Any other failure, or one hang
    too many, is raised.
    """
    started = time.monotonic()
    for _ in range(HUNG_BOOT_RESETS):
        try:
            return _launch_once(spec, settings, progress)
        except ClusterLaunchError as error:
            if not isinstance(error.__cause__, GuestHungError):
                raise
            progress(f"{spec} cluster: {str(error.__cause__).splitlines()[0]} Launching it again, once.")
    lost = time.monotonic() - started
    cluster = _launch_once(spec, settings, progress)
    cluster.phase_seconds = {"hung-relaunch": lost, **cluster.phase_seconds}
    return cluster


def _launch_once(spec: ClusterSpec, settings: Settings, progress: Progress) -> Cluster:
    plan = ClusterPlan.resolve(spec, settings, progress)
    store = SnapshotStore(spec, plan.snapshot_inputs()) if plan.snapshots != "off" else None
    refusal = _why_not_restoring(plan, store)
    if refusal is None:
        assert store is not None
        try:
            snapshot = store.lookup()
            return restore(plan, store, snapshot, progress)
        except SnapshotMissing as missing:  # the first launch with this plan: nothing to warn about
            refusal = str(missing)
        except SnapshotRefused as refused:
            refusal = f"snapshot refused: {refused}"
            store.discard()  # it exists but cannot be used: make room for a new one
            if plan.snapshots == "auto":  # require says it below, as an error
                warnings.warn(SnapshotWarning(f"{spec} cluster: {refusal}; booting it cold"), stacklevel=3)
    if plan.snapshots == "require":
        raise RestoreRequiredError(f"{spec} cluster: not restored ({refusal}), and --smalltown-snapshots=require "
                                   f"(from {plan.snapshots_source}) allows no cold boot")
    if plan.snapshots == "auto":
        progress(f"{spec} cluster: not restored ({refusal}); booting")
    return boot(plan, store, refusal, progress)


def launch_saved(directory: Path, settings: Settings, progress: Progress = stderr_progress) -> Cluster:
    """Restore the cluster saved in ``directory`` (a failed test's ``snapshot``, for ``smalltown up --from``).

    Its spec comes from its manifest; the settings shape the plan as for any
    launch, and the plan must be the one it was saved from: when this
    machine's images, QEMU or node settings differ, it is refused
    (:class:`SnapshotRefused`) naming what differs, before any VM starts. A
    bad directory (missing, not a snapshot, incomplete) is refused first,
    before any image is looked for. Nothing is ever deleted: the directory
    is the user's.
    """
    snapshot = open_saved(directory)
    plan = ClusterPlan.resolve(snapshot.spec, settings, progress)
    differs = changed_inputs(snapshot.manifest["inputs"], plan.snapshot_inputs())
    if differs:
        raise SnapshotRefused(f"{directory} does not match this machine: the saved {snapshot.spec} cluster {differs}; "
                              f"restore it where it was saved, with the same images and settings")
    return restore(plan, None, snapshot, progress)


def _why_not_restoring(plan: ClusterPlan, store: SnapshotStore | None) -> str | None:
    """Why this launch does not even look for a snapshot (for the summary); None when it does."""
    if plan.snapshots == "off":
        return "snapshots are off"
    if plan.snapshots == "refresh":
        return "--smalltown-snapshots=refresh"
    return None
