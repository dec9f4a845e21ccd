"""The session's clusters: planned at collection, handed to tests, watched while a test runs, closed at the end."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_smalltown.features.session import SmalltownSession
from pytest_smalltown.features.specs import REQUEST_KEY, is_fresh, request_of, spec_of
from pytest_smalltown.pool import ClusterHandle, ClusterPool, Launcher, PoolRecord
from pytest_smalltown.spec import ClusterRequest, ClusterSpec
from pytest_smalltown.watch import DeathWatch

CLUSTERS_KEY = pytest.StashKey["Clusters"]()
#: The cluster launched for a fresh test alone, from its setup until its teardown is over.
OWN_CLUSTER_KEY = pytest.StashKey[ClusterHandle]()


class Clusters:
    """The cluster pool of one pytest process, and the hooks that keep it in step with the tests.

    Registered after the features that deselect tests at collection, so the
    pool plans only the tests that will run.
    """

    def __init__(self, session: SmalltownSession) -> None:
        self.session = session
        self.pool = ClusterPool()
        self.watch = DeathWatch()
        #: Specs whose shared cluster's launch timings went into a JUnit report already (once per spec).
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
        """Last: one planned use per remaining shared test, so each shared cluster closes after its last one.

        Fresh tests are no use of their spec's shared cluster: counting them
        would keep it up, idle, while they run clusters of their own.
        """
        fresh = [item for item in items if is_fresh(item)]
        if fresh and self.session.settings.attach:
            raise pytest.UsageError(
                f"{fresh[0].nodeid}: smalltown(fresh=True) needs a cluster of its own, but --smalltown-attach runs "
                f"every test on the kept cluster ({len(fresh)} fresh test(s) selected); run fresh tests without "
                "--smalltown-attach, or leave them out (-k, --deselect) while you debug on the kept cluster"
            )
        self.pool.plan(spec for item in items if (spec := spec_of(item)) is not None and not is_fresh(item))

    def acquire(self, item: pytest.Item, launcher: Launcher) -> ClusterHandle:
        """The cluster ``item`` runs on, launched now if need be; JUnit properties say which and how long.

        A fresh test gets a new cluster of its own; any other test its spec's
        shared one. An item that asked for a cluster at run time
        (``getfixturevalue``) gets the default spec's shared cluster, planned now.
        """
        request = request_of(item)
        if request is None:
            request = ClusterRequest()
            item.stash[REQUEST_KEY] = request
            self.pool.plan([request.spec])
        spec = request.spec
        if request.fresh:
            cluster = self.pool.launch_own(spec, launcher, item.nodeid)
            item.stash[OWN_CLUSTER_KEY] = cluster
            self._report(item, self.pool.own_records[-1], launched=True)
            return cluster
        cluster = self.pool.acquire(spec, launcher)
        self._report(item, self.pool.records[spec], launched=spec not in self.reported)
        self.reported.add(spec)
        return cluster

    @staticmethod
    def _report(item: pytest.Item, record: PoolRecord, launched: bool) -> None:
        """For CI dashboards (JUnit ``<property>``): which cluster, and on the test that launched it, where the time went."""
        item.user_properties.append(("smalltown_spec", str(record.spec)))
        if launched and record.launch_seconds is not None:
            item.user_properties.append(("smalltown_launch_seconds", f"{record.launch_seconds:.1f}"))
            item.user_properties += [(f"smalltown_phase_{name}", f"{sec:.1f}") for name, sec in record.phases.items()]

    def cluster_of(self, item: pytest.Item) -> ClusterHandle | None:
        """The running cluster ``item`` uses: its own if fresh, else its spec's shared one (None: none is running).

        The one answer to "which cluster does this test run on" for the death
        watch and the failure evidence.
        """
        if is_fresh(item):
            return item.stash.get(OWN_CLUSTER_KEY, None)
        spec = spec_of(item)
        return self.pool.live(spec) if spec is not None else None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """Run the test body watched: if its cluster dies meanwhile, the test fails at once (see :mod:`watch`)."""
        cluster = self.cluster_of(item)
        if cluster is None:
            return (yield)
        with self.watch.watching(cluster):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        """After the test's own teardown: close a fresh test's cluster, or count one use of the shared one as over.

        The last use of a shared cluster closes it. A fresh cluster that
        ``--smalltown-keep-on-failure`` held back stays up until the session's end.
        """
        try:
            return (yield)
        finally:
            if is_fresh(item):
                own = item.stash.get(OWN_CLUSTER_KEY, None)
                if own is not None:
                    del item.stash[OWN_CLUSTER_KEY]
                    if not self.pool.is_kept(own):
                        self.pool.close_own(own)
            elif (spec := spec_of(item)) is not None:
                self.pool.release(spec)

    def pytest_sessionfinish(self) -> None:
        """Close every cluster still running (kept ones too, once :mod:`.keeping` stopped waiting)."""
        self.pool.close_all()

    def summary_lines(self) -> list[str]:
        """One line per shared cluster of this process, then per fresh one: how it came up, phase by phase, or why it failed."""
        records = [record for _, record in sorted(self.pool.records.items())] + self.pool.own_records
        return [record.summary_line() for record in records]

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

