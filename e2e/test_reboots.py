"""Rebooting a node, as Smalltown's own tests do: it comes back Ready, with its pods running again.

Each test reboots a cluster of its own (``fresh=True``, restored from the
2-node snapshot): a reboot is the most disruptive thing a test does, and no
other test should run on a node that has just been reset, nor wait for it.

Both kinds are tested: graceful (the Reboot RPC: components stopped, disks
flushed) and hard (a reset, as a power cut: the root file system's journal
is what brings containerd's database back intact).

Node 1 is rebooted (node 0 carries the control plane, which the test itself
keeps using). Each test pins a small Deployment to it, reboots, and checks
the Node reports a new boot and the pod's container was started anew by the
rebooted kubelet (the same pod object, a new container: its sandbox died
with the machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import TEST_IMAGE, node_address
from pytest_smalltown.lifecycle import find_node

pytestmark = pytest.mark.smalltown(nodes=2, fresh=True)

REBOOTED = 1


def pinned_deployment(name: str, node: str) -> k8s.V1Deployment:
    labels = {"app": name}
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1DeploymentSpec(
            replicas=1,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(
                    node_name=node,
                    termination_grace_period_seconds=1,
                    containers=[k8s.V1Container(
                        name="main", image=TEST_IMAGE, image_pull_policy="Never",
                        command=["sh", "-c", "echo started; exec sleep 100000"],
                    )],  # fmt: skip
                ),
            ),
        ),
    )


def running_pod(core: k8s.CoreV1Api, namespace: str, name: str, timeout: float) -> Any:
    def check() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
        ready = [p for p in pods if p.status.phase == "Running" and p.status.container_statuses
                 and all(c.ready for c in p.status.container_statuses)]  # fmt: skip
        return ready[0] if len(ready) == 1 and len(pods) == 1 else None

    return wait_for(f"the pod of {name} to run", check, timeout, interval=2.0)


@pytest.mark.parametrize("hard", [False, True], ids=["graceful", "hard"])
def test_a_rebooted_node_is_ready_again_with_its_pods(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, apps: k8s.AppsV1Api, smalltown_namespace: str,
    smalltown_progress: Callable[[str], None], hard: bool,
) -> None:  # fmt: skip
    node = find_node(smalltown_kube, node_address(REBOOTED))
    name = "survivor"
    apps.create_namespaced_deployment(smalltown_namespace, pinned_deployment(name, node.metadata.name))
    before = running_pod(core, smalltown_namespace, name, timeout=180)
    container_before = before.status.container_statuses[0].container_id

    result = smalltown_cluster.reboot_node(REBOOTED, hard=hard)
    came_up = sum(smalltown_cluster.phase_seconds.values())
    hung = f"; {result.hung_boots} boot(s) hung and were reset again" if result.hung_boots else ""
    smalltown_progress(f"{'hard' if hard else 'graceful'} reboot of node {REBOOTED}: Ready again after "
                       f"{result.seconds_to_ready:.1f}s (the cluster came up in {came_up:.1f}s{hung})")

    assert result.node == node.metadata.name
    assert result.new_boot_id and result.new_boot_id != result.old_boot_id
    after = core.read_node(node.metadata.name)
    assert after.status.node_info.boot_id == result.new_boot_id

    # The pod object survives the reboot (it is bound to the node); the
    # rebooted kubelet starts its container again: a new container, running.
    def restarted() -> Any:
        pod = running_pod(core, smalltown_namespace, name, timeout=10)
        return pod if pod.status.container_statuses[0].container_id != container_before else None

    pod = wait_for("the pod's container to run again after the reboot", restarted, timeout=300, interval=2.0)
    assert pod.metadata.uid == before.metadata.uid
    assert pod.spec.node_name == node.metadata.name
