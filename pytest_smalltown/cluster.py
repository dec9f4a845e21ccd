"""Launching a whole Smalltown cluster: switch, nodes, enrolment, readiness.

``launch_cluster`` is what the pytest fixtures and ``smalltown up`` call. It
runs in phases, each timed (the timings end up in the pytest summary and the
benchmark):

1. ``images``: build or find the switch and node images (cached);
2. ``switch``: start the Nanoswitch with one cable per node, forwarding the
   debug service, the external service and the Kubernetes API to node 0 on
   ephemeral 127.0.0.1 ports;
3. ``node0-debug``: boot node 0 (no enrolment: it bootstraps the cluster)
   while the switch boots, and wait until its debug service answers;
4. ``enrolment``: for each further node ask node 0 for a golden ticket for
   that node's planned address, and boot it with the ticket in fw_cfg; the
   nodes boot while node 0 still brings up Kubernetes;
5. ``kubeconfig``: fetch debug credentials and write the kubeconfig (0600);
6. ``nodes-ready``: wait until all N nodes are Ready in the Kubernetes API
   and node 0 reports its ``KubernetesReady`` condition.

7. ``snapshot-save``: the first time a spec's cluster is Ready, save it
   (see :func:`_save`) and let it run on.

A cluster restored from a snapshot (:func:`_restore`) has the phases
``images``, ``restore`` (start every VM paused from its saved state, check
the snapshot's files meanwhile, resume them together), ``node0-debug``,
``kubeconfig`` (new credentials), ``nodes-ready`` and ``clock`` (the guests'
wall clocks stepped from the save instant to the host's now).

A phase that does not finish raises :class:`ClusterLaunchError`, which names
the phase and shows every VM's console tail; everything started is stopped
before the error propagates.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from kubernetes import client as k8s

from pytest_smalltown.api import debug_pb2, enrolment_pb2
from pytest_smalltown.contract import DEBUG_TOKEN_FW_CFG_NAME, ENROLMENT_FW_CFG_NAME, SWITCH_FORWARDED_PORTS, NodePort
from pytest_smalltown.debug import (
    DEBUG_TOKEN_FILE,
    DebugClient,
    load_image_into_nodes,
    new_debug_token,
    node_debug_client,
    read_debug_token,
    write_debug_token,
)
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.kube import (
    api_client,
    node_addresses,
    node_ready_since,
    serving_certificate_not_after,
    server_time,
    wait_nodes_ready,
    write_kubeconfig,
)
from pytest_smalltown.launch.accel import resolve_accel
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import DirectBoot, Disk, UefiBoot, VMConfig
from pytest_smalltown.launch.switch import Switch, launch_switch, node_address
from pytest_smalltown.launch.vm import (
    VM,
    GuestHungError,
    LaunchError,
    Process,
    make_workdir,
    remove_workdir,
    start_swtpm,
    start_vm,
)
from pytest_smalltown.launch.vmstate import (
    Monitor,
    create_overlay,
    divert_writes,
    incoming_uri,
    pause,
    resume,
    start_save,
    wait_incoming,
    wait_migration,
)
from pytest_smalltown.lifecycle import RebootResult, reboot_node
from pytest_smalltown.secretfile import write_private
from pytest_smalltown.settings import Settings
from pytest_smalltown.snapshots import (
    RestoreRequiredError,
    Snapshot,
    SnapshotMissing,
    SnapshotRefused,
    SnapshotStore,
    SnapshotWarning,
    SnapshotWriter,
    describe_size,
    snapshot_inputs,
)
from pytest_smalltown.spec import ClusterSpec

if TYPE_CHECKING:
    from pytest_smalltown.images.switch import SwitchImage

CONSOLE_TAIL = 40
#: Extra seconds of boot deadline per preloaded image set. Importing the
#: conformance set (about 110 MB) took 209 s on an idle node and 595 s on a
#: node 0 that was also starting its control plane, under TCG on 2 host cores.
PRELOAD_IMPORT_ALLOWANCE = 600.0
#: Extra seconds of boot deadline per control-plane node beyond node 0. A
#: 3-node cluster (three etcd members, three apiservers) took about 500 s to
#: be Ready where a 2-node one took 155 s, under TCG on 2 host cores.
CONTROL_PLANE_ALLOWANCE = 300.0


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


@dataclass
class Cluster:
    """A running cluster and the clients to reach it. Close it when done."""

    spec: ClusterSpec
    switch: Switch
    nodes: list[ClusterNode]
    debug: DebugClient
    kube: Any  # kubernetes.client.ApiClient
    kubeconfig_path: Path
    workdir: Path
    #: The file with the cluster's debug token (0600), which every debug client sends (see :mod:`pytest_smalltown.debug`).
    debug_token_path: Path
    phase_seconds: dict[str, float] = field(default_factory=dict)
    #: How it came up, for the summary: "booted (...)", "booted, saved as a snapshot (...)", "restored from ...".
    how: str = "booted"
    #: The snapshot it was restored from (its manifest has the facts recorded at the save).
    snapshot: Snapshot | None = None
    #: How long a node may take to boot (``--smalltown-boot-timeout``); the default deadline of a reboot.
    boot_timeout: float = 600.0
    _closed: bool = False

    @property
    def ports(self) -> PortMap:
        """Guest port -> 127.0.0.1 host port, for the ports forwarded to node 0."""
        return self.switch.ports

    @property
    def switch_qmp_socket(self) -> Path | None:
        """The switch VM's QMP socket: how another process adds a forward (a kept cluster's NodePorts)."""
        return self.switch.vm.config.qmp_socket

    def consoles(self, lines: int = CONSOLE_TAIL) -> dict[str, list[str]]:
        """The console tail of every VM, switch included."""
        tails = {node.name: node.vm.console_tail(lines) for node in self.nodes}
        tails[self.switch.vm.name] = self.switch.vm.console_tail(lines)
        return tails

    def dump(self, directory: Path) -> list[Path]:
        """Copy every console log into ``directory`` (failure artifacts)."""
        directory.mkdir(parents=True, exist_ok=True)
        copied = []
        for vm in [self.switch.vm, *(node.vm for node in self.nodes)]:
            if vm.console_log.exists():
                target = directory / vm.console_log.name
                shutil.copyfile(vm.console_log, target)
                copied.append(target)
        return copied

    def check_alive(self) -> None:
        """Raise (with the console tail) if the switch or a node VM has exited, or a node's kernel hung."""
        _check_vms(self.switch, self.nodes)

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

    def close(self) -> None:
        """Stop every VM and remove the work directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.kube.close()
        with contextlib.suppress(Exception):
            self.debug.close()
        _stop_all(self.nodes, self.switch)
        remove_workdir(self.workdir)


def _check_vms(switch: Switch | None, nodes: list[ClusterNode]) -> None:
    """Raise if the switch or a node VM exited, a node's firmware could not boot it, or its kernel hangs."""
    if switch is not None:
        switch.vm.check_running()
    for node in nodes:
        if node.stopped:
            continue
        node.vm.check_running()
        node.vm.check_firmware_booted()
        if not node.rebooting:  # a reboot resets a hung boot itself
            node.vm.check_not_hung()


def _stop_all(nodes: list[ClusterNode], switch: Switch | None) -> None:
    for node in reversed(nodes):
        node.vm.stop(grace=5)
        if node.tpm is not None:
            node.tpm.stop(grace=2)
    if switch is not None:
        switch.close()


def preload_disks(spec: ClusterSpec, progress: Progress) -> tuple[Disk, ...]:
    """One read-only disk per image set the spec preloads, shared by every node."""
    from pytest_smalltown.images.preload import build_preload_archive, disk_serial

    return tuple(
        Disk(build_preload_archive(name, progress), "raw", snapshot=False, read_only=True, serial=disk_serial(name))
        for name in spec.preload
    )


def check_host_inputs(settings: Settings) -> None:
    """Fail in milliseconds, naming the option, on what no build or probe can fix.

    QEMU, a user-given image and its firmware, swtpm when a TPM is asked for:
    checked before the accelerator probe and any image build (minutes when
    cold), so a typo costs nothing.
    """
    find_program(settings.qemu, "the cluster's VMs run in it", "qemu-system-x86", otherwise="set --smalltown-qemu")
    if settings.tpm:
        find_program("swtpm", "--smalltown-tpm gives each node a TPM it emulates", "swtpm swtpm-tools",
                     otherwise="drop --smalltown-tpm")
    if settings.image == "reference":
        return
    path = Path(settings.image).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--smalltown-image {path} does not exist; give the path of a Smalltown disk image "
            "or 'reference' for the built-in reference image"
        )
    for what, firmware in (("--smalltown-ovmf-code", settings.ovmf_code), ("--smalltown-ovmf-vars", settings.ovmf_vars)):
        if not firmware.exists():
            raise FileNotFoundError(f"{what} {firmware} does not exist; install Debian's ovmf package or set it")


def node_boot(settings: Settings, progress: Progress) -> tuple[DirectBoot | UefiBoot, Disk]:
    """Boot method and disk of the configured node image (building the reference image if needed).

    Its user-given inputs were checked by :func:`check_host_inputs`.
    """
    if settings.image == "reference":
        from pytest_smalltown.images.node import build_node_image

        image = build_node_image(progress)
        return DirectBoot(image.kernel, image.initramfs, image.cmdline), Disk(image.disk, "raw")
    path = Path(settings.image).expanduser()
    return UefiBoot(settings.ovmf_code, settings.ovmf_vars), Disk(path, "qcow2" if path.suffix == ".qcow2" else "raw")


@dataclass(frozen=True)
class _Parts:
    """What every VM of a cluster boots from: the node image, preloaded disks, the switch image."""

    boot: DirectBoot | UefiBoot
    disk: Disk
    extra_disks: tuple[Disk, ...]
    switch_image: SwitchImage

    def files(self) -> dict[str, Path]:
        """Every file the VMs are started from, by role (for snapshot keys)."""
        files = {"node-disk": self.disk.path, "switch-kernel": self.switch_image.kernel}
        if self.switch_image.initramfs is not None:
            files["switch-initramfs"] = self.switch_image.initramfs
        if isinstance(self.boot, DirectBoot):
            files["node-kernel"] = self.boot.kernel
            if self.boot.initramfs is not None:
                files["node-initramfs"] = self.boot.initramfs
        else:
            files["ovmf-code"], files["ovmf-vars"] = self.boot.ovmf_code, self.boot.ovmf_vars
        files.update({f"preload-{index}": disk.path for index, disk in enumerate(self.extra_disks)})
        return files


class _Phases:
    """Times the launch phases and turns a failure into a ClusterLaunchError naming the phase."""

    def __init__(self, spec: ClusterSpec, deadline: float, progress: Progress) -> None:
        self.spec = spec
        self.deadline = deadline
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.switch: Switch | None = None
        self.nodes: list[ClusterNode] = []

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def consoles(self) -> dict[str, list[str]]:
        tails = {}
        if self.switch is not None:
            tails[self.switch.vm.name] = self.switch.vm.console_tail(CONSOLE_TAIL)
        for node in self.nodes:
            tails[node.name] = node.vm.console_tail(CONSOLE_TAIL)
        return tails

    def check_alive(self) -> None:
        _check_vms(self.switch, self.nodes)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.progress(f"{self.spec} cluster: {name} ...")
        try:
            yield
        except Exception as error:
            raise ClusterLaunchError(self.spec, name, error, self.consoles()) from error
        self.seconds[name] = time.monotonic() - started
        self.progress(f"{self.spec} cluster: {name} done in {self.seconds[name]:.1f}s")

    def stop_all(self) -> None:
        _stop_all(self.nodes, self.switch)


def _wait_debug_service(debug: DebugClient, phases: _Phases, timeout: float) -> None:
    """Wait until node 0's debug service answers an RPC (any answer counts); a dead VM ends the wait at once."""
    request = debug_pb2.GetConditionRequest(name="IPAssigned")

    def answered() -> bool:
        phases.check_alive()
        try:
            debug.stub.GetCondition(request, timeout=5)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False
        return True  # it answered, if only to say no

    wait_for("node 0's debug service to answer", answered, timeout, interval=0.5, fatal=(LaunchError,))


def launch_cluster(spec: ClusterSpec, settings: Settings, progress: Progress = stderr_progress) -> Cluster:
    """Launch a cluster of ``spec.nodes`` nodes behind a Nanoswitch and wait until it is ready.

    With ``settings.snapshots`` at ``auto`` (the default) a cluster saved by
    an earlier launch with the same inputs is restored instead of booted; a
    snapshot that cannot be used is refused with a :class:`SnapshotWarning`
    and the cluster is booted cold and saved anew (``refresh`` always does
    that, ``off`` never saves nor restores, ``require`` raises
    :class:`RestoreRequiredError` instead of booting). See :mod:`pytest_smalltown.snapshots`.

    A guest whose kernel hangs while booting (both vCPUs of a reference
    node stuck for minutes in a soft lockup, seen once under TCG) fails the
    launch as soon as the kernel reports it, and the cluster is launched
    once more from scratch; the terminal summary shows the relaunch as the
    ``hung-relaunch`` phase. Any other failure, or a second hang, is raised.
    """
    started = time.monotonic()
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
    check_host_inputs(settings)
    accel = resolve_accel(settings.accel, settings.qemu).accel
    phases = _Phases(spec, time.monotonic() + settings.boot_timeout, progress)
    with phases.phase("images"):
        boot, disk = node_boot(settings, progress)
        extra_disks = preload_disks(spec, progress)
        from pytest_smalltown.images.switch import build_switch_image

        parts = _Parts(boot, disk, extra_disks, build_switch_image(progress))
        store = None
        if settings.snapshots != "off" and not settings.tpm:
            inputs = snapshot_inputs(
                spec, boot_files=parts.files(), cmdline=boot.cmdline if isinstance(boot, DirectBoot) else "",
                qemu=settings.qemu, memory_mib=settings.node_memory, cpus=settings.node_cpus, accel=accel,
                tpm=settings.tpm,
            )  # fmt: skip
            store = SnapshotStore(spec, inputs)
    images_seconds = phases.seconds["images"]

    refusal = _why_not_restoring(settings, store)
    if refusal is None:
        assert store is not None
        try:
            snapshot = store.lookup()
            return _restore(spec, settings, parts, accel, store, snapshot, images_seconds, progress)
        except SnapshotMissing as missing:  # the first launch with these inputs: nothing to warn about
            refusal = str(missing)
        except SnapshotRefused as refused:
            refusal = f"snapshot refused: {refused}"
            store.discard()  # it exists but cannot be used: make room for a new one
            if settings.snapshots == "auto":  # require says it below, as an error
                warnings.warn(SnapshotWarning(f"{spec} cluster: {refusal}; booting it cold"), stacklevel=3)
    if settings.snapshots == "require":
        raise RestoreRequiredError(f"{spec} cluster: not restored ({refusal}), and --smalltown-snapshots=require "
                                   f"(from {settings.sources.get('snapshots', 'default')}) allows no cold boot")
    if settings.snapshots == "auto":
        progress(f"{spec} cluster: not restored ({refusal}); booting")
    return _boot(spec, settings, parts, accel, phases, store, refusal, progress)


def _why_not_restoring(settings: Settings, store: SnapshotStore | None) -> str | None:
    """Why this launch does not even look for a snapshot (for the summary); None when it does."""
    if settings.snapshots == "off":
        return "snapshots are off"
    if settings.snapshots == "refresh":
        return "--smalltown-snapshots=refresh"
    if store is None:
        return "snapshots of nodes with a TPM are not supported yet"
    return None


def _node_config(
    index: int,
    settings: Settings,
    parts: _Parts,
    accel: str,
    switch: Switch,
    workdir: Path,
    disk: Disk,
    fw_cfg: tuple[tuple[str, Path], ...],
    tpm_socket: Path | None,
    incoming: str | None = None,
) -> VMConfig:
    """Node ``index``'s VM: the same devices whether it boots or is restored (a restore needs exactly that)."""
    return VMConfig(
        name=f"node{index}",
        boot=parts.boot,
        accel=accel,  # type: ignore[arg-type]
        memory_mib=settings.node_memory,
        cpus=settings.node_cpus,
        nics=(switch.node_nic(index),),
        disks=(disk, *parts.extra_disks),
        fw_cfg=fw_cfg,
        tpm_socket=tpm_socket,
        qmp_socket=workdir / f"node{index}.qmp",
        incoming=incoming,
        paused=incoming is not None,
    )


def _start_node(phases: _Phases, settings: Settings, workdir: Path, make: Callable[[Path | None], VMConfig],
                index: int, history: Sequence[str] = ()) -> ClusterNode:  # fmt: skip
    """Start node ``index`` (and its swtpm when asked for) and add it to ``phases.nodes``."""
    tpm_process, tpm_socket = start_swtpm(workdir, f"swtpm{index}") if settings.tpm else (None, None)
    try:
        vm = start_vm(make(tpm_socket), workdir, settings.qemu, history)
    except BaseException:
        if tpm_process is not None:  # no VM will ever own it: stop it here
            tpm_process.stop(grace=2)
        raise
    node = ClusterNode(index, node_address(index), vm, tpm_process)
    phases.nodes.append(node)
    return node


def _boot(
    spec: ClusterSpec,
    settings: Settings,
    parts: _Parts,
    accel: str,
    phases: _Phases,
    store: SnapshotStore | None,
    not_restored: str,
    progress: Progress,
) -> Cluster:
    """Boot the cluster from nothing; save it as a snapshot once Ready when ``store`` is given."""
    # The image build does not count against the boot deadline; importing
    # preloaded image sets does (nodes are not Ready before), so it gets its own allowance.
    phases.deadline = (time.monotonic() + settings.boot_timeout + PRELOAD_IMPORT_ALLOWANCE * len(spec.preload)
                       + CONTROL_PLANE_ALLOWANCE * (spec.control_plane_nodes - 1))
    workdir = make_workdir("st-c-")
    # A snapshot's disks are qcow2 overlays written from the first boot on, so
    # that at the save they hold exactly what the guests wrote: they are made
    # straight in the snapshot's work directory (no copy at save time).
    writer = store.begin() if store is not None else None
    debug: DebugClient | None = None
    try:
        # Every node gets the token (fw_cfg) and checks it; a restore needs the same one, so it goes with the snapshot.
        token = new_debug_token()
        token_path = write_debug_token(token, workdir / DEBUG_TOKEN_FILE)
        if writer is not None:
            write_debug_token(token, writer.work / DEBUG_TOKEN_FILE)
        token_fw_cfg = ((DEBUG_TOKEN_FW_CFG_NAME, token_path),)
        with phases.phase("switch"):
            # Not waited for here: node 0 boots while the switch does (its DHCP client retries).
            phases.switch = launch_switch(
                spec.nodes, SWITCH_FORWARDED_PORTS, workdir=workdir, accel=accel, image=parts.switch_image,
                ready_timeout=None, progress=progress, qemu=settings.qemu,
            )  # fmt: skip
        switch = phases.switch

        def boot_node(index: int, enrolment: tuple[tuple[str, Path], ...] = ()) -> None:
            disk = parts.disk
            fw_cfg = (*token_fw_cfg, *enrolment)
            if writer is not None:
                overlay = create_overlay(disk.path, disk.format, writer.work / f"node{index}.qcow2")
                disk = Disk(overlay, "qcow2", snapshot=False)

            def make(tpm_socket: Path | None) -> VMConfig:
                return _node_config(index, settings, parts, accel, switch, workdir, disk, fw_cfg, tpm_socket)

            _start_node(phases, settings, workdir, make, index)

        with phases.phase("node0-debug"):
            boot_node(0)
            switch.wait_ready(phases.remaining())
            debug = DebugClient(switch.ports.dial_grpc(NodePort.DEBUG_SERVICE), token=token)
            _wait_debug_service(debug, phases, phases.remaining())

        if spec.nodes > 1:
            with phases.phase("enrolment"):
                for index in range(1, spec.nodes):
                    ticket = debug.golden_ticket(node_address(index), join_consensus=index < spec.control_plane_nodes,
                                                 retry_for=phases.remaining())
                    # A restore needs the very file the node booted with (fw_cfg), so it is kept with the snapshot.
                    config_path = (writer.work if writer is not None else workdir) / f"enrolment-node{index}.pb"
                    enrolment = enrolment_pb2.EnrolmentConfig(golden_ticket=ticket, node_id=ticket.node_id)
                    # The ticket carries the node's private keys.
                    write_private(config_path, enrolment.SerializeToString())
                    boot_node(index, ((ENROLMENT_FW_CFG_NAME, config_path),))

        kube, kubeconfig_path = _connect(phases, debug, switch, workdir)
        how = f"booted ({not_restored})"
        if writer is not None:
            how = _save(phases, kube, writer, workdir, progress)
            writer = None
    except BaseException:
        if debug is not None:
            debug.close()
        phases.stop_all()
        remove_workdir(workdir)
        if writer is not None:
            writer.abort()
        raise
    return Cluster(
        spec=spec, switch=switch, nodes=phases.nodes, debug=debug, kube=kube, kubeconfig_path=kubeconfig_path,
        workdir=workdir, debug_token_path=token_path, phase_seconds=phases.seconds, how=how,
        boot_timeout=settings.boot_timeout,
    )  # fmt: skip


def _connect(phases: _Phases, debug: DebugClient, switch: Switch, workdir: Path) -> tuple[Any, Path]:
    """Fetch fresh debug credentials, then wait until every node is Ready; returns the client and kubeconfig."""
    with phases.phase("kubeconfig"):
        kubeconfig_yaml = debug.debug_kubeconfig(retry_for=phases.remaining())
        kubeconfig_path = write_kubeconfig(kubeconfig_yaml, switch.ports[NodePort.KUBERNETES_API], workdir / "kubeconfig")
        kube = api_client(kubeconfig_path)

    with phases.phase("nodes-ready"):
        ready = wait_nodes_ready(kube, phases.spec.nodes, phases.remaining(), phases.check_alive)
        # Node objects can be Ready before node 0's control plane is whole
        # (scheduler, controller-manager); the node's own view decides.
        debug.wait_condition("KubernetesReady", phases.remaining())
        addresses = sorted(node_addresses(node).get("InternalIP", "?") for node in ready)
        phases.progress(f"{phases.spec} cluster: nodes Ready at {', '.join(addresses)}")
    return kube, kubeconfig_path


#: How far the cluster's clock (the API server's HTTP Date, whole seconds) may be from the host's.
CLOCK_TOLERANCE = 3.0


def _wait_clock(kube: Any, timeout: float) -> None:
    """Wait until the cluster's wall clock agrees with the host's again.

    Guests stand still while paused or saved; each node agent steps its wall
    clock to the VM's hardware clock (which follows the host's) within a
    second of resuming (``node/clock.py``). Until then a restored cluster
    would judge the host's fresh certificates "not yet valid".
    """
    wait_for(
        "the cluster's clock to follow the host's",
        lambda: abs(server_time(kube) - time.time()) <= CLOCK_TOLERANCE,
        timeout,
        describe=lambda: f"the API server's clock is {time.time() - server_time(kube):.0f}s behind the host's",
    )


#: Seconds a save may take: every VM's RAM through zstd, on a host busy with nothing else.
SAVE_TIMEOUT = 300.0
#: Seconds a restored cluster gets to load and be Ready again. It needs a few;
#: a snapshot that takes longer is broken, and booting cold is better than waiting.
RESTORE_TIMEOUT = 180.0


def cluster_facts(kube: Any, nodes: int) -> dict[str, Any]:
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


def _save(phases: _Phases, kube: Any, writer: SnapshotWriter, workdir: Path, progress: Progress) -> str:
    """Save the Ready cluster into ``writer`` and let it run on; returns how it was launched, for the summary.

    Every VM is paused, so that no node sees another one move; each node's
    disk writes are diverted to a new overlay in ``workdir`` (the saved one
    stays as it was at this instant); every VM's RAM and devices go to a
    file; then all run on. A save that fails is a warning, not a failure:
    the cluster runs on unsaved.
    """
    assert phases.switch is not None
    vms = [phases.switch.vm, *(node.vm for node in phases.nodes)]
    monitors: list[Monitor] = []
    paused: list[Monitor] = []
    started = time.monotonic()
    try:
        with phases.phase("snapshot-save"):
            facts = cluster_facts(kube, phases.spec.nodes)
            facts["api_certificate_not_after"] = serving_certificate_not_after(
                phases.switch.ports[NodePort.KUBERNETES_API]
            )
            monitors = [Monitor(vm) for vm in vms]
            for monitor in monitors:
                pause(monitor)
                paused.append(monitor)
            for node, monitor in zip(phases.nodes, monitors[1:]):
                saved_disk = writer.work / f"node{node.index}.qcow2"
                overlay = create_overlay(saved_disk, "qcow2", workdir / f"node{node.index}.qcow2", in_use=True)
                divert_writes(monitor, "disk0", overlay)
            for vm, monitor in zip(vms, monitors):
                start_save(monitor, writer.work / f"{vm.name}.state.zst")
            for monitor in monitors:
                wait_migration(monitor, SAVE_TIMEOUT)
            for vm in vms:
                shutil.copyfile(vm.console_log, writer.work / vm.console_log.name)
            for monitor in paused:
                resume(monitor)
            paused = []
            snapshot = writer.commit(facts)
    except ClusterLaunchError as error:
        writer.abort()
        for monitor in paused:  # if this fails too, the cluster is lost: that is a launch failure
            resume(monitor)
        message = f"{phases.spec} cluster: not saved as a snapshot: {error.__cause__}"
        warnings.warn(SnapshotWarning(message), stacklevel=4)
        progress(message)
        return "booted (saving a snapshot failed)"
    finally:
        for monitor in monitors:
            monitor.close()
    with phases.phase("clock"):
        _wait_clock(kube, SAVE_TIMEOUT)  # the guests stood still while saved
    size = describe_size(snapshot.directory) / 2**20
    return f"booted, saved as a snapshot ({size:.0f} MiB, {time.monotonic() - started:.1f}s)"


def _restore(
    spec: ClusterSpec,
    settings: Settings,
    parts: _Parts,
    accel: str,
    store: SnapshotStore,
    snapshot: Snapshot,
    images_seconds: float,
    progress: Progress,
) -> Cluster:
    """Start every VM of a saved cluster from its state and wait until the cluster is Ready again.

    The VMs get fresh cables, host ports, work directories and disk
    overlays on top of the snapshot's (which is only read, so any number of
    sessions may restore it at once); they load their saved state paused and
    are resumed together. The files are checksummed meanwhile. Whatever
    goes wrong, everything started is stopped; a failure that shows the
    snapshot unusable (:func:`_why_unusable`) raises :class:`SnapshotRefused`,
    and the caller deletes it and boots cold. Any other failure is raised as
    it is (a :class:`ClusterLaunchError` naming the phase, an interrupt) and
    the snapshot stays, since other sessions share it.
    """
    phases = _Phases(spec, time.monotonic() + min(settings.boot_timeout, RESTORE_TIMEOUT), progress)
    phases.seconds["images"] = images_seconds
    workdir = make_workdir("st-c-")
    debug: DebugClient | None = None
    monitors: list[Monitor] = []
    # The checksums are read while QEMU loads the same files (both mostly wait for the disk).
    verifier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="snapshot-verify")
    verification = verifier.submit(snapshot.verify)
    try:
        with store.reading(progress), phases.phase("restore"):
            phases.switch = launch_switch(
                spec.nodes, SWITCH_FORWARDED_PORTS, workdir=workdir, accel=accel, image=parts.switch_image,
                progress=progress, qemu=settings.qemu,
                restore=(incoming_uri(snapshot.state_file("nanoswitch")), snapshot.console_history("nanoswitch")),
            )  # fmt: skip
            switch = phases.switch
            # The nodes keep the token they booted with; the cluster's copy outlives a pruned snapshot.
            token = read_debug_token(snapshot.file(DEBUG_TOKEN_FILE))
            token_path = write_debug_token(token, workdir / DEBUG_TOKEN_FILE)
            for index in range(spec.nodes):
                overlay = create_overlay(snapshot.disk(index), "qcow2", workdir / f"node{index}.qcow2")
                disk = Disk(overlay, "qcow2", snapshot=False)
                enrolment = snapshot.file(f"enrolment-node{index}.pb")
                fw_cfg = ((DEBUG_TOKEN_FW_CFG_NAME, token_path),
                          *(((ENROLMENT_FW_CFG_NAME, enrolment),) if index > 0 else ()))
                incoming = incoming_uri(snapshot.state_file(f"node{index}"))

                def make(tpm_socket: Path | None, index: int = index, disk: Disk = disk,
                         fw_cfg: tuple[tuple[str, Path], ...] = fw_cfg, incoming: str = incoming) -> VMConfig:  # fmt: skip
                    return _node_config(index, settings, parts, accel, switch, workdir, disk, fw_cfg, tpm_socket,
                                        incoming)  # fmt: skip

                _start_node(phases, settings, workdir, make, index, snapshot.console_history(f"node{index}"))
            monitors = [Monitor(switch.vm), *(Monitor(node.vm) for node in phases.nodes)]
            for monitor in monitors:
                wait_incoming(monitor, phases.remaining())
            verification.result()  # raises SnapshotRefused when a file is corrupt
            for monitor in monitors:
                resume(monitor)

        with phases.phase("node0-debug"):
            debug = DebugClient(switch.ports.dial_grpc(NodePort.DEBUG_SERVICE), token=token)
            _wait_debug_service(debug, phases, phases.remaining())
        kube, kubeconfig_path = _connect(phases, debug, switch, workdir)
        with phases.phase("clock"):
            _wait_clock(kube, phases.remaining())
    except BaseException as error:
        _abandon(phases, debug, workdir)
        unusable = _why_unusable(error, snapshot, verification)
        if unusable is None:
            raise
        raise SnapshotRefused(f"restoring {snapshot.directory.name} failed: {unusable}") from error
    finally:
        verifier.shutdown(wait=False, cancel_futures=True)
        for monitor in monitors:
            monitor.close()
    return Cluster(
        spec=spec, switch=switch, nodes=phases.nodes, debug=debug, kube=kube, kubeconfig_path=kubeconfig_path,
        workdir=workdir, debug_token_path=token_path, phase_seconds=phases.seconds,
        how=f"restored from {snapshot.directory.name}",
        snapshot=snapshot, boot_timeout=settings.boot_timeout,
    )  # fmt: skip


#: What QEMU prints (``migration.c``) when it cannot load a saved state, before it exits.
QEMU_REFUSED_STATE = "load of migration failed"


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


def _abandon(phases: _Phases, debug: DebugClient | None, workdir: Path) -> None:
    if debug is not None:
        debug.close()
    phases.stop_all()
    remove_workdir(workdir)
