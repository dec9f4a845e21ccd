"""The node agent: boots a VM into a Smalltown-compatible Kubernetes node.

Boot sequence (each step prints one console line), and the part that does it:

1. file systems, cgroups, sysctls, loopback (only as the VM's init; here);
2. NodeDebugService on :7837, then :data:`contract.DEBUG_SERVICE_READY_LINE`
   (here; it answers from the parts below);
3. data directory (on the UEFI image: the data partition, unlocked with
   its TPM-sealed key, :mod:`datapart`) -> ``DataAvailable``, ``DataSealed``;
   enrolment file read: absent = bootstrap, present = join;
4. node key, hostname, /etc/machine-id, /etc/os-release (:mod:`identity`);
   a joining node writes the certificates its ticket carried (:mod:`credentials`);
5. control-plane nodes: the CA (node 0 makes it; a consensus joiner's came
   in its ticket; GetDebugKubeconfig works from here on) and the
   certificates that do not name the node's address (:mod:`credentials`);
6. containerd started and the preloaded images imported in the background
   (:mod:`runtime`);
7. DHCP -> ``IPAssigned`` (:mod:`dhcp`);
8. node 0: IP-dependent certificates, etcd and the apiserver, then (once
   ``/readyz``) controller-manager, scheduler, built-in objects, CoreDNS;
   a consensus joiner (:mod:`consensus`): etcd joins as a learner, and once
   node 0 has promoted it, its own apiserver, controller-manager and
   scheduler; a worker: nothing here (its certificates came in its ticket)
   (:mod:`controlplane`);
9. kubelet and kube-proxy (after the images are in, so the first pod never
   tries to pull the pause image) (:mod:`kubenode`);
10. the ``local`` volume provisioner (:mod:`volumes`), in the background;
11. a loop that watches the Node objects: own ``spec.podCIDR`` -> CNI config
    (``PodNetworkReady``), own Ready -> ``KubernetesReady``, other nodes'
    pod CIDRs -> routes; on node 0 it also promotes etcd learners and
    re-applies built-in objects now and then (:mod:`kubenode`; the
    promotion is a thread of :mod:`controlplane`'s, from etcd's start on).

The parts share one :class:`state.NodeState` (config, logs, conditions,
supervisor, stop event, and the role, name and address the boot learns);
:class:`Agent` builds them and orders the steps.

The Reboot RPC stops every component newest first, flushes the disks and
restarts the machine; the next boot runs the same sequence on the same disk.

Independent slow steps run concurrently (containerd/image import with the
control plane); everything that can fail after step 2 is logged and leaves
the debug service running, so a broken node still answers for its logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import traceback

from pytest_smalltown import contract
from pytest_smalltown.node import VERSION as package_version
from pytest_smalltown.node import clock, datapart, dhcp, identity, system
from pytest_smalltown.node.config import AgentConfig
from pytest_smalltown.node.console import Console
from pytest_smalltown.node.controlplane import ControlPlane, local_https_ok
from pytest_smalltown.node.credentials import NodeCredentials
from pytest_smalltown.node.debug_service import Conditions, DebugServicer, ImageLoader, read_token, serve
from pytest_smalltown.node.enrolment import check_ticket, read_enrolment
from pytest_smalltown.node.kubenode import PROVISION_EVERY, RECONCILE_EVERY, KubeNode
from pytest_smalltown.node.logbuffer import LogRegistry
from pytest_smalltown.node.runtime import IMAGE_IMPORT_WAIT, IMAGE_SPOOL_DIR, ContainerRuntime, ctr_error
from pytest_smalltown.node.state import NodeState, Role
from pytest_smalltown.node.supervisor import Supervisor

__all__ = [
    "EXTRA_CONDITIONS", "IMAGE_IMPORT_WAIT", "IMAGE_SPOOL_DIR", "LOG_BUFFERS", "PROVISION_EVERY", "RECONCILE_EVERY",
    "Agent", "Role", "ctr_error", "install_signal_handlers", "local_https_ok",
]

#: Conditions beyond the contract's, for finer-grained waiting and diagnosis.
#: ConsensusVoter: this node's etcd member votes (node 0 once etcd serves, a consensus joiner once promoted).
EXTRA_CONDITIONS = ("DataSealed", "ContainerdReady", "ImagesLoaded", "APIServerReady", "PodNetworkReady", "ConsensusVoter")
#: Buffers that exist on every node (empty if the component does not run there).
LOG_BUFFERS = (*contract.COMPONENTS, "etcd", "kube.proxy", "coredns", "network.dhcp", "volumes", "agent")


class Agent:
    """Builds the node's parts and runs the boot sequence (the module docstring) through them.

    The parts, each owning one job and sharing one :class:`NodeState`:
    :attr:`credentials` (:mod:`credentials`), :attr:`runtime` (containerd and
    images, :mod:`runtime`), :attr:`control_plane` (:mod:`controlplane`) and
    :attr:`kube_node` (kubelet, kube-proxy, volumes, node watch,
    :mod:`kubenode`); the address is :mod:`dhcp`'s.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        logs = LogRegistry()
        for name in LOG_BUFFERS:
            logs.get_or_create(name)
        console = Console(logs.get_or_create("agent"), use_kernel_uptime=cfg.init)
        conditions = Conditions((*contract.CONDITIONS, *EXTRA_CONDITIONS))
        self.node = NodeState(cfg, logs, console, conditions, Supervisor(logs, console))
        self.credentials = NodeCredentials(self.node)
        self.runtime = ContainerRuntime(self.node)
        self.control_plane = ControlPlane(self.node, self.credentials)
        self.kube_node = KubeNode(self.node, self.credentials, self.runtime, self.control_plane)
        self.debug_port: int | None = None
        self.debug_server: object | None = None
        self._rebooting = threading.Event()
        #: The wall clock's distance from the hardware clock (only the machine's init keeps the clock).
        self.clock = clock.ClockOffset(self.log) if cfg.init else None

    # The shared objects the debug service and the tests reach through the agent (the same objects, not copies).

    @property
    def logs(self) -> LogRegistry:
        return self.node.logs

    @property
    def console(self) -> Console:
        return self.node.console

    @property
    def conditions(self) -> Conditions:
        return self.node.conditions

    @property
    def supervisor(self) -> Supervisor:
        return self.node.supervisor

    def log(self, message: str) -> None:
        self.node.log(message)

    # ---------------------------------------------------------------- boot

    def run(self) -> None:
        """Boot, then keep the node converged until stopped; never raises after the debug service is up."""
        self.log(f"node agent {package_version} starting (pid {os.getpid()}, init={self.cfg.init})")
        if self.cfg.init:
            self.early_system()
            assert self.clock is not None
            clock.follow_hardware_clock(self.clock, self.node.stop)
        self.start_debug_service()
        # Boot in a thread so that a signal (host mode: Ctrl-C) stops the node
        # even while a boot step is waiting for something.
        threading.Thread(target=self._boot_guarded, name="boot", daemon=True).start()
        while not self.node.stop.wait(1.0):
            pass

    def _boot_guarded(self) -> None:
        try:
            self.boot()
        except Exception:  # noqa: BLE001 - keep serving logs on any failure
            for line in traceback.format_exc().splitlines():
                self.log(f"BOOT FAILED: {line}")

    def stop(self) -> None:
        self.node.stop.set()
        self.supervisor.shutdown()

    def request_reboot(self) -> None:
        """Reboot gracefully, in the background (the Reboot RPC answers first); a second request is a no-op."""
        if self._rebooting.is_set():
            return
        self._rebooting.set()
        threading.Thread(target=self._reboot, name="reboot", daemon=True).start()

    def _reboot(self) -> None:
        """Stop components newest first (kubelet before containerd, apiserver before etcd), flush, restart.

        etcd runs without fsync (emulated disks are slow): its last writes
        sit in the page cache, so the flush before the restart is what keeps
        them. A hard reset from outside skips all of this.
        """
        time.sleep(0.5)  # let the RPC's answer leave before the network goes
        self.log("reboot requested: stopping components")
        self.supervisor.shutdown()
        os.sync()
        self.log(contract.REBOOT_LINE)
        subprocess.run([self.cfg.bins.resolve("busybox"), "reboot", "-f"], check=False)

    def early_system(self) -> None:
        """Step 1 (the VM's init only): file systems, cgroup controllers, sysctls, loopback."""
        system.mount_all(self.log)
        try:
            controllers = system.enable_cgroup_controllers()
            self.log(f"cgroup2 controllers: {' '.join(controllers)}")
        except OSError as exc:
            self.log(f"cgroup controllers: {exc}")
        system.apply_sysctls(system.SYSCTLS, self.log)
        try:
            system.link_up(self.cfg.bins.resolve("ip"), "lo")
        except (OSError, subprocess.CalledProcessError) as exc:
            self.log(f"loopback up failed: {exc}")
        self.log("early system setup done")

    def start_debug_service(self) -> None:
        """Step 2: the NodeDebugService, answering from the parts (each refuses what it cannot do yet)."""
        images = ImageLoader(self.runtime.image_spool_dir, self.runtime.check_image_import_ready,
                             self.runtime.load_uploaded_image)
        servicer = DebugServicer(self.logs, self.conditions, self.credentials.debug_kubeconfig,
                                 self.control_plane.golden_ticket, images=images,
                                 reboot=self.request_reboot if self.cfg.init else None, clock=self.clock)
        token = read_token(self.cfg.debug_token_path)
        # Keep the server referenced: grpc stops a Server when it is garbage-collected.
        self.debug_server, self.debug_port = serve(servicer, f"{self.cfg.debug_listen}:{self.cfg.ports.debug}",
                                                   token=token)
        self.console.raw(contract.DEBUG_SERVICE_READY_LINE)
        how = "calls must carry the cluster's token" if token else "no token in fw_cfg: unauthenticated"
        self.log(f"debug service on {self.cfg.debug_listen}:{self.debug_port} ({how})")

    def boot(self) -> None:
        """Steps 3-11, in order (see the module docstring)."""
        cfg = self.cfg
        node = self.node
        if cfg.init:
            try:
                data = datapart.prepare_data(cfg.data, self.log)
            except datapart.DataUnavailableError as error:
                self.log(f"DATA UNAVAILABLE: {error}")
                raise
            self.conditions.set("DataSealed", data.sealed)
            self.log(data.description)
        for d in (cfg.data, cfg.pki, cfg.kube_dir, cfg.run):
            d.mkdir(parents=True, exist_ok=True)
        probe = cfg.data / ".probe"
        probe.write_text("ok")
        probe.unlink()
        self.conditions.set("DataAvailable")
        self.log(f"data directory {cfg.data} ready")

        enrolment = read_enrolment(cfg.enrolment_path)
        if enrolment is None:
            role = Role(bootstrap=True)
            node.role = role
            self.log("no enrolment file: bootstrapping a new cluster")
        else:
            ticket = enrolment.golden_ticket
            missing = check_ticket(ticket)
            if missing:
                raise RuntimeError(f"golden ticket lacks {', '.join(missing)}")
            role = Role(bootstrap=False, ticket=ticket)
            node.role = role
            self.log(f"enrolment file found: joining via {ticket.apiserver_address} as {ticket.node_id}")

        ticket_key = role.ticket.node_key if role.ticket else None
        ident = identity.load_or_create(cfg.data / "node.key", ticket_key or None)
        node.name = ident.name
        if role.ticket and role.ticket.node_id and role.ticket.node_id != ident.name:
            raise RuntimeError(f"ticket node_id {role.ticket.node_id} does not match its key ({ident.name})")
        if cfg.init:
            system.set_hostname(ident.name)
            identity.write_identity_files(cfg.etc, ident, package_version, None)
        self.log(f"node identity: {ident.name} (machine-id {ident.machine_id})")

        if role.ticket is not None:
            self.credentials.write_ticket_material(role.ticket)
            self.log("certificates from the golden ticket written"
                     + (" (a consensus member: with the CA key)" if role.control_plane else ""))
        if role.control_plane:
            self.credentials.ca.ensure()  # made on node 0's first boot; a consensus joiner's came in its ticket
            self.credentials.ca_ready.set()
            self.credentials.issue_static_certs()
            self.log("cluster CA and control-plane certificates ready")

        if cfg.runs("containerd"):
            self.runtime.start_containerd()

        dhcp.bring_up_network(node, ident.name)

        if cfg.init:
            identity.write_identity_files(cfg.etc, ident, package_version, node.ip)
            dhcp.apply_firewall(node)

        if role.control_plane:
            self.control_plane.start_control_plane()
        # kubelet's own start-up (cadvisor, runtime, plugins) takes tens of seconds
        # under emulation: overlap it with the apiserver's instead of queueing it after.
        node_parts = threading.Thread(target=node.guarded, args=(self.kube_node.start_node_components,),
                                      name="node-components", daemon=True)
        node_parts.start()
        if role.control_plane:
            self.control_plane.finish_control_plane()
        node_parts.join()
        if cfg.runs("kube.kubelet"):
            self.kube_node.start_provisioner()
        self.kube_node.node_loop()


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM and SIGINT stop the agent's components (tini forwards the VM's shutdown; Ctrl-C on a host)."""
    def handler(signum: int, _frame: object) -> None:
        agent.log(f"signal {signum}: stopping components")
        agent.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
