"""Project-level pytest configuration for the e2e suite.

The plugin itself is loaded through its ``pytest11`` entry point (installing
the package is enough); this file only adds conveniences for the test
modules in ``e2e/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.kube import busybox_pod, wait_pod_phase


@pytest.fixture
def core(smalltown_kube: Any) -> k8s.CoreV1Api:
    """CoreV1Api on the cluster's debug credentials."""
    return k8s.CoreV1Api(smalltown_kube)


@pytest.fixture
def apps(smalltown_kube: Any) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(smalltown_kube)


@pytest.fixture
def run_pod(smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_namespace: str) -> Callable[..., Any]:
    """Create a test-image pod in the test's namespace and wait for a phase.

    ``run_pod("name", ["sh", "-c", "..."], phase="Succeeded", node_name=None, timeout=120)``
    returns the pod once it reached ``phase``.
    """

    def run(name: str, command: list[str], phase: str = "Running", timeout: float = 180, **kwargs: Any) -> Any:
        core.create_namespaced_pod(smalltown_namespace, busybox_pod(name, command, **kwargs), _request_timeout=30)
        return wait_pod_phase(smalltown_kube, smalltown_namespace, name, (phase,), timeout)

    return run
