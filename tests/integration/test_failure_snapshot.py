"""``--smalltown-snapshot-on-failure`` against a real 1-node cluster, and ``smalltown up --from``'s restore of it.

An inner pytest session runs a test that makes a namespace and a pod, then
fails. It launches its 1-node cluster the way a user's session does: restored
from the cache's snapshot when that is current, booted and saved when not
(CI keeps its cache between runs, and a changed node image leaves the old
snapshot behind until a session replaces it; ``require`` refused it there).
Either way the failed test's cluster is saved into its artifacts. This
session then restores that save through :func:`~pytest_smalltown.launcher.launch_saved`,
the function ``smalltown up --from DIR`` calls, and finds the namespace and
the very same pod, still running.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.paths import CACHE_ENV, cache_root
from pytest_smalltown.base.progress import stderr_progress
from pytest_smalltown.launcher import launch_saved
from pytest_smalltown.settings import resolve

INNER = r'''
import json, os
from pathlib import Path

from pytest_smalltown.kube import busybox_pod, create_namespace, wait_pod_phase
from kubernetes import client as k8s


def test_leaves_a_pod_and_fails(smalltown_kube):
    # create_namespace waits for the namespace's default ServiceAccount, which a cluster booted a moment
    # ago makes late: a pod created before it is refused (403).
    namespace = create_namespace(smalltown_kube, "frozen")
    k8s.CoreV1Api(smalltown_kube).create_namespaced_pod(namespace, busybox_pod("witness", ["sleep", "100000"]))
    pod = wait_pod_phase(smalltown_kube, namespace, "witness", ("Running",), timeout=180)
    witness = {"namespace": namespace, "uid": pod.metadata.uid, "node": pod.spec.node_name}
    Path(os.environ["WITNESS"]).write_text(json.dumps(witness))
    assert False, "the cluster as it is now is what a developer wants to see"
'''

#: The host's cache, read at import: pytester points $HOME at its own directory, where a cache would be empty
#: (the inner session would build every image anew).
CACHE = cache_root()

#: What the report section says: "<path> (<MiB> MiB, saved in <s>s); restore it with: ..."
SAVED = re.compile(r"^(?P<path>/\S+/snapshot) \((?P<mib>\d+) MiB, saved in (?P<seconds>[\d.]+)s\); restore it with: "
                   r"smalltown up --from (?P=path)$", re.MULTILINE)  # fmt: skip


def test_a_failed_tests_cluster_is_saved_and_restored_as_it_was(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(CACHE))
    witness = pytester.path / "witness.json"
    monkeypatch.setenv("WITNESS", str(witness))
    pytester.makepyfile(test_inner=INNER)
    artifacts = pytester.path / "artifacts"
    result = pytester.runpytest_subprocess(
        "--smalltown-snapshot-on-failure", f"--smalltown-artifacts={artifacts}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    found = SAVED.search(result.stdout.str())
    assert found, result.stdout.str()[-3000:]
    directory = Path(found["path"])
    print(f"saved on failure: {int(found['mib'])} MiB in {float(found['seconds']):.1f}s")
    assert directory.parent.parent.parent == artifacts and directory.parent.name.endswith("test_leaves_a_pod_and_fails")

    # Only the node image of the cache lies below its disk: not the cached snapshot, not the dead session's files.
    manifest = json.loads((directory / "manifest.json").read_text())
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(directory / "node0.qcow2")],
                                     check=True, capture_output=True, text=True).stdout)  # fmt: skip
    assert manifest["inputs"]["nodes.0.disks.0.path"].startswith(info["full-backing-filename"] + ":")

    started = time.monotonic()
    cluster = launch_saved(directory, resolve({}, {}), stderr_progress)
    try:
        print(f"restored from it in {time.monotonic() - started:.1f}s ({cluster.how})")
        core = k8s.CoreV1Api(cluster.kube)
        recorded = json.loads(witness.read_text())
        assert core.read_namespace(recorded["namespace"]).status.phase == "Active"
        pod = core.read_namespaced_pod("witness", recorded["namespace"])
        # The same pod, not a new one: same uid, still running on its node, its container never restarted.
        assert (pod.metadata.uid, pod.spec.node_name, pod.status.phase) == (recorded["uid"], recorded["node"], "Running")
        assert [c.restart_count for c in pod.status.container_statuses] == [0]
    finally:
        cluster.close()
