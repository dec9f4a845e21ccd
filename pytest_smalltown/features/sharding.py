"""``--smalltown-shard`` (whole specs per CI shard) and ``--smalltown-durations`` (seconds per spec, which balance them)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from pathlib import Path

import pytest

from pytest_smalltown.features.session import is_xdist_worker
from pytest_smalltown.features.specs import group_label, spec_of
from pytest_smalltown.shard import Shard, ShardError, assign, estimate, load_durations, record_durations


class Sharding:
    """Deselects every test whose spec another shard runs; the collection report names this shard's specs."""

    def __init__(self, shard: Shard, durations_file: Path | None) -> None:
        self.shard = shard
        #: Recorded seconds per spec (``--smalltown-durations``), if any: they weigh the specs.
        self.durations_file = durations_file
        self.summary: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """After the specs are known: keep this shard's specs, weighed by recorded durations or estimated."""
        try:
            recorded = load_durations(self.durations_file)
        except ShardError as error:
            raise pytest.UsageError(str(error)) from None
        groups: dict[str, list[pytest.Item]] = {}
        for item in items:
            groups.setdefault(group_label(item), []).append(item)
        weights = {}
        for label, members in groups.items():
            spec = spec_of(members[0])
            weights[label] = recorded.get(label, estimate(spec.nodes if spec is not None else 0, len(members)))
        assignment = assign(weights, self.shard.total)
        kept = [item for item in items if assignment[group_label(item)] == self.shard.index]
        deselected = [item for item in items if assignment[group_label(item)] != self.shard.index]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = kept
        mine = sorted(label for label, index in assignment.items() if index == self.shard.index)
        share = sum(weights[label] for label in mine)
        self.summary = (
            f"smalltown shard {self.shard}: {', '.join(mine) or 'nothing'} ({len(kept)} tests, about {share:.0f}s "
            f"of {sum(weights.values()):.0f}s{' by recorded durations' if recorded else ' estimated'})"
        )

    def pytest_report_collectionfinish(self) -> str | None:
        return self.summary


class Durations:
    """Seconds spent per spec (the first setup includes its cluster's launch, the last teardown its close).

    Every process measures its own tests; xdist workers hand theirs to the
    controller (:mod:`.xdist`), which alone writes the durations file.
    """

    def __init__(self, durations_file: Path | None) -> None:
        self.durations_file = durations_file
        self.seconds: dict[str, float] = {}

    def add(self, measured: Mapping[str, float]) -> None:
        """Count ``measured`` seconds per group label in (a worker's, at its end)."""
        for label, seconds in measured.items():
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        self.add({group_label(item): report.duration})
        return report

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the durations file, once all clusters are closed (their close counts), on the controller only."""
        if self.durations_file is not None and self.seconds and not is_xdist_worker(session.config):
            record_durations(self.durations_file, self.seconds)
