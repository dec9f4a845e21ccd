"""``--smalltown-snapshot-on-failure``: a failed test's whole cluster, saved into its artifacts before teardown.

A report and a dump of logs say what the cluster showed; a saved cluster
lets someone look again at the cluster itself, as it was at the failure,
on this machine or another with the same images (``smalltown up --from
DIR``, then ``smalltown dbg``). The save pauses every VM for seconds, then
the cluster runs on: later tests of its spec still get it. A fresh test's
own cluster is saved the same way, before it is thrown away.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator

import pytest

from pytest_smalltown.features.clusters import Clusters
from pytest_smalltown.features.specs import spec_of
from pytest_smalltown.pool import SnapshotSource

#: The saved cluster's directory, inside the test's artifact directory (``evidence.artifact_dir``).
SNAPSHOT_DIR = "snapshot"
#: The report section that says where the cluster was saved, or why it was not.
SECTION = "smalltown snapshot"


class SnapshotOnFailure:
    """Saves the cluster of every failed setup or call into that test's artifact directory."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A failed setup or call: save its cluster now, while it is as the test left it (teardown has not run)."""
        report = yield
        if report.failed and spec_of(item) is not None and report.when != "teardown":
            report.sections.append((SECTION, self._save(item, self.clusters.cluster_of(item))))
        return report

    def _save(self, item: pytest.Item, cluster: object) -> str:
        """Save ``cluster`` for ``item``; one line for its report: where, how big, how long, or why not."""
        from pytest_smalltown.evidence import artifact_dir

        if cluster is None:
            return "not saved: no cluster of this test is running (its launch failed, or it died)"
        if not isinstance(cluster, SnapshotSource):
            return "not saved: this cluster cannot be saved from here (a kept cluster belongs to 'smalltown up')"
        run = self.clusters.session.artifacts_dir(item.config.rootpath)
        directory = artifact_dir(run, item.nodeid) / SNAPSHOT_DIR
        try:
            return cluster.save_snapshot(directory).describe()
        except FileExistsError:
            return f"not saved: {directory} exists already (an earlier failure of this test in this run)"
        except Exception as error:  # noqa: BLE001 - the test's own failure must not be masked
            shutil.rmtree(directory, ignore_errors=True)  # a half-written save restores nothing
            return f"not saved into {directory}: {error}"
