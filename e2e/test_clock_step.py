"""A node whose clock jumped: the cluster sees its timestamps from the future, and it comes back on time.

Node 1's wall clock is put an hour ahead through its node agent (see
:mod:`pytest_smalltown.faults`); node 0, which runs the API server and the
controllers, keeps the host's. The kubelet on node 1 renews its Lease with
its own clock, so the Lease the API server stores says an hour from now. The
node stays Ready meanwhile: the node lifecycle controller times a Lease by
when it saw it change, on its own clock, not by what the Lease says.
A fresh cluster: the tests that share one need not see a node's clock move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import node_address
from pytest_smalltown.kube import node_ready, server_time
from pytest_smalltown.lifecycle import find_node

pytestmark = pytest.mark.smalltown(nodes=2, fresh=True)

STEPPED = 1
HOUR = 3600
#: The kubelet renews its Lease every 10 s; emulation and a busy API server stretch that.
RENEWAL_TIMEOUT = 120


def test_a_node_an_hour_ahead_renews_its_lease_from_the_future_stays_ready_and_comes_back_on_time(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_progress: Callable[[str], None],
) -> None:  # fmt: skip
    coordination = k8s.CoordinationV1Api(smalltown_kube)
    node_name = find_node(smalltown_kube, node_address(STEPPED)).metadata.name

    def lease_ahead() -> float:
        """How far ahead of the API server's clock node 1's Lease was last renewed."""
        lease = coordination.read_namespaced_lease(node_name, "kube-node-lease", _request_timeout=30)
        assert lease.spec is not None and lease.spec.renew_time is not None, lease
        return float(lease.spec.renew_time.timestamp() - server_time(smalltown_kube))

    before = lease_ahead()
    with smalltown_cluster.clock_stepped(STEPPED, HOUR):
        wait_for(f"node {STEPPED}'s Lease to be renewed from an hour ahead",
                 lambda: lease_ahead() > HOUR - RENEWAL_TIMEOUT, RENEWAL_TIMEOUT)  # fmt: skip
        ahead = lease_ahead()
        assert node_ready(core.read_node(node_name)), "a Lease from the future is still a renewed Lease"
    wait_for(f"node {STEPPED}'s Lease to be renewed on time again",
             lambda: abs(lease_ahead()) < RENEWAL_TIMEOUT, RENEWAL_TIMEOUT)  # fmt: skip
    after = lease_ahead()
    assert node_ready(core.read_node(node_name))
    smalltown_progress(f"node {STEPPED}'s Lease renewed {before:+.0f}s from the API server's now, "
                       f"{ahead:+.0f}s with its clock an hour ahead, {after:+.0f}s after")
