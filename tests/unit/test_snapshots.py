"""The snapshot store: keys, refusals, checksums, locking and pruning (no VMs: files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_smalltown import snapshots
from pytest_smalltown.settings import SettingsError, resolve
from pytest_smalltown.snapshots import (
    SnapshotMissing,
    SnapshotRefused,
    SnapshotStore,
    snapshot_name,
)
from pytest_smalltown.spec import ClusterSpec


@pytest.fixture(autouse=True)
def snapshot_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "snapshots"
    monkeypatch.setenv(snapshots.SNAPSHOT_DIR_ENV, str(root))
    return root


def inputs(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A plan's inputs as the store sees them (``plan.ClusterPlan.snapshot_inputs`` makes the real ones)."""
    return {"format": "2", "spec": "2-node", "qemu_version": "QEMU emulator version 7.2.22",
            "nodes.0.memory_mib": "2048", "nodes.0.boot.cmdline": "console=ttyS0", **overrides}  # fmt: skip


def save(store: SnapshotStore, content: bytes = b"ram") -> None:
    writer = store.begin()
    assert writer is not None
    writer.layout.state("node0").write_bytes(content)
    writer.layout.disk(0).write_bytes(b"disk")
    writer.commit({"cluster_time": 1.0})


def test_names_are_per_spec() -> None:
    assert snapshot_name(ClusterSpec(1)) == "snapshot-1-node"
    assert snapshot_name(ClusterSpec(2, ("conformance",))) == "snapshot-2-node-conformance"


def test_every_input_changes_the_key(tmp_path: Path) -> None:
    base = SnapshotStore(ClusterSpec(2), inputs(tmp_path)).key
    for change in ({"nodes.0.memory_mib": "4096"}, {"nodes.0.boot.cmdline": "quiet"}, {"tpm": "True"}):
        assert SnapshotStore(ClusterSpec(2), inputs(tmp_path, **change)).key != base, change


def test_a_saved_snapshot_is_found_and_verifies(tmp_path: Path, snapshot_dir: Path) -> None:
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    with pytest.raises(SnapshotMissing, match="no 2-node cluster has been saved yet"):
        store.lookup()
    save(store)
    snapshot = store.lookup()
    snapshot.verify()
    assert snapshot.facts == {"cluster_time": 1.0}
    assert snapshot.layout.state("node0").read_bytes() == b"ram"
    assert (snapshot.directory.stat().st_mode & 0o777) == 0o700  # it holds the cluster's keys


def test_a_corrupt_file_is_refused_by_verify(tmp_path: Path) -> None:
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    save(store)
    snapshot = store.lookup()
    snapshot.layout.state("node0").write_bytes(b"RAM")  # same size, other bytes
    with pytest.raises(SnapshotRefused, match="corrupt"):
        snapshot.verify()


def test_a_truncated_file_is_refused_at_lookup(tmp_path: Path) -> None:
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    save(store)
    store.lookup().layout.disk(0).write_bytes(b"d")
    with pytest.raises(SnapshotRefused, match="missing or truncated"):
        store.lookup()


def test_a_changed_input_names_what_changed(tmp_path: Path) -> None:
    save(SnapshotStore(ClusterSpec(2), inputs(tmp_path)))
    changed = SnapshotStore(ClusterSpec(2), inputs(tmp_path, **{"nodes.0.memory_mib": "4096"}))
    with pytest.raises(SnapshotMissing, match=r"nodes.0.memory_mib changed"):
        changed.lookup()


def test_an_expiring_certificate_is_stale(tmp_path: Path) -> None:
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    writer = store.begin()
    assert writer is not None
    writer.commit({"api_certificate_not_after": 0})
    with pytest.raises(SnapshotRefused, match="certificate expires"):
        store.lookup()


def test_one_saver_at_a_time_and_readers_hold_off_discard(tmp_path: Path) -> None:
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    first = store.begin()
    assert first is not None
    assert store.begin() is None  # another session is saving these inputs: it boots without saving
    first.abort()
    save(store)
    with store.reading():
        store.discard()
        assert store.lookup()  # still there: someone is restoring it
    store.discard()
    with pytest.raises(SnapshotMissing):
        store.lookup()


def test_a_new_snapshot_prunes_the_old_one(tmp_path: Path, snapshot_dir: Path) -> None:
    old = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    save(old)
    new = SnapshotStore(ClusterSpec(2), inputs(tmp_path, **{"nodes.0.memory_mib": "4096"}))
    save(new)
    assert not old.directory.exists() and new.directory.exists()
    manifest = json.loads((new.directory / "manifest.json").read_text())
    assert manifest["inputs"]["nodes.0.memory_mib"] == "4096"


def test_snapshot_mode_setting() -> None:
    assert resolve({}, {}, environ={}).snapshots == "auto"
    assert resolve({"snapshots": "off"}, {}, environ={}).snapshots == "off"
    assert resolve({}, {}, environ={"SMALLTOWN_SNAPSHOTS": "refresh"}).snapshots == "refresh"
    with pytest.raises(SettingsError, match="--smalltown-snapshots"):
        resolve({"snapshots": "sometimes"}, {}, environ={})


def test_another_specs_snapshot_is_not_taken_for_an_older_one_of_this_spec(tmp_path: Path) -> None:
    save(SnapshotStore(ClusterSpec(2, ("conformance",)), inputs(tmp_path)))
    with pytest.raises(SnapshotMissing, match="no 2-node cluster has been saved yet"):
        SnapshotStore(ClusterSpec(2), inputs(tmp_path)).lookup()


@pytest.mark.parametrize("manifest", [
    [],
    {"files": {}},
    {"inputs": "INPUTS", "files": []},
    {"inputs": "INPUTS", "files": {"node0.qcow2": 4}},
    {"inputs": "INPUTS", "files": {"node0.qcow2": {"size": "4", "sha256": "00"}}},
    {"inputs": "INPUTS", "files": {"node0.qcow2": {"size": 4}}},
    {"inputs": "INPUTS", "files": {}, "facts": ["api_certificate_not_after"]},
])  # fmt: skip
def test_a_wrongly_shaped_manifest_is_a_refusal_not_a_crash(tmp_path: Path, manifest: object) -> None:
    """Whatever manifest.json holds (an edit, another format, a bug), the launch boots cold instead of crashing."""
    store = SnapshotStore(ClusterSpec(2), inputs(tmp_path))
    save(store)
    text = json.dumps(manifest).replace('"INPUTS"', json.dumps(store.inputs))
    (store.directory / "manifest.json").write_text(text)
    with pytest.raises(SnapshotRefused, match="manifest.json is not a snapshot manifest: "):
        store.lookup()
    # Another snapshot's manifest is only read to say what changed: a bad one is passed over.
    with pytest.raises(SnapshotMissing, match="no 2-node cluster has been saved yet"):
        SnapshotStore(ClusterSpec(2), inputs(tmp_path, **{"nodes.0.memory_mib": "4096"})).lookup()


def test_a_restore_waiting_for_the_snapshots_lock_says_who_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session discarding the snapshot holds it alone; a restore that must wait says so once, then goes on."""
    import fcntl
    import os
    import threading
    import time

    from pytest_smalltown.images import cache

    monkeypatch.setattr(cache, "LOCK_PATIENCE", 0.2)
    store = SnapshotStore(ClusterSpec(1), inputs(tmp_path))
    store.lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(store.lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    said: list[str] = []
    entered = threading.Event()

    def restore() -> None:
        with store.reading(said.append):
            entered.set()

    reader = threading.Thread(target=restore)
    reader.start()
    time.sleep(1.0)
    assert not entered.is_set(), "the restore went on while the snapshot was held alone"
    os.close(holder)
    reader.join(5)
    assert entered.is_set()
    assert len(said) == 1 and "the saved 1-node cluster" in said[0], said


def test_why_not_restored_names_what_changed_briefly(tmp_path: Path) -> None:
    """A snapshot of other inputs is named by what changed; one of another format by its format, not 80 inputs."""
    save(SnapshotStore(ClusterSpec(2), inputs(tmp_path)))
    with pytest.raises(SnapshotMissing, match=r"other inputs \(nodes.0.memory_mib changed\)"):
        SnapshotStore(ClusterSpec(2), inputs(tmp_path, **{"nodes.0.memory_mib": "4096"})).lookup()
    many = {f"nodes.{i}.name": f"n{i}" for i in range(12)}
    with pytest.raises(SnapshotMissing, match=r"\(nodes.0.memory_mib, nodes.0.name, .* and 5 more changed\)"):
        SnapshotStore(ClusterSpec(2), inputs(tmp_path, **{"nodes.0.memory_mib": "1"}, **many)).lookup()
    with pytest.raises(SnapshotMissing, match="is of snapshot format 2, this harness saves format 3$"):
        SnapshotStore(ClusterSpec(2), inputs(tmp_path, format="3")).lookup()


def test_a_saved_disk_is_flattened_onto_the_node_image_whatever_lay_between(tmp_path: Path) -> None:
    """A restored cluster's disk is an overlay on a cached snapshot's, on the node image; its save needs neither middle."""
    import shutil
    import subprocess

    from pytest_smalltown.launch.qemu import Disk
    from pytest_smalltown.launch.vmstate import create_overlay, flatten_onto

    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io (qemu-utils) writes the test's data")
    base = tmp_path / "disk.raw"
    with open(base, "wb") as image:
        image.truncate(256 << 20)
        image.write(b"node image " * 1000)
    cached = create_overlay(base, "raw", tmp_path / "cached.qcow2")
    session = create_overlay(cached, "qcow2", tmp_path / "session.qcow2")
    subprocess.run(["qemu-io", "-c", "write -P 0x11 1M 2M", str(cached)], check=True, capture_output=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x22 2M 2M", str(session)], check=True, capture_output=True)
    saved = flatten_onto(session, Disk(base, "raw"), tmp_path / "saved.qcow2")
    cached.unlink()  # pruned from the cache, say: the saved disk does not need it
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(saved)], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert info["full-backing-filename"] == str(base)
    # What the guest read through the old chain, it reads through the new one: 0x11 below 2M, 0x22 above.
    for offset, pattern in ((1 << 20, "0x11"), (3 << 20, "0x22")):
        subprocess.run(["qemu-io", "-r", "-c", f"read -P {pattern} {offset} 64k", str(saved)], check=True,
                       capture_output=True)  # fmt: skip
    assert flatten_onto(saved, Disk(base, "raw"), saved) == saved, "a disk already in place stays as it is"


@pytest.mark.parametrize("spec", [ClusterSpec(1), ClusterSpec(2, ("conformance",)), ClusterSpec(8)])
def test_a_spec_reads_back_from_the_string_a_snapshot_records(spec: ClusterSpec) -> None:
    assert ClusterSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["", "two-node", "0-node", "1-node+nonsense", "2-node+conformance+conformance"])
def test_a_string_that_is_no_spec_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="spec|node|image set"):
        ClusterSpec.parse(text)
