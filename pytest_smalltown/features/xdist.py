"""pytest-xdist: each spec's shared tests on one worker, which boots its cluster once; one summary for all workers.

A fresh test (``smalltown(fresh=True)``) is a group of its own: any worker
may take it, so fresh clusters of one spec run side by side, each restored
from the same snapshot (:func:`~pytest_smalltown.features.specs.xdist_group`).

The controller hands every worker the run id and a file to write
``{test id: spec}`` into; its scheduler (:func:`~pytest_smalltown.parallel.spec_scheduler`)
reads those files to keep each spec on one worker. At their end, workers
hand their cluster summary and measured seconds back to the controller.
(``-n auto`` is sized in :mod:`pytest_smalltown.plugin`: pytest-xdist asks
before any plugin object is registered.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.features.clusters import Clusters
from pytest_smalltown.features.session import SmalltownSession, is_xdist_worker
from pytest_smalltown.features.sharding import Durations
from pytest_smalltown.features.specs import xdist_group
from pytest_smalltown.parallel import SpecGroups, spec_scheduler


class XdistSpecs:
    """Both sides of a pytest-xdist run: the controller's scheduler and merged results, the workers' reports."""

    def __init__(self, config: pytest.Config, clusters: Clusters, durations: Durations) -> None:
        self.run_id = SmalltownSession.of(config).run_id
        self.clusters = clusters
        self.durations = durations
        #: Controller of ``--dist load`` (xdist's default): where workers say which spec each test needs.
        self.spec_groups: SpecGroups | None = None
        if getattr(config.option, "dist", "no") == "load" and not is_xdist_worker(config):
            self.spec_groups = SpecGroups.create()
            config.add_cleanup(self.spec_groups.remove)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Worker side, after every deselection: write which spec each remaining test needs.

        Written before this worker reports its collection, so the controller's scheduler sees it.
        """
        if is_xdist_worker(config) and "smalltown_spec_groups" in config.workerinput:  # type: ignore[attr-defined]
            SpecGroups.write(Path(config.workerinput["smalltown_spec_groups"]),  # type: ignore[attr-defined]
                             {item.nodeid: xdist_group(item) for item in items})

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """Controller side: the run id, and where a new worker writes which spec each of its tests needs."""
        node.workerinput["smalltown_run_id"] = self.run_id
        if self.spec_groups is not None:
            node.workerinput["smalltown_spec_groups"] = str(self.spec_groups.file_for(node.gateway.id))

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """``-n`` with the default ``--dist load``: each spec's tests go to one worker, which boots it once.

        A scheduler of ours rather than xdist's ``loadgroup``: that one groups
        by rewriting node ids, which pytest 9.2 no longer reads (``Item.nodeid``
        comes from ``_id``), so its groups are silently lost.
        """
        if config.getvalue("dist") != "load" or self.spec_groups is None:
            return None  # an explicit --dist mode is the user's choice
        return spec_scheduler(config, log, self.spec_groups)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Controller side: take a finished worker's cluster summary and measured seconds."""
        output = getattr(node, "workeroutput", None) or {}
        if "smalltown" not in output:
            return
        worker = output["smalltown"]["workerid"]
        self.clusters.worker_summary_lines += [f"[{worker}] {line}" for line in output["smalltown"]["summary"]]
        self.durations.add(output["smalltown"]["group_seconds"])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Worker side, after its clusters closed: hand the summary and seconds to the controller, which prints them."""
        config = session.config
        if is_xdist_worker(config):
            config.workeroutput["smalltown"] = {  # type: ignore[attr-defined]
                "workerid": config.workerinput["workerid"],  # type: ignore[attr-defined]
                "summary": self.clusters.summary_lines(),
                "group_seconds": dict(self.durations.seconds),
            }
