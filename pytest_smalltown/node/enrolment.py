"""Golden tickets: how node 0 lets a further node join, and how a joiner reads one.

The joiner's name cannot be known ahead if it is derived from a key the
joiner makes itself, yet its kubelet certificates must name it
(``system:node:<name>``, NodeRestriction checks this). So node 0 makes the
key: it generates an ed25519 node key, derives the name from it by the usual
rule, and puts key (``node_key``), name (``node_id``) and a CA certificate for
that key (``node_cert``) in the ticket along with the Kubernetes material in
the reference extensions (100-109): CA, kubelet client and serving pairs,
apiserver address, kube-proxy's client pair, and the client pair of the
joiner's volume provisioner (:mod:`volumes`), which names the node too. The
joiner adopts the key as its own; its hostname is still
``smalltown-<hex of its public key>``.

A worker's ticket fills the original's etcd fields with what it could use to
reach node 0 (``this``/``peers`` name and address) and the CA; it runs no
etcd member, so it gets no etcd certificate. A ticket for a node that joins
the consensus (:mod:`consensus`; node 0 has added it to etcd as a learner by
then) carries the real thing: ``etcd_client_cert``/``etcd_client_key`` are
the new member's certificate for its address (it serves its peers and
clients with it), ``peers`` every existing member by name and address,
``this`` the new one, and 110-111 the cluster CA's key and the
service-account signing key, so that it runs a control plane like node 0's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import identity
from pytest_smalltown.node.pki import ClusterCA, cert_pem, issue
from pytest_smalltown.node.volumes import issue_identity as issue_provisioner_identity


@dataclass(frozen=True)
class ConsensusSeat:
    """What a ticket for a new etcd member carries beyond a worker's (see :mod:`consensus`)."""

    #: The existing members, (name, address).
    peers: tuple[tuple[str, str], ...]
    #: PEM private key that signs service-account tokens.
    service_account_key: bytes


class InvalidTicketRequest(ValueError):
    """The request cannot be answered as asked (maps to INVALID_ARGUMENT)."""


def validate_ipv4(text: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text.strip())
    except ValueError as exc:
        raise InvalidTicketRequest(f"external_ip {text!r} is not an IPv4 address") from exc
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise InvalidTicketRequest(f"external_ip {text} cannot be a node address")
    return str(addr)


def issue_golden_ticket(
    ca: ClusterCA,
    external_ip: str,
    apiserver_address: str,
    issuer_name: str,
    issuer_ip: str,
    consensus: ConsensusSeat | None = None,
) -> enrolment_pb2.GoldenTicket:
    """Everything a node with ``external_ip`` needs to join this cluster (as an etcd member too with ``consensus``)."""
    ip = validate_ipv4(external_ip)
    node_key = identity.generate_node_key()
    name = identity.node_name(node_key)
    node_cert, _ = issue(ca.cert, ca.key, name, orgs=["smalltown:nodes"], dns_names=[name],
                         ips=[ip], client=True, server=True, public_key=node_key.public_key())
    kubelet_client = ca.issue(f"system:node:{name}", orgs=["system:nodes"], client=True)
    kubelet_server = ca.issue(name, dns_names=[name], ips=[ip], server=True)
    proxy_client = ca.issue("system:kube-proxy", client=True)
    provisioner_client = issue_provisioner_identity(ca, name)
    this = enrolment_pb2.EtcdPeer(name=name, address=ip)
    peers = consensus.peers if consensus is not None else ((issuer_name, issuer_ip),)
    ticket = enrolment_pb2.GoldenTicket(
        etcd_ca_cert=ca.cert_pem,
        peers=[enrolment_pb2.EtcdPeer(name=peer, address=address) for peer, address in peers],
        this=this,
        node_id=name,
        node_cert=cert_pem(node_cert),
        node_key=identity.node_key_pem(node_key),
        kubernetes_ca_cert=ca.cert_pem,
        kubelet_client_cert=kubelet_client.cert,
        kubelet_client_key=kubelet_client.key,
        kubelet_server_cert=kubelet_server.cert,
        kubelet_server_key=kubelet_server.key,
        apiserver_address=apiserver_address,
        kube_proxy_client_cert=proxy_client.cert,
        kube_proxy_client_key=proxy_client.key,
        provisioner_client_cert=provisioner_client.cert,
        provisioner_client_key=provisioner_client.key,
    )
    if consensus is not None:
        member = ca.issue(name, dns_names=[name, "localhost"], ips=[ip, "127.0.0.1"], server=True, client=True)
        ticket.etcd_client_cert = member.cert
        ticket.etcd_client_key = member.key
        ticket.kubernetes_ca_key = ca.key_path.read_bytes()
        ticket.service_account_key = consensus.service_account_key
    return ticket


def joins_consensus(ticket: enrolment_pb2.GoldenTicket) -> bool:
    """Whether the ticket makes its node an etcd member (and a control-plane node)."""
    return bool(ticket.etcd_client_cert and ticket.kubernetes_ca_key)


def read_enrolment(path: Path) -> enrolment_pb2.EnrolmentConfig | None:
    """The EnrolmentConfig from fw_cfg, or None when absent (bootstrap a new cluster)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    config = enrolment_pb2.EnrolmentConfig()
    config.ParseFromString(raw)
    return config


def check_ticket(ticket: enrolment_pb2.GoldenTicket) -> list[str]:
    """What a worker ticket lacks (empty when usable); a clear console line beats a crash loop."""
    missing = [
        f for f in ("kubernetes_ca_cert", "kubelet_client_cert", "kubelet_client_key",
                    "kubelet_server_cert", "kubelet_server_key", "apiserver_address",
                    "kube_proxy_client_cert", "kube_proxy_client_key",
                    "provisioner_client_cert", "provisioner_client_key", "node_key")
        if not getattr(ticket, f)
    ]
    return missing
