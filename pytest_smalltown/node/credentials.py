"""The node's certificates, keys and kubeconfigs: :class:`NodeCredentials`.

It owns the cluster CA (:class:`pki.ClusterCA`; its key only on control-plane
nodes) and the files under the PKI directory (:class:`components.Files`).
What is written when:

- a joining node (step 4): everything its golden ticket carried
  (:meth:`NodeCredentials.write_ticket_material`), with the CA key, the etcd
  member certificate and the service-account key if it joins the consensus;
- control-plane nodes (step 5): the CA (node 0 makes it on its first boot),
  then the client identities that do not name the node's address, and the
  service-account key, once per disk (:meth:`~NodeCredentials.issue_static_certs`);
- control-plane nodes (step 8): the serving certificates that name the
  node's address, and the kubelet's and provisioner's client identities,
  every boot (:meth:`~NodeCredentials.issue_ip_certs`);
- every node (steps 8-9): a kubeconfig per client component.

It also signs the debug service's kubeconfigs and node 0's golden tickets
(the consensus part of a ticket is :meth:`controlplane.ControlPlane.golden_ticket`'s).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pytest_smalltown import contract
from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import components as comp
from pytest_smalltown.node.debug_service import FailedPrecondition, Unavailable
from pytest_smalltown.node.enrolment import ConsensusSeat, issue_golden_ticket, joins_consensus
from pytest_smalltown.node.kubeapi import Credentials
from pytest_smalltown.node.pki import (
    ClusterCA,
    apiserver_sans,
    key_pem,
    kubeconfig,
    load_key,
    new_key,
    write_private,
    write_public,
)
from pytest_smalltown.node.reconciler import APISERVER_KUBELET_CLIENT, COREDNS_USER
from pytest_smalltown.node.state import NodeState, apiserver_address, apiserver_url
from pytest_smalltown.node.volumes import issue_identity as issue_provisioner_identity


class NodeCredentials:
    """The cluster CA and this node's certificate files (see the module docstring)."""

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.ca = ClusterCA(node.cfg.pki)
        self.files = comp.Files(node.cfg)
        #: Set once the CA is usable (control-plane nodes, step 5): debug kubeconfigs and tickets wait for it.
        self.ca_ready = threading.Event()

    def client(self, name: str) -> Credentials:
        """The cluster CA and the ``name`` certificate and key: a client identity for the apiserver or etcd."""
        f = self.files
        return Credentials(f.ca, f.crt(name), f.key(name))

    # ------------------------------------------------- debug service

    def debug_kubeconfig(self, user: str, groups: Sequence[str]) -> str:
        """A kubeconfig for ``user``/``groups`` signed by the cluster CA (control-plane nodes only)."""
        role = self.node.role
        if role is not None and not role.control_plane:
            raise FailedPrecondition("this node joined a cluster as a worker and holds no CA key; ask node 0")
        if not self.ca_ready.is_set():
            raise Unavailable("cluster CA not created yet")
        pair = self.ca.issue(user, orgs=list(groups), client=True)
        return kubeconfig(apiserver_url(self.node.cfg), self.ca.cert_pem, pair.cert, pair.key, user)

    def check_ticket_issuer(self) -> None:
        """Raise unless this node can issue golden tickets now: node 0, with its CA and address."""
        node = self.node
        if node.role is not None and not node.role.bootstrap:
            raise FailedPrecondition("only the node that bootstrapped the cluster issues tickets")
        if not self.ca_ready.is_set() or node.ip is None or node.name is None:
            raise Unavailable("cluster CA or node address not ready yet")

    def golden_ticket(self, ip: str, seat: ConsensusSeat | None) -> enrolment_pb2.GoldenTicket:
        """The ticket for a node at ``ip`` (validated), naming this apiserver; after :meth:`check_ticket_issuer`."""
        node = self.node
        assert node.ip is not None and node.name is not None
        return issue_golden_ticket(self.ca, ip, apiserver_address(node.cfg, node.ip), node.name, node.ip, seat)

    # ----------------------------------------------------------- boot

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
        node = self.node
        assert node.name and node.ip
        dns, ips = apiserver_sans(node.name, node.ip, contract.KUBERNETES_SERVICE_IP, contract.CLUSTER_DOMAIN)
        # A consensus joiner's etcd certificate is the one its ticket carried.
        renewed = ("apiserver", "kubelet-server", *(("etcd-member",) if node.bootstrap else ()))
        for name in renewed:
            for suffix in (".crt", ".key"):
                (node.cfg.pki / f"{name}{suffix}").unlink(missing_ok=True)
        self.ca.ensure_pair("etcd-member", node.name, dns_names=[node.name, "localhost"],
                            ips=[node.ip, "127.0.0.1"], server=True, client=True)
        self.ca.ensure_pair("apiserver", "kube-apiserver", dns_names=dns, ips=ips, server=True)
        self.ca.ensure_pair("kubelet-server", node.name, dns_names=[node.name], ips=[node.ip], server=True)
        pair = self.ca.issue(f"system:node:{node.name}", orgs=["system:nodes"], client=True)
        write_private(self.files.key("kubelet-client"), pair.key)
        write_public(self.files.crt("kubelet-client"), pair.cert)
        pair = issue_provisioner_identity(self.ca, node.name)
        write_private(self.files.key("provisioner"), pair.key)
        write_public(self.files.crt("provisioner"), pair.cert)

    def write_ticket_material(self, t: enrolment_pb2.GoldenTicket) -> None:
        """A joining node's certificates and keys as its ticket carried them (a consensus joiner's: with the CA key)."""
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
        """``<kube_dir>/<name>.kubeconfig``: the ``cert_name`` identity towards ``server`` (private: holds the key)."""
        path = self.files.kubeconfig(name)
        text = kubeconfig(server, self.files.ca.read_bytes(), self.files.crt(cert_name).read_bytes(),
                          self.files.key(cert_name).read_bytes(), name)
        write_private(path, text.encode())
        return path
