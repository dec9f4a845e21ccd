"""The fixtures' short names, ``kube`` and ``kubeconfig``, kept for tests written before the prefix.

They are exactly the names kubetest (another Kubernetes test plugin) gives
its own fixtures, so they are registered only when kubetest is not: with
both plugins installed, ``kube`` is kubetest's and this plugin's clients
are ``smalltown_kube`` and ``smalltown_kubeconfig``, as everywhere in its
own suite.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

#: The plugin whose fixture names these are (its pytest11 entry point name).
KUBETEST = "kubetest"


@pytest.fixture
def kube(smalltown_kube: ApiClient) -> ApiClient:
    """Alias of ``smalltown_kube``."""
    return smalltown_kube


@pytest.fixture
def kubeconfig(smalltown_kubeconfig: Path) -> Path:
    """Alias of ``smalltown_kubeconfig``."""
    return smalltown_kubeconfig


def register(config: pytest.Config) -> None:
    """Add the aliases unless kubetest, which owns these names, is installed."""
    if not config.pluginmanager.hasplugin(KUBETEST):
        config.pluginmanager.register(sys.modules[__name__], "smalltown-aliases")
