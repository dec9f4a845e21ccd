"""The kept cluster seen from a session attached to it (the VMs belong to another process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_smalltown.kept import AttachedCluster
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.vmstate import Monitor
from pytest_smalltown.spec import ClusterSpec

QEMU = "qemu-system-x86_64"


@pytest.fixture
def kept_vms(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], Path]]]:
    """Two QEMU processes with QMP sockets, as a kept cluster's owner runs its node VMs (no guest in them)."""
    vms = []
    for index in range(2):
        socket = tmp_path / f"node{index}.qmp"
        argv = [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-qmp", f"unix:{socket},server=on,wait=off"]
        vms.append((subprocess.Popen(argv), socket))
    deadline = time.monotonic() + 30
    while not all(socket.exists() for _, socket in vms) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield vms
    for process, _ in vms:
        process.kill()
        process.wait()


@pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"needs {QEMU}")
def test_stopping_a_node_of_an_attached_kept_cluster_stops_that_node_only(
    kept_vms: list[tuple[subprocess.Popen[bytes], Path]], tmp_path: Path
) -> None:
    """The owner takes a node VM whose QEMU exited for a crash and closes the whole cluster; so QEMU must run on."""
    kept = AttachedCluster(spec=ClusterSpec(2), debug=None, kube=None, kubeconfig_path=tmp_path / "kubeconfig",
                           ports=PortMap({}), owner_pid=os.getpid(), console_paths={},
                           qmp_sockets=[socket for _, socket in kept_vms])  # fmt: skip
    kept.stop_node(1)
    time.sleep(0.5)  # a QEMU told to quit is gone by now
    assert [process.poll() for process, _ in kept_vms] == [None, None], "every VM still runs, as the owner checks"
    states = []
    for index, (_, socket) in enumerate(kept_vms):
        monitor = Monitor.at(socket, f"node{index}")
        states.append(monitor.cmd("query-status")["running"])
        monitor.close()
    assert states == [True, False], "node 1 runs no more, node 0 runs on"
