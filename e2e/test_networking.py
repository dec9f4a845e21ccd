"""Cluster networking from inside a pod: DNS, Services through kube-proxy, the API itself."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pytest_smalltown.contract import KUBERNETES_SERVICE_IP, NODE_DEBUG_PORT_BASE, NODE_PORT_RANGE, NodePort
from pytest_smalltown.kube import node_addresses, pod_logs

pytestmark = pytest.mark.smalltown(nodes=1)


def test_pod_reaches_the_api_through_the_kubernetes_service(
    run_pod: Callable[..., Any], smalltown_kube: Any, smalltown_namespace: str
) -> None:
    """DNS (CoreDNS) resolves the Service name; kube-proxy routes its ClusterIP to the apiserver."""
    script = (
        "nslookup kubernetes.default.svc.cluster.local; "
        "echo | nc -w 10 kubernetes.default.svc.cluster.local 443 && echo TCP-OK"
    )
    run_pod("api-client", ["sh", "-c", script], phase="Succeeded", timeout=240)
    logs = pod_logs(smalltown_kube, smalltown_namespace, "api-client")
    assert KUBERNETES_SERVICE_IP in logs, logs
    assert "TCP-OK" in logs, logs


def test_pod_gets_an_address_from_the_node_pod_cidr(run_pod: Callable[..., Any], core: Any) -> None:
    pod = run_pod("addressed", ["sleep", "3600"], phase="Running")
    (node,) = core.list_node().items
    prefix = node.spec.pod_cidr.rsplit(".", 1)[0] + "."
    assert pod.status.pod_ip.startswith(prefix), (pod.status.pod_ip, node.spec.pod_cidr)


#: Guest addresses of the switch a pod can route to: its bridge side, its
#: uplink (where the host's forwards listen) and SLIRP's host alias.
SWITCH_ADDRESSES = ("10.1.0.1", "10.0.2.15", "10.0.2.2")
#: What the switch forwards for the host (debug, external service, API, each
#: node's debug forward) and one port of the NodePort DNAT range.
PROBED_PORTS = (int(NodePort.DEBUG_SERVICE), int(NodePort.EXTERNAL_SERVICE), int(NodePort.KUBERNETES_API),
                NODE_DEBUG_PORT_BASE, NODE_DEBUG_PORT_BASE + 1, NODE_PORT_RANGE.start)


def test_from_a_pod_only_the_api_answers_on_the_switchs_and_nodes_addresses(
    run_pod: Callable[..., Any], smalltown_kube: Any, core: Any, smalltown_namespace: str
) -> None:
    """The fence, from the attacker's side: every address a pod can route to, every port the harness uses.

    The debug service hands out the cluster's CA key and cluster-admin
    credentials, and a CI host's loopback serves other clusters' forwards; a
    pod under test must reach neither: not the node's own :7837, not the
    switch's forwards on 10.0.2.15 or 10.1.0.1 (which would carry it to
    every node's debug service from the switch's address), not a listener on
    the host's loopback through SLIRP's 10.0.2.2. The API server on the
    node's address, and the API Service, are the control: they show that
    ``nc`` in this pod connects where it may.
    """
    accepted: list[object] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        host_port = listener.getsockname()[1]
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    connection, peer = listener.accept()
                except OSError:
                    continue
                accepted.append(peer)
                connection.close()

        watcher = threading.Thread(target=accept, daemon=True)
        watcher.start()
        try:
            (node,) = core.list_node().items
            node_ip = node_addresses(node)["InternalIP"]
            targets = [f"{address}:{port}" for address in (node_ip, *SWITCH_ADDRESSES) for port in PROBED_PORTS]
            targets += [f"10.0.2.2:{host_port}", f"{KUBERNETES_SERVICE_IP}:443"]
            # In parallel: a dropped probe costs its whole -w timeout.
            script = " ".join(
                f'(if echo probe | nc -w 5 {t.replace(":", " ")} >/dev/null 2>&1; then echo "{t} open"; '
                f'else echo "{t} closed"; fi) &' for t in targets
            ) + " wait"
            run_pod("prober", ["sh", "-c", script], phase="Succeeded", timeout=240)
            logs = pod_logs(smalltown_kube, smalltown_namespace, "prober")
        finally:
            stop.set()
            watcher.join(timeout=5)
    results = dict(line.split() for line in logs.splitlines() if line.endswith((" open", " closed")))
    assert set(results) == set(targets), logs
    answered = sorted(target for target, state in results.items() if state == "open")
    assert answered == sorted([f"{node_ip}:{int(NodePort.KUBERNETES_API)}", f"{KUBERNETES_SERVICE_IP}:443"]), logs
    assert not accepted, f"the host listener accepted connections from {accepted}"
