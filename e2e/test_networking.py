"""Cluster networking from inside a pod: DNS, Services through kube-proxy, the API itself."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pytest_smalltown.contract import KUBERNETES_SERVICE_IP, NodePort
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


def test_pods_reach_neither_the_host_nor_the_node_debug_service(
    run_pod: Callable[..., Any], smalltown_kube: Any, core: Any, smalltown_namespace: str
) -> None:
    """The fence: a host loopback listener (SLIRP's 10.0.2.2) and the node's :7837 refuse pods.

    The debug service hands out cluster-admin credentials without
    authentication, and a CI host's loopback serves other clusters' debug
    services; a pod under test must reach neither. The API Service is the
    control: it shows that ``nc`` in this pod does connect where it may.
    """
    accepted: list[object] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
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
            debug_port = int(NodePort.DEBUG_SERVICE)
            script = "; ".join([
                f"if echo probe | nc -w 5 10.0.2.2 {port}; then echo HOST-REACHED; else echo HOST-REFUSED; fi",
                f"if echo | nc -w 5 {node_ip} {debug_port}; then echo DEBUG-REACHED; else echo DEBUG-REFUSED; fi",
                f"if echo | nc -w 10 {KUBERNETES_SERVICE_IP} 443; then echo API-REACHED; fi",
            ])  # fmt: skip
            run_pod("prober", ["sh", "-c", script], phase="Succeeded", timeout=240)
            logs = pod_logs(smalltown_kube, smalltown_namespace, "prober")
        finally:
            stop.set()
            watcher.join(timeout=5)
    assert "API-REACHED" in logs, logs
    assert "HOST-REFUSED" in logs and "HOST-REACHED" not in logs, logs
    assert not accepted, f"the host listener accepted connections from {accepted}"
    assert "DEBUG-REFUSED" in logs and "DEBUG-REACHED" not in logs, logs
