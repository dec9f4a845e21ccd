"""A failed test's evidence: console tails, node logs and events in its report; a full dump under ``artifacts/``."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_smalltown.features.clusters import Clusters
from pytest_smalltown.pool import EvidenceSource

REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
#: The namespace ``smalltown_namespace`` made for a test: its events go into the evidence.
NAMESPACE_KEY = pytest.StashKey[str]()


def item_failed(item: pytest.Item) -> bool:
    """Whether setup or call of ``item`` failed so far."""
    reports = item.stash.get(REPORTS_KEY, {})
    return any(r.failed for r in reports.values())


class FailureEvidence:
    """Attaches what the cluster saw to every failed test of a cluster, and writes the full dump to disk."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Remember each phase's report; a failed setup or call gets the evidence of its cluster."""
        report = yield
        item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
        if report.failed and report.when != "teardown":
            self._attach_evidence(item, report, self.clusters.cluster_of(item))
        return report

    def _attach_evidence(self, item: pytest.Item, report: pytest.TestReport, cluster: object) -> None:
        if not isinstance(cluster, EvidenceSource):
            return  # launch failed (its error already shows the consoles), or a stand-in without VMs
        from pytest_smalltown.evidence import report_sections, write_artifacts

        namespace = item.stash.get(NAMESPACE_KEY, None)
        for title, text in report_sections(cluster, namespace, window=(report.start, report.stop)):
            report.sections.append((title, text))
        directory = self.clusters.session.artifacts_dir(item.config.rootpath)
        try:
            written = write_artifacts(cluster, directory, item.nodeid, namespace, window=(report.start, report.stop))
            report.sections.append(("smalltown artifacts", str(written)))
        except OSError as error:
            report.sections.append(("smalltown artifacts", f"could not write to {directory}: {error}"))
