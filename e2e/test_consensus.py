"""A 3-node cluster is a real consensus: every node an etcd voter with its own apiserver, and it survives a loss.

Nodes 1 and 2 joined etcd with their golden tickets (learner first, then
promoted by node 0) and run an apiserver, controller-manager and scheduler
of their own. With one of them killed, two of three members remain: the API
keeps answering, reads and writes alike.

The last test powers a node off for good (``stop_node``): it is the only
module on the 3-node spec, and its tests run in file order.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import node_address
from pytest_smalltown.kube import node_addresses, node_ready

pytestmark = pytest.mark.smalltown(nodes=3)

NODES = 3


def test_every_node_is_an_etcd_voter_with_an_apiserver_of_its_own(smalltown_cluster: Any, core: k8s.CoreV1Api) -> None:
    for index in range(NODES):
        debug = smalltown_cluster.node_debug(index)
        try:
            assert debug.condition("ConsensusVoter"), f"node {index}'s etcd member does not vote"
            logs = "\n".join(debug.component_logs("kube.apiserver"))
        finally:
            debug.close()
        assert logs, f"node {index} runs no apiserver"
    # Every apiserver registers itself as an endpoint of the `kubernetes` Service. It
    # does so through a lease it renews every few seconds; on a loaded host a renewal
    # can come late and drop it for a moment, so wait for the complete set.
    discovery = k8s.DiscoveryV1Api(core.api_client)
    expected = [node_address(i) for i in range(NODES)]
    seen: list[str] = []

    def registered() -> bool:
        slices = discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=kubernetes", _request_timeout=30)
        seen[:] = sorted(a for s in slices.items for e in s.endpoints or [] for a in e.addresses)
        return seen == expected

    wait_for("every apiserver in the kubernetes Service's endpoints", registered, timeout=180, interval=5.0,
             describe=lambda: f"endpoints {seen}, expected {expected}")


def test_the_api_keeps_answering_after_a_node_is_killed(smalltown_cluster: Any, core: k8s.CoreV1Api,
                                                         smalltown_namespace: str) -> None:  # fmt: skip
    smalltown_cluster.stop_node(2)  # a power cut: its etcd member and apiserver are gone with it

    # Two of three members remain a quorum: writes commit and reads see them. If the
    # killed member led etcd, the others elect a new leader first (an election timeout,
    # a few seconds): requests in that window fail with "etcdserver: request timed
    # out" and are retried. A write whose answer was lost but which did commit shows
    # as AlreadyExists on the retry.
    token = secrets.token_hex(8)

    def write() -> bool:
        try:
            core.create_namespaced_config_map(smalltown_namespace, k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name="after-the-loss"), data={"token": token}), _request_timeout=60)
        except k8s.ApiException as error:
            if error.status != 409:
                raise
        return True

    wait_for("a write to commit with one of three members gone", write, timeout=180, interval=5.0)
    read = wait_for("the write to be read back", lambda: core.read_namespaced_config_map(
        "after-the-loss", smalltown_namespace, _request_timeout=60), timeout=120, interval=5.0)
    assert read.data == {"token": token}

    # The cluster notices the loss: the dead node goes NotReady (after the
    # node-lifecycle grace period), the others stay Ready.
    def states() -> dict[str, bool] | None:
        nodes = core.list_node(_request_timeout=30).items
        ready = {node_addresses(n)["InternalIP"]: node_ready(n) for n in nodes}
        return ready if ready.get(node_address(2)) is False else None

    ready = wait_for("the killed node to be NotReady", states, timeout=300, interval=5.0)
    assert ready == {node_address(0): True, node_address(1): True, node_address(2): False}
