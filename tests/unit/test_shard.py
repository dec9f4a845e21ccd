"""Shard assignment and the durations file, without pytest in the loop."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_smalltown.shard import Shard, ShardError, assign, load_durations, parse_shard, record_durations


def test_parse_shard() -> None:
    assert parse_shard("2/4") == Shard(2, 4) and parse_shard(" 1/1 ") == Shard(1, 1)
    assert parse_shard("") is None
    for bad in ("0/3", "4/3", "1/0", "a/b", "3", "1/2/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.parametrize("seed", range(20))
def test_every_group_lands_in_exactly_one_shard_and_the_split_is_balanced(seed: int) -> None:
    rng = random.Random(seed)
    weights = {f"{n}-node+{i}": rng.uniform(1, 1000) for i in range(rng.randint(1, 12)) for n in (1,)}
    total = rng.randint(1, 5)
    assignment = assign(weights, total)
    assert set(assignment) == set(weights) and set(assignment.values()) <= set(range(1, total + 1))
    assert assign(dict(reversed(list(weights.items()))), total) == assignment  # order of input does not matter
    loads = [sum(w for label, w in weights.items() if assignment[label] == shard) for shard in range(1, total + 1)]
    # Greedy bound: no shard exceeds the average by more than the heaviest single group.
    assert max(loads) <= sum(weights.values()) / total + max(weights.values()) + 1e-9


def test_durations_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ci" / "durations.json"
    assert load_durations(path) == {}
    record_durations(path, {"2-node": 321.04})
    record_durations(path, {"1-node": 12.0})
    assert load_durations(path) == {"1-node": 12.0, "2-node": 321.0}
    assert json.loads(path.read_text())["version"] == 1
    path.write_text("{not json")
    with pytest.raises(ShardError, match="delete it"):
        load_durations(path)
    record_durations(path, {"1-node": 5.0})  # a broken file is replaced by this run's figures
    assert load_durations(path) == {"1-node": 5.0}
