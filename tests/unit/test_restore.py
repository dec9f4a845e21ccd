"""What a failed restore does to the snapshot it came from (no VMs: the launch around a failing restore).

A snapshot is shared by every session on the host, so a restore may delete it
only when the snapshot itself is shown unusable: its files differ from the
manifest, or QEMU refuses its saved state. A timeout under load, an
interrupt or a missing program says nothing about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown import launcher, plan, snapshots
from pytest_smalltown.base.programs import ProgramNotFoundError
from pytest_smalltown.images.switch import SwitchImage
from pytest_smalltown.launch.accel import ProbeResult
from pytest_smalltown.launch.qemu import DirectBoot, Disk
from pytest_smalltown.launch.vm import VMExitedError
from pytest_smalltown.launch.vmstate import VMStateError
from pytest_smalltown.phases import ClusterLaunchError
from pytest_smalltown.plan import ClusterPlan
from pytest_smalltown.settings import Settings, resolve
from pytest_smalltown.snapshots import SnapshotStore, SnapshotWarning
from pytest_smalltown.spec import ClusterSpec

SPEC = ClusterSpec(1)
#: What QEMU 7.2 prints, then exits 1, for a state file that is not its migration stream.
QEMU_REFUSES = "qemu-system-x86_64: Not a migration stream\nqemu-system-x86_64: load of migration failed: Invalid argument"


def settings(**values: str) -> Settings:
    return resolve({"accel": "tcg", **values}, {}, environ={})


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnapshotStore:
    """A saved 1-node snapshot of exactly the inputs the launch computes, and a launch that boots nothing."""
    monkeypatch.setenv(snapshots.SNAPSHOT_DIR_ENV, str(tmp_path / "snapshots"))
    monkeypatch.setattr(plan, "qemu_version", lambda qemu: "QEMU emulator version 7.2.22")
    for name in ("vmlinuz", "initrd", "node.img", "switch-kernel", "switch-initrd"):
        (tmp_path / name).write_bytes(name.encode())
    boot = DirectBoot(tmp_path / "vmlinuz", tmp_path / "initrd", "console=ttyS0")
    disk = Disk(tmp_path / "node.img", "raw")
    switch = SwitchImage(tmp_path / "switch-kernel", tmp_path / "switch-initrd")
    monkeypatch.setattr(plan, "check_host_inputs", lambda settings: "qemu-system-x86_64")
    monkeypatch.setattr(plan, "resolve_accel", lambda mode, qemu: ProbeResult("tcg", "chosen", 0.0, ""))
    monkeypatch.setattr(plan, "node_boot", lambda settings, progress: (boot, disk))
    monkeypatch.setattr(plan, "preload_disks", lambda spec, progress: ())
    monkeypatch.setattr("pytest_smalltown.images.switch.build_switch_image", lambda progress: switch)
    monkeypatch.setattr(launcher, "boot", lambda *args: "booted cold")
    store = SnapshotStore(SPEC, ClusterPlan.resolve(SPEC, settings(), lambda message: None).snapshot_inputs())
    writer = store.begin()
    assert writer is not None
    for path in (writer.layout.state("nanoswitch"), writer.layout.state("node0"), writer.layout.disk(0)):
        path.write_bytes(b"saved " + path.name.encode())
    writer.commit({})
    return store


#: Where a restore starts its switch, and where it names a saved state: its first steps.
START_SWITCH = "pytest_smalltown.cluster.start_switch"
INCOMING_URI = "pytest_smalltown.restore.incoming_uri"


def failing(monkeypatch: pytest.MonkeyPatch, where: str, error: BaseException) -> None:
    """Make the restore fail with ``error`` at ``where`` (a dotted name), inside its restore phase."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(where, fail)


def launch(**values: str) -> Any:
    return launcher.launch_cluster(SPEC, settings(**values), progress=lambda message: None)


@pytest.mark.parametrize(("where", "error"), [
    (START_SWITCH, VMStateError("VM 'node0': saved state not loaded within 180s")),  # a restore under load
    (START_SWITCH, TimeoutError()),  # no message at all
    (INCOMING_URI, ProgramNotFoundError("'zstd' is not installed; a saved VM's state is read back through it")),
    (START_SWITCH, VMExitedError("node0", -9, "", [])),  # killed (the OOM killer), not refused
])  # fmt: skip
def test_a_restore_that_fails_for_the_hosts_reasons_is_a_launch_error_and_keeps_the_snapshot(
    saved: SnapshotStore, monkeypatch: pytest.MonkeyPatch, where: str, error: BaseException
) -> None:
    failing(monkeypatch, where, error)
    with pytest.raises(ClusterLaunchError, match="phase 'restore' did not finish") as raised:
        launch()
    assert raised.value.__cause__ is error
    assert saved.lookup(), "other sessions share the snapshot: it stays"


def test_an_interrupted_restore_keeps_the_snapshot(saved: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    failing(monkeypatch, START_SWITCH, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        launch()
    assert saved.lookup()


@pytest.mark.parametrize(("corrupt", "error", "why"), [
    (False, VMExitedError("nanoswitch", 1, QEMU_REFUSES, []), "QEMU refused .*load of migration failed"),
    (True, VMStateError("VM 'node0': saved state not loaded within 180s"), "node0.state.zst is corrupt"),
    (True, VMExitedError("node0", 1, QEMU_REFUSES, []), "node0.state.zst is corrupt"),
])  # fmt: skip
def test_a_snapshot_shown_unusable_is_refused_deleted_and_booted_cold(
    saved: SnapshotStore, monkeypatch: pytest.MonkeyPatch, corrupt: bool, error: BaseException, why: str
) -> None:
    if corrupt:
        state = saved.directory / "node0.state.zst"
        state.write_bytes(state.read_bytes().upper())  # same size: only the checksum can tell
    failing(monkeypatch, START_SWITCH, error)
    with pytest.warns(SnapshotWarning, match=f"snapshot refused: restoring .* failed: .*{why}.*booting it cold"):
        assert launch() == "booted cold"
    assert not saved.directory.exists()


def test_a_file_the_snapshot_should_hold_but_does_not_is_a_refusal(
    saved: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. a file a newer launcher restores with, in a snapshot an older one saved."""
    missing = saved.directory / "debug-token"
    failing(monkeypatch, START_SWITCH, FileNotFoundError(2, "No such file or directory", str(missing)))
    with pytest.warns(SnapshotWarning, match=f"restoring .* failed: {missing} cannot be read: No such file"):
        assert launch() == "booted cold"


@pytest.mark.parametrize(("refused", "why"), [
    (True, r"snapshot refused: restoring .* failed: QEMU refused a saved state"),
    (False, "no 1-node cluster has been saved yet"),
])  # fmt: skip
def test_under_snapshots_require_a_cluster_that_is_not_restored_fails_its_tests_with_the_reason(
    saved: SnapshotStore, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester, refused: bool, why: str
) -> None:
    """CI's restored pass: a refused restore must fail, not pass on a cold boot behind a warning."""
    booted: list[object] = []
    monkeypatch.setattr(launcher, "boot", lambda *args: booted.append(args))
    if refused:
        failing(monkeypatch, START_SWITCH, VMExitedError("nanoswitch", 1, QEMU_REFUSES, []))
    else:
        saved.discard()
    pytester.makepyfile(
        """
        def test_one(smalltown_cluster):
            pass

        def test_two(smalltown_cluster):
            pass
        """
    )
    result = pytester.runpytest("--smalltown-snapshots=require", "--smalltown-accel=tcg", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.re_match_lines([
        rf".*RestoreRequiredError: 1-node cluster: not restored \({why}.*\), and --smalltown-snapshots=require "
        r"\(from --smalltown-snapshots\) allows no cold boot",
        r".*the 1-node cluster failed earlier in this session",
    ], consecutive=False)  # fmt: skip
    assert booted == [], "nothing was booted in its place"


# --- a saved cluster outside the cache: `smalltown up --from DIR` ------------------------


@pytest.fixture
def kept_elsewhere(saved: SnapshotStore, tmp_path: Path) -> Path:
    """The saved snapshot as a failed test's artifacts hold one: a directory of its own, outside the cache."""
    import shutil

    directory = tmp_path / "artifacts" / "test_x" / "snapshot"
    shutil.copytree(saved.directory, directory)
    return directory


def test_a_saved_cluster_of_this_machines_inputs_is_restored_from_its_own_directory(
    kept_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restored: list[tuple[Any, ...]] = []
    monkeypatch.setattr(launcher, "restore", lambda *args: restored.append(args) or "restored")
    assert launcher.launch_saved(kept_elsewhere, settings(), lambda message: None) == "restored"
    [(plan_, store, snapshot, _)] = restored
    assert plan_.spec == SPEC, "the spec is the saved one's"
    assert store is None, "not the cache's: nothing locks, nothing deletes it"
    assert snapshot.directory == kept_elsewhere


def test_a_saved_cluster_of_other_inputs_is_refused_naming_what_differs(
    kept_elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing(monkeypatch, "pytest_smalltown.launcher.restore", AssertionError("nothing may start"))
    with pytest.raises(snapshots.SnapshotRefused, match=rf"{kept_elsewhere} does not match this machine: the saved "
                       r"1-node cluster was made from other inputs \(nodes.0.memory_mib changed\)"):  # fmt: skip
        launcher.launch_saved(kept_elsewhere, settings(node_memory="4096"), lambda message: None)
    assert (kept_elsewhere / "node0.state.zst").exists(), "the user's directory is never deleted"


def test_the_active_image_is_the_top_file_also_when_qemu_describes_it_in_json_form() -> None:
    """After a renamed backing file (rename_backing), QEMU names the top image ``json:{...}``; its own file is inside."""
    from pytest_smalltown.launch import vmstate

    class Blocks:
        name = "node0"

        def __init__(self, file: str) -> None:
            self.file = file

        def cmd(self, command: str, **arguments: Any) -> Any:
            assert command == "query-block"
            return [{"device": "disk0", "inserted": {"file": self.file, "node-name": "#block123"}}]

    plain = Blocks("/tmp/st-c-x/node0.qcow2")
    assert vmstate.active_image(plain, "disk0") == Path("/tmp/st-c-x/node0.qcow2")  # type: ignore[arg-type]
    described = Blocks('json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": '
                       '"/cache/snapshots/.snapshot-1-node-x.tmp/node0.qcow2"}}, "driver": "qcow2", '
                       '"file": {"driver": "file", "filename": "/tmp/st-c-x/node0.qcow2"}}')  # fmt: skip
    assert vmstate.active_image(described, "disk0") == Path("/tmp/st-c-x/node0.qcow2")  # type: ignore[arg-type]
