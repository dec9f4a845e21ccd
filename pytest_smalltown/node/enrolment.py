"""Golden tickets: how node 0 lets a further node join, and how a joiner reads one.

The joiner's name cannot be known ahead if it is derived from a key the
joiner makes itself, yet its kubelet certificates must name it
(``system:node:<name>``, NodeRestriction checks this). So node 0 makes the
key: it generates an ed25519 node key, derives the name from it by the usual
rule, and puts key (``node_key``), name (``node_id``) and a CA certificate for
that key (``node_cert``) in the ticket along with the Kubernetes material in
the reference extensions (100-107). The joiner adopts the key as its own; its
hostname is still ``smalltown-<hex of its public key>``.

The etcd fields of the original ticket are filled with what a worker could
use to reach node 0 (``this``/``peers`` name and address) and the CA; workers
run no etcd member, so no etcd client credentials are handed out.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import identity
from pytest_smalltown.node.pki import ClusterCA, cert_pem, issue


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
) -> enrolment_pb2.GoldenTicket:
    """Everything a worker with ``external_ip`` needs to join this cluster."""
    ip = validate_ipv4(external_ip)
    node_key = identity.generate_node_key()
    name = identity.node_name(node_key)
    node_cert, _ = issue(ca.cert, ca.key, name, orgs=["smalltown:nodes"], dns_names=[name],
                         ips=[ip], client=True, server=True, public_key=node_key.public_key())
    kubelet_client = ca.issue(f"system:node:{name}", orgs=["system:nodes"], client=True)
    kubelet_server = ca.issue(name, dns_names=[name], ips=[ip], server=True)
    proxy_client = ca.issue("system:kube-proxy", client=True)
    this = enrolment_pb2.EtcdPeer(name=name, address=ip)
    return enrolment_pb2.GoldenTicket(
        etcd_ca_cert=ca.cert_pem,
        peers=[enrolment_pb2.EtcdPeer(name=issuer_name, address=issuer_ip)],
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
    )


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
                    "kube_proxy_client_cert", "kube_proxy_client_key", "node_key")
        if not getattr(ticket, f)
    ]
    return missing
