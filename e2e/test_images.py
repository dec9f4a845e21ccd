"""Bringing your own container image: built on the host, loaded into every node, run by pods."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.debug import ImageLoadError
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import node_address
from pytest_smalltown.kube import node_addresses, pod_logs, wait_pod_phase
from pytest_smalltown.userimages import image_with_files

pytestmark = pytest.mark.smalltown(nodes=2)


def pod_of(name: str, image: str, node: str) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            node_name=node,
            termination_grace_period_seconds=1,
            containers=[k8s.V1Container(name="main", image=image, image_pull_policy="Never")],
        ),
    )


def test_a_loaded_image_runs_on_every_node(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_namespace: str, tmp_path: Path,
    smalltown_progress: Callable[[str], None],
) -> None:
    token = secrets.token_hex(8)
    image = f"example.test/e2e/token:{token}"
    archive = image_with_files(image, {"srv/run.sh": f"echo token {token}\n".encode()}, tmp_path / "token.tar",
                               cmd=("sh", "/srv/run.sh"))  # fmt: skip
    started = time.monotonic()
    smalltown_cluster.load_image(archive)
    seconds = time.monotonic() - started
    mib = archive.stat().st_size / (1 << 20)
    smalltown_progress(f"LoadImage: {mib:.1f} MiB into {smalltown_cluster.spec.nodes} nodes in {seconds:.1f}s "
                       f"({mib * smalltown_cluster.spec.nodes / seconds:.1f} MiB/s, one node after the other)")
    for node in core.list_node().items:
        name = f"from-{node.metadata.name}"[:63]
        core.create_namespaced_pod(smalltown_namespace, pod_of(name, image, node.metadata.name))
        wait_pod_phase(smalltown_kube, smalltown_namespace, name, ("Succeeded",), timeout=180)
        assert pod_logs(smalltown_kube, smalltown_namespace, name).strip() == f"token {token}"


def test_a_corrupt_archive_is_refused_and_loads_nothing(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_namespace: str, tmp_path: Path
) -> None:
    image = f"example.test/e2e/broken:{secrets.token_hex(8)}"
    whole = image_with_files(image, {"srv/x": b"x" * 4096}, tmp_path / "whole.tar").read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(whole[: len(whole) // 2])  # cut inside a layer
    with pytest.raises(ImageLoadError) as refused:
        smalltown_cluster.load_image(broken, nodes=[0])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and str(broken) in str(refused.value)

    # Node index 0 is the node at node_address(0); the refused archive left no image there.
    [node0] = [n.metadata.name for n in core.list_node().items if node_addresses(n)["InternalIP"] == node_address(0)]
    core.create_namespaced_pod(smalltown_namespace, pod_of("never", image, node0))

    def reason() -> str | None:
        statuses = core.read_namespaced_pod("never", smalltown_namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting is not None and waiting.reason == "ErrImageNeverPull" else None

    assert wait_for("the kubelet to report the image missing", reason, timeout=120) == "ErrImageNeverPull"
