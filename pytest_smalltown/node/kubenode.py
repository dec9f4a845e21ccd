"""What makes the machine a Kubernetes node (steps 9-11): :class:`KubeNode`.

- kubelet and kube-proxy, with kubeconfigs for :attr:`NodeState.apiserver_url`;
  the kubelet only after the boot's image import (or
  :data:`runtime.IMAGE_IMPORT_WAIT`), so the first pod never tries to pull
  the pause image;
- the ``local`` volume provisioner (:mod:`volumes`) in a thread of its own;
- the node watch (:meth:`KubeNode.node_loop`), polling the Node objects:
  own ``spec.podCIDR`` -> CNI config (``PodNetworkReady``), own Ready (and on
  node 0 serving controllers) -> ``KubernetesReady``, other nodes' pod CIDRs
  -> routes. On node 0 it also gives nodes without a pod CIDR one and
  re-applies the built-in objects every :data:`RECONCILE_EVERY` seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import quote

from pytest_smalltown import contract
from pytest_smalltown.node import components as comp
from pytest_smalltown.node import network, system
from pytest_smalltown.node.controlplane import ControlPlane
from pytest_smalltown.node.credentials import NodeCredentials
from pytest_smalltown.node.kubeapi import KubeClient, node_ready
from pytest_smalltown.node.pki import write_public
from pytest_smalltown.node.runtime import IMAGE_IMPORT_WAIT, ContainerRuntime
from pytest_smalltown.node.state import NodeState
from pytest_smalltown.node.supervisor import ComponentSpec
from pytest_smalltown.node.volumes import LocalProvisioner

#: Seconds between the volume provisioner's passes (how long a scheduled claim waits at most).
PROVISION_EVERY = 2.0
#: Seconds between node 0's re-applications of the built-in objects.
RECONCILE_EVERY = 60.0


class KubeNode:
    """kubelet, kube-proxy, the volume provisioner and the node watch (see the module docstring)."""

    def __init__(self, node: NodeState, credentials: NodeCredentials, runtime: ContainerRuntime,
                 control_plane: ControlPlane) -> None:
        self.node = node
        self.credentials = credentials
        self.runtime = runtime
        self.control_plane = control_plane

    def start_node_components(self) -> None:
        """Kubeconfigs and configs, the kubelet (once the images are in) and kube-proxy."""
        node = self.node
        cfg = node.cfg
        server = node.apiserver_url
        self.credentials.write_kubeconfig("kubelet", "kubelet-client", server)
        self.credentials.write_kubeconfig("kube-proxy", "kube-proxy", server)
        facts = node.node_facts()
        if cfg.runs("kube.kubelet"):
            write_public(cfg.kube_dir / "kubelet.json", comp.dump_json(comp.kubelet_config(cfg, facts)).encode())
            if not self.runtime.images_loaded.wait(IMAGE_IMPORT_WAIT):
                node.log(f"images still not imported after {IMAGE_IMPORT_WAIT:.0f} s; starting kubelet anyway")
            node.supervisor.start(ComponentSpec("kube.kubelet", comp.kubelet_argv(cfg, facts)))
        if cfg.runs("kube.proxy"):
            write_public(cfg.kube_dir / "kube-proxy.json",
                         comp.dump_json(comp.kube_proxy_config(cfg, facts)).encode())
            node.supervisor.start(ComponentSpec("kube.proxy", comp.kube_proxy_argv(cfg)))
        node.log("kubelet and kube-proxy started")

    def start_provisioner(self) -> None:
        """Serve this node's ``local`` volume claims in the background (see :mod:`volumes`).

        Its own identity, because the Node authorizer lets a kubelet only read
        the volumes of its own pods; its own log buffer, echoed to the
        console, because it logs only one line per volume made or deleted.
        """
        node = self.node
        buffer = node.logs.get_or_create("volumes")

        def log(message: str) -> None:
            buffer.write(message)
            node.log(f"volumes: {message}")

        def run() -> None:
            client = KubeClient(node.apiserver_url, self.credentials.client("provisioner"))
            LocalProvisioner(client, node.name or "", node.cfg.volumes_dir, log).run(node.stop, PROVISION_EVERY)

        threading.Thread(target=node.guarded, args=(run,), name="volumes", daemon=True).start()
        node.log(f"volume provisioner started ({node.cfg.volumes_dir})")

    def assign_pod_cidrs(self, nodes: list[dict[str, Any]]) -> None:
        """Node 0: give nodes without a pod CIDR one now (see network.pod_cidr_assignments)."""
        assignments = network.pod_cidr_assignments(nodes, contract.POD_NETWORK, contract.NODE_NETWORK)
        if not assignments:
            return
        admin = self.control_plane.admin_client()
        for name, cidr in assignments.items():
            try:
                updated = admin.merge_patch(f"/api/v1/nodes/{quote(name, safe='')}",
                                            {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
            except Exception as exc:  # noqa: BLE001 - the controller-manager may have won the race
                self.node.log(f"pod CIDR for {name}: {exc}")
                continue
            for item in nodes:
                if item["metadata"]["name"] == name:
                    item["spec"] = updated.get("spec", item.get("spec"))
            self.node.log(f"assigned pod CIDR {cidr} to {name}")

    def node_loop(self) -> None:
        """Watch Node objects (1 s poll): CNI config, readiness, routes; reconcile periodically."""
        node = self.node
        client = KubeClient(node.apiserver_url, self.credentials.client("kube-proxy"))
        routes = network.RouteSync(node.cfg.bins.resolve("ip"))
        last_reconcile = time.monotonic()
        pod_cidr: str | None = None
        ready = False
        last_status = time.monotonic()
        while not node.stop.is_set():
            if not ready and time.monotonic() - last_status > 30:
                # A boot that stalls shows on the serial console where it stalls.
                last_status = time.monotonic()
                # Only what this node is still working towards: DataSealed says how its data
                # is kept, and a worker never becomes an etcd voter.
                never = {"DataSealed"} | (set() if node.role and node.role.control_plane else {"ConsensusVoter"})
                pending = [k for k, v in node.conditions.snapshot().items() if not v and k not in never]
                node.log(f"waiting; not yet: {', '.join(pending)}; {system.memory_summary()}")
            try:
                nodes: list[dict[str, Any]] = client.get("/api/v1/nodes").get("items") or []
                if not node.conditions.get("APIServerReady"):
                    # On a worker: the apiserver it joined answers.
                    node.conditions.set("APIServerReady")
                if node.bootstrap:
                    self.assign_pod_cidrs(nodes)
                own = next((n for n in nodes if n["metadata"]["name"] == node.name), None)
                if own is not None:
                    cidr = (own.get("spec") or {}).get("podCIDR")
                    if cidr and cidr != pod_cidr:
                        network.write_cni_config(node.cfg.cni_conf_dir, cidr)
                        pod_cidr = cidr
                        node.conditions.set("PodNetworkReady")
                        node.log(f"pod CIDR {cidr}: CNI config written")
                    now_ready = node_ready(own) and self.control_plane.controllers_serving()
                    if now_ready != ready:
                        ready = now_ready
                        node.conditions.set("KubernetesReady", ready)
                        node.log(f"node {'Ready' if ready else 'NOT Ready'}; {system.memory_summary()}")
                if node.cfg.init:
                    for change in routes.sync(network.desired_pod_routes(nodes, node.name or "")):
                        node.log(change)
            except Exception as exc:  # noqa: BLE001 - apiserver restarts are routine
                if node.conditions.get("KubernetesReady"):
                    node.log(f"node watch: {exc!r}")
            if node.bootstrap and time.monotonic() - last_reconcile > RECONCILE_EVERY:
                self.control_plane.reconcile()
                last_reconcile = time.monotonic()
            node.stop.wait(1.0 if not ready else 3.0)
