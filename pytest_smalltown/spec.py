"""What a test asks for: the ``smalltown`` marker and the cluster spec it names.

Marker arguments are validated when tests are collected, so a typo fails the
run before any VM is started and the error names the test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.contract import CONSENSUS_SIZE, check_node_count
from pytest_smalltown.images.preload import PRELOAD_SETS

MARKER = "smalltown"
MARKER_HELP = (
    "smalltown(nodes=1, preload=(), fresh=False): run this test against a Smalltown cluster of `nodes` nodes "
    "(default 1) whose nodes also carry the named image sets (e.g. preload='conformance'). "
    "Tests with the same spec share one cluster, launched once; with fresh=True the test gets a cluster "
    "of its own (restored from the spec's snapshot), closed right after it."
)


class MarkerError(SmalltownError, ValueError):
    """A ``smalltown`` marker has arguments that do not describe a cluster."""


@dataclass(frozen=True, order=True)
class ClusterSpec:
    """The identity of a cluster and of its snapshot: tests with equal specs share one cluster (unless fresh)."""

    nodes: int = 1
    #: Image sets (``images/preload.py``) imported into every node before it is Ready.
    preload: tuple[str, ...] = ()

    @property
    def control_plane_nodes(self) -> int:
        """How many nodes (0, 1, ...) run etcd and the control plane: 3 in a cluster of 3 or more, else 1.

        Three members survive the loss of any one. Two would be worse than
        one: a two-member etcd halts when either node does (a reboot of node
        1 would stop the API), so a 2-node cluster keeps node 1 a worker.
        """
        return CONSENSUS_SIZE if self.nodes >= CONSENSUS_SIZE else 1

    def __str__(self) -> str:
        return "+".join([f"{self.nodes}-node", *self.preload])

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """The spec whose :meth:`__str__` is ``text`` (as a snapshot's inputs record it); ValueError if none is."""
        nodes, _, preload = text.partition("+")
        count = nodes.removesuffix("-node")
        if not nodes.endswith("-node") or not count.isdigit():
            raise ValueError(f"{text!r} is not a cluster spec like '2-node' or '2-node+conformance'")
        try:
            spec = cls(check_node_count(int(count), "its node count"), preload_sets(preload.split("+") if preload else ()))
        except MarkerError as error:
            raise ValueError(f"{text!r}: {error}") from None
        if str(spec) != text:
            raise ValueError(f"{text!r} is not a cluster spec as smalltown writes one (that would be {spec})")
        return spec


DEFAULT_SPEC = ClusterSpec()


@dataclass(frozen=True)
class ClusterRequest:
    """What one test's marker asks for: a cluster of :attr:`spec`, shared or its own.

    ``fresh`` is how a test gets the cluster, not what the cluster is: it
    stays out of :class:`ClusterSpec`, so a fresh test restores the same
    snapshot as the shared tests of its spec (the snapshot key is made from
    the spec, and a new field there would make every saved cluster miss).
    """

    spec: ClusterSpec = DEFAULT_SPEC
    #: The test gets a cluster launched for it alone, closed after its teardown, instead of the spec's shared one.
    fresh: bool = False


def request_from_marker(args: Sequence[Any], kwargs: Mapping[str, Any]) -> ClusterRequest:
    """Turn ``@pytest.mark.smalltown(...)`` arguments into a :class:`ClusterRequest`."""
    if args:
        raise MarkerError(f"smalltown marker takes keyword arguments only, e.g. smalltown(nodes=2); got {args!r}")
    unknown = sorted(set(kwargs) - {"nodes", "preload", "fresh"})
    if unknown:
        raise MarkerError(
            f"smalltown marker got unknown keyword(s) {', '.join(unknown)}; "
            "it takes nodes=N, preload=NAME(S) and fresh=True/False"
        )
    nodes = kwargs.get("nodes", DEFAULT_SPEC.nodes)
    try:
        check_node_count(nodes, f"smalltown(nodes={nodes!r})")
    except ValueError as error:
        raise MarkerError(str(error)) from None
    fresh = kwargs.get("fresh", False)
    if not isinstance(fresh, bool):
        # Not truthiness: fresh="no" would silently launch a cluster per test.
        raise MarkerError(f"smalltown(fresh=...) takes True or False, got {fresh!r}")
    return ClusterRequest(ClusterSpec(nodes=nodes, preload=preload_sets(kwargs.get("preload", ()))), fresh)


def preload_sets(value: object) -> tuple[str, ...]:
    """Normalise ``preload=`` (one name or a sequence of names) to a sorted, duplicate-free tuple."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise MarkerError(f"smalltown(preload=...) takes a set name or a list of them, got {value!r}")
    unknown = sorted(set(names) - set(PRELOAD_SETS))
    if unknown:
        raise MarkerError(
            f"smalltown(preload=...) names unknown image set(s) {', '.join(unknown)}; known: {', '.join(PRELOAD_SETS)}"
        )
    return tuple(sorted(set(names)))
