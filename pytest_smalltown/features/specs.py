"""Which cluster each test needs, and the test order that lets tests of one spec share a cluster."""

from __future__ import annotations

import pytest

from pytest_smalltown.shard import NO_CLUSTER
from pytest_smalltown.spec import MARKER, ClusterRequest, ClusterSpec, MarkerError, request_from_marker

#: Fixtures that need a live cluster; an item using any of them is planned into the pool.
CLUSTER_FIXTURES = frozenset({"smalltown_cluster", "smalltown_debug", "kube", "kubeconfig"})

REQUEST_KEY = pytest.StashKey[ClusterRequest]()


def item_request(item: pytest.Item) -> ClusterRequest | None:
    """The cluster ``item`` asks for, or None if it needs no cluster.

    Raises :class:`pytest.UsageError` naming the test for a malformed marker.
    """
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        try:
            return request_from_marker(marker.args, marker.kwargs)
        except MarkerError as error:
            raise pytest.UsageError(f"{item.nodeid}: {error}") from None
    if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return ClusterRequest()
    return None


def request_of(item: pytest.Item) -> ClusterRequest | None:
    """The request :class:`SpecGrouping` found for ``item`` at collection (None: it needs no cluster)."""
    return item.stash.get(REQUEST_KEY, None)


def spec_of(item: pytest.Item) -> ClusterSpec | None:
    """The spec of the cluster ``item`` runs on (None: it needs no cluster)."""
    request = request_of(item)
    return request.spec if request is not None else None


def is_fresh(item: pytest.Item) -> bool:
    """Whether ``item`` gets a cluster of its own (``smalltown(fresh=True)``) rather than its spec's shared one."""
    request = request_of(item)
    return request is not None and request.fresh


def group_label(item: pytest.Item) -> str:
    """The label a test's time is recorded and sharded under: its spec, or :data:`shard.NO_CLUSTER`.

    A fresh test counts under its spec too: it restores the same snapshot, so
    a shard that runs the spec has it warm.
    """
    spec = spec_of(item)
    return str(spec) if spec is not None else NO_CLUSTER


def xdist_group(item: pytest.Item) -> str:
    """What pytest-xdist hands to one worker as a whole: a spec's shared tests together, a fresh test alone.

    A shared cluster is launched once per worker that runs its spec, so its
    tests stay together; a fresh test shares nothing, so any idle worker may
    take it, and fresh clusters of one spec then run side by side.
    """
    return item.nodeid if is_fresh(item) else group_label(item)


class SpecGrouping:
    """Reads every test's ``smalltown`` marker and orders the tests so that each spec's run together.

    Registered first of the features that act on the collection: the others
    (node capacity, shards, xdist, the pool's plan) read the request it stashes.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """After other plugins reordered and deselected: validate markers, then group tests by what they ask for.

        Tests without a cluster come first (they are quick), then one group
        per request in order of first appearance; the order within a group
        stays. A spec's fresh tests form a group of their own, so they never
        run in the middle of its shared tests, while the shared cluster is up.
        """
        requests: dict[int, ClusterRequest] = {}
        for index, item in enumerate(items):
            request = item_request(item)
            if request is not None:
                requests[index] = request
                item.stash[REQUEST_KEY] = request
        first_seen: dict[ClusterRequest, int] = {}
        for index, request in requests.items():
            first_seen.setdefault(request, index)

        def position(i: int) -> tuple[int, int, int]:
            return (1, first_seen[requests[i]], i) if i in requests else (0, 0, i)

        order = sorted(range(len(items)), key=position)
        items[:] = [items[i] for i in order]
