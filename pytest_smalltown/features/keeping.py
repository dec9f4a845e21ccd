"""``--smalltown-keep-on-failure``: a failed spec's cluster stays up after the tests, for a human to look at."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from pytest_smalltown.features.clusters import Clusters
from pytest_smalltown.features.session import is_xdist_worker, terminal_progress
from pytest_smalltown.features.specs import is_fresh, spec_of


class KeepOnFailure:
    """Holds back the cluster of a spec whose test failed, and at the session's end waits until it is let go."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A failed setup or call keeps the cluster it ran on from closing: its own if fresh, else its spec's shared one.

        A fresh test's failure keeps only its own cluster: the shared one did not fail.
        """
        report = yield
        spec = spec_of(item)
        if report.failed and spec is not None and report.when != "teardown":
            if not is_fresh(item):
                self.clusters.pool.keep(spec)
            elif (own := self.clusters.cluster_of(item)) is not None:
                self.clusters.pool.keep_own(own)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Before the clusters close: wait on the kept ones until Ctrl-C or ``smalltown down``.

        The session itself stays alive as their owner, so nothing it started
        outlives it; the first kept cluster is recorded like one of ``smalltown
        up``, so the CLI's ``status``/``dbg``/``down`` and ``--smalltown-attach``
        reach it. An xdist worker's clusters are not kept (no terminal of its own).
        """
        from pytest_smalltown.kept import KeptState, claim, wait_while_kept

        # Launched clusters (Cluster or a launcher's stand-in): the pool types them only as far as it needs.
        kept: list[tuple[str, Any]] = self.clusters.pool.kept_clusters()
        if not kept or is_xdist_worker(session.config):
            return
        say = terminal_progress(session.config)
        pid = os.getpid()
        first_spec, first = kept[0]
        try:
            if claim() is not None:  # held until this process ends
                KeptState.of_cluster(first, pid).write()
                say(f"kept the {first_spec} cluster after a failure; reach it with: smalltown status, smalltown dbg "
                    f"kubectl get pods -A, smalltown dbg logs kube.kubelet (kubeconfig {first.kubeconfig_path})")
            else:
                say(f"kept the {first_spec} cluster after a failure, but another cluster is recorded for the "
                    f"smalltown command (smalltown status); reach this one with: KUBECONFIG={first.kubeconfig_path} "
                    "kubectl ...")
            for name, cluster in kept[1:]:
                say(f"also kept the {name} cluster: KUBECONFIG={cluster.kubeconfig_path} kubectl ...")
            say(f"stop with: smalltown down (or Ctrl-C here, or kill {pid})")
            wait_while_kept([cluster for _, cluster in kept], say)
        finally:
            KeptState.forget(pid)  # however the wait ended: the record names a process about to close its clusters
