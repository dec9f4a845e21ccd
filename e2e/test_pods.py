"""Pods on a 1-node cluster: run to completion, logs, exec, readiness, RuntimeClass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import TEST_IMAGE
from pytest_smalltown.kube import exec_in_pod, pod_logs

pytestmark = pytest.mark.smalltown(nodes=1)


def test_pod_from_preloaded_image_runs_to_completion(run_pod: Callable[..., Any]) -> None:
    pod = run_pod("complete", ["sh", "-c", "echo done"], phase="Succeeded")
    (status,) = pod.status.container_statuses
    assert status.state.terminated.exit_code == 0
    assert status.image.endswith(TEST_IMAGE) or TEST_IMAGE in status.image


def test_failing_container_is_reported_failed(run_pod: Callable[..., Any]) -> None:
    pod = run_pod("fails", ["sh", "-c", "exit 3"], phase="Failed")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


def test_pod_logs_contain_what_the_container_printed(
    run_pod: Callable[..., Any], smalltown_kube: Any, smalltown_namespace: str
) -> None:
    run_pod("printer", ["sh", "-c", "echo hello from smalltown; echo second line >&2"], phase="Succeeded")
    logs = pod_logs(smalltown_kube, smalltown_namespace, "printer")
    assert "hello from smalltown" in logs and "second line" in logs


def test_exec_returns_output_and_exit_code(
    run_pod: Callable[..., Any], smalltown_kube: Any, smalltown_namespace: str
) -> None:
    run_pod("shell", ["sleep", "3600"], phase="Running")
    result = exec_in_pod(smalltown_kube, smalltown_namespace, "shell", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 7
    ok = exec_in_pod(smalltown_kube, smalltown_namespace, "shell", ["cat", "/etc/hostname"])
    assert ok.exit_code == 0 and ok.stdout.strip() == "shell"


def test_deployment_with_readiness_probe_becomes_available(apps: k8s.AppsV1Api, smalltown_namespace: str) -> None:
    labels = {"app": "web"}
    container = k8s.V1Container(
        name="web",
        image=TEST_IMAGE,
        command=["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www"],
        ports=[k8s.V1ContainerPort(container_port=8080)],
        readiness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/index.html", port=8080), period_seconds=2, failure_threshold=30
        ),
    )
    deployment = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1DeploymentSpec(
            replicas=2,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(containers=[container], termination_grace_period_seconds=1),
            ),
        ),
    )
    apps.create_namespaced_deployment(smalltown_namespace, deployment)

    def available() -> Any:
        status = apps.read_namespaced_deployment_status("web", smalltown_namespace).status
        return status if (status.available_replicas or 0) == 2 else None

    status = wait_for("deployment web to have 2 available replicas", available, timeout=240)
    assert status.ready_replicas == 2


def test_runtime_class_runc_runs_a_pod(run_pod: Callable[..., Any]) -> None:
    pod = run_pod("with-runc", ["true"], phase="Succeeded", runtime_class="runc")
    assert pod.spec.runtime_class_name == "runc"


def test_unknown_runtime_class_is_rejected(core: k8s.CoreV1Api, smalltown_namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    from pytest_smalltown.kube import busybox_pod

    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(smalltown_namespace, busybox_pod("bad-rc", ["true"], runtime_class="gvisor"))
    assert caught.value.status == 403 and "gvisor" in caught.value.body
