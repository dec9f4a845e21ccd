"""Restoring a saved cluster instead of booting it.

The phases, after the plan's ``images``: ``restore`` (start every VM paused
from its saved state, check the snapshot's files meanwhile, resume them
together), ``node0-debug``, ``kubeconfig`` (new credentials), ``nodes-ready``
and ``clock`` (the guests' wall clocks stepped from the save instant to the
host's now). The files come from the snapshot's
:class:`~pytest_smalltown.snapshots.SnapshotLayout`, the one the save wrote by.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from pathlib import Path

from pytest_smalltown.cluster import Cluster
from pytest_smalltown.contract import DEBUG_TOKEN_FW_CFG_NAME, ENROLMENT_FW_CFG_NAME
from pytest_smalltown.debug import read_debug_token, write_debug_token
from pytest_smalltown.base.progress import Progress
from pytest_smalltown.launch.qemu import Disk
from pytest_smalltown.launch.vm import LaunchError
from pytest_smalltown.launch.vmstate import Monitor, create_overlay, incoming_uri, resume, wait_incoming
from pytest_smalltown.phases import ClusterLaunchError, Phases
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.snapshots import Snapshot, SnapshotRefused, SnapshotStore

#: Seconds a restored cluster gets to load and be Ready again. It needs a few;
#: a snapshot that takes longer is broken, and booting cold is better than waiting.
RESTORE_TIMEOUT = 180.0
#: What QEMU prints (``migration.c``) when it cannot load a saved state, before it exits.
QEMU_REFUSED_STATE = "load of migration failed"


def restore(plan: ClusterPlan, store: SnapshotStore | None, snapshot: Snapshot, progress: Progress) -> Cluster:
    """Start every VM of a saved cluster from its state and wait until the cluster is Ready again.

    The VMs get fresh cables, host ports, work directories and disk
    overlays on top of the snapshot's (which is only read, so any number of
    sessions may restore it at once); they load their saved state paused and
    are resumed together. The files are checksummed meanwhile. Whatever
    goes wrong, the cluster is closed; a failure that shows the snapshot
    unusable (:func:`_why_unusable`) raises :class:`SnapshotRefused`, and
    the caller deletes it and boots cold. Any other failure is raised as it
    is (a :class:`ClusterLaunchError` naming the phase, an interrupt) and
    the snapshot stays, since other sessions share it. ``store`` is the
    cache the snapshot belongs to (its lock holds off pruning), None for one
    outside it (a failed test's, ``smalltown up --from``).
    """
    spec = plan.spec
    saved = snapshot.layout
    cluster = Cluster(plan)
    phases = Phases(spec, progress, cluster.consoles, time.monotonic() + min(plan.boot_timeout, RESTORE_TIMEOUT))
    phases.seconds["images"] = plan.images_seconds
    monitors: list[Monitor] = []
    # The checksums are read while QEMU loads the same files (both mostly wait for the disk).
    verifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-verify")
    verification = verifier.submit(snapshot.verify)
    try:
        with store.reading(progress) if store is not None else contextlib.nullcontext(), phases.phase("restore"):
            switch = plan.switch.name
            cluster.start_switch(restore=(incoming_uri(saved.state(switch)), saved.console_history(switch)))
            # The nodes keep the token they booted with; the cluster's copy outlives a pruned snapshot.
            token = read_debug_token(saved.debug_token)
            write_debug_token(token, cluster.debug_token_path)
            for index, planned in enumerate(plan.nodes):
                overlay = create_overlay(saved.disk(index), "qcow2", cluster.workdir / f"node{index}.qcow2")
                fw_cfg = ((DEBUG_TOKEN_FW_CFG_NAME, cluster.debug_token_path),
                          *(((ENROLMENT_FW_CFG_NAME, saved.enrolment(index)),) if index > 0 else ()))  # fmt: skip
                cluster.start_node(index, Disk(overlay, "qcow2", snapshot=False), fw_cfg,
                                   incoming=incoming_uri(saved.state(planned.name)),
                                   history=saved.console_history(planned.name))  # fmt: skip
            monitors = [Monitor(vm) for vm in cluster.vms()]
            for monitor in monitors:
                wait_incoming(monitor, phases.remaining())
            verification.result()  # raises SnapshotRefused when a file is corrupt
            for monitor in monitors:
                resume(monitor)

        with phases.phase("node0-debug"):
            cluster.open_debug(token, phases.remaining())
        cluster.connect(phases)
        with phases.phase("clock"):
            cluster.wait_clock(phases.remaining())
    except BaseException as error:
        cluster.close()
        unusable = _why_unusable(error, snapshot, verification)
        if unusable is None:
            raise
        raise SnapshotRefused(f"restoring {snapshot.directory.name} failed: {unusable}") from error
    finally:
        verifier.shutdown(wait=False, cancel_futures=True)
        for monitor in monitors:
            monitor.close()
    cluster.how = f"restored from {snapshot.directory.name if store is not None else snapshot.directory}"
    cluster.snapshot = snapshot
    cluster.phase_seconds = phases.seconds
    return cluster


def _why_unusable(
    error: BaseException, snapshot: Snapshot, verification: concurrent.futures.Future[None]
) -> str | None:
    """Why a restore's failure shows its snapshot unusable, in one line; None when it shows nothing of the kind.

    Only then may the snapshot be deleted: every session on the host shares
    it. It is unusable when its files differ from its manifest (checksummed
    beside the restore: a corrupt state file makes QEMU's load fail or
    stall before the checksums are done), when a file it should hold cannot
    be read, or when QEMU refuses a saved state. A timeout under load, an
    interrupt, a missing program or a QEMU killed from outside is the host's
    trouble or the moment's, not the snapshot's.
    """
    if not isinstance(error, Exception):
        return None  # an interrupt ends the launch at once, without waiting for the checksums
    cause = error.__cause__ if isinstance(error, ClusterLaunchError) and error.__cause__ is not None else error
    if isinstance(cause, SnapshotRefused):
        return str(cause)
    try:
        verification.result(timeout=RESTORE_TIMEOUT)
    except SnapshotRefused as corrupt:
        return str(corrupt)
    except Exception:  # noqa: BLE001 - checksums that could not be finished show nothing
        pass
    if isinstance(cause, LaunchError) and QEMU_REFUSED_STATE in str(cause):
        said = next(line for line in str(cause).splitlines() if QEMU_REFUSED_STATE in line)
        return f"QEMU refused a saved state ({said.strip()})"
    if isinstance(cause, OSError) and cause.filename and Path(cause.filename).parent == snapshot.directory:
        return f"{cause.filename} cannot be read: {cause.strerror or type(cause).__name__}"
    return None
