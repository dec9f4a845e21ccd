"""The pytest entry point: options, marker, fixtures, and the features registered as plugin objects.

Each feature (test grouping by spec, node capacity, shards and durations,
pytest-xdist, the cluster pool, keep-on-failure, failure evidence, snapshot
on failure) is a
plugin object of :mod:`pytest_smalltown.features` with its own state and
hooks, registered here at ``pytest_configure`` the way pytest registers its
own. This module holds no launch logic, so everything it does is also
available to the ``smalltown`` CLI.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_smalltown import aliases
from pytest_smalltown.features.capacity import NodeCapacity
from pytest_smalltown.features.clusters import CLUSTERS_KEY, Clusters
from pytest_smalltown.features.failures import NAMESPACE_KEY, FailureEvidence, item_failed
from pytest_smalltown.features.failure_snapshots import SnapshotOnFailure
from pytest_smalltown.features.keeping import KeepOnFailure
from pytest_smalltown.features.session import SESSION_KEY, SmalltownSession, resolve_settings, terminal_progress
from pytest_smalltown.features.sharding import Durations, Sharding
from pytest_smalltown.features.specs import SpecGrouping
from pytest_smalltown.features.xdist import XdistSpecs
from pytest_smalltown.parallel import auto_workers
from pytest_smalltown.pool import Launcher, SmalltownCluster
from pytest_smalltown.settings import OPTIONS, Settings
from pytest_smalltown.spec import MARKER_HELP, ClusterSpec

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from pytest_smalltown.debug import DebugClient


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smalltown", "Smalltown clusters in QEMU")
    for option in OPTIONS:
        # A yes/no setting also works as a bare flag (--smalltown-attach); =false still turns it off.
        flag_like = {"nargs": "?", "const": "true"} if option.metavar == "BOOL" else {}
        group.addoption(
            option.flag,
            dest=f"smalltown_{option.name}",
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}, ini {option.ini}; default {option.default!r})",
            **flag_like,
        )
        parser.addini(option.ini, help=option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the settings once, then register every feature as a plugin object (``smalltown-*``).

    The features that act on the collection run in the order registered
    here (all ``trylast``, so after other plugins reorder and deselect):
    specs first, the pool's plan last, so it counts only the tests that run.
    """
    config.addinivalue_line("markers", MARKER_HELP)
    aliases.register(config)
    session = SmalltownSession.from_config(config)
    config.stash[SESSION_KEY] = session
    settings = session.settings
    register = config.pluginmanager.register
    register(SpecGrouping(), "smalltown-specs")
    register(NodeCapacity(settings), "smalltown-capacity")
    if settings.shard is not None:
        register(Sharding(settings.shard, settings.durations), "smalltown-shard")
    durations = Durations(settings.durations)
    register(durations, "smalltown-durations")
    clusters = Clusters(session)
    config.stash[CLUSTERS_KEY] = clusters
    register(XdistSpecs(config, clusters, durations), "smalltown-xdist")
    register(clusters, "smalltown-clusters")
    if settings.keep_on_failure and not settings.attach:
        register(KeepOnFailure(clusters), "smalltown-keep-on-failure")
    register(FailureEvidence(clusters), "smalltown-evidence")
    if settings.snapshot_on_failure:
        register(SnapshotOnFailure(clusters), "smalltown-snapshot-on-failure")
    clusters.install(config)
    _stop_on_sigterm(config)


def _stop_on_sigterm(config: pytest.Config) -> None:
    """Turn SIGTERM into the same orderly shutdown as Ctrl-C: pytest then runs session teardown, closing every cluster."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: as many workers as the host can run clusters side by side, not one per core.

    Each worker boots its own clusters; a core per worker would oversubscribe
    the host many times over under emulation. Here and not in
    :mod:`.features.xdist`: pytest-xdist asks before ``pytest_configure``.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own override wins
    settings = resolve_settings(config)
    return auto_workers(settings.node_cpus, settings.node_memory)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def smalltown_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved ``--smalltown-*`` settings of this session."""
    return SmalltownSession.of(pytestconfig).settings


@pytest.fixture(scope="session")
def smalltown_progress(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print a ``[smalltown]`` progress line on the terminal even while pytest captures output.

    For test steps that take minutes (a conformance run, a large image load),
    so that a CI log shows they are alive.
    """
    return terminal_progress(pytestconfig)


@pytest.fixture(scope="session")
def smalltown_launcher(smalltown_settings: Settings, pytestconfig: pytest.Config) -> Launcher:
    """How clusters are launched; override this fixture to launch differently.

    The default boots the configured image (the reference cluster unless
    ``--smalltown-image`` says otherwise) with :func:`pytest_smalltown.launcher.launch_cluster`.
    """
    from pytest_smalltown.attached import attach
    from pytest_smalltown.launcher import launch_cluster

    if smalltown_settings.attach:
        return attach
    progress = terminal_progress(pytestconfig)

    def launch(spec: ClusterSpec) -> Any:
        return launch_cluster(spec, smalltown_settings, progress)

    return launch


@pytest.fixture
def smalltown_cluster(request: pytest.FixtureRequest, smalltown_launcher: Launcher) -> Iterator[SmalltownCluster]:
    """The live cluster for this test's ``smalltown`` marker (1 node without one)."""
    cluster = Clusters.of(request.config).acquire(request.node, smalltown_launcher)
    yield cluster  # type: ignore[misc]  # launchers hand out full clusters; the pool needs only a ClusterHandle


@pytest.fixture
def smalltown_debug(smalltown_cluster: SmalltownCluster) -> DebugClient:
    """A NodeDebugService client of node 0 (retries transient failures)."""
    return smalltown_cluster.debug


@pytest.fixture
def smalltown_kube(smalltown_cluster: SmalltownCluster) -> ApiClient:
    """A ``kubernetes.client.ApiClient`` with cluster-admin debug credentials (also as ``kube``)."""
    return smalltown_cluster.kube


@pytest.fixture
def smalltown_kubeconfig(smalltown_cluster: SmalltownCluster) -> Path:
    """Path of the cluster's debug kubeconfig (mode 0600), for tools like kubectl (also as ``kubeconfig``)."""
    return smalltown_cluster.kubeconfig_path


@pytest.fixture
def smalltown_namespace(
    request: pytest.FixtureRequest, smalltown_kube: ApiClient, smalltown_settings: Settings
) -> Iterator[str]:
    """A fresh namespace for this test, deleted afterwards.

    With ``--smalltown-keep-namespace`` a failed test's namespace is kept for
    inspection (its name is in the report).
    """
    from pytest_smalltown.kube import create_namespace, delete_namespace

    name = create_namespace(smalltown_kube, request.node.name)
    request.node.stash[NAMESPACE_KEY] = name
    yield name
    if smalltown_settings.keep_namespace and item_failed(request.node):
        request.node.add_report_section("teardown", "smalltown", f"kept namespace {name} for inspection")
        return
    delete_namespace(smalltown_kube, name)
