"""DHCP on the node's NIC (busybox udhcpc) and the host-gw pod network.

udhcpc runs supervised in the foreground so it renews its lease; its event
script (a few lines of sh, written by the agent) configures the address,
default route and resolv.conf itself and then drops the lease as KEY=VALUE
lines into a file the agent reads. Applying the lease in the script, not in
Python, keeps the address correct across renewals even if the agent is busy.

Pods: every node gets a /24 from the controller-manager's node IPAM
(``spec.podCIDR``); a bridge + host-local CNI config serves it, and each node
routes the other nodes' pod CIDRs via their InternalIP ("host-gw"), which
works because all nodes share one L2 segment (the switch's 10.1.0.0/24).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.template import render

UDHCPC_SCRIPT = Path(__file__).parent / "files" / "udhcpc.sh"


@dataclass(frozen=True)
class Lease:
    interface: str
    ip: str
    prefix: int
    router: str | None
    dns: tuple[str, ...]

    @property
    def upstream_dns(self) -> tuple[str, ...]:
        return self.dns


def write_udhcpc_script(path: Path, lease_file: Path, resolv_conf: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(UDHCPC_SCRIPT, LEASE=str(lease_file), RESOLV=str(resolv_conf))
    path.write_text(text)
    path.chmod(0o755)


def udhcpc_argv(busybox: str, interface: str, script: Path, hostname: str) -> list[str]:
    """Foreground udhcpc that retries fast (1 s) and keeps renewing."""
    return [
        busybox, "udhcpc", "-f", "-i", interface, "-s", str(script),
        "-x", f"hostname:{hostname}", "-t", "30", "-T", "1", "-A", "2",
    ]


def parse_lease(text: str) -> Lease | None:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip()
    ip = values.get("ip")
    if not ip:
        return None
    try:
        ipaddress.IPv4Address(ip)
        prefix = int(values.get("mask") or 24)
    except ValueError:
        return None
    router = (values.get("router") or "").split()
    return Lease(
        interface=values.get("interface", ""),
        ip=ip,
        prefix=prefix,
        router=router[0] if router else None,
        dns=tuple((values.get("dns") or "").split()),
    )


def read_resolv_nameservers(path: Path) -> list[str]:
    try:
        return [
            line.split()[1]
            for line in path.read_text().splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1
        ]
    except OSError:
        return []


CNI_NETWORK_NAME = "smalltown"
CNI_CONFIG_FILE = "10-smalltown.conflist"


def cni_conflist(pod_cidr: str) -> dict[str, object]:
    """Bridge + host-local for this node's pod CIDR, and portmap for hostPort.

    ``ipMasq`` is off: the agent adds one MASQUERADE rule for traffic leaving
    the pod network instead, so pod-to-pod traffic across nodes keeps its
    source address (the bridge plugin would masquerade everything outside
    this node's /24).
    """
    net = ipaddress.IPv4Network(pod_cidr)
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net), "gateway": str(net.network_address + 1)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_cni_config(conf_dir: Path, pod_cidr: str) -> bool:
    """Write the conflist if it changed; returns True when written."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / CNI_CONFIG_FILE
    text = json.dumps(cni_conflist(pod_cidr), indent=2) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    tmp = conf_dir / (CNI_CONFIG_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # containerd watches the dir: it must never see half a file
    return True


def desired_pod_routes(nodes: Sequence[Mapping[str, Any]], own_name: str) -> dict[str, str]:
    """podCIDR -> InternalIP of every other node that has both."""
    routes: dict[str, str] = {}
    for node in nodes:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict) or not isinstance(status, dict):
            continue
        if meta.get("name") == own_name:
            continue
        cidr = spec.get("podCIDR")
        ip = next(
            (a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"),
            None,
        )
        if cidr and ip:
            routes[str(cidr)] = str(ip)
    return routes


def pod_cidr_assignments(
    nodes: Sequence[Mapping[str, Any]], pod_network: str, node_network: str | None = None, prefix: int = 24
) -> dict[str, str]:
    """Node name -> pod CIDR, for every node that has none yet.

    The controller-manager's node IPAM does the same, but under emulation it
    starts that controller a minute or more after the apiserver is ready, and a
    node without a pod CIDR cannot become Ready. Node 0's agent therefore
    assigns first; the two cannot conflict because spec.podCIDR can only be set
    once (the loser's update fails) and the controller-manager adopts CIDRs it
    finds already set.

    A node whose InternalIP is ``node_network``'s host number ``2 + i`` (the
    switch's fixed lease for node ``i``) gets subnet ``i`` when free, so that
    node i's pods are 10.244.i.0/24 whatever order the nodes register in;
    other nodes get the lowest free subnet.
    """
    subnets = list(ipaddress.IPv4Network(pod_network).subnets(new_prefix=prefix))
    used = {str(n.get("spec", {}).get("podCIDR")) for n in nodes if n.get("spec", {}).get("podCIDR")}
    net = ipaddress.IPv4Network(node_network) if node_network else None
    out: dict[str, str] = {}

    def preferred(node: Mapping[str, Any]) -> str | None:
        if net is None:
            return None
        for addr in (node.get("status") or {}).get("addresses") or []:
            if addr.get("type") != "InternalIP":
                continue
            try:
                ip = ipaddress.IPv4Address(addr.get("address"))
            except ValueError:
                continue
            index = int(ip) - int(net.network_address) - 2
            if ip in net and 0 <= index < len(subnets):
                return str(subnets[index])
        return None

    pending = sorted((n for n in nodes if not n.get("spec", {}).get("podCIDR")),
                     key=lambda n: str(n.get("metadata", {}).get("name")))
    rest = []
    for node in pending:
        want = preferred(node)
        if want is not None and want not in used:
            used.add(want)
            out[str(node["metadata"]["name"])] = want
        else:
            rest.append(node)
    free = (str(s) for s in subnets if str(s) not in used)
    for node in rest:
        cidr = next(free, None)
        if cidr is None:
            break
        out[str(node["metadata"]["name"])] = cidr
    return out


class RouteSync:
    """Keeps ``ip route`` entries for other nodes' pod CIDRs in line with the API."""

    def __init__(self, ip_bin: str) -> None:
        self.ip_bin = ip_bin
        self.installed: dict[str, str] = {}

    def sync(self, desired: dict[str, str]) -> list[str]:
        changes = []
        for cidr, via in desired.items():
            if self.installed.get(cidr) != via:
                subprocess.run([self.ip_bin, "route", "replace", cidr, "via", via],
                               check=True, capture_output=True)
                self.installed[cidr] = via
                changes.append(f"route {cidr} via {via}")
        for cidr in list(self.installed):
            if cidr not in desired:
                subprocess.run([self.ip_bin, "route", "del", cidr], capture_output=True)
                del self.installed[cidr]
                changes.append(f"route {cidr} removed")
        return changes


def ensure_masquerade(iptables: str, pod_network: str) -> None:
    """SNAT traffic from pods to anything outside the pod network (internet, node IPs)."""
    rule = ["-t", "nat", "POSTROUTING", "-s", pod_network, "!", "-d", pod_network,
            "-m", "comment", "--comment", "smalltown pod egress", "-j", "MASQUERADE"]
    check = [iptables, "-w", "-t", "nat", "-C", *rule[2:]]
    if subprocess.run(check, capture_output=True).returncode != 0:
        subprocess.run([iptables, "-w", "-t", "nat", "-A", *rule[2:]], check=True, capture_output=True)


def fence_port(iptables: str, port: int, allowed_source: str) -> None:
    """Refuse TCP ``port`` to everyone but loopback and ``allowed_source``.

    The debug service hands out cluster-admin credentials and golden tickets
    without authentication; the harness reaches it only through the switch's
    forward (whose connections come from the switch's own address). Without
    this rule every pod could call it: on its own node directly, on other
    nodes through the pod egress masquerade.
    """
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "!", "-i", "lo", "!", "-s", allowed_source,
            "-m", "comment", "--comment", "smalltown debug service fence", "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    if subprocess.run([iptables, "-w", "-C", *rule], capture_output=True).returncode != 0:
        subprocess.run([iptables, "-w", "-I", *rule], check=True, capture_output=True)
