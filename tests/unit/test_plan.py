"""The cluster plan: resolved once from the settings, and the snapshot key is a hash of it (no VMs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pytest_smalltown import plan
from pytest_smalltown.images.switch import SwitchImage
from pytest_smalltown.launch.accel import ProbeResult
from pytest_smalltown.launch.qemu import DirectBoot, Disk, VMConfig
from pytest_smalltown.plan import NOT_IN_SNAPSHOT_KEY, ClusterPlan
from pytest_smalltown.settings import resolve
from pytest_smalltown.snapshots import SnapshotStore
from pytest_smalltown.spec import ClusterSpec


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Images and a QEMU that need no build and no probe: files in ``tmp_path``."""
    for name in ("vmlinuz", "initrd", "node.img", "switch-kernel", "switch-initrd", "preload.tar"):
        (tmp_path / name).write_bytes(name.encode())
    boot = DirectBoot(tmp_path / "vmlinuz", tmp_path / "initrd", "console=ttyS0")
    monkeypatch.setattr(plan, "check_host_inputs", lambda settings: f"/usr/bin/{settings.qemu}")
    monkeypatch.setattr(plan, "resolve_accel", lambda mode, qemu: ProbeResult("tcg" if mode == "auto" else mode,  # type: ignore[arg-type]
                                                                             "chosen", 0.0, ""))  # fmt: skip
    monkeypatch.setattr(plan, "qemu_version", lambda qemu: "QEMU emulator version 7.2.22")
    monkeypatch.setattr(plan, "node_boot", lambda settings, progress: (boot, Disk(tmp_path / "node.img", "raw")))
    monkeypatch.setattr(plan, "preload_disks", lambda spec, progress: tuple(
        Disk(tmp_path / "preload.tar", snapshot=False, read_only=True, serial=f"preload-{name}") for name in spec.preload
    ))  # fmt: skip
    monkeypatch.setattr("pytest_smalltown.images.switch.build_switch_image",
                        lambda progress: SwitchImage(tmp_path / "switch-kernel", tmp_path / "switch-initrd"))  # fmt: skip
    return tmp_path


def planned(spec: ClusterSpec = ClusterSpec(2), **settings: str) -> ClusterPlan:
    return ClusterPlan.resolve(spec, resolve(settings, {}, environ={}), lambda message: None)


def key(cluster_plan: ClusterPlan) -> str:
    return SnapshotStore(cluster_plan.spec, cluster_plan.snapshot_inputs()).key


def test_the_plan_holds_every_vm_with_the_settings_and_the_qemu_it_runs_on(images: Path) -> None:
    cluster = planned(ClusterSpec(2, ("conformance",)), node_memory="4096", node_cpus="3", qemu="qemu-7")
    assert [node.name for node in cluster.nodes] == ["node0", "node1"]
    for node in cluster.nodes:
        assert (node.memory_mib, node.cpus, node.accel, node.qemu) == (4096, 3, "tcg", "/usr/bin/qemu-7")
        assert [disk.path.name for disk in node.disks] == ["node.img", "preload.tar"]
    assert cluster.switch.qemu == "/usr/bin/qemu-7" and cluster.switch.machine == "microvm"
    assert isinstance(cluster.switch.boot, DirectBoot) and "nanoswitch.nodes=2" in cluster.switch.boot.cmdline
    assert cluster.boot_timeout == 600.0 and cluster.snapshots == "auto"


@pytest.mark.parametrize("change", [
    {"node_memory": "4096"}, {"node_cpus": "1"}, {"accel": "kvm"}, {"tpm": "true"},
])  # fmt: skip
def test_every_setting_that_shapes_a_guest_changes_the_key(images: Path, change: dict[str, str]) -> None:
    assert key(planned(**change)) != key(planned())


def test_the_node_image_the_spec_and_qemus_version_change_the_key(
    images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = key(planned())
    assert key(planned(ClusterSpec(3))) != base
    assert key(planned(ClusterSpec(2, ("conformance",)))) != base
    (images / "vmlinuz").write_bytes(b"another kernel")  # same path, new content: size and mtime differ
    changed_kernel = key(planned())
    assert changed_kernel != base
    monkeypatch.setattr(plan, "qemu_version", lambda qemu: "QEMU emulator version 8.2.2")
    assert key(planned()) != changed_kernel


def test_what_does_not_shape_a_guest_leaves_the_key(images: Path) -> None:
    base = key(planned())
    assert key(planned(boot_timeout="30", snapshots="refresh")) == base
    assert key(planned(qemu="/opt/same-qemu/qemu-system-x86_64")) == base, "the QEMU's version decides, not its path"


def test_a_new_field_of_a_vm_is_part_of_the_key_without_anyone_listing_it(images: Path) -> None:
    cluster = planned()
    node0 = dataclasses.replace(cluster.nodes[0], rng=False)
    other = dataclasses.replace(cluster, nodes=(node0, *cluster.nodes[1:]))
    assert "nodes.0.rng" in cluster.snapshot_inputs()
    assert key(other) != key(cluster)


def test_only_named_plan_fields_stay_out_of_the_key(images: Path) -> None:
    inputs = planned().snapshot_inputs()
    for field in dataclasses.fields(ClusterPlan):
        in_key = any(name == field.name or name.startswith(f"{field.name}.") for name in inputs)
        assert in_key != (field.name in NOT_IN_SNAPSHOT_KEY), field.name


def test_the_plan_is_frozen(images: Path) -> None:
    cluster = planned()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cluster.tpm = True  # type: ignore[misc]
    assert isinstance(cluster.nodes[0], VMConfig)
