"""Splitting a suite across CI jobs by cluster spec, balanced by recorded durations.

A CI matrix of N jobs runs ``pytest --smalltown-shard=I/N`` in job I. Every
job collects the same tests and computes the same assignment, so no job
needs to talk to another: each keeps the specs assigned to its shard and
deselects the rest. A spec's tests always stay together, because the
expensive part of a spec is booting its cluster, and splitting a spec would
boot it in two jobs.

The assignment balances shards by how long each spec took in earlier runs:
``--smalltown-durations=FILE`` records, at the end of a session, each spec's
launch plus test time into a small JSON file that the user commits (or
caches between CI runs). Specs missing from the file are estimated from
their node count. The balancing is the classic longest-processing-time
greedy: heaviest spec first, each onto the least loaded shard; it is within
a third of the best possible makespan and, more to the point here,
deterministic.

Nothing here depends on pytest; the plugin only wires it in.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.errors import SmalltownError

#: Label of the group of tests that need no cluster (they are quick; they go
#: wherever the balance puts them, all together).
NO_CLUSTER = "no-cluster"

#: Estimates for a spec that the durations file does not know yet: about what
#: one node's boot to Ready took under TCG on the 2-core machines this was
#: written on (1-node 150-190 s, 2-node 320-360 s), plus a typical test.
ESTIMATED_BOOT_SECONDS_PER_NODE = 180.0
ESTIMATED_SECONDS_PER_TEST = 30.0
ESTIMATED_SECONDS_PER_PLAIN_TEST = 1.0

DURATIONS_VERSION = 1


class ShardError(SmalltownError, ValueError):
    """A shard or durations setting that cannot work; the message says what to do."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``total``."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(value: str) -> Shard | None:
    """``"I/N"`` -> :class:`Shard`; ``""`` -> None (no sharding)."""
    if not value.strip():
        return None
    index_text, slash, total_text = value.strip().partition("/")
    try:
        if not slash:
            raise ValueError
        shard = Shard(int(index_text), int(total_text))
    except ValueError:
        raise ValueError("must be I/N, e.g. 2/4 for the second of four CI jobs") from None
    if shard.total < 1 or not 1 <= shard.index <= shard.total:
        raise ValueError(f"needs 1 <= I <= N, got {shard}")
    return shard


def load_durations(path: Path | None) -> dict[str, float]:
    """Seconds per group label from a durations file; {} if there is none yet."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        groups = data["groups"]
        return {str(label): float(seconds) for label, seconds in groups.items() if math.isfinite(float(seconds))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ShardError(
            f"the durations file {path} is unreadable ({error!r}); delete it (the next run with "
            "--smalltown-durations writes a new one) or restore it from version control"
        ) from None


def record_durations(path: Path, measured: Mapping[str, float]) -> None:
    """Merge ``measured`` into the durations file at ``path`` (atomically; other groups are kept).

    Each CI shard measures only its own specs; merging lets the shards'
    files be combined one after another into the complete picture.
    """
    try:
        known = load_durations(path)
    except ShardError:
        known = {}  # a broken file is replaced, not a reason to lose this run's figures
    known.update({label: round(seconds, 1) for label, seconds in measured.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": DURATIONS_VERSION, "groups": dict(sorted(known.items()))}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def estimate(nodes: int, tests: int) -> float:
    """Seconds a group of ``tests`` tests is expected to take; ``nodes=0`` for tests without a cluster."""
    if nodes == 0:
        return ESTIMATED_SECONDS_PER_PLAIN_TEST * tests
    return ESTIMATED_BOOT_SECONDS_PER_NODE * nodes + ESTIMATED_SECONDS_PER_TEST * tests


def assign(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Group label -> shard index (1-based), balancing the summed weights.

    Deterministic for the same input: heaviest first, ties broken by label;
    each group goes to the least loaded shard, ties to the lowest index.
    """
    loads = [0.0] * total
    assignment: dict[str, int] = {}
    for label, weight in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
        lightest = min(range(total), key=lambda shard: (loads[shard], shard))
        loads[lightest] += weight
        assignment[label] = lightest + 1
    return assignment
