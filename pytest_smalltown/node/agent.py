"""The node agent: boots a VM into a Smalltown-compatible Kubernetes node.

Boot sequence (each step prints one console line):

1. file systems, cgroups, sysctls, loopback (only as the VM's init);
2. NodeDebugService on :7837, then :data:`contract.DEBUG_SERVICE_READY_LINE`;
3. data directory -> ``DataAvailable``; enrolment file read: absent = bootstrap, present = join;
4. node key, hostname, /etc/machine-id, /etc/os-release;
5. bootstrap only: the CA (GetDebugKubeconfig works from here on);
6. containerd started and the preloaded images imported (in the background):
   the image's own archives, then every image-set disk the launcher attached
   (serial ``preload-<set>``, a raw ``docker save`` archive);
7. DHCP -> ``IPAssigned``;
8. bootstrap: IP-dependent certificates, etcd and the apiserver, then (once
   ``/readyz``) controller-manager, scheduler, built-in objects, CoreDNS;
   join: the ticket's certificates;
9. kubelet and kube-proxy (after the images are in, so the first pod never
   tries to pull the pause image);
10. a loop that watches the Node objects: own ``spec.podCIDR`` -> CNI config
    (``PodNetworkReady``), own Ready -> ``KubernetesReady``, other nodes'
    pod CIDRs -> routes; and re-applies built-in objects now and then.

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
from pytest_smalltown.node import clock, identity, network, system
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
from pytest_smalltown.node.enrolment import check_ticket, issue_golden_ticket, read_enrolment
from pytest_smalltown.node.kubeapi import Credentials, KubeClient, node_ready
from pytest_smalltown.node.logbuffer import LogRegistry
from pytest_smalltown.node.pki import ClusterCA, kubeconfig, key_pem, new_key, write_private, write_public
from pytest_smalltown.node.reconciler import APISERVER_KUBELET_CLIENT, COREDNS_USER, builtin_objects
from pytest_smalltown.node.supervisor import ComponentSpec, Supervisor

#: Conditions beyond the contract's, for finer-grained waiting and diagnosis.
EXTRA_CONDITIONS = ("ContainerdReady", "ImagesLoaded", "APIServerReady", "PodNetworkReady")
#: Buffers that exist on every node (empty if the component does not run there).
LOG_BUFFERS = (*contract.COMPONENTS, "etcd", "kube.proxy", "coredns", "network.dhcp", "agent")
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
        self._controllers_ok = False

    # ----------------------------------------------------------------- API

    def debug_kubeconfig(self, user: str, groups: Sequence[str]) -> str:
        """A kubeconfig for ``user``/``groups`` signed by the cluster CA (node 0 only)."""
        if self.role is not None and not self.role.bootstrap:
            raise FailedPrecondition("this node joined a cluster and holds no CA key; ask node 0")
        if not self.ca_ready.is_set():
            raise Unavailable("cluster CA not created yet")
        pair = self.ca.issue(user, orgs=list(groups), client=True)
        server = f"https://127.0.0.1:{self.cfg.ports.apiserver}"
        return kubeconfig(server, self.ca.cert_pem, pair.cert, pair.key, user)

    def golden_ticket(self, external_ip: str) -> enrolment_pb2.GoldenTicket:
        from pytest_smalltown.node.enrolment import validate_ipv4

        validate_ipv4(external_ip)  # bad requests fail the same way at any time
        if self.role is not None and not self.role.bootstrap:
            raise FailedPrecondition("only the node that bootstrapped the cluster issues tickets")
        if not self.ca_ready.is_set() or self.ip is None or self.name is None:
            raise Unavailable("cluster CA or node address not ready yet")
        return issue_golden_ticket(
            self.ca, external_ip, f"{self.ip}:{self.cfg.ports.apiserver}", self.name, self.ip)

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
        servicer = DebugServicer(self.logs, self.conditions, self.debug_kubeconfig, self.golden_ticket, images=images)
        # Keep the server referenced: grpc stops a Server when it is garbage-collected.
        self.debug_server, self.debug_port = serve(servicer, f"{self.cfg.debug_listen}:{self.cfg.ports.debug}")
        self.console.raw(contract.DEBUG_SERVICE_READY_LINE)
        self.log(f"debug service on {self.cfg.debug_listen}:{self.debug_port}")

    def boot(self) -> None:
        cfg = self.cfg
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

        if self.role.bootstrap:
            self.ca.ensure()
            self.ca_ready.set()
            self.issue_static_certs()
            self.log("cluster CA and control-plane certificates ready")
        else:
            self.write_ticket_material(self.role.ticket)  # type: ignore[arg-type]
            self.log("worker certificates from the golden ticket written")

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

        if self.role.bootstrap:
            self.start_control_plane()
        # kubelet's own start-up (cadvisor, runtime, plugins) takes tens of seconds
        # under emulation: overlap it with the apiserver's instead of queueing it after.
        node_parts = threading.Thread(target=self._guarded, args=(self.start_node_components,),
                                      name="node-components", daemon=True)
        node_parts.start()
        if self.role.bootstrap:
            self.finish_control_plane()
        node_parts.join()
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
        ca.ensure_pair("etcd-server", "etcd-server", dns_names=["localhost"], ips=["127.0.0.1"],
                       server=True, client=True)
        ca.ensure_pair("etcd-peer", "etcd-peer", dns_names=["localhost"], ips=["127.0.0.1"],
                       server=True, client=True)
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
            key = new_key()
            write_private(self.files.sa_key, key_pem(key))
            write_public(self.files.sa_pub, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def issue_ip_certs(self) -> None:
        """Apiserver and kubelet serving certs name the node IP: re-issued every boot."""
        assert self.name and self.ip
        from pytest_smalltown.node.pki import apiserver_sans

        dns, ips = apiserver_sans(self.name, self.ip, contract.KUBERNETES_SERVICE_IP, contract.CLUSTER_DOMAIN)
        for name in ("apiserver", "kubelet-server"):
            for suffix in (".crt", ".key"):
                (self.cfg.pki / f"{name}{suffix}").unlink(missing_ok=True)
        self.ca.ensure_pair("apiserver", "kube-apiserver", dns_names=dns, ips=ips, server=True)
        self.ca.ensure_pair("kubelet-server", self.name, dns_names=[self.name], ips=[self.ip], server=True)
        pair = self.ca.issue(f"system:node:{self.name}", orgs=["system:nodes"], client=True)
        write_private(self.files.key("kubelet-client"), pair.key)
        write_public(self.files.crt("kubelet-client"), pair.cert)

    def write_ticket_material(self, t: enrolment_pb2.GoldenTicket) -> None:
        f = self.files
        write_public(f.ca, t.kubernetes_ca_cert)
        write_public(f.crt("kubelet-client"), t.kubelet_client_cert)
        write_private(f.key("kubelet-client"), t.kubelet_client_key)
        write_public(f.crt("kubelet-server"), t.kubelet_server_cert)
        write_private(f.key("kubelet-server"), t.kubelet_server_key)
        write_public(f.crt("kube-proxy"), t.kube_proxy_client_cert)
        write_private(f.key("kube-proxy"), t.kube_proxy_client_key)

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
        """Node 0: IP-dependent certificates, kubeconfigs, etcd and the apiserver (no waiting)."""
        cfg = self.cfg
        self.issue_ip_certs()
        local = f"https://127.0.0.1:{cfg.ports.apiserver}"
        for name, cert in (("controller-manager", "controller-manager"), ("scheduler", "scheduler"),
                           ("admin", "admin"), ("coredns", "coredns")):
            self.write_kubeconfig(name, cert, local)
        facts = self.node_facts()
        if cfg.runs("etcd"):
            cfg.etcd_data.mkdir(parents=True, exist_ok=True)
            cfg.etcd_data.chmod(0o700)
            self.supervisor.start(ComponentSpec("etcd", comp.etcd_argv(cfg, self.name or "node")))
        if cfg.runs("kube.apiserver"):
            self.supervisor.start(ComponentSpec("kube.apiserver", comp.apiserver_argv(cfg, facts)))
        self.log("etcd and apiserver started")

    def finish_control_plane(self) -> None:
        """Node 0, once the apiserver is ready: controllers, built-in objects, CoreDNS."""
        cfg = self.cfg
        facts = self.node_facts()
        admin = self.admin_client()
        while not admin.ready():
            if self._stop.wait(0.5):
                return
        self.conditions.set("APIServerReady")
        self.log("apiserver ready")
        if cfg.runs("kube.controller-manager"):
            self.supervisor.start(ComponentSpec("kube.controller-manager", comp.controller_manager_argv(cfg)))
        if cfg.runs("kube.scheduler"):
            self.supervisor.start(ComponentSpec("kube.scheduler", comp.scheduler_argv(cfg)))
        self.reconcile()
        if cfg.runs("coredns"):
            write_public(cfg.kube_dir / "Corefile", comp.corefile(cfg, facts.upstream_dns).encode())
            self.supervisor.start(ComponentSpec("coredns", comp.coredns_argv(cfg)))
        self.log("controller-manager, scheduler and CoreDNS started")

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
