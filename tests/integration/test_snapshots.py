"""Snapshots against real VMs: a 1-node reference cluster saved once, then restored, shared, refused.

Runs in its own snapshot directory, so the user's saved clusters are neither
used nor touched. The order matters and is the module's order: the first
test boots and saves, the next ones restore, the last one breaks the
snapshot and boots cold again. ``--smalltown-snapshots=off`` against a
real VM is proven by ``test_new_user.py``, whose cold boot runs with it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client as k8s

from pytest_smalltown import snapshots
from pytest_smalltown.base.progress import stderr_progress
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.cluster import Cluster
from pytest_smalltown.kube import busybox_pod, node_addresses, node_ready_since, server_time, wait_pod_phase
from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.node.pki import BACKDATE
from pytest_smalltown.settings import Settings, resolve
from pytest_smalltown.snapshots import SnapshotWarning
from pytest_smalltown.spec import ClusterSpec

SPEC = ClusterSpec(1)
#: How long the saved cluster is left alone before it is restored: a guest clock
#: that continued from the save instant would lag the host's by at least this.
GAP_SECONDS = 20
BACKDATE_SECONDS = BACKDATE.total_seconds()  # the node agent's certificates start this long before issue


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("snapshots")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(snapshots.SNAPSHOT_DIR_ENV, str(root))
        yield root


def settings(**options: str) -> Settings:
    return resolve(options, {}, environ={})


def launch(**options: str) -> Cluster:
    return launch_cluster(SPEC, settings(**options), stderr_progress)


@pytest.fixture(scope="module")
def saved(snapshot_dir: Path) -> dict[str, Any]:
    """Boot a cluster, which saves itself once Ready; close it and wait a while. Returns its facts."""
    cluster = launch()
    try:
        assert cluster.how.startswith("booted, saved as a snapshot"), cluster.how
        names = sorted(n.metadata.name for n in k8s.CoreV1Api(cluster.kube).list_node().items)
    finally:
        cluster.close()
    time.sleep(GAP_SECONDS)
    [directory] = [p for p in snapshot_dir.iterdir() if p.name.startswith("snapshot-1-node-")]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert sorted(manifest["facts"]["nodes"]) == names
    return {"directory": directory, "facts": manifest["facts"], "names": names}


def client_certificate(kubeconfig_yaml: str) -> x509.Certificate:
    config = yaml.safe_load(kubeconfig_yaml)
    data = config["users"][0]["user"]["client-certificate-data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data))


def test_a_restored_cluster_is_the_saved_one_on_the_hosts_clock(saved: dict[str, Any]) -> None:
    facts = saved["facts"]
    cluster = launch()
    try:
        assert cluster.how.startswith("restored from snapshot-1-node-"), cluster.how
        assert cluster.phase_seconds.keys() >= {"restore", "clock"}
        core = k8s.CoreV1Api(cluster.kube)
        nodes = core.list_node().items
        # Same node names and addresses, and Ready since before the save: no NotReady flap.
        assert {n.metadata.name: node_addresses(n).get("InternalIP") for n in nodes} == {
            name: node["address"] for name, node in facts["nodes"].items()
        }
        for node in nodes:
            assert node_ready_since(node) == facts["nodes"][node.metadata.name]["ready_since"]

        # The guests stood still for GAP_SECONDS and more while saved; their wall clocks were
        # stepped to the host's now (node/clock.py), so host and cluster agree on the time ...
        assert abs(server_time(cluster.kube) - time.time()) <= 3
        # ... and what the cluster issues from now on carries that time: fresh debug credentials.
        certificate = client_certificate(cluster.debug.debug_kubeconfig())
        issued = certificate.not_valid_before_utc.timestamp() + BACKDATE_SECONDS
        assert facts["cluster_time"] + GAP_SECONDS <= issued <= time.time() + 3

        # Stepping only the wall clock expires nothing: the node lease is renewed at the host's
        # time, the node stays Ready throughout (same transition time as at the save).
        leases = k8s.CoordinationV1Api(cluster.kube)
        name = saved["names"][0]
        since = time.time()
        renewed = wait_for(
            "the node lease renewed after the restore",
            lambda: (lease := leases.read_namespaced_lease(name, "kube-node-lease")).spec.renew_time.timestamp()
            >= since - 1 and lease,
            timeout=60,
        )
        assert renewed.spec.renew_time.timestamp() <= time.time() + 3
        assert node_ready_since(core.read_node(name)) == facts["nodes"][name]["ready_since"]

        # No system component restarted: none exited on a console since the restore, no pod restarted.
        for cluster_node in cluster.nodes:
            console = cluster_node.vm.console_tail(2000)
            marker = next(i for i, line in enumerate(console) if "restored from a snapshot" in line)
            assert not [line for line in console[marker:] if "exited with code" in line]
        restarts = {
            f"{p.metadata.namespace}/{p.metadata.name}": sum(c.restart_count for c in p.status.container_statuses or [])
            for p in core.list_pod_for_all_namespaces().items
        }
        assert {pod: restarts.get(pod) for pod in facts["pod_restarts"]} == facts["pod_restarts"]
    finally:
        cluster.close()


def test_a_restored_cluster_runs_pods(saved: dict[str, Any]) -> None:
    cluster = launch()
    try:
        assert cluster.how.startswith("restored"), cluster.how
        core = k8s.CoreV1Api(cluster.kube)
        core.create_namespaced_pod("default", busybox_pod("after-restore", ["echo", "ran after a restore"]))
        wait_pod_phase(cluster.kube, "default", "after-restore", ("Succeeded",), timeout=120)
        assert core.read_namespaced_pod_log("after-restore", "default").strip() == "ran after a restore"
    finally:
        cluster.close()


#: One session in a child process: restore, list the nodes through the forwarded port, close.
SESSION = """
import json, sys
from kubernetes import client as k8s
from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.settings import resolve
from pytest_smalltown.spec import ClusterSpec
cluster = launch_cluster(ClusterSpec(1), resolve({}, {}, environ={}), lambda message: None)
try:
    names = [n.metadata.name for n in k8s.CoreV1Api(cluster.kube).list_node().items]
    print(json.dumps({"how": cluster.how, "api_port": cluster.ports[6443], "nodes": names}))
finally:
    cluster.close()
"""


def test_two_sessions_restore_one_snapshot_at_once(saved: dict[str, Any]) -> None:
    # Separate processes, as two pytest sessions are (a VM dies with the thread that
    # started it: PR_SET_PDEATHSIG follows the parent thread, not the process).
    sessions = [
        subprocess.Popen([sys.executable, "-c", SESSION], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for session in sessions:
        out, err = session.communicate(timeout=600)
        assert session.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["how"].startswith("restored") for r in results), results
    assert results[0]["api_port"] != results[1]["api_port"]
    assert all(r["nodes"] == saved["names"] for r in results), results


def test_a_corrupt_snapshot_is_refused_with_a_warning_and_replaced(saved: dict[str, Any]) -> None:
    state = saved["directory"] / "node0.state.zst"
    data = bytearray(state.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)  # same size: only the checksum can tell
    state.write_bytes(bytes(data))
    with pytest.warns(SnapshotWarning, match="corrupt"):
        cluster = launch()
    try:
        assert cluster.how.startswith("booted, saved as a snapshot"), cluster.how
    finally:
        cluster.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SnapshotWarning)
        again = launch()
    try:
        assert again.how.startswith("restored"), again.how
    finally:
        again.close()
