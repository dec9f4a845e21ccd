"""The upstream Kubernetes conformance suite, as an outside judge of the reference cluster.

Everything else in ``e2e/`` was written by this project; these specs were not.
The smoke subset (:data:`pytest_smalltown.conformance.smoke.SMOKE_TESTS`) takes at
least one spec per SIG and per conformance image, so a cluster that cannot
run webhooks, the aggregator, DNS, Services, hostPorts, exec or volumes fails
here. The whole suite is ``smalltown conformance`` (docs/conformance.md).

The cluster preloads the conformance images (``preload="conformance"``): the
nodes cannot pull anything, so every image a spec asks for is built locally
and imported under its upstream name before the nodes are Ready. It has two
nodes because the suite requires two schedulable nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.conformance.runner import run_conformance
from pytest_smalltown.conformance.smoke import SMOKE_TESTS, smoke_focus
from pytest_smalltown.features.session import SESSION_KEY
from pytest_smalltown.settings import Settings

pytestmark = pytest.mark.smalltown(nodes=2, preload="conformance")


def smoke_report_dir(config: pytest.Config, settings: Settings) -> Path:
    """This session's report directory: under its run's artifacts (``artifacts/<date-time>-<pid>/``).

    One per session, as the failure dumps are, so that two sessions side by
    side (or one after another) never write into, or resume, each other's run.
    """
    artifacts = settings.artifacts or Path(config.rootpath) / "artifacts"
    return artifacts / config.stash[SESSION_KEY].run_id / "conformance-smoke"


@pytest.mark.timeout(3600)
def test_conformance_smoke_subset_passes(
    smalltown_cluster: Any,
    smalltown_settings: Settings,
    smalltown_progress: Callable[[str], None],
    request: pytest.FixtureRequest,
) -> None:
    """The smoke subset passes; its results, JUnit, log and summary go to this run's artifacts directory."""
    report = run_conformance(
        smalltown_cluster.kubeconfig_path,
        focus=smoke_focus(),
        report_dir=smoke_report_dir(request.config, smalltown_settings),
        progress=smalltown_progress,
    )
    summary = report.render()
    print(summary)
    assert report.ok, summary
    assert report.passed == len(SMOKE_TESTS), f"every smoke spec must run and pass:\n{summary}"
