"""The node agent: boots a VM into a Smalltown-compatible Kubernetes node.

Boot sequence (each step prints one console line):

1. file systems, cgroups, sysctls, loopback (only as the VM's init);
2. NodeDebugService on :7837, then :data:`contract.DEBUG_SERVICE_READY_LINE`;
3. data directory (on the UEFI image: the data partition, unlocked with
   its TPM-sealed key, :mod:`datapart`) -> ``DataAvailable``, ``DataSealed``;
   enrolment file read: absent = bootstrap, present = join;
4. node key, hostname, /etc/machine-id, /etc/os-release;
5. control-plane nodes: the CA (node 0 makes it; a consensus joiner's came
   in its ticket; GetDebugKubeconfig works from here on);
6. containerd started and the preloaded images imported (in the background):
   the image's own archives, then every image-set disk the launcher attached
   (serial ``preload-<set>``, a raw ``docker save`` archive);
7. DHCP -> ``IPAssigned``;
8. node 0: IP-dependent certificates, etcd and the apiserver, then (once
   ``/readyz``) controller-manager, scheduler, built-in objects, CoreDNS;
   a consensus joiner (:mod:`consensus`): etcd joins as a learner, and once
   node 0 has promoted it, its own apiserver, controller-manager and
   scheduler; a worker: nothing here (its certificates came in its ticket);
9. kubelet and kube-proxy (after the images are in, so the first pod never
   tries to pull the pause image);
10. the ``local`` volume provisioner (:mod:`volumes`), in the background;
11. a loop that watches the Node objects: own ``spec.podCIDR`` -> CNI config
    (``PodNetworkReady``), own Ready -> ``KubernetesReady``, other nodes'
    pod CIDRs -> routes; on node 0 it also promotes etcd learners and
    re-applies built-in objects now and then.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from pytest_smalltown.node import VERSION as package_version
from pytest_smalltown import contract
from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import components as comp
from pytest_smalltown.node import clock, datapart, identity, network, system
from pytest_smalltown.node.config import AgentConfig
from pytest_smalltown.node.console import Console
from pytest_smalltown.node.debug_service import (
    SPOOL_PREFIX,
    Conditions,
    DebugServicer,
    FailedPrecondition,
    ImageImportError,
    ImageLoader,
    Unavailable,
    serve,
)
from pytest_smalltown.node.consensus import EtcdError, EtcdMembership, initial_cluster, peer_url
from pytest_smalltown.node.enrolment import (
    ConsensusSeat,
    check_ticket,
    issue_golden_ticket,
    joins_consensus,
    read_enrolment,
    validate_ipv4,
)
from pytest_smalltown.node.kubeapi import Credentials, KubeClient, node_ready
from pytest_smalltown.node.logbuffer import LogRegistry
from pytest_smalltown.node.pki import ClusterCA, kubeconfig, key_pem, load_key, new_key, write_private, write_public
from pytest_smalltown.node.reconciler import APISERVER_KUBELET_CLIENT, COREDNS_USER, builtin_objects
from pytest_smalltown.node.supervisor import ComponentSpec, Supervisor
from pytest_smalltown.node.volumes import LocalProvisioner, issue_identity as issue_provisioner_identity

#: Conditions beyond the contract's, for finer-grained waiting and diagnosis.
#: ConsensusVoter: this node's etcd member votes (node 0 once etcd serves, a consensus joiner once promoted).
EXTRA_CONDITIONS = ("DataSealed", "ContainerdReady", "ImagesLoaded", "APIServerReady", "PodNetworkReady", "ConsensusVoter")
#: Buffers that exist on every node (empty if the component does not run there).
LOG_BUFFERS = (*contract.COMPONENTS, "etcd", "kube.proxy", "coredns", "network.dhcp", "volumes", "agent")
#: Seconds between the volume provisioner's passes (how long a scheduled claim waits at most).
PROVISION_EVERY = 2.0
RECONCILE_EVERY = 60.0
#: How long the kubelet waits for image imports before starting anyway. An
#: image set (hundreds of MB) takes minutes to import under emulation.
IMAGE_IMPORT_WAIT = 1200.0
#: Where LoadImage spools uploaded archives, under the data directory (on the
#: node's disk: archives can be larger than RAM, and /tmp is tmpfs).
IMAGE_SPOOL_DIR = "image-uploads"


@dataclass
class Role:
    bootstrap: bool
    ticket: enrolment_pb2.GoldenTicket | None = None

    @property
    def control_plane(self) -> bool:
        """Runs etcd, apiserver, controller-manager and scheduler: node 0, and nodes that joined the consensus."""
        return self.bootstrap or (self.ticket is not None and joins_consensus(self.ticket))


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.logs = LogRegistry()
        for name in LOG_BUFFERS:
            self.logs.get_or_create(name)
        self.console = Console(self.logs.get_or_create("agent"), use_kernel_uptime=cfg.init)
        self.conditions = Conditions((*contract.CONDITIONS, *EXTRA_CONDITIONS))
        self.supervisor = Supervisor(self.logs, self.console)
        self.ca = ClusterCA(cfg.pki)
        self.files = comp.Files(cfg)
        self.ca_ready = threading.Event()
        self.images_loaded = threading.Event()
        # One import at a time: a failed import is rolled back by comparing
        # the image list before and after it.
        self._import_lock = threading.Lock()
        self.role: Role | None = None
        self.name: str | None = None
        self.ip: str | None = None
        self.lease: network.Lease | None = None
        self.debug_port: int | None = None
        self.debug_server: object | None = None
        self._stop = threading.Event()
        self._rebooting = threading.Event()
        self._controllers_ok = False
        #: Whether controllers run with leader election (several control-plane nodes); see elect_leaders.
        self._leader_elect = False
        self._controllers_lock = threading.Lock()
        self._controllers_started = False

    # ----------------------------------------------------------------- API

    def debug_kubeconfig(self, user: str, groups: Sequence[str]) -> str:
        """A kubeconfig for ``user``/``groups`` signed by the cluster CA (control-plane nodes only)."""
        if self.role is not None and not self.role.control_plane:
            raise FailedPrecondition("this node joined a cluster as a worker and holds no CA key; ask node 0")
        if not self.ca_ready.is_set():
            raise Unavailable("cluster CA not created yet")
        pair = self.ca.issue(user, orgs=list(groups), client=True)
        server = f"https://127.0.0.1:{self.cfg.ports.apiserver}"
        return kubeconfig(server, self.ca.cert_pem, pair.cert, pair.key, user)

    def golden_ticket(self, external_ip: str, join_consensus: bool = False) -> enrolment_pb2.GoldenTicket:
        """A ticket for a node at ``external_ip``; with ``join_consensus`` it is first added to etcd as a learner."""
        ip = validate_ipv4(external_ip)  # bad requests fail the same way at any time
        if self.role is not None and not self.role.bootstrap:
            raise FailedPrecondition("only the node that bootstrapped the cluster issues tickets")
        if not self.ca_ready.is_set() or self.ip is None or self.name is None:
            raise Unavailable("cluster CA or node address not ready yet")
        seat = None
        if join_consensus:
            try:  # etcd not serving yet (node 0 still booting): the client retries
                membership = self.etcd_membership()
                learner = membership.add_learner(peer_url(ip, self.cfg.ports.etcd_peer))
                members = membership.members()
            except (EtcdError, OSError) as exc:
                raise Unavailable(f"etcd membership: {exc}") from exc
            self.log(f"consensus: {ip} added to etcd as learner {learner.id}")
            seat = ConsensusSeat(tuple((m.name, m.address) for m in members if m.name),
                                 self.files.sa_key.read_bytes())
            self.elect_leaders()
        return issue_golden_ticket(
            self.ca, ip, f"{self.ip}:{self.cfg.ports.apiserver}", self.name, self.ip, seat)

    def etcd_membership(self) -> EtcdMembership:
        """Membership calls on this node's own etcd member."""
        f = self.files
        return EtcdMembership(self.cfg.ports.etcd_client,
                              Credentials(f.ca, f.crt("apiserver-etcd-client"), f.key("apiserver-etcd-client")))

    # ---------------------------------------------------------------- boot

    def log(self, message: str) -> None:
        self.console.log(message)

    def run(self) -> None:
        """Boot, then keep the node converged until stopped; never raises after the debug service is up."""
        self.log(f"node agent {package_version} starting (pid {os.getpid()}, init={self.cfg.init})")
        if self.cfg.init:
            self.early_system()
            clock.follow_hardware_clock(self.log, self._stop)
        self.start_debug_service()
        # Boot in a thread so that a signal (host mode: Ctrl-C) stops the node
        # even while a boot step is waiting for something.
        threading.Thread(target=self._boot_guarded, name="boot", daemon=True).start()
        while not self._stop.wait(1.0):
            pass

    def _boot_guarded(self) -> None:
        try:
            self.boot()
        except Exception:  # noqa: BLE001 - keep serving logs on any failure
            for line in traceback.format_exc().splitlines():
                self.log(f"BOOT FAILED: {line}")

    def stop(self) -> None:
        self._stop.set()
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
        images = ImageLoader(self.image_spool_dir, self.check_image_import_ready, self.load_uploaded_image)
        servicer = DebugServicer(self.logs, self.conditions, self.debug_kubeconfig, self.golden_ticket, images=images,
                                 reboot=self.request_reboot if self.cfg.init else None)
        # Keep the server referenced: grpc stops a Server when it is garbage-collected.
        self.debug_server, self.debug_port = serve(servicer, f"{self.cfg.debug_listen}:{self.cfg.ports.debug}")
        self.console.raw(contract.DEBUG_SERVICE_READY_LINE)
        self.log(f"debug service on {self.cfg.debug_listen}:{self.debug_port}")

    def boot(self) -> None:
        cfg = self.cfg
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
            self.role = Role(bootstrap=True)
            self.log("no enrolment file: bootstrapping a new cluster")
        else:
            ticket = enrolment.golden_ticket
            missing = check_ticket(ticket)
            if missing:
                raise RuntimeError(f"golden ticket lacks {', '.join(missing)}")
            self.role = Role(bootstrap=False, ticket=ticket)
            self.log(f"enrolment file found: joining via {ticket.apiserver_address} as {ticket.node_id}")

        ticket_key = self.role.ticket.node_key if self.role.ticket else None
        ident = identity.load_or_create(cfg.data / "node.key", ticket_key or None)
        self.name = ident.name
        if self.role.ticket and self.role.ticket.node_id and self.role.ticket.node_id != ident.name:
            raise RuntimeError(f"ticket node_id {self.role.ticket.node_id} does not match its key ({ident.name})")
        if cfg.init:
            system.set_hostname(ident.name)
            identity.write_identity_files(cfg.etc, ident, package_version, None)
        self.log(f"node identity: {ident.name} (machine-id {ident.machine_id})")

        if self.role.ticket is not None:
            self.write_ticket_material(self.role.ticket)
            self.log("certificates from the golden ticket written"
                     + (" (a consensus member: with the CA key)" if self.role.control_plane else ""))
        if self.role.control_plane:
            self.ca.ensure()  # made on node 0's first boot; a consensus joiner's came in its ticket
            self.ca_ready.set()
            self.issue_static_certs()
            self.log("cluster CA and control-plane certificates ready")

        if cfg.runs("containerd"):
            self.start_containerd()

        self.bring_up_network(ident.name)

        if cfg.init:
            identity.write_identity_files(cfg.etc, ident, package_version, self.ip)
            try:
                network.ensure_masquerade(cfg.bins.resolve("iptables"), contract.POD_NETWORK)
            except (OSError, subprocess.CalledProcessError) as exc:
                self.log(f"pod egress masquerade rule failed: {exc}")
            if self.lease is not None and self.lease.router:
                try:
                    network.fence_port(cfg.bins.resolve("iptables"), cfg.ports.debug, self.lease.router)
                    self.log(f"debug service :{cfg.ports.debug} accepts only loopback and {self.lease.router}")
                except (OSError, subprocess.CalledProcessError) as exc:
                    self.log(f"debug service fence failed: {exc}")

        if self.role.control_plane:
            self.start_control_plane()
        # kubelet's own start-up (cadvisor, runtime, plugins) takes tens of seconds
        # under emulation: overlap it with the apiserver's instead of queueing it after.
        node_parts = threading.Thread(target=self._guarded, args=(self.start_node_components,),
                                      name="node-components", daemon=True)
        node_parts.start()
        if self.role.control_plane:
            self.finish_control_plane()
        node_parts.join()
        if cfg.runs("kube.kubelet"):
            self.start_provisioner()
        self.node_loop()

    def _guarded(self, fn: Any) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001
            for line in traceback.format_exc().splitlines():
                self.log(f"FAILED: {line}")

    # ------------------------------------------------------------ certs

    def issue_static_certs(self) -> None:
        """Certificates that do not depend on the node's IP (issued once per disk)."""
        ca = self.ca
        ca.ensure_pair("apiserver-etcd-client", "smalltown:apiserver-etcd-client", client=True)
        ca.ensure_pair("apiserver-kubelet-client", APISERVER_KUBELET_CLIENT, client=True)
        ca.ensure_pair("controller-manager", "system:kube-controller-manager", client=True)
        ca.ensure_pair("scheduler", "system:kube-scheduler", client=True)
        ca.ensure_pair("kube-proxy", "system:kube-proxy", client=True)
        ca.ensure_pair("coredns", COREDNS_USER, client=True)
        ca.ensure_pair("admin", "smalltown:admin", orgs=["system:masters"], client=True)
        # The aggregator's client identity towards extension apiservers; they
        # trust it through the request-header CA (the cluster CA) and its CN.
        ca.ensure_pair("front-proxy-client", comp.FRONT_PROXY_CLIENT, client=True)
        if not self.files.sa_key.exists():
            self.write_service_account_key(key_pem(new_key()))

    def write_service_account_key(self, pem: bytes) -> None:
        """The key that signs service-account tokens, and its public half (which every apiserver verifies with)."""
        write_private(self.files.sa_key, pem)
        write_public(self.files.sa_pub, load_key(pem).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def issue_ip_certs(self) -> None:
        """Apiserver and kubelet serving certs name the node IP: re-issued every boot."""
        assert self.name and self.ip
        from pytest_smalltown.node.pki import apiserver_sans

        dns, ips = apiserver_sans(self.name, self.ip, contract.KUBERNETES_SERVICE_IP, contract.CLUSTER_DOMAIN)
        # A consensus joiner's etcd certificate is the one its ticket carried.
        renewed = ("apiserver", "kubelet-server", *(("etcd-member",) if self.role and self.role.bootstrap else ()))
        for name in renewed:
            for suffix in (".crt", ".key"):
                (self.cfg.pki / f"{name}{suffix}").unlink(missing_ok=True)
        self.ca.ensure_pair("etcd-member", self.name, dns_names=[self.name, "localhost"], ips=[self.ip, "127.0.0.1"],
                            server=True, client=True)
        self.ca.ensure_pair("apiserver", "kube-apiserver", dns_names=dns, ips=ips, server=True)
        self.ca.ensure_pair("kubelet-server", self.name, dns_names=[self.name], ips=[self.ip], server=True)
        pair = self.ca.issue(f"system:node:{self.name}", orgs=["system:nodes"], client=True)
        write_private(self.files.key("kubelet-client"), pair.key)
        write_public(self.files.crt("kubelet-client"), pair.cert)
        pair = issue_provisioner_identity(self.ca, self.name)
        write_private(self.files.key("provisioner"), pair.key)
        write_public(self.files.crt("provisioner"), pair.cert)

    def write_ticket_material(self, t: enrolment_pb2.GoldenTicket) -> None:
        f = self.files
        write_public(f.ca, t.kubernetes_ca_cert)
        write_public(f.crt("kubelet-client"), t.kubelet_client_cert)
        write_private(f.key("kubelet-client"), t.kubelet_client_key)
        write_public(f.crt("kubelet-server"), t.kubelet_server_cert)
        write_private(f.key("kubelet-server"), t.kubelet_server_key)
        write_public(f.crt("kube-proxy"), t.kube_proxy_client_cert)
        write_private(f.key("kube-proxy"), t.kube_proxy_client_key)
        write_public(f.crt("provisioner"), t.provisioner_client_cert)
        write_private(f.key("provisioner"), t.provisioner_client_key)
        if joins_consensus(t):
            write_private(self.ca.key_path, t.kubernetes_ca_key)
            write_public(f.crt("etcd-member"), t.etcd_client_cert)
            write_private(f.key("etcd-member"), t.etcd_client_key)
            self.write_service_account_key(t.service_account_key)

    def write_kubeconfig(self, name: str, cert_name: str, server: str) -> Path:
        path = self.files.kubeconfig(name)
        text = kubeconfig(server, self.files.ca.read_bytes(), self.files.crt(cert_name).read_bytes(),
                          self.files.key(cert_name).read_bytes(), name)
        write_private(path, text.encode())
        return path

    @property
    def apiserver_url(self) -> str:
        if self.role is not None and self.role.ticket is not None:
            return f"https://{self.role.ticket.apiserver_address}"
        return f"https://127.0.0.1:{self.cfg.ports.apiserver}"

    # ------------------------------------------------------ containerd

    def start_containerd(self) -> None:
        cfg = self.cfg
        for d in (cfg.containerd_root, cfg.containerd_state, cfg.cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Uploads an earlier boot did not finish (LoadImage answers UNAVAILABLE
        # until containerd is ready, so none is in flight now).
        for stale in self.image_spool_dir.glob(f"{SPOOL_PREFIX}*"):
            stale.unlink(missing_ok=True)
        write_public(cfg.kube_dir / "containerd.toml", comp.containerd_config(cfg).encode())
        self.supervisor.start(ComponentSpec("containerd", comp.containerd_argv(cfg)))
        threading.Thread(target=self._import_images, name="image-import", daemon=True).start()

    def _ctr(self, *args: str, timeout: float = 120, stdin: Any = None) -> subprocess.CompletedProcess[str]:
        argv = [self.cfg.bins.resolve("ctr"), "--address", str(self.cfg.containerd_socket), "-n", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=stdin)

    def _image_names(self) -> set[str]:
        res = self._ctr("images", "ls", "-q")
        if res.returncode != 0:
            raise Unavailable(f"containerd did not list its images: {res.stderr.strip()[-300:]}")
        return set(res.stdout.split())

    def import_archive(self, archive: Path, timeout: float = IMAGE_IMPORT_WAIT) -> set[str]:
        """Import a docker-archive or OCI tarball (a file or a block device) into k8s.io, unpacked.

        Returns the image names that are new. The one import path for the
        image's own archives, the image-set disks and LoadImage. On failure
        the images the import created are removed again: ``ctr images
        import`` records an image before it unpacks it, so an archive with a
        broken layer would otherwise leave an image that fails on first use.
        Raises :class:`ImageImportError` (ctr's error output) or
        :class:`TimeoutError` (ctr killed after ``timeout`` seconds).
        """
        with self._import_lock:
            before = self._image_names()
            error: Exception | None = None
            with open(archive, "rb") as stream:  # stdin, so a block device works like a file
                try:
                    res = self._ctr("images", "import", "-", timeout=timeout, stdin=stream)
                    if res.returncode != 0:
                        error = ImageImportError(ctr_error(res.stderr) or f"ctr exited with {res.returncode}")
                except subprocess.TimeoutExpired:
                    error = TimeoutError(f"ctr images import did not finish within {timeout:.0f}s")
            try:
                added = self._image_names() - before
            except Unavailable:
                if error is None:
                    raise
                self.log("could not check for images a failed import left behind")
                raise error from None
            if error is None:
                return added
            if added:
                removed = self._ctr("images", "rm", *sorted(added))
                self.log(f"removed {len(added)} image(s) of a failed import: {' '.join(sorted(added))}"
                         + ("" if removed.returncode == 0 else f" (failed: {removed.stderr.strip()[-300:]})"))
            raise error

    @property
    def image_spool_dir(self) -> Path:
        return self.cfg.data / IMAGE_SPOOL_DIR

    def check_image_import_ready(self) -> None:
        """LoadImage's precondition: containerd runs here and answers."""
        if not self.cfg.runs("containerd"):
            raise FailedPrecondition("this node runs no containerd to load images into")
        if not self.conditions.get("ContainerdReady"):
            raise Unavailable("containerd is not ready yet")

    def load_uploaded_image(self, archive: Path) -> set[str]:
        """LoadImage's import: :meth:`import_archive` with a timeout for the archive's size, logged."""
        size = archive.stat().st_size
        timeout = IMAGE_IMPORT_WAIT + (size >> 20) * contract.IMAGE_IMPORT_SECONDS_PER_MIB
        started = time.monotonic()
        try:
            added = self.import_archive(archive, timeout)
        except (ImageImportError, TimeoutError) as exc:
            self.log(f"LoadImage: {size} byte archive refused: {str(exc)[-300:]}")
            raise
        self.log(f"LoadImage: {size} byte archive imported in {time.monotonic() - started:.1f}s; "
                 f"new names: {' '.join(sorted(added)) or 'none'}")
        return added

    def _import_images(self) -> None:
        try:
            deadline = time.monotonic() + 300
            while True:
                # ctr blocks while the socket is missing: wait for the socket first,
                # and treat a slow answer (TCG, busy host) as "not yet".
                if self.cfg.containerd_socket.exists():
                    try:
                        if self._ctr("version", timeout=30).returncode == 0:
                            break
                    except subprocess.TimeoutExpired:
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError("containerd did not answer within 300 s")
                time.sleep(0.3)
            self.conditions.set("ContainerdReady")
            self.log("containerd ready")
            present = self._image_names()
            wanted = {contract.PAUSE_IMAGE, contract.TEST_IMAGE}
            if wanted <= present:
                self.log("preloaded images already present")
            else:
                tars = sorted(self.cfg.images_dir.glob("*.tar"))
                for tar in tars:
                    try:
                        self.import_archive(tar, timeout=300)
                    except (ImageImportError, TimeoutError) as exc:
                        self.log(f"image import {tar.name} failed: {str(exc)[:300]}")
                present = self._image_names()
                missing = wanted - present
                self.log(f"imported {len(tars)} image archive(s)"
                         + (f"; MISSING {', '.join(sorted(missing))}" if missing else ""))
            self._import_preload_disks()
            self.conditions.set("ImagesLoaded")
        except Exception as exc:  # noqa: BLE001
            self.log(f"image import failed: {exc!r}")
        finally:
            self.images_loaded.set()

    def _import_preload_disks(self) -> None:
        """Stream every image-set disk into containerd (the disk is the archive itself).

        Images are unpacked here, on the boot's critical path, although
        containerd's CRI would unpack them on first use (``--no-unpack``):
        measured under emulation, a first container of the nautilus image then
        waited over 5 minutes for its unpack on a busy node and failed its
        conformance spec, while the unpack during boot cost about 6 minutes
        once per cluster.
        """
        for serial, device in system.disks_by_serial(contract.PRELOAD_DISK_SERIAL_PREFIX).items():
            started = time.monotonic()
            try:
                added = self.import_archive(device)
            except (ImageImportError, TimeoutError) as exc:
                self.log(f"image set {serial} ({device}): import failed: {str(exc)[-500:]}")
                continue
            self.log(f"image set {serial} ({device}): imported {len(added)} image(s) "
                     f"in {time.monotonic() - started:.1f}s")

    # --------------------------------------------------------- network

    def bring_up_network(self, hostname: str) -> None:
        cfg = self.cfg
        if cfg.static_ip:
            self.ip = cfg.static_ip
            self.conditions.set("IPAssigned")
            self.log(f"using static address {self.ip}")
            return
        nic = system.first_nic()
        if nic is None:
            raise RuntimeError("no network interface found")
        script = cfg.run / "udhcpc.sh"
        lease_file = cfg.run / "dhcp.lease"
        network.write_udhcpc_script(script, lease_file, cfg.etc / "resolv.conf")
        system.link_up(cfg.bins.resolve("ip"), nic)
        self.supervisor.start(ComponentSpec(
            "network.dhcp", network.udhcpc_argv(cfg.bins.resolve("busybox"), nic, script, hostname)))
        self.log(f"DHCP on {nic}")
        waited = 0
        while True:
            if lease_file.exists():
                lease = network.parse_lease(lease_file.read_text())
                if lease is not None:
                    break
            time.sleep(0.1)
            waited += 1
            if waited % 100 == 0:
                self.log(f"still no DHCP lease after {waited // 10} s")
        self.lease = lease
        self.ip = lease.ip
        self.conditions.set("IPAssigned")
        self.log(f"address {lease.ip}/{lease.prefix} on {nic}, router {lease.router}, dns {' '.join(lease.dns)}")

    # ---------------------------------------------------- control plane

    def node_facts(self) -> comp.NodeFacts:
        assert self.name and self.ip
        upstream = self.lease.dns if self.lease else tuple(
            network.read_resolv_nameservers(self.cfg.etc / "resolv.conf"))
        return comp.NodeFacts(self.name, self.ip, self.apiserver_url, upstream)

    def start_control_plane(self) -> None:
        """IP-dependent certificates, kubeconfigs, etcd, and on node 0 the apiserver (no waiting).

        A consensus joiner's apiserver waits for :meth:`finish_control_plane`:
        its etcd member is a learner until node 0 promotes it, and a learner
        serves no reads or writes.
        """
        cfg = self.cfg
        self.issue_ip_certs()
        local = f"https://127.0.0.1:{cfg.ports.apiserver}"
        for name, cert in (("controller-manager", "controller-manager"), ("scheduler", "scheduler"),
                           ("admin", "admin"), ("coredns", "coredns")):
            self.write_kubeconfig(name, cert, local)
        if cfg.runs("etcd"):
            cfg.etcd_data.mkdir(parents=True, exist_ok=True)
            cfg.etcd_data.chmod(0o700)
            assert self.name and self.ip
            self.supervisor.start(ComponentSpec("etcd", comp.etcd_argv(cfg, self.name, self.ip, self.etcd_join())))
            if self.role and self.role.bootstrap:
                threading.Thread(target=self._guarded, args=(self.promote_learners,), name="consensus",
                                 daemon=True).start()
        if self.role and self.role.bootstrap and cfg.runs("kube.apiserver"):
            self.supervisor.start(ComponentSpec("kube.apiserver", comp.apiserver_argv(cfg, self.node_facts())))
        self.log("etcd and apiserver started" if self.role and self.role.bootstrap else "etcd started")

    def etcd_join(self) -> str | None:
        """A consensus joiner's ``--initial-cluster`` (from its ticket); None on node 0, which bootstraps."""
        ticket = self.role.ticket if self.role else None
        if ticket is None:
            return None
        port = self.cfg.ports.etcd_peer
        members = [(peer.name, peer_url(peer.address, port)) for peer in ticket.peers]
        return initial_cluster([*members, (ticket.this.name, peer_url(ticket.this.address, port))])

    def wait_until_voter(self) -> None:
        """A consensus joiner: wait until node 0 has promoted this node's etcd member (it says so itself)."""
        membership = self.etcd_membership()
        started = time.monotonic()
        last_report = started
        while not self._stop.is_set():
            try:
                if not membership.is_learner():
                    break
                state = "a learner"
            except (EtcdError, OSError) as exc:
                state = f"not answering ({exc})"
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                self.log(f"consensus: etcd member still {state} after {time.monotonic() - started:.0f} s")
            self._stop.wait(1.0)
        self.log(f"consensus: etcd member is a voter ({time.monotonic() - started:.1f} s after it started)")

    def finish_control_plane(self) -> None:
        """Once etcd serves: (joiner) the apiserver; then controllers, and on node 0 built-in objects and CoreDNS."""
        cfg = self.cfg
        facts = self.node_facts()
        bootstrap = bool(self.role and self.role.bootstrap)
        if not bootstrap:
            self.wait_until_voter()
            if cfg.runs("kube.apiserver"):
                self.supervisor.start(ComponentSpec("kube.apiserver", comp.apiserver_argv(cfg, facts)))
        admin = self.admin_client()
        while not admin.ready():
            if self._stop.wait(0.5):
                return
        self.conditions.set("APIServerReady")
        self.conditions.set("ConsensusVoter")
        self.log("apiserver ready")
        # Leader election once there is more than one control-plane node (see components.leader_election_flags).
        try:
            several = not bootstrap or len(self.etcd_membership().members()) > 1
        except (EtcdError, OSError) as exc:  # elect_leaders still turns election on when a member is added
            self.log(f"consensus: etcd membership not readable ({exc}); controllers start without leader election")
            several = False
        with self._controllers_lock:
            self._leader_elect = self._leader_elect or several
            self.start_controllers()
            self._controllers_started = True
        if bootstrap:
            self.reconcile()
            if cfg.runs("coredns"):
                write_public(cfg.kube_dir / "Corefile", comp.corefile(cfg, facts.upstream_dns).encode())
                self.supervisor.start(ComponentSpec("coredns", comp.coredns_argv(cfg)))
        self.log("controller-manager and scheduler started" + (", and CoreDNS" if bootstrap else "")
                 + (" (leader election on)" if self._leader_elect else ""))

    def start_controllers(self) -> None:
        """controller-manager and scheduler, with leader election as :attr:`_leader_elect` says."""
        cfg = self.cfg
        if cfg.runs("kube.controller-manager"):
            self.supervisor.start(ComponentSpec("kube.controller-manager",
                                                comp.controller_manager_argv(cfg, self._leader_elect)))
        if cfg.runs("kube.scheduler"):
            self.supervisor.start(ComponentSpec("kube.scheduler", comp.scheduler_argv(cfg, self._leader_elect)))

    def elect_leaders(self) -> None:
        """Node 0, when a second control-plane node is coming: restart its controllers with leader election.

        Until then they run without (one instance each); two instances
        without election would both act. A restart costs seconds, once per
        cluster, during the boot of a cluster with several control-plane nodes.
        """
        with self._controllers_lock:
            if self._leader_elect:
                return
            self._leader_elect = True
            if not self._controllers_started:
                return  # finish_control_plane starts them with election
            for name in ("kube.scheduler", "kube.controller-manager"):
                self.supervisor.stop(name)
            self.start_controllers()
        self.log("consensus: controller-manager and scheduler restarted with leader election")

    def admin_client(self) -> KubeClient:
        f = self.files
        return KubeClient(f"https://127.0.0.1:{self.cfg.ports.apiserver}",
                          Credentials(f.ca, f.crt("admin"), f.key("admin")))

    def reconcile(self) -> None:
        """Apply the built-in objects; failures are logged and retried on the next round."""
        assert self.ip
        client = self.admin_client()
        errors = []
        for obj in builtin_objects(self.ip, self.cfg.ports.dns):
            try:
                client.apply(obj)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
        if errors:
            self.log("reconciler: " + "; ".join(errors))

    # ------------------------------------------------------ node parts

    def start_node_components(self) -> None:
        cfg = self.cfg
        server = self.apiserver_url
        self.write_kubeconfig("kubelet", "kubelet-client", server)
        self.write_kubeconfig("kube-proxy", "kube-proxy", server)
        facts = self.node_facts()
        if cfg.runs("kube.kubelet"):
            write_public(cfg.kube_dir / "kubelet.json", comp.dump_json(comp.kubelet_config(cfg, facts)).encode())
            if not self.images_loaded.wait(IMAGE_IMPORT_WAIT):
                self.log(f"images still not imported after {IMAGE_IMPORT_WAIT:.0f} s; starting kubelet anyway")
            self.supervisor.start(ComponentSpec("kube.kubelet", comp.kubelet_argv(cfg, facts)))
        if cfg.runs("kube.proxy"):
            write_public(cfg.kube_dir / "kube-proxy.json",
                         comp.dump_json(comp.kube_proxy_config(cfg, facts)).encode())
            self.supervisor.start(ComponentSpec("kube.proxy", comp.kube_proxy_argv(cfg)))
        self.log("kubelet and kube-proxy started")

    def start_provisioner(self) -> None:
        """Serve this node's ``local`` volume claims in the background (see :mod:`volumes`).

        Its own identity, because the Node authorizer lets a kubelet only read
        the volumes of its own pods; its own log buffer, echoed to the
        console, because it logs only one line per volume made or deleted.
        """
        buffer = self.logs.get_or_create("volumes")

        def log(message: str) -> None:
            buffer.write(message)
            self.log(f"volumes: {message}")

        def run() -> None:
            f = self.files
            client = KubeClient(self.apiserver_url, Credentials(f.ca, f.crt("provisioner"), f.key("provisioner")))
            LocalProvisioner(client, self.name or "", self.cfg.volumes_dir, log).run(self._stop, PROVISION_EVERY)

        threading.Thread(target=self._guarded, args=(run,), name="volumes", daemon=True).start()
        self.log(f"volume provisioner started ({self.cfg.volumes_dir})")

    def assign_pod_cidrs(self, nodes: list[dict[str, Any]]) -> None:
        """Node 0: give nodes without a pod CIDR one now (see network.pod_cidr_assignments)."""
        from urllib.parse import quote

        assignments = network.pod_cidr_assignments(nodes, contract.POD_NETWORK, contract.NODE_NETWORK)
        if not assignments:
            return
        admin = self.admin_client()
        for name, cidr in assignments.items():
            try:
                updated = admin.merge_patch(f"/api/v1/nodes/{quote(name, safe='')}",
                                            {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
            except Exception as exc:  # noqa: BLE001 - the controller-manager may have won the race
                self.log(f"pod CIDR for {name}: {exc}")
                continue
            for node in nodes:
                if node["metadata"]["name"] == name:
                    node["spec"] = updated.get("spec", node.get("spec"))
            self.log(f"assigned pod CIDR {cidr} to {name}")

    def promote_learners(self) -> None:
        """Node 0, from etcd's start on: every 2 s, make each etcd learner that has caught up a voter.

        A thread of its own rather than a step of the node loop: that loop
        starts once the node's own Kubernetes parts are up, and a joiner
        waiting for its promotion should not wait for those.
        """
        membership: EtcdMembership | None = None
        reported: set[str] = set()
        while not self._stop.wait(2.0):
            try:
                membership = membership or self.etcd_membership()
                promoted, waiting = membership.promote_learners()
            except (EtcdError, OSError) as exc:
                if "membership" not in reported and self.conditions.get("ConsensusVoter"):
                    reported.add("membership")  # once: etcd restarts are logged by etcd
                    self.log(f"consensus: cannot read etcd membership: {exc}")
                continue
            for member in promoted:
                self.log(f"consensus: promoted etcd member {member.name or member.id} ({member.address}) to voter")
            for member_id, why in waiting.items():
                if member_id not in reported:
                    reported.add(member_id)
                    self.log(f"consensus: learner {member_id} not promoted yet: {why}")

    def controllers_serving(self) -> bool:
        """Node 0: the scheduler and controller-manager answer their health endpoints.

        KubernetesReady is what a harness waits for before creating pods. Under
        emulation the scheduler needs ~10 s after it starts to sync its caches;
        a Node that is Ready before then would take a pod and leave it Pending
        for that long. So on node 0 the condition also requires both
        controllers to be serving. Workers only need their Node Ready.
        """
        if not (self.role and self.role.bootstrap):
            return True
        if self._controllers_ok:
            return True
        checks = []
        if self.cfg.runs("kube.scheduler"):
            checks.append((self.cfg.ports.scheduler, "/readyz"))
        if self.cfg.runs("kube.controller-manager"):
            checks.append((self.cfg.ports.controller_manager, "/healthz"))
        ok = all(local_https_ok(port, path) for port, path in checks)
        self._controllers_ok = ok  # once up, a later crash shows in logs, not as flapping
        return ok

    def node_loop(self) -> None:
        """Watch Node objects (1 s poll): CNI config, readiness, routes; reconcile periodically."""
        f = self.files
        client = KubeClient(self.apiserver_url, Credentials(f.ca, f.crt("kube-proxy"), f.key("kube-proxy")))
        routes = network.RouteSync(self.cfg.bins.resolve("ip"))
        last_reconcile = time.monotonic()
        pod_cidr: str | None = None
        ready = False
        last_status = time.monotonic()
        while not self._stop.is_set():
            if not ready and time.monotonic() - last_status > 30:
                # A boot that stalls shows on the serial console where it stalls.
                last_status = time.monotonic()
                pending = [k for k, v in self.conditions.snapshot().items() if not v]
                self.log(f"waiting; not yet: {', '.join(pending)}; {system.memory_summary()}")
            try:
                nodes: list[dict[str, Any]] = client.get("/api/v1/nodes").get("items") or []
                if not self.conditions.get("APIServerReady"):
                    # On a worker: the apiserver it joined answers.
                    self.conditions.set("APIServerReady")
                if self.role and self.role.bootstrap:
                    self.assign_pod_cidrs(nodes)
                own = next((n for n in nodes if n["metadata"]["name"] == self.name), None)
                if own is not None:
                    cidr = (own.get("spec") or {}).get("podCIDR")
                    if cidr and cidr != pod_cidr:
                        network.write_cni_config(self.cfg.cni_conf_dir, cidr)
                        pod_cidr = cidr
                        self.conditions.set("PodNetworkReady")
                        self.log(f"pod CIDR {cidr}: CNI config written")
                    now_ready = node_ready(own) and self.controllers_serving()
                    if now_ready != ready:
                        ready = now_ready
                        self.conditions.set("KubernetesReady", ready)
                        self.log(f"node {'Ready' if ready else 'NOT Ready'}; {system.memory_summary()}")
                if self.cfg.init:
                    for change in routes.sync(network.desired_pod_routes(nodes, self.name or "")):
                        self.log(change)
            except Exception as exc:  # noqa: BLE001 - apiserver restarts are routine
                if self.conditions.get("KubernetesReady"):
                    self.log(f"node watch: {exc!r}")
            if self.role and self.role.bootstrap and time.monotonic() - last_reconcile > RECONCILE_EVERY:
                self.reconcile()
                last_reconcile = time.monotonic()
            self._stop.wait(1.0 if not ready else 3.0)


def ctr_error(stderr: str, limit: int = 2000) -> str:
    """ctr's own error lines (``ctr: ...``) from its stderr, else all of it; at most ``limit`` characters.

    ctr also echoes containerd's log lines ("apply failure, attempting
    cleanup") that repeat the error in a less readable form.
    """
    lines = stderr.strip().splitlines()
    own = [line for line in lines if line.startswith("ctr: ")]
    return "\n".join(own or lines)[-limit:]


def local_https_ok(port: int, path: str) -> bool:
    """GET https://127.0.0.1:port/path answers 200 (self-signed serving certs: no verification,
    these are the component's own unauthenticated health endpoints on loopback)."""
    import http.client
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def install_signal_handlers(agent: Agent) -> None:
    def handler(signum: int, _frame: object) -> None:
        agent.log(f"signal {signum}: stopping components")
        agent.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
