"""Booting a cluster from nothing, and saving it as a snapshot once it is Ready.

The phases, each timed (the timings end up in the pytest summary and the
benchmark), after the plan's ``images``:

1. ``switch``: start the Nanoswitch with one cable per node, forwarding the
   debug service, the external service and the Kubernetes API to node 0 on
   ephemeral 127.0.0.1 ports;
2. ``node0-debug``: boot node 0 (no enrolment: it bootstraps the cluster)
   while the switch boots, and wait until its debug service answers;
3. ``enrolment``: for each further node ask node 0 for a golden ticket for
   that node's planned address, and boot it with the ticket in fw_cfg; the
   nodes boot while node 0 still brings up Kubernetes;
4. ``kubeconfig``: fetch debug credentials and write the kubeconfig (0600);
5. ``nodes-ready``: wait until all N nodes are Ready in the Kubernetes API
   and node 0 reports its ``KubernetesReady`` condition;
6. ``snapshot-save`` and ``clock``: the first time a plan's cluster is Ready,
   save it (:meth:`Cluster.save <pytest_smalltown.cluster.Cluster.save>`, the
   routine a failed test's save uses too) and let it run on.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.cluster import SAVE_TIMEOUT, Cluster
from pytest_smalltown.contract import DEBUG_TOKEN_FW_CFG_NAME, ENROLMENT_FW_CFG_NAME, node_address
from pytest_smalltown.debug import new_debug_token, write_debug_token
from pytest_smalltown.base.progress import Progress
from pytest_smalltown.launch.qemu import Disk
from pytest_smalltown.launch.vmstate import create_overlay
from pytest_smalltown.phases import ClusterLaunchError, Phases
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.secretfile import write_private
from pytest_smalltown.snapshots import SnapshotStore, SnapshotWarning, SnapshotWriter, describe_size

#: Extra seconds of boot deadline per preloaded image set. Importing the
#: conformance set (about 110 MB) took 209 s on an idle node and 595 s on a
#: node 0 that was also starting its control plane, under TCG on 2 host cores.
PRELOAD_IMPORT_ALLOWANCE = 600.0
#: Extra seconds of boot deadline per control-plane node beyond node 0. A
#: 3-node cluster (three etcd members, three apiservers) took about 500 s to
#: be Ready where a 2-node one took 155 s, under TCG on 2 host cores.
CONTROL_PLANE_ALLOWANCE = 300.0


def boot(plan: ClusterPlan, store: SnapshotStore | None, not_restored: str, progress: Progress) -> Cluster:
    """Boot the plan's cluster from nothing; save it as a snapshot once Ready when ``store`` is given.

    ``not_restored`` says why it was not restored (for the summary). On any
    failure the cluster is closed (every process it started stopped) before
    the error propagates.
    """
    spec = plan.spec
    cluster = Cluster(plan)
    # The image build does not count against the boot deadline; importing
    # preloaded image sets does (nodes are not Ready before), so it gets its own allowance.
    deadline = (time.monotonic() + plan.boot_timeout + PRELOAD_IMPORT_ALLOWANCE * len(spec.preload)
                + CONTROL_PLANE_ALLOWANCE * (spec.control_plane_nodes - 1))  # fmt: skip
    phases = Phases(spec, progress, cluster.consoles, deadline)
    phases.seconds["images"] = plan.images_seconds
    # A snapshot's disks are qcow2 overlays written from the first boot on, so
    # that at the save they hold exactly what the guests wrote: they are made
    # straight in the snapshot's work directory (no copy at save time).
    writer = store.begin() if store is not None else None
    try:
        # Every node gets the token (fw_cfg) and checks it; a restore needs the same one, so a save keeps it.
        token = new_debug_token()
        write_debug_token(token, cluster.debug_token_path)
        token_fw_cfg = ((DEBUG_TOKEN_FW_CFG_NAME, cluster.debug_token_path),)
        with phases.phase("switch"):
            cluster.start_switch()

        def boot_node(index: int, enrolment: tuple[tuple[str, Path], ...] = ()) -> None:
            disk = plan.nodes[index].disks[0]
            if writer is not None:
                overlay = create_overlay(disk.path, disk.format, writer.layout.disk(index))
                disk = Disk(overlay, "qcow2", snapshot=False)
            cluster.start_node(index, disk, (*token_fw_cfg, *enrolment))

        with phases.phase("node0-debug"):
            boot_node(0)
            cluster.switch.wait_ready(phases.remaining())
            cluster.open_debug(token, phases.remaining())

        if spec.nodes > 1:
            with phases.phase("enrolment"):
                for index in range(1, spec.nodes):
                    ticket = cluster.debug.golden_ticket(node_address(index), retry_for=phases.remaining(),
                                                         join_consensus=index < spec.control_plane_nodes)  # fmt: skip
                    # A restore needs the very file the node booted with (fw_cfg): a save keeps it.
                    config_path = cluster.workdir / f"enrolment-node{index}.pb"
                    enrolment = enrolment_pb2.EnrolmentConfig(golden_ticket=ticket, node_id=ticket.node_id)
                    # The ticket carries the node's private keys.
                    write_private(config_path, enrolment.SerializeToString())
                    boot_node(index, ((ENROLMENT_FW_CFG_NAME, config_path),))

        cluster.connect(phases)
        cluster.how = f"booted ({not_restored})"
        if writer is not None:
            cluster.how = _save(cluster, phases, writer)
            writer = None
    except BaseException:
        cluster.close()
        if writer is not None:
            writer.abort()
        raise
    cluster.phase_seconds = phases.seconds
    return cluster


def _save(cluster: Cluster, phases: Phases, writer: SnapshotWriter) -> str:
    """Save the Ready cluster into ``writer`` (:meth:`Cluster.save`) and let it run on; how it was launched, for the summary.

    Its disks need no copy: they were made in the snapshot's work directory
    at boot, backed by the node image. A save that fails is a warning, not
    a failure: the cluster runs on unsaved.
    """
    started = time.monotonic()
    try:
        with phases.phase("snapshot-save"):
            snapshot = writer.commit(cluster.save(writer.layout, SAVE_TIMEOUT))
            cluster.disks_moved(snapshot.layout)  # the commit renamed the directory the nodes' overlays are backed by
    except ClusterLaunchError as error:
        writer.abort()
        message = f"{cluster.spec} cluster: not saved as a snapshot: {error.__cause__}"
        warnings.warn(SnapshotWarning(message), stacklevel=4)
        phases.progress(message)
        return "booted (saving a snapshot failed)"
    with phases.phase("clock"):
        cluster.wait_clock(SAVE_TIMEOUT)  # the guests stood still while saved
    size = describe_size(snapshot.directory) / 2**20
    return f"booted, saved as a snapshot ({size:.0f} MiB, {time.monotonic() - started:.1f}s)"
