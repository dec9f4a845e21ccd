"""A 2-node cluster: enrolment through a golden ticket, and traffic that crosses the switch."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import TEST_IMAGE
from pytest_smalltown.kube import exec_in_pod, node_addresses, node_ready, pod_logs

pytestmark = pytest.mark.smalltown(nodes=2)


def test_both_nodes_ready_at_their_planned_addresses(core: k8s.CoreV1Api) -> None:
    nodes = core.list_node().items
    assert len(nodes) == 2
    assert all(node_ready(n) for n in nodes)
    assert sorted(node_addresses(n)["InternalIP"] for n in nodes) == ["10.1.0.2", "10.1.0.3"]
    assert len({n.metadata.name for n in nodes}) == 2
    assert len({n.spec.pod_cidr for n in nodes}) == 2


def test_daemonset_runs_everywhere_and_second_node_pod_answers(
    apps: k8s.AppsV1Api, core: k8s.CoreV1Api, smalltown_kube: Any, smalltown_namespace: str
) -> None:
    labels = {"app": "everywhere"}
    daemonset = k8s.V1DaemonSet(
        metadata=k8s.V1ObjectMeta(name="everywhere"),
        spec=k8s.V1DaemonSetSpec(
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    termination_grace_period_seconds=1,
                    containers=[
                        k8s.V1Container(
                            name="main",
                            image=TEST_IMAGE,
                            command=["sh", "-c", "echo running on $NODE_NAME; exec sleep 3600"],
                            env=[k8s.V1EnvVar(name="NODE_NAME", value_from=k8s.V1EnvVarSource(
                                field_ref=k8s.V1ObjectFieldSelector(field_path="spec.nodeName")))],
                        )
                    ],
                ),
            ),
        ),
    )  # fmt: skip
    apps.create_namespaced_daemon_set(smalltown_namespace, daemonset)

    def all_running() -> list[Any] | None:
        pods = core.list_namespaced_pod(smalltown_namespace, label_selector="app=everywhere").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 2 else None

    pods = wait_for("a running DaemonSet pod on each of 2 nodes", all_running, timeout=300)
    assert len({p.spec.node_name for p in pods}) == 2

    node_by_name = {n.metadata.name: n for n in core.list_node().items}
    (second,) = [p for p in pods if node_addresses(node_by_name[p.spec.node_name])["InternalIP"] == "10.1.0.3"]
    # Logs and exec of a pod on node 1 travel apiserver (node 0) -> kubelet (node 1) across the switch.
    logs = wait_for("the second node's pod to log",
                    lambda: pod_logs(smalltown_kube, smalltown_namespace, second.metadata.name),
                    timeout=60)  # fmt: skip
    assert f"running on {second.spec.node_name}" in logs
    result = exec_in_pod(smalltown_kube, smalltown_namespace, second.metadata.name, ["sh", "-c", "hostname; exit 4"])
    assert result.stdout.strip() == second.metadata.name and result.exit_code == 4

    # Pod-to-pod across nodes: the node-0 pod reaches the node-1 pod's IP.
    (first,) = [p for p in pods if p is not second]
    ping = exec_in_pod(smalltown_kube, smalltown_namespace, first.metadata.name,
                       ["ping", "-c", "1", "-W", "5", second.status.pod_ip])
    assert ping.exit_code == 0, ping.stdout + ping.stderr
