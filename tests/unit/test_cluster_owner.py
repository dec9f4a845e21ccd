"""A Cluster owns every process from the one it starts first: a launch that fails half-way leaves nothing (no VMs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown import boot, cluster
from pytest_smalltown.launch.qemu import DirectBoot, Disk, SocketNic, VMConfig
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.spec import ClusterSpec


class FakeVM:
    """What a cluster asks of a started VM, recording when it is stopped."""

    def __init__(self, config: VMConfig, events: list[str]) -> None:
        self.config = config
        self.name = config.name
        self.console_log = Path("/nonexistent") / f"{config.name}.console.log"
        self.events = events

    def console_tail(self, lines: int = 50) -> list[str]:
        return [f"{self.name} booting"]

    def check_running(self) -> None:
        pass

    check_firmware_booted = check_not_hung = check_running

    def stop(self, grace: float = 10.0) -> int:
        self.events.append(f"stop {self.name}")
        return 0


class FakePorts:
    def dial_grpc(self, port: int) -> Any:
        raise ConnectionRefusedError("node 0's debug port is closed")


class FakeSwitch:
    def __init__(self, events: list[str]) -> None:
        self.vm = FakeVM(VMConfig(name="nanoswitch", boot=DirectBoot(Path("/k"))), events)
        self.ports = FakePorts()
        self.events = events

    def node_nic(self, index: int) -> SocketNic:
        return SocketNic(fd=100 + index, mac=f"02:53:4d:01:00:{2 + index:02x}")

    def wait_ready(self, timeout: float) -> str:
        return "nanoswitch: forwarding"

    def close(self) -> None:
        self.events.append("close nanoswitch")


def a_plan(nodes: int = 2) -> ClusterPlan:
    node = VMConfig(name="node", boot=DirectBoot(Path("/k")), disks=(Disk(Path("/node.img")),))
    return ClusterPlan(
        spec=ClusterSpec(nodes), switch=VMConfig(name="nanoswitch", boot=DirectBoot(Path("/k")), machine="microvm"),
        nodes=tuple(VMConfig(name=f"node{i}", boot=node.boot, disks=node.disks) for i in range(nodes)),
        tpm=False, qemu_version="QEMU emulator version 7.2.22", boot_timeout=5.0, snapshots="off",
        snapshots_source="default", images_seconds=0.0,
    )  # fmt: skip


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Processes a cluster starts are fakes; each start and stop is recorded."""
    happened: list[str] = []

    def start_switch(config: VMConfig, nodes: int, *args: Any, **kwargs: Any) -> FakeSwitch:
        happened.append("start nanoswitch")
        return FakeSwitch(happened)

    def start_vm(config: VMConfig, workdir: Path, history: object = ()) -> FakeVM:
        happened.append(f"start {config.name}")
        return FakeVM(config, happened)

    monkeypatch.setattr(cluster, "start_switch", start_switch)
    monkeypatch.setattr(cluster, "start_vm", start_vm)
    return happened


def test_a_launch_that_fails_half_way_stops_what_it_started_newest_first(events: list[str]) -> None:
    workdirs: list[Path] = []
    original = cluster.Cluster.__init__

    def remember(self: cluster.Cluster, plan: ClusterPlan) -> None:
        original(self, plan)
        workdirs.append(self.workdir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster.Cluster, "__init__", remember)
        with pytest.raises(ClusterLaunchError, match="phase 'node0-debug' did not finish: node 0's debug port") as info:
            boot.boot(a_plan(), None, "snapshots are off", lambda message: None)
    assert events == ["start nanoswitch", "start node0", "stop node0", "close nanoswitch"]
    assert list(info.value.consoles) == ["nanoswitch", "node0"], "the error shows every VM started"
    assert not workdirs[0].exists(), "the work directory goes last"


def test_close_is_the_one_cleanup_and_safe_twice(events: list[str]) -> None:
    owner = cluster.Cluster(a_plan())
    owner.start_switch()
    for index in range(2):
        owner.start_node(index, Disk(Path("/node.img")), ())
    assert [node.vm.config.nics[0].fd for node in owner.nodes] == [100, 101]  # type: ignore[union-attr]
    assert owner.nodes[1].vm.config.qmp_socket == owner.workdir / "node1.qmp"
    owner.close()
    owner.close()
    assert events[3:] == ["stop node1", "stop node0", "close nanoswitch"]
    assert not owner.workdir.exists()
