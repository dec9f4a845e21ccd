"""The session's clusters: planned at collection, handed to tests, watched while a test runs, closed at the end."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_smalltown.features.session import SmalltownSession
from pytest_smalltown.features.specs import SPEC_KEY, spec_of
from pytest_smalltown.pool import ClusterHandle, ClusterPool, Launcher
from pytest_smalltown.spec import DEFAULT_SPEC, ClusterSpec
from pytest_smalltown.watch import DeathWatch

CLUSTERS_KEY = pytest.StashKey["Clusters"]()


class Clusters:
    """The cluster pool of one pytest process, and the hooks that keep it in step with the tests.

    Registered after the features that deselect tests at collection, so the
    pool plans only the tests that will run.
    """

    def __init__(self, session: SmalltownSession) -> None:
        self.session = session
        self.pool = ClusterPool()
        self.watch = DeathWatch()
        #: Specs whose launch timings went into a JUnit report already (once per spec).
        self.reported: set[ClusterSpec] = set()
        #: Summary lines from pytest-xdist workers, each prefixed with its id.
        self.worker_summary_lines: list[str] = []

    @staticmethod
    def of(config: pytest.Config) -> Clusters:
        return config.stash[CLUSTERS_KEY]

    def install(self, config: pytest.Config) -> None:
        """Take over the death watch's signal for this session (given back at its end)."""
        self.watch.install()
        config.add_cleanup(self.watch.uninstall)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Last: one planned use per remaining test, so each cluster closes after its last test."""
        self.pool.plan(spec for item in items if (spec := spec_of(item)) is not None)

    def acquire(self, item: pytest.Item, launcher: Launcher) -> ClusterHandle:
        """The live cluster of ``item``'s spec (launched now if need be); JUnit properties say which and how long.

        An item that asked for a cluster at run time (``getfixturevalue``) gets the default spec, planned now.
        """
        spec = spec_of(item)
        if spec is None:
            spec = DEFAULT_SPEC
            item.stash[SPEC_KEY] = spec
            self.pool.plan([spec])
        cluster = self.pool.acquire(spec, launcher)
        # For CI dashboards (JUnit <property>): which cluster, and on the test that booted it, where the time went.
        item.user_properties.append(("smalltown_spec", str(spec)))
        record = self.pool.records.get(spec)
        if record is not None and record.launch_seconds is not None and spec not in self.reported:
            self.reported.add(spec)
            item.user_properties.append(("smalltown_launch_seconds", f"{record.launch_seconds:.1f}"))
            item.user_properties += [(f"smalltown_phase_{name}", f"{sec:.1f}") for name, sec in record.phases.items()]
        return cluster

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """Run the test body watched: if its cluster dies meanwhile, the test fails at once (see :mod:`watch`)."""
        spec = spec_of(item)
        cluster = self.pool.live(spec) if spec is not None else None
        if cluster is None:
            return (yield)
        with self.watch.watching(cluster):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        """After the test's own teardown: one use of its cluster is over (the last one closes it)."""
        try:
            return (yield)
        finally:
            spec = spec_of(item)
            if spec is not None:
                self.pool.release(spec)

    def pytest_sessionfinish(self) -> None:
        """Close every cluster still running (kept ones too, once :mod:`.keeping` stopped waiting)."""
        self.pool.close_all()

    def summary_lines(self) -> list[str]:
        """One line per spec of this process: how its cluster came up, phase by phase, or why it failed."""
        return [record.summary_line() for _, record in sorted(self.pool.records.items())]

    def pytest_report_header(self) -> list[str]:
        """What every run's log should say first: which image, which accelerator, which cache."""
        from pytest_smalltown.base.paths import cache_root
        from pytest_smalltown.launch.accel import known_accel

        settings = self.session.settings
        if settings.attach:
            return ["smalltown: attached to the cluster 'smalltown up' keeps (smalltown status)"]
        if settings.accel != "auto":
            accel = f"{settings.accel} (chosen)"
        else:
            verdict = known_accel(settings.accel, settings.qemu)
            # The probe's reason can end in a console tail; its first clause says enough here.
            reason = verdict.reason.split(";")[0] if verdict else ""
            accel = f"{verdict.accel} (probed: {reason})" if verdict else "auto (probed at the first launch)"
        return [f"smalltown: image {settings.image}, accelerator {accel}, cache {cache_root()}"]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """How long each cluster took, phase by phase (with every xdist worker's)."""
        lines = self.summary_lines() + self.worker_summary_lines
        if lines:
            terminalreporter.section("smalltown clusters")
            for line in lines:
                terminalreporter.write_line(line)

