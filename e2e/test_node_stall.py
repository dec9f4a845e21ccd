"""A node that stalls: the cluster gives up on it after the grace period, and takes it back when it wakes.

The stall is a frozen node (its vCPUs stopped through QMP, see
:mod:`pytest_smalltown.faults`): no heartbeat, no answer, no goodbye. Node 1
is frozen (node 0 carries the control plane that has to notice). A pod on it
serves a Service, so the test also sees what users' traffic sees: the pod's
endpoint stops being ready while its node is gone, and is ready again after.
A fresh cluster: the tests that share one need not wait out a stall's wake.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import node_address
from pytest_smalltown.faults import NODE_MONITOR_GRACE_SECONDS
from pytest_smalltown.kube import node_ready, service_endpoint_ready
from pytest_smalltown.lifecycle import find_node

pytestmark = pytest.mark.smalltown(nodes=2, fresh=True)

FROZEN = 1
#: Beyond the grace period: the controller checks every 5 s, and the emulated control plane is slow.
NOT_READY_TIMEOUT = NODE_MONITOR_GRACE_SECONDS + 150
#: A thawed node's kubelet posts its status within its next heartbeat (10 s), emulation permitting.
READY_AGAIN_TIMEOUT = 180


def test_a_frozen_node_is_not_ready_its_endpoint_leaves_and_both_return_after_the_thaw(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_namespace: str,
    run_pod: Callable[..., Any], smalltown_progress: Callable[[str], None],
) -> None:  # fmt: skip
    node_name = find_node(smalltown_kube, node_address(FROZEN)).metadata.name
    run_pod("stalled", ["sh", "-c", "exec sleep 100000"], node_name=node_name)
    core.create_namespaced_service(smalltown_namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="stalled"),
        spec=k8s.V1ServiceSpec(selector={"app": "stalled"}, ports=[k8s.V1ServicePort(port=80)])))  # fmt: skip
    wait_for("the pod's endpoint to be ready",
             lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "stalled"), timeout=120)  # fmt: skip

    def node_is_ready() -> bool:
        return node_ready(core.read_node(node_name))

    with smalltown_cluster.frozen(FROZEN) as fault:
        wait_for(f"node {FROZEN} to turn NotReady while frozen", lambda: not node_is_ready(), NOT_READY_TIMEOUT)
        not_ready_after = time.time() - fault.started
        wait_for("the frozen node's pod endpoint to turn not ready",
                 lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "stalled") is False, timeout=60)  # fmt: skip
    thawed = time.monotonic()
    wait_for(f"node {FROZEN} to be Ready again after the thaw", node_is_ready, READY_AGAIN_TIMEOUT)
    ready_after = time.monotonic() - thawed
    wait_for("the pod's endpoint to be ready again",
             lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "stalled"), timeout=120)  # fmt: skip
    smalltown_progress(f"node {FROZEN} frozen: NotReady after {not_ready_after:.0f}s "
                       f"(grace period {NODE_MONITOR_GRACE_SECONDS}s), Ready {ready_after:.0f}s after the thaw")
