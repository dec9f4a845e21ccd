"""Cluster networking from inside a pod: DNS, Services through kube-proxy, the API itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_smalltown.contract import KUBERNETES_SERVICE_IP
from pytest_smalltown.kube import pod_logs

pytestmark = pytest.mark.smalltown(nodes=1)


def test_pod_reaches_the_api_through_the_kubernetes_service(
    run_pod: Callable[..., Any], kube: Any, smalltown_namespace: str
) -> None:
    """DNS (CoreDNS) resolves the Service name; kube-proxy routes its ClusterIP to the apiserver."""
    script = (
        "nslookup kubernetes.default.svc.cluster.local; "
        "echo | nc -w 10 kubernetes.default.svc.cluster.local 443 && echo TCP-OK"
    )
    run_pod("api-client", ["sh", "-c", script], phase="Succeeded", timeout=240)
    logs = pod_logs(kube, smalltown_namespace, "api-client")
    assert KUBERNETES_SERVICE_IP in logs, logs
    assert "TCP-OK" in logs, logs


def test_pod_gets_an_address_from_the_node_pod_cidr(run_pod: Callable[..., Any], core: Any) -> None:
    pod = run_pod("addressed", ["sleep", "3600"], phase="Running")
    (node,) = core.list_node().items
    prefix = node.spec.pod_cidr.rsplit(".", 1)[0] + "."
    assert pod.status.pod_ip.startswith(prefix), (pod.status.pod_ip, node.spec.pod_cidr)
