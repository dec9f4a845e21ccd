"""A running Smalltown cluster: the owner of every process it started, and the API tests use.

A :class:`Cluster` is made from its :class:`~pytest_smalltown.plan.ClusterPlan`
before anything starts, and owns each process from the moment it starts it:
:meth:`Cluster.start_switch` and :meth:`Cluster.start_node` register the
process's stop on the cluster's exit stack, and :meth:`Cluster.close` (the
only cleanup, safe to call twice) stops them all, newest first, and removes the
work directory. So a launch that fails half-way closes the cluster it was
filling and leaves nothing behind.

Booting (:mod:`pytest_smalltown.boot`) and restoring
(:mod:`pytest_smalltown.restore`) fill a cluster;
:func:`pytest_smalltown.launcher.launch_cluster` chooses between them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smalltown.base.rpc import grpc  # before anything imports grpc: it sets its environment
from kubernetes import client as k8s

from pytest_smalltown.api import debug_pb2
from pytest_smalltown import faults
from pytest_smalltown.contract import ENROLMENT_FW_CFG_NAME, SWITCH_FORWARDED_PORTS, NodePort, node_address
from pytest_smalltown.debug import (DEBUG_TOKEN_FILE, DebugClient, load_image_into_nodes, node_debug_client,
                                    read_debug_token, write_debug_token)
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.kube import (api_client, node_addresses, node_ready_since, server_time,
                                   serving_certificate_not_after, wait_nodes_ready, write_kubeconfig)
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import Disk
from pytest_smalltown.launch.switch import Switch, start_switch
from pytest_smalltown.launch.vm import VM, LaunchError, Process, make_workdir, remove_workdir, start_swtpm, start_vm
from pytest_smalltown.launch.vmstate import (Monitor, VMStateError, active_image, create_overlay, divert_writes,
                                             flatten_onto, pause, rename_backing, resume, start_save,
                                             wait_migration)
from pytest_smalltown.lifecycle import RebootResult, reboot_node
from pytest_smalltown.network import Network
from pytest_smalltown.phases import CONSOLE_TAIL, Phases
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.secretfile import write_private
from pytest_smalltown.snapshots import SavedSnapshot, Snapshot, SnapshotLayout, describe_size, write_manifest

#: How far the cluster's clock (the API server's HTTP Date, whole seconds) may be from the host's.
CLOCK_TOLERANCE = 3.0
#: Seconds a save may take: every VM's RAM through zstd, on a host busy with nothing else.
SAVE_TIMEOUT = 300.0


def cluster_facts(kube: Any) -> dict[str, Any]:
    """What a restored cluster must still show: node names, addresses, Ready times, restarts, clocks.

    Recorded in the snapshot's manifest at the save; the snapshot tests
    compare a restored cluster against it.
    """
    core = k8s.CoreV1Api(kube)
    listed: list[Any] = core.list_node(_request_timeout=30).items
    pods: list[Any] = core.list_pod_for_all_namespaces(_request_timeout=30).items
    return {
        "nodes": {
            n.metadata.name: {"address": node_addresses(n).get("InternalIP"), "ready_since": node_ready_since(n)}
            for n in listed
        },
        "pod_restarts": {
            f"{p.metadata.namespace}/{p.metadata.name}": sum(c.restart_count for c in p.status.container_statuses or [])
            for p in pods
        },
        "cluster_time": server_time(kube),
        "host_time": time.time(),
    }


@dataclass
class ClusterNode:
    """One node VM of a cluster."""

    index: int
    address: str
    vm: VM
    tpm: Process | None = None
    #: Powered off on purpose (:meth:`Cluster.stop_node`): not a death.
    stopped: bool = False
    #: Being rebooted (:meth:`Cluster.reboot_node`), which judges a hang of its new boot itself.
    rebooting: bool = False
    #: The fw_cfg files it started with, by fw_cfg name: QEMU read them once, and a save hands
    #: the same to a restore (the files themselves may be gone by then, with a pruned snapshot).
    fw_cfg: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def console_log(self) -> Path:
        return self.vm.console_log

    @property
    def qmp_socket(self) -> Path | None:
        """The VM's QMP socket: how another process resets it (``smalltown reboot``)."""
        return self.vm.config.qmp_socket


def _quietly(close: Callable[[], object]) -> None:
    """Close a client; one that cannot close cleanly must not keep the VMs running."""
    with contextlib.suppress(Exception):
        close()


class Cluster:
    """A cluster, its processes and the clients to reach it. Close it when done."""

    def __init__(self, plan: ClusterPlan) -> None:
        self.plan = plan
        self.spec = plan.spec
        #: How long a node may take to boot (``--smalltown-boot-timeout``); the default deadline of a reboot.
        self.boot_timeout = plan.boot_timeout
        self.nodes: list[ClusterNode] = []
        self.phase_seconds: dict[str, float] = {}
        #: How it came up, for the summary: "booted (...)", "booted, saved as a snapshot (...)", "restored from ...".
        self.how = "booted"
        #: The snapshot it was restored from (its manifest has the facts recorded at the save).
        self.snapshot: Snapshot | None = None
        self._stack = contextlib.ExitStack()
        self._closed = False
        self.workdir = make_workdir("st-c-")
        self._stack.callback(remove_workdir, self.workdir)  # registered first: removed last
        #: The file with the cluster's debug token (0600), which every debug client sends (see :mod:`pytest_smalltown.debug`).
        self.debug_token_path = self.workdir / DEBUG_TOKEN_FILE
        self._switch: Switch | None = None
        self._debug: DebugClient | None = None
        self._kube: Any = None
        self._kubeconfig_path: Path | None = None
        #: The faults tests switched on (:mod:`pytest_smalltown.faults`); a failed test's report lists its own.
        self.faults = faults.FaultLog()

    # --- what a launch fills in --------------------------------------------------

    def start_switch(self, restore: tuple[str, Sequence[str]] | None = None) -> Switch:
        """Start the plan's switch, not waiting for it (node 0 boots meanwhile; its DHCP client retries).

        ``restore`` is (incoming migration URI, console history) of a saved switch.
        """
        self._switch = start_switch(self.plan.switch, self.spec.nodes, SWITCH_FORWARDED_PORTS, self.workdir,
                                    ready_timeout=None, restore=restore)  # fmt: skip
        self._stack.callback(self._switch.close)
        return self._switch

    def start_node(
        self,
        index: int,
        disk: Disk,
        fw_cfg: tuple[tuple[str, Path], ...],
        incoming: str | None = None,
        history: Sequence[str] = (),
    ) -> ClusterNode:
        """Start the plan's node ``index`` on ``disk`` (and its swtpm when the plan has TPMs).

        The same devices whether it boots or is restored (a restore needs
        exactly that): ``incoming`` starts it paused from a saved state.
        """
        planned = self.plan.nodes[index]
        tpm, tpm_socket = start_swtpm(self.workdir, f"swtpm{index}") if self.plan.tpm else (None, None)
        if tpm is not None:
            self._stack.callback(tpm.stop, grace=2)
        config = dataclasses.replace(
            planned,
            nics=(self.switch.node_nic(index),),
            disks=(disk, *planned.disks[1:]),
            fw_cfg=fw_cfg,
            tpm_socket=tpm_socket,
            qmp_socket=self.workdir / f"{planned.name}.qmp",
            incoming=incoming,
            paused=incoming is not None,
        )
        vm = start_vm(config, self.workdir, history)
        self._stack.callback(vm.stop, grace=5)
        node = ClusterNode(index, node_address(index), vm, tpm, fw_cfg={name: path.read_bytes() for name, path in fw_cfg})
        self.nodes.append(node)
        return node

    def open_debug(self, token: str, timeout: float) -> DebugClient:
        """Open node 0's debug client (:attr:`debug`) and wait until its debug service answers an RPC.

        Any answer counts; a dead VM ends the wait at once.
        """
        self._debug = DebugClient(self.switch.ports.dial_grpc(NodePort.DEBUG_SERVICE), token=token)
        self._stack.callback(_quietly, self._debug.close)
        debug = self._debug
        request = debug_pb2.GetConditionRequest(name="IPAssigned")

        def answered() -> bool:
            self.check_alive()
            try:
                debug.stub.GetCondition(request, timeout=5)
            except grpc.RpcError as error:
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return False
            return True  # it answered, if only to say no

        wait_for("node 0's debug service to answer", answered, timeout, interval=0.5, fatal=(LaunchError,))
        return debug

    def connect(self, phases: Phases) -> None:
        """Fetch fresh debug credentials (phase ``kubeconfig``), then wait until every node is Ready (``nodes-ready``)."""
        with phases.phase("kubeconfig"):
            kubeconfig_yaml = self.debug.debug_kubeconfig(retry_for=phases.remaining())
            self._kubeconfig_path = write_kubeconfig(
                kubeconfig_yaml, self.ports[NodePort.KUBERNETES_API], self.workdir / "kubeconfig"
            )
            self._kube = api_client(self._kubeconfig_path)
            self._stack.callback(_quietly, self._kube.close)

        with phases.phase("nodes-ready"):
            ready = wait_nodes_ready(self.kube, self.spec.nodes, phases.remaining(), self.check_alive)
            # Node objects can be Ready before node 0's control plane is whole
            # (scheduler, controller-manager); the node's own view decides.
            self.debug.wait_condition("KubernetesReady", phases.remaining())
            addresses = sorted(node_addresses(node).get("InternalIP", "?") for node in ready)
            phases.progress(f"{self.spec} cluster: nodes Ready at {', '.join(addresses)}")

    def wait_clock(self, timeout: float) -> None:
        """Wait until the cluster's wall clock agrees with the host's again.

        Guests stand still while paused or saved; each node agent steps its wall
        clock to the VM's hardware clock (which follows the host's) within a
        second of resuming (``node/clock.py``). Until then a restored cluster
        would judge the host's fresh certificates "not yet valid".
        """
        wait_for(
            "the cluster's clock to follow the host's",
            lambda: abs(server_time(self.kube) - time.time()) <= CLOCK_TOLERANCE,
            timeout,
            describe=lambda: f"the API server's clock is {time.time() - server_time(self.kube):.0f}s behind the host's",
        )

    # --- the API fixtures, tests and the CLI use ----------------------------------

    @property
    def switch(self) -> Switch:
        """The cluster's Nanoswitch."""
        if self._switch is None:
            raise LaunchError(f"{self.spec} cluster: its switch has not been started")
        return self._switch

    @property
    def debug(self) -> DebugClient:
        """Node 0's debug client."""
        if self._debug is None:
            raise LaunchError(f"{self.spec} cluster: node 0's debug service has not answered yet")
        return self._debug

    @property
    def kube(self) -> Any:  # kubernetes.client.ApiClient
        """A Kubernetes client with the cluster's debug credentials."""
        if self._kube is None:
            raise LaunchError(f"{self.spec} cluster: it has no Kubernetes client yet")
        return self._kube

    @property
    def kubeconfig_path(self) -> Path:
        """The kubeconfig of :attr:`kube` (0600)."""
        if self._kubeconfig_path is None:
            raise LaunchError(f"{self.spec} cluster: it has no kubeconfig yet")
        return self._kubeconfig_path

    @property
    def ports(self) -> PortMap:
        """Guest port -> 127.0.0.1 host port, for the ports forwarded to node 0."""
        return self.switch.ports

    @property
    def switch_qmp_socket(self) -> Path | None:
        """The switch VM's QMP socket: how another process adds a forward (a kept cluster's NodePorts)."""
        return self.switch.vm.config.qmp_socket

    def vms(self) -> list[VM]:
        """Every VM started so far, switch first."""
        return [*([self._switch.vm] if self._switch is not None else []), *(node.vm for node in self.nodes)]

    def consoles(self, lines: int = CONSOLE_TAIL) -> dict[str, list[str]]:
        """The console tail of every VM started so far, switch included."""
        return {vm.name: vm.console_tail(lines) for vm in self.vms()}

    def dump(self, directory: Path) -> list[Path]:
        """Copy every console log into ``directory`` (failure artifacts)."""
        directory.mkdir(parents=True, exist_ok=True)
        copied = []
        for vm in self.vms():
            if vm.console_log.exists():
                target = directory / vm.console_log.name
                shutil.copyfile(vm.console_log, target)
                copied.append(target)
        return copied

    def check_alive(self) -> None:
        """Raise (with the console tail) if the switch or a node VM exited, a node's firmware could not boot it, or its kernel hangs."""
        if self._switch is not None:
            self._switch.vm.check_running()
        running = [node for node in self.nodes if not node.stopped]
        for node in running:
            node.vm.check_running()
            node.vm.check_firmware_booted()
        # Last, so that a GuestHungError means every process still runs (a keeper reports the hang and keeps the cluster).
        for node in running:
            if not node.rebooting:  # a reboot resets a hung boot itself
                node.vm.check_not_hung()

    def node_debug(self, index: int) -> DebugClient:
        """A new client for node ``index``'s debug service (node 0's is also :attr:`debug`); close it when done."""
        return node_debug_client(self.ports, index, self.debug_token)

    @property
    def debug_token(self) -> str:
        """The cluster's debug token, which its nodes require of every debug call."""
        return read_debug_token(self.debug_token_path)

    def load_image(self, archive: Path, nodes: Iterable[int] | None = None) -> None:
        """Import a container image archive (``docker save`` or OCI tarball) into ``nodes`` (default: all).

        Pods then run it with ``imagePullPolicy: Never`` (or ``IfNotPresent``):
        nothing can be pulled from a registry here. A node that refuses the
        archive (corrupt, not an image, no space) raises
        :class:`~pytest_smalltown.debug.ImageLoadError` and keeps what it had.
        """
        load_image_into_nodes(self.ports, self.debug_token, archive, range(self.spec.nodes) if nodes is None else nodes)

    def forward_node_port(self, node_port: int) -> int:
        """A host port on 127.0.0.1 forwarded to NodePort ``node_port`` (through node 0) until the cluster closes.

        NodePorts answer on every node; from the host they are reached
        through node 0, the node the switch forwards to.
        """
        return self.switch.forward_node_port(node_port)

    def stop_node(self, index: int) -> None:
        """Power node ``index`` off, as a power cut would (QEMU ends; the guest is not told).

        For tests of what the rest of the cluster does without it. The node
        stays off for the rest of the session, and the cluster counts as
        alive without it: later tests of the same spec get it so.
        """
        node = self.nodes[index]
        node.stopped = True
        node.vm.stop(grace=0)

    @contextlib.contextmanager
    def frozen(self, index: int) -> Iterator[faults.FaultRecord]:
        """Node ``index`` stalls for the with block: its vCPUs stop, and run on after it, whatever happens inside.

        For tests of what the cluster does when a machine stops answering
        without going away (NotReady after the grace period, endpoints
        removed), and what the node does when it wakes. See
        :func:`pytest_smalltown.faults.frozen`.
        """
        node = self._node(index)
        if node.stopped:
            raise LaunchError(f"node {index} was powered off (stop_node); there is nothing to freeze")
        monitor = Monitor(node.vm)
        try:
            with faults.frozen(monitor, self.faults, node.name) as record:
                yield record
        finally:
            monitor.close()

    @contextlib.contextmanager
    def clock_stepped(self, index: int, seconds: float) -> Iterator[faults.FaultRecord]:
        """Node ``index``'s wall clock runs ``seconds`` off the host's for the with block (e.g. 3600: an hour ahead).

        For tests of what the cluster makes of a node whose clock jumped:
        Lease renew times and status timestamps from the future or the
        past, certificates not yet or no longer valid to it. See
        :func:`pytest_smalltown.faults.clock_stepped`.
        """
        node = self._node(index)
        if node.stopped:
            raise LaunchError(f"node {index} was powered off (stop_node); it has no clock to step")
        debug = self.node_debug(index)
        try:
            with faults.clock_stepped(debug, self.faults, node.name, seconds) as record:
                yield record
        finally:
            debug.close()

    @property
    def network(self) -> Network:
        """The cluster's network, to partition, degrade and capture (:class:`pytest_smalltown.network.Network`)."""
        qmp_socket = self.switch.vm.config.qmp_socket
        assert qmp_socket is not None, "a cluster's switch always has a QMP socket (Cluster.start_switch)"
        return Network(qmp_socket, self.spec.nodes, self.faults, captures=self.workdir / "captures")

    def _node(self, index: int) -> ClusterNode:
        if not 0 <= index < len(self.nodes):
            raise LookupError(f"node {index}: this {self.spec} cluster has nodes 0..{len(self.nodes) - 1}")
        return self.nodes[index]

    def reboot_node(self, index: int, hard: bool = False, timeout: float | None = None) -> RebootResult:
        """Reboot node ``index`` (graceful: the node shuts down cleanly; ``hard``: a reset) and wait until it is back.

        Back means: its Node reports a new boot ID and is Ready, and its agent
        says KubernetesReady. Pods bound to it are restarted by its kubelet;
        waiting for a particular pod is the test's business. See
        :mod:`pytest_smalltown.lifecycle` for what a hard reset can lose.
        """
        node = self.nodes[index]
        monitor = Monitor(node.vm)
        debug = self.node_debug(index)
        node.rebooting = True
        try:
            return reboot_node(monitor, debug, self.kube, node.address, hard=hard,
                               timeout=self.boot_timeout if timeout is None else timeout, guest=node.vm)
        finally:
            node.rebooting = False
            debug.close()
            monitor.close()

    # --- saving ------------------------------------------------------------------

    def save(self, layout: SnapshotLayout, timeout: float = SAVE_TIMEOUT) -> dict[str, Any]:
        """Save the whole running cluster into ``layout`` and let it run on; the facts for its manifest.

        The one save routine: of the snapshot the first boot makes for the
        cache (``boot.py``) and of a failed test's cluster
        (:meth:`save_snapshot`). Every VM is paused, so that no node sees
        another one move; each node's disk writes are diverted to a new
        overlay in the work directory, so that the image it wrote until now
        stands still; every VM's RAM and device state goes to a file; the
        stilled disks are flattened into ``layout`` onto the node image
        (:func:`~pytest_smalltown.launch.vmstate.flatten_onto`); the token
        and enrolment files the nodes checked at boot, and the consoles, are
        copied; then all run on. Whatever fails, the VMs that were paused are
        resumed before the error propagates. The guests stood still: the
        caller waits for the clock (:meth:`wait_clock`).
        """
        if any(node.stopped for node in self.nodes):
            raise VMStateError(f"{self.spec} cluster: a node was powered off (stop_node), and a cluster is saved whole")
        facts = cluster_facts(self.kube)
        facts["api_certificate_not_after"] = serving_certificate_not_after(self.ports[NodePort.KUBERNETES_API])
        vms = self.vms()
        monitors: list[Monitor] = []
        paused: list[Monitor] = []
        try:
            monitors = [Monitor(vm) for vm in vms]
            for monitor in monitors:
                pause(monitor)
                paused.append(monitor)
            stilled = {}
            for node, monitor in zip(self.nodes, monitors[1:]):
                stilled[node.index] = active_image(monitor, "disk0")
                overlay = create_overlay(stilled[node.index], "qcow2", self._new_overlay(node.index), in_use=True)
                divert_writes(monitor, "disk0", overlay)
            for vm, monitor in zip(vms, monitors):
                start_save(monitor, layout.state(vm.name))
            for monitor in monitors:
                wait_migration(monitor, timeout)
            for node in self.nodes:
                flatten_onto(stilled[node.index], self.plan.nodes[node.index].disks[0], layout.disk(node.index))
                if ENROLMENT_FW_CFG_NAME in node.fw_cfg:
                    write_private(layout.enrolment(node.index), node.fw_cfg[ENROLMENT_FW_CFG_NAME])
            write_debug_token(self.debug_token, layout.debug_token)
            for vm in vms:
                shutil.copyfile(vm.console_log, layout.console_log(vm.name))
        finally:
            try:
                for monitor in paused:  # if this fails, the cluster is lost: the error says so
                    resume(monitor)
            finally:
                for monitor in monitors:
                    monitor.close()
        return facts

    def disks_moved(self, layout: SnapshotLayout) -> None:
        """The disks a save stilled were moved into ``layout`` (the snapshot's directory renamed into place).

        Each node's writes go to an overlay whose header names its backing
        file; this gives it the new name, so that a later save (a failed
        test's) finds the whole chain on disk.
        """
        for node in self.nodes:
            monitor = Monitor(node.vm)
            try:
                rename_backing(monitor, "disk0", layout.disk(node.index))
            finally:
                monitor.close()

    def _new_overlay(self, index: int) -> Path:
        """A name in the work directory for node ``index``'s next disk overlay (each save adds one)."""
        path = self.workdir / f"node{index}.qcow2"
        generation = 1
        while path.exists():
            generation += 1
            path = self.workdir / f"node{index}.{generation}.qcow2"
        return path

    def save_snapshot(self, directory: Path) -> SavedSnapshot:
        """Save the whole cluster into the new directory ``directory`` (``--smalltown-snapshot-on-failure``) and run on.

        The snapshot is complete on its own, beside the node image of the
        cache (its manifest's inputs name it, and :func:`smalltown up --from
        <pytest_smalltown.launcher.launch_saved>` checks them): nothing of
        this session's work directory nor of a cached snapshot is needed to
        restore it. Raises :class:`FileExistsError` if ``directory`` exists.
        """
        started = time.monotonic()
        directory.mkdir(mode=0o700, parents=True)  # it holds the cluster's CA keys, as a cached snapshot does
        layout = SnapshotLayout(directory)
        facts = self.save(layout)
        write_manifest(layout, self.plan.snapshot_inputs(), facts)
        self.wait_clock(SAVE_TIMEOUT)  # the guests stood still while saved
        return SavedSnapshot(directory, describe_size(directory), time.monotonic() - started)

    def close(self) -> None:
        """Close the clients, stop every process, newest first, and remove the work directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stack.close()
