"""Pod -> Service -> pod by name, as a user's first Service test does it, on one node and across the switch.

The client is the test image's own ``wget``, resolving the Service through
the cluster DNS (CoreDNS) by its short and its fully qualified name; the
ClusterIP is then routed by kube-proxy to a server pod on node 1, so one
client shares the server's node and the other reaches it through the switch.
A NodePort Service answers on every node's address, and from the host through
a forward the test asks for.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import CLUSTER_DOMAIN, NODE_PORT_RANGE
from pytest_smalltown.kube import exec_in_pod, node_addresses

pytestmark = pytest.mark.smalltown(nodes=2)


def test_pod_fetches_http_through_a_service_by_short_and_full_name_on_both_nodes(
    run_pod: Callable[..., Any], core: k8s.CoreV1Api, smalltown_kube: Any, smalltown_namespace: str
) -> None:
    by_address = {node_addresses(n)["InternalIP"]: n.metadata.name for n in core.list_node().items}
    server_node, other_node = by_address["10.1.0.3"], by_address["10.1.0.2"]
    serve = "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    run_pod("web", ["sh", "-c", serve], node_name=server_node)
    core.create_namespaced_service(smalltown_namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1ServiceSpec(selector={"app": "web"}, ports=[k8s.V1ServicePort(port=80, target_port=8080)]),
    ))  # fmt: skip
    clients = {node: f"client-{i}" for i, node in enumerate((server_node, other_node))}
    for node, name in clients.items():
        run_pod(name, ["sleep", "3600"], node_name=node)

    full_name = f"web.{smalltown_namespace}.svc.{CLUSTER_DOMAIN}"
    for node, client in clients.items():
        for host in ("web", full_name):
            command = ["wget", "-q", "-O", "-", "-T", "5", f"http://{host}/"]

            def fetch() -> str | None:
                result = exec_in_pod(smalltown_kube, smalltown_namespace, client, command)
                # kube-proxy programs the new Service within seconds; until then: retry.
                return result.stdout if result.exit_code == 0 else None

            body = wait_for(f"{client} on {node} to fetch http://{host}/", fetch, timeout=120, interval=2)
            assert body.strip() == "served-by-web", (client, host, body)


def test_a_node_port_answers_on_every_node_and_from_the_host(
    smalltown_cluster: Any, run_pod: Callable[..., Any], core: k8s.CoreV1Api, smalltown_kube: Any,
    smalltown_namespace: str,
) -> None:
    by_address = {node_addresses(n)["InternalIP"]: n.metadata.name for n in core.list_node().items}
    serve = "mkdir -p /www && echo node-port-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    run_pod("np-web", ["sh", "-c", serve], node_name=by_address["10.1.0.3"])
    service = core.create_namespaced_service(smalltown_namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="np-web"),
        spec=k8s.V1ServiceSpec(type="NodePort", selector={"app": "np-web"},
                               ports=[k8s.V1ServicePort(port=80, target_port=8080)]),
    ))  # fmt: skip
    node_port = service.spec.ports[0].node_port
    assert node_port in NODE_PORT_RANGE
    run_pod("np-client", ["sleep", "3600"], node_name=by_address["10.1.0.2"])

    for address in sorted(by_address):
        command = ["wget", "-q", "-O", "-", "-T", "5", f"http://{address}:{node_port}/"]

        def fetch() -> str | None:
            result = exec_in_pod(smalltown_kube, smalltown_namespace, "np-client", command)
            return result.stdout if result.exit_code == 0 else None

        body = wait_for(f"NodePort {node_port} on {address}", fetch, timeout=120, interval=2)
        assert body.strip() == "node-port-np-web", (address, body)

    host_port = smalltown_cluster.forward_node_port(node_port)

    def fetch_from_host() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=10) as response:
            return response.read().decode()

    body = wait_for(f"NodePort {node_port} from the host (127.0.0.1:{host_port})", fetch_from_host, timeout=60)
    assert body.strip() == "node-port-np-web"
