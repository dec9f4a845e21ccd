"""Which cluster each test needs, and the test order that lets tests of one spec share a cluster."""

from __future__ import annotations

import pytest

from pytest_smalltown.shard import NO_CLUSTER
from pytest_smalltown.spec import DEFAULT_SPEC, MARKER, ClusterSpec, MarkerError, spec_from_marker

#: Fixtures that need a live cluster; an item using any of them is planned into the pool.
CLUSTER_FIXTURES = frozenset({"smalltown_cluster", "smalltown_debug", "kube", "kubeconfig"})

SPEC_KEY = pytest.StashKey[ClusterSpec]()


def item_spec(item: pytest.Item) -> ClusterSpec | None:
    """The cluster spec ``item`` needs, or None if it needs no cluster.

    Raises :class:`pytest.UsageError` naming the test for a malformed marker.
    """
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        try:
            return spec_from_marker(marker.args, marker.kwargs)
        except MarkerError as error:
            raise pytest.UsageError(f"{item.nodeid}: {error}") from None
    if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return DEFAULT_SPEC
    return None


def spec_of(item: pytest.Item) -> ClusterSpec | None:
    """The spec :class:`SpecGrouping` found for ``item`` at collection (None: it needs no cluster)."""
    return item.stash.get(SPEC_KEY, None)


def group_label(item: pytest.Item) -> str:
    """The label a test's time is recorded and sharded under: its spec, or :data:`shard.NO_CLUSTER`."""
    spec = spec_of(item)
    return str(spec) if spec is not None else NO_CLUSTER


class SpecGrouping:
    """Reads every test's ``smalltown`` marker and orders the tests so that each spec's run together.

    Registered first of the features that act on the collection: the others
    (node capacity, shards, xdist, the pool's plan) read the spec it stashes.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """After other plugins reordered and deselected: validate markers, then group tests by spec.

        Tests without a cluster come first (they are quick), then one group
        per spec in order of first appearance; the order within a group stays.
        """
        specs: dict[int, ClusterSpec] = {}
        for index, item in enumerate(items):
            spec = item_spec(item)
            if spec is not None:
                specs[index] = spec
                item.stash[SPEC_KEY] = spec
        first_seen: dict[ClusterSpec, int] = {}
        for index, spec in specs.items():
            first_seen.setdefault(spec, index)

        def position(i: int) -> tuple[int, int, int]:
            return (1, first_seen[specs[i]], i) if i in specs else (0, 0, i)

        order = sorted(range(len(items)), key=position)
        items[:] = [items[i] for i in order]
