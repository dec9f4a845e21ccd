"""Launching a whole Smalltown cluster: switch, nodes, enrolment, readiness.

``launch_cluster`` is what the pytest fixtures and ``smalltown up`` call. It
runs in phases, each timed (the timings end up in the pytest summary and the
benchmark):

1. ``images``: build or find the switch and node images (cached);
2. ``switch``: start the Nanoswitch with one cable per node, forwarding the
   debug service, the external service and the Kubernetes API to node 0 on
   ephemeral 127.0.0.1 ports;
3. ``node0-debug``: boot node 0 (no enrolment: it bootstraps the cluster)
   and wait until its debug service answers;
4. ``enrolment``: for each further node ask node 0 for a golden ticket for
   that node's planned address, and boot it with the ticket in fw_cfg; the
   nodes boot while node 0 still brings up Kubernetes;
5. ``kubeconfig``: fetch debug credentials and write the kubeconfig (0600);
6. ``nodes-ready``: wait until all N nodes are Ready in the Kubernetes API
   and node 0 reports its ``KubernetesReady`` condition.

A phase that does not finish raises :class:`ClusterLaunchError`, which names
the phase and shows every VM's console tail; everything started is stopped
before the error propagates.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pytest_smalltown.api import debug_pb2, enrolment_pb2
from pytest_smalltown.contract import ENROLMENT_FW_CFG_NAME, SWITCH_FORWARDED_PORTS, NodePort
from pytest_smalltown.debug import DebugClient
from pytest_smalltown.images.cache import Progress, stderr_progress
from pytest_smalltown.kube import api_client, node_addresses, wait_nodes_ready, write_kubeconfig
from pytest_smalltown.launch.accel import resolve_accel
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.qemu import DirectBoot, Disk, UefiBoot, VMConfig
from pytest_smalltown.launch.switch import Switch, launch_switch, node_address
from pytest_smalltown.launch.vm import (
    VM,
    GuestHungError,
    LaunchError,
    Process,
    find_binary,
    make_workdir,
    remove_workdir,
    start_swtpm,
    start_vm,
)
from pytest_smalltown.secretfile import write_private
from pytest_smalltown.settings import Settings
from pytest_smalltown.spec import ClusterSpec

CONSOLE_TAIL = 40
#: Extra seconds of boot deadline per preloaded image set. Importing the
#: conformance set (about 110 MB) took 209 s on an idle node and 595 s on a
#: node 0 that was also starting its control plane, under TCG on 2 host cores.
PRELOAD_IMPORT_ALLOWANCE = 600.0


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

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def console_log(self) -> Path:
        return self.vm.console_log


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
    phase_seconds: dict[str, float] = field(default_factory=dict)
    _closed: bool = False

    @property
    def ports(self) -> PortMap:
        """Guest port -> 127.0.0.1 host port, for the ports forwarded to node 0."""
        return self.switch.ports

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
    """Raise if the switch or a node VM exited, or a node's kernel reports a hang."""
    if switch is not None:
        switch.vm.check_running()
    for node in nodes:
        node.vm.check_running()
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
    find_binary(settings.qemu, "install QEMU (Debian: apt-get install qemu-system-x86) or set --smalltown-qemu")
    if settings.tpm:
        find_binary("swtpm", "install swtpm (Debian: apt-get install swtpm swtpm-tools) or drop --smalltown-tpm")
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


def _wait_debug_service(debug: DebugClient, phases: _Phases, timeout: float) -> None:
    """Wait until node 0's debug service answers an RPC (any answer counts)."""
    deadline = time.monotonic() + timeout
    request = debug_pb2.GetConditionRequest(name="IPAssigned")
    while True:
        phases.check_alive()
        try:
            debug.stub.GetCondition(request, timeout=5)
            return
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):  # type: ignore[attr-defined]
                return  # it answered, if only to say no
        if time.monotonic() > deadline:
            raise TimeoutError(f"node 0's debug service did not answer within {timeout:.0f}s")
        time.sleep(0.5)


def launch_cluster(spec: ClusterSpec, settings: Settings, progress: Progress = stderr_progress) -> Cluster:
    """Launch a cluster of ``spec.nodes`` nodes behind a Nanoswitch and wait until it is ready.

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
    workdir = make_workdir("st-c-")
    debug: DebugClient | None = None
    try:
        with phases.phase("images"):
            boot, disk = node_boot(settings, progress)
            extra_disks = preload_disks(spec, progress)
            from pytest_smalltown.images.switch import build_switch_image

            switch_image = build_switch_image(progress)
        # The image build does not count against the boot deadline; importing
        # preloaded image sets does (nodes are not Ready before), so it gets its own allowance.
        phases.deadline = time.monotonic() + settings.boot_timeout + PRELOAD_IMPORT_ALLOWANCE * len(spec.preload)

        with phases.phase("switch"):
            phases.switch = launch_switch(
                spec.nodes, SWITCH_FORWARDED_PORTS, workdir=workdir, accel=accel, image=switch_image,
                ready_timeout=phases.remaining(), progress=progress, qemu=settings.qemu,
            )  # fmt: skip
        switch = phases.switch

        def start_node(index: int, fw_cfg: tuple[tuple[str, Path], ...] = ()) -> None:
            tpm_process, tpm_socket = start_swtpm(workdir, f"swtpm{index}") if settings.tpm else (None, None)
            config = VMConfig(
                name=f"node{index}",
                boot=boot,
                accel=accel,  # type: ignore[arg-type]
                memory_mib=settings.node_memory,
                cpus=settings.node_cpus,
                nics=(switch.node_nic(index),),
                disks=(disk, *extra_disks),
                fw_cfg=fw_cfg,
                tpm_socket=tpm_socket,
            )
            try:
                vm = start_vm(config, workdir, settings.qemu)
            except BaseException:
                if tpm_process is not None:  # no VM will ever own it: stop it here
                    tpm_process.stop(grace=2)
                raise
            phases.nodes.append(ClusterNode(index, node_address(index), vm, tpm_process))

        with phases.phase("node0-debug"):
            start_node(0)
            debug = DebugClient(switch.ports.dial_grpc(NodePort.DEBUG_SERVICE))
            _wait_debug_service(debug, phases, phases.remaining())

        if spec.nodes > 1:
            with phases.phase("enrolment"):
                for index in range(1, spec.nodes):
                    ticket = debug.golden_ticket(node_address(index), retry_for=phases.remaining())
                    config_path = workdir / f"enrolment-node{index}.pb"
                    enrolment = enrolment_pb2.EnrolmentConfig(golden_ticket=ticket, node_id=ticket.node_id)
                    # The ticket carries the node's private keys.
                    write_private(config_path, enrolment.SerializeToString())
                    start_node(index, ((ENROLMENT_FW_CFG_NAME, config_path),))

        with phases.phase("kubeconfig"):
            kubeconfig_yaml = debug.debug_kubeconfig(retry_for=phases.remaining())
            kubeconfig_path = write_kubeconfig(
                kubeconfig_yaml, switch.ports[NodePort.KUBERNETES_API], workdir / "kubeconfig"
            )
            kube = api_client(kubeconfig_path)

        with phases.phase("nodes-ready"):
            ready = wait_nodes_ready(kube, spec.nodes, phases.remaining(), phases.check_alive)
            # Node objects can be Ready before node 0's control plane is whole
            # (scheduler, controller-manager); the node's own view decides.
            debug.wait_condition("KubernetesReady", phases.remaining())
            addresses = sorted(node_addresses(node).get("InternalIP", "?") for node in ready)
            progress(f"{spec} cluster: nodes Ready at {', '.join(addresses)}")
    except BaseException:
        if debug is not None:
            debug.close()
        _stop_all(phases.nodes, phases.switch)
        remove_workdir(workdir)
        raise
    assert phases.switch is not None
    return Cluster(
        spec=spec,
        switch=phases.switch,
        nodes=phases.nodes,
        debug=debug,
        kube=kube,
        kubeconfig_path=kubeconfig_path,
        workdir=workdir,
        phase_seconds=phases.seconds,
    )
