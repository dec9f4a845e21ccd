"""``--smalltown-max-nodes``: run only the clusters this host carries.

Under emulation each node VM keeps about one host core busy; clusters of more
nodes than cores time out instead of failing clearly. With ``auto`` (the
default) the limit follows the accelerator: one node per core under TCG, none
under KVM; the run says what it deselected and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from pytest_smalltown.features.specs import spec_of
from pytest_smalltown.launch.accel import known_accel, node_capacity, resolve_accel
from pytest_smalltown.settings import Settings
from pytest_smalltown.spec import ClusterSpec


class NodeCapacity:
    """Deselects the tests whose cluster has more nodes than allowed, and says why in the collection's report."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Why ``--smalltown-max-nodes=auto`` deselected tests (or might), for the collection report.
        self.summary: str | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """After the specs are known: drop the tests of clusters over the node limit (tests without one stay)."""
        max_nodes = self.settings.max_nodes
        if max_nodes is None:
            specs = [spec for item in items if (spec := spec_of(item)) is not None]
            max_nodes, self.summary = host_max_nodes(self.settings, specs, probe=not config.option.collectonly)
        if max_nodes is None:
            return
        too_big = [item for item in items if (spec := spec_of(item)) is not None and spec.nodes > max_nodes]
        if too_big:
            config.hook.pytest_deselected(items=too_big)
            dropped = {id(item) for item in too_big}
            items[:] = [item for item in items if id(item) not in dropped]

    def pytest_report_collectionfinish(self) -> str | None:
        return self.summary


def host_max_nodes(
    settings: Settings, specs: Iterable[ClusterSpec], probe: bool = True
) -> tuple[int | None, str | None]:
    """``--smalltown-max-nodes=auto``: the node limit this host sets, and the line that says so (None: no limit).

    The accelerator is only resolved (a probe, cached per host) when some cluster has more
    nodes than the host has cores: below that every accelerator carries it. Without
    ``probe`` (``--collect-only``, which must start nothing) only an accelerator already
    known counts: chosen, or probed by an earlier run on this host.
    """
    biggest = max((spec.nodes for spec in specs), default=0)
    cpus = os.cpu_count() or 1
    if biggest <= cpus:
        return None, None
    accel: str | None
    if probe:
        try:
            accel = resolve_accel(settings.accel, settings.qemu).accel
        except Exception:  # the first launch meets the same problem and reports it in full
            return None, None
    else:
        known = known_accel(settings.accel, settings.qemu)
        accel = known.accel if known is not None else None
        if accel is None:
            return None, (f"smalltown: --collect-only starts no VM, so the accelerator is not probed; a run may "
                          f"deselect clusters over {cpus} node{'' if cpus == 1 else 's'} (one per core under TCG)")
    limit = node_capacity("kvm" if accel == "kvm" else "tcg", cpus)
    if biggest <= limit:
        return None, None
    return limit, (
        f"smalltown: tests of clusters over {limit} nodes deselected: under {accel.upper()} this {cpus}-core "
        f"host carries {limit} node VMs at once; --smalltown-max-nodes={biggest} runs them anyway"
    )
