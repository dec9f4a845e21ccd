"""kubectl, our build of it, against the cluster: what users type before they write a test."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.images.gobuild import build_program
from pytest_smalltown.kube import exec_in_pod

pytestmark = pytest.mark.smalltown(nodes=1)


def test_kubectl_cp_into_and_out_of_a_pod(
    run_pod: Callable[..., Any], smalltown_cluster: Any, smalltown_kube: Any, smalltown_namespace: str, tmp_path: Path
) -> None:
    """``kubectl cp`` runs ``tar`` inside the container, in both directions."""
    run_pod("files", ["sleep", "3600"])
    kubectl = [str(build_program("kube")), "kubectl", f"--kubeconfig={smalltown_cluster.kubeconfig_path}",
               f"--namespace={smalltown_namespace}"]  # fmt: skip
    payload = bytes(range(256)) * 64
    (tmp_path / "in.bin").write_bytes(payload)

    into = subprocess.run([*kubectl, "cp", str(tmp_path / "in.bin"), "files:/tmp/in.bin"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert into.returncode == 0, into.stderr
    size = exec_in_pod(smalltown_kube, smalltown_namespace, "files", ["wc", "-c", "/tmp/in.bin"])
    assert size.stdout.split()[0] == str(len(payload)), size

    out = subprocess.run([*kubectl, "cp", "files:/tmp/in.bin", str(tmp_path / "out.bin")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.bin").read_bytes() == payload
