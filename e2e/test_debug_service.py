"""The node's debug service, as a test author uses it: component logs, conditions, follow mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import os
import stat
import subprocess

import grpc
import pytest

from pytest_smalltown.api import debug_pb2
from pytest_smalltown.contract import NodePort, node_debug_guest_port
from pytest_smalltown.debug import DebugClient
from pytest_smalltown.pool import SmalltownCluster
from pytest_smalltown.settings import Settings

pytestmark = pytest.mark.smalltown(nodes=1)


@pytest.mark.parametrize("component", ["containerd", "kube.kubelet", "kube.apiserver"])
def test_component_logs(smalltown_debug: DebugClient, component: str) -> None:
    lines = smalltown_debug.component_logs(component)
    assert len(lines) > 5, f"{component} has logged almost nothing: {lines}"
    tail = smalltown_debug.component_logs(component, tail=3)
    assert len(tail) == 3
    everything = smalltown_debug.component_logs(component)  # may have grown meanwhile
    assert all(line in everything for line in tail)


def test_kubelet_logs_mention_the_node(smalltown_debug: DebugClient, core: Any) -> None:
    (node,) = core.list_node().items
    assert any(node.metadata.name in line for line in smalltown_debug.component_logs("kube.kubelet"))


def test_unknown_component_is_not_found(smalltown_debug: DebugClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        smalltown_debug.component_logs("kube.nonexistent")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("condition", ["IPAssigned", "DataAvailable", "KubernetesReady"])
def test_conditions_hold_on_a_ready_node(smalltown_debug: DebugClient, condition: str) -> None:
    assert smalltown_debug.condition(condition) is True


def test_data_is_sealed_to_the_tpm_exactly_when_the_node_has_one_and_a_data_partition(
    smalltown_debug: DebugClient, smalltown_settings: Settings,
) -> None:  # fmt: skip
    """The reference UEFI disk with ``--smalltown-tpm``: LUKS2, key sealed to the node's swtpm; otherwise not."""
    sealed = smalltown_settings.tpm and smalltown_settings.image != "reference"
    assert smalltown_debug.condition("DataSealed") is sealed
    agent_log = "\n".join(smalltown_debug.component_logs("agent"))
    if sealed:
        assert "sealed to this TPM (first boot" in agent_log or "unlocked with the key sealed to this TPM" in agent_log
    elif smalltown_settings.image == "reference":
        assert "no data partition: data directory /var/lib/smalltown is on the root file system" in agent_log
    else:
        assert "NOT encrypted" in agent_log, "a data partition without a TPM is plain, and the node says so"


def test_unknown_condition_is_not_found(smalltown_debug: DebugClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        smalltown_debug.condition("NoSuchCondition")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_follow_mode_sees_a_new_log_line(
    smalltown_debug: DebugClient, run_pod: Callable[..., Any], smalltown_namespace: str
) -> None:
    """Creating a pod makes the kubelet log its name; a follower sees it without polling."""
    run_pod("followed", ["true"], phase="Succeeded")
    line = smalltown_debug.wait_for_log("kube.kubelet", f"{smalltown_namespace}/followed", timeout=60)
    assert "followed" in line.text


def test_a_caller_without_the_clusters_token_is_refused_on_every_forward(smalltown_cluster: SmalltownCluster) -> None:
    """What another local user who can reach the forwarded 127.0.0.1 ports, but not read the token, gets."""
    forwards = [int(NodePort.DEBUG_SERVICE), *(node_debug_guest_port(i) for i in range(smalltown_cluster.spec.nodes))]
    for guest_port in forwards:
        stranger = DebugClient(smalltown_cluster.ports.dial_grpc(guest_port), retry_for=30)
        try:
            # wait_for_ready: a first connection through the switch that is slow to complete its
            # handshake (seen once, under UEFI+TPM in CI) is tried again, not taken for the answer.
            for call in (lambda: stranger.stub.GetGoldenTicket(debug_pb2.GetGoldenTicketRequest(), timeout=60,
                                                               wait_for_ready=True),
                         lambda: stranger.debug_kubeconfig(groups=["system:masters"])):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (guest_port, refused.value)
        finally:
            stranger.close()


def test_the_token_is_readable_by_the_clusters_owner_only(smalltown_cluster: SmalltownCluster) -> None:
    path = smalltown_cluster.debug_token_path
    assert path is not None, "a reference cluster always has a token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()
    if os.geteuid() == 0:  # as root (CI), ask another uid to read it, as a stranger on the host would
        attempt = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, text=True)
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, attempt
