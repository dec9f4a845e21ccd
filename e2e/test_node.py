"""The node as Kubernetes sees it: registered, Ready, and identifying itself like Smalltown."""

from __future__ import annotations

import re
from typing import Any

from kubernetes import client as k8s

from pytest_smalltown.kube import node_addresses, node_ready


def test_node_registered_ready_with_smalltown_identity(core: k8s.CoreV1Api) -> None:
    (node,) = core.list_node().items
    assert node_ready(node)
    # The node names itself after its key: smalltown-<hex>.
    assert re.fullmatch(r"smalltown-[0-9a-f]{8,}", node.metadata.name), node.metadata.name
    info = node.status.node_info
    assert info.os_image.startswith("Smalltown"), info.os_image  # PRETTY_NAME from /etc/os-release
    assert re.fullmatch(r"[0-9a-f]{32}", info.machine_id), info.machine_id  # /etc/machine-id
    # machine-id and name both derive from the node key.
    assert node.metadata.name.removeprefix("smalltown-") in info.machine_id
    assert info.kubelet_version == "v1.34.4"
    assert info.container_runtime_version.startswith("containerd://")
    assert node_addresses(node).get("InternalIP") == "10.1.0.2"


def test_node_has_pod_cidr_and_capacity(core: k8s.CoreV1Api) -> None:
    (node,) = core.list_node().items
    assert node.spec.pod_cidr and node.spec.pod_cidr.startswith("10.244.")
    assert int(node.status.capacity["cpu"]) >= 1
    assert int(node.status.allocatable["pods"]) > 0


def test_builtin_objects_are_present(smalltown_kube: Any) -> None:
    node_api = k8s.NodeV1Api(smalltown_kube)
    runtime_class = node_api.read_runtime_class("runc")
    assert runtime_class.handler == "runc"
    rbac = k8s.RbacAuthorizationV1Api(smalltown_kube)
    builtin = rbac.list_cluster_role_binding(label_selector="smalltown.dev/builtin=true").items
    assert builtin, "the reconciler's built-in ClusterRoleBindings are missing"
