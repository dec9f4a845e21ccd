"""How many clusters a host can run side by side (``pytest -n auto``).

A pytest-xdist worker boots its own clusters, and a cluster's node VMs want
their vCPUs and memory to themselves: under emulation (TCG) two 2-vCPU nodes
on a 2-core host already take twice as long as one. So workers are sized
from a per-node budget (the node VM's vCPUs and memory, plus the switch),
not from the core count as xdist does for ordinary tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_smalltown.launch.switch import SWITCH_MEMORY_MIB

#: Memory left to the host itself (pytest, kubectl, e2e.test, page cache).
HOST_RESERVE_MIB = 2048


def host_memory_mib() -> int:
    """Total memory of this host in MiB (from /proc/meminfo)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which a CI container's cpuset limits)."""
    return len(os.sched_getaffinity(0))


def auto_workers(node_cpus: int, node_memory_mib: int, cpus: int | None = None, memory_mib: int | None = None) -> int:
    """Workers such that each can run one node VM with its own vCPUs and memory; at least 1."""
    cpus = usable_cpus() if cpus is None else cpus
    memory_mib = host_memory_mib() if memory_mib is None else memory_mib
    by_cpu = cpus // node_cpus
    by_memory = (memory_mib - HOST_RESERVE_MIB) // (node_memory_mib + SWITCH_MEMORY_MIB)
    return max(1, min(by_cpu, by_memory))


class SpecGroups:
    """Which spec each test needs, from the workers' collections to the controller's scheduler.

    pytest-xdist's controller sees only node ids. Each worker writes
    ``{node id: spec label}`` into its own file here before it reports its
    collection; the scheduler reads the files when it first needs a test's
    group, which is after every worker has reported.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._groups: dict[str, str] | None = None

    @classmethod
    def create(cls) -> SpecGroups:
        return cls(Path(tempfile.mkdtemp(prefix="smalltown-xdist-")))

    def file_for(self, worker_id: str) -> Path:
        return self.directory / f"{worker_id}.json"

    @staticmethod
    def write(path: Path, groups: dict[str, str]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, path)

    def group_of(self, nodeid: str) -> str:
        """The spec label of ``nodeid`` (the test itself if no worker named it: it then stands alone)."""
        if self._groups is None:
            groups: dict[str, str] = {}
            for path in sorted(self.directory.glob("*.json")):
                groups.update(json.loads(path.read_text()))
            self._groups = groups
        return self._groups.get(nodeid, nodeid)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def spec_scheduler(config: Any, log: Any, groups: SpecGroups) -> Any:
    """An xdist scheduler that hands out whole specs: each spec's tests run on one worker, in order.

    xdist's scope scheduling already keeps a scope on one worker and
    balances scopes across workers; a scope here is the spec (tests without
    a cluster form one group of their own).
    """
    from xdist.scheduler import LoadScopeScheduling

    class SpecScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return groups.group_of(nodeid)

    return SpecScheduling(config, log)
