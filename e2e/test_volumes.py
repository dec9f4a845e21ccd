"""Persistent volumes as Smalltown's own e2e tests used them: a StatefulSet on the default `local` class.

The claim template names no class: the default StorageClass (`local`) must be
there. The node agent's provisioner makes the volume on the node the
scheduler picked, the data outlives the pod, and deleting the claim removes
the volume and its directory from the node's disk.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import PROVISIONER, STORAGE_CLASS, TEST_IMAGE
from pytest_smalltown.kube import busybox_pod, exec_in_pod, pod_logs, wait_pod_phase

pytestmark = pytest.mark.smalltown(nodes=2)

#: Where the reference node keeps `local` volumes (node/config.py: AgentConfig.volumes_dir).
VOLUMES_DIR = "/var/lib/smalltown/volumes"


def stateful_set(name: str) -> k8s.V1StatefulSet:
    labels = {"app": name}
    return k8s.V1StatefulSet(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1StatefulSetSpec(
            service_name=name,
            replicas=1,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    termination_grace_period_seconds=1,
                    containers=[k8s.V1Container(
                        name="main", image=TEST_IMAGE, command=["sleep", "100000"],
                        volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data")],
                    )],  # fmt: skip
                ),
            ),
            volume_claim_templates=[k8s.V1PersistentVolumeClaim(
                metadata=k8s.V1ObjectMeta(name="data"),
                spec=k8s.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=k8s.V1VolumeResourceRequirements(requests={"storage": "64Mi"}),
                ),
            )],  # fmt: skip
        ),
    )


def test_a_stateful_set_claim_binds_keeps_its_data_and_is_released(
    smalltown_kube: Any, core: k8s.CoreV1Api, apps: k8s.AppsV1Api, smalltown_namespace: str
) -> None:
    storage = k8s.StorageV1Api(smalltown_kube)
    default = [c for c in storage.list_storage_class().items
               if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert [(c.metadata.name, c.provisioner, c.volume_binding_mode) for c in default] == [
        (STORAGE_CLASS, PROVISIONER, "WaitForFirstConsumer")]

    name, pod_name, claim_name = "keeper", "keeper-0", "data-keeper-0"
    apps.create_namespaced_stateful_set(smalltown_namespace, stateful_set(name))

    def running(uid: str | None = None) -> Any:
        try:
            pod = core.read_namespaced_pod(pod_name, smalltown_namespace)
        except ApiException:
            return None
        fresh = uid is None or pod.metadata.uid != uid
        ok = pod.status.phase == "Running" and all(c.ready for c in pod.status.container_statuses or [])
        return pod if fresh and ok else None

    pod = wait_for(f"{pod_name} to run with its volume", running, timeout=240, interval=2.0)
    claim = core.read_namespaced_persistent_volume_claim(claim_name, smalltown_namespace)
    assert claim.status.phase == "Bound" and claim.spec.storage_class_name == STORAGE_CLASS
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert volume.spec.local.path == f"{VOLUMES_DIR}/{volume.metadata.name}"
    [term] = volume.spec.node_affinity.required.node_selector_terms
    assert term.match_expressions[0].values == [pod.spec.node_name]

    token = secrets.token_hex(8)
    written = exec_in_pod(smalltown_kube, smalltown_namespace, pod_name,
                          ["sh", "-c", f"echo {token} > /data/token && dd if=/dev/zero of=/data/fill bs=1M count=8"])
    assert written.exit_code == 0, written.stderr

    # The StatefulSet makes the pod again; it gets the same claim, on the same node.
    core.delete_namespaced_pod(pod_name, smalltown_namespace, grace_period_seconds=0)
    again = wait_for(f"{pod_name} to come back", lambda: running(pod.metadata.uid), timeout=240, interval=2.0)
    assert again.spec.node_name == pod.spec.node_name
    read = exec_in_pod(smalltown_kube, smalltown_namespace, pod_name, ["cat", "/data/token"])
    assert read.stdout.strip() == token

    # Deleting the set and the claim releases the volume; the provisioner deletes it and its directory.
    apps.delete_namespaced_stateful_set(name, smalltown_namespace)
    wait_for(f"{pod_name} to be gone", lambda: not any(
        p.metadata.name == pod_name for p in core.list_namespaced_pod(smalltown_namespace).items), timeout=120)
    core.delete_namespaced_persistent_volume_claim(claim_name, smalltown_namespace)

    def volume_gone() -> bool:
        try:
            core.read_persistent_volume(volume.metadata.name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(f"volume {volume.metadata.name} to be deleted", volume_gone, timeout=120, interval=2.0)
    lister = busybox_pod("lister", ["ls", "-a", "/volumes"], node_name=pod.spec.node_name)
    lister.spec.containers[0].volume_mounts = [k8s.V1VolumeMount(name="volumes", mount_path="/volumes")]
    lister.spec.volumes = [k8s.V1Volume(name="volumes", host_path=k8s.V1HostPathVolumeSource(path=VOLUMES_DIR))]
    core.create_namespaced_pod(smalltown_namespace, lister)
    wait_pod_phase(smalltown_kube, smalltown_namespace, "lister", ("Succeeded",), timeout=180)
    entries = pod_logs(smalltown_kube, smalltown_namespace, "lister").split()
    assert "." in entries, entries  # the listing ran
    assert volume.metadata.name not in entries, entries
