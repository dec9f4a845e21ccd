"""Pausing, saving and restoring running VMs, through QMP.

A VM's saved state has two halves that must agree: its RAM and device state,
written by QEMU's migration to a file (here through ``zstd``, since QEMU 7.2,
which Debian ships, has no ``file:`` migration), and its disk. Disks that are
saved are explicit qcow2 overlays rather than ``snapshot=on``: at save time
the VM is paused, its writes are diverted to a new overlay on top of the
current one (QMP ``blockdev-snapshot-sync``), and the current one becomes
the saved disk, frozen at exactly the instant the RAM was saved.

A restore starts QEMU with the same devices, ``-incoming`` reading the
state file and ``-S`` so that the vCPUs stay stopped until every VM of a
cluster has loaded (:func:`wait_incoming`); :func:`resume` then starts them.

QMP is spoken through ``qemu.qmp``, the QEMU project's own client library.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from pytest_smalltown.base.processes import run_supervised, timeout_message
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.waits import WaitTimeoutError, wait_for
from pytest_smalltown.launch.qemu import Disk
from pytest_smalltown.launch.vm import VM, LaunchError

#: Migration bandwidth cap while saving. QEMU's default (32 MiB/s) is meant
#: for live migration over a network; a paused VM saving to a local file
#: should go as fast as zstd can take it.
SAVE_BANDWIDTH = 1 << 40
#: zstd level for saved RAM: level 1 compresses a node's RAM image at several
#: hundred MB/s on one core and still removes most of it (page cache, zeroed heaps).
ZSTD_LEVEL = 1
#: Bound of a qemu-img run (making an overlay or reading a disk's size takes milliseconds, even under load).
QEMU_IMG_TIMEOUT = 300.0
#: QMP connection attempts before a VM counts as unreachable.
CONNECT_ATTEMPTS = 5
#: How often the waits for a save or a restore ask QEMU how far it is (a QMP query takes well under a millisecond).
POLL_INTERVAL = 0.02


class VMStateError(LaunchError):
    """A VM could not be paused, saved, restored or resumed."""


class Monitor:
    """A QMP connection to one VM (commands raise :class:`VMStateError` on errors)."""

    def __init__(self, vm: VM, timeout: float = 30.0) -> None:
        socket_path = vm.config.qmp_socket
        if socket_path is None:
            raise VMStateError(f"VM {vm.name!r} was started without a QMP socket")
        self.name = vm.name
        self.check_running = vm.check_running
        self.stderr = vm.stderr
        self._connect(socket_path, timeout)

    @classmethod
    def at(cls, socket_path: Path, name: str, timeout: float = 30.0) -> "Monitor":
        """A monitor on the QMP socket of a VM this process did not start (``smalltown up``'s, from the CLI)."""
        monitor = cls.__new__(cls)
        monitor.name = name
        monitor.check_running = lambda: None
        monitor.stderr = lambda: ""
        if not socket_path.exists():
            raise VMStateError(f"VM {name!r}: no QMP socket at {socket_path} (is the cluster still running?)")
        monitor._connect(socket_path, timeout)
        return monitor

    def _connect(self, socket_path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def socket_made() -> bool:  # QEMU creates it a few ms after it starts
            if socket_path.exists():
                return True
            self.check_running()
            return False

        try:
            wait_for(f"VM {self.name!r}'s QMP socket", socket_made, timeout, interval=0.01, fatal=(LaunchError,))
        except WaitTimeoutError:
            raise VMStateError(f"VM {self.name!r}: QMP socket {socket_path} did not appear within "
                               f"{timeout:.0f}s") from None
        # A connection made while QEMU is still setting up (seen under load, restoring two
        # sessions at once) can fail the greeting; a fresh connection a moment later works.
        for attempt in range(CONNECT_ATTEMPTS):
            self._qmp = QEMUMonitorProtocol(str(socket_path), nickname=self.name)
            try:
                self._qmp.connect()
                break
            except Exception as error:  # qemu.qmp raises ConnectError and asyncio errors
                self.close()
                self.check_running()
                if attempt + 1 == CONNECT_ATTEMPTS or time.monotonic() > deadline:
                    raise VMStateError(f"VM {self.name!r}: cannot talk QMP on {socket_path}: {error}") from error
                time.sleep(0.2)
        self._qmp.settimeout(timeout)

    def cmd(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its result."""
        try:
            return self._qmp.cmd(command, **arguments)
        except ExecuteError as error:
            raise VMStateError(f"VM {self.name!r}: QMP {command} failed: {error}") from error
        except Exception as error:  # connection lost: say whether QEMU died
            self.check_running()
            raise VMStateError(f"VM {self.name!r}: QMP {command}: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._qmp.close()


@contextlib.contextmanager
def dump_frames(connect: Callable[[], Monitor], netdev: str, path: Path, object_id: str) -> Iterator[None]:
    """Write every frame through ``netdev`` (both directions) into the pcap file ``path`` for the with block.

    QEMU's filter-dump, added and removed over QMP; ``connect`` opens a
    monitor for each of the two commands, so that the VM's QMP socket stays
    free for other faults (it takes one client at a time) while the capture runs.
    """
    monitor = connect()
    try:
        monitor.cmd("object-add", **{"qom-type": "filter-dump", "id": object_id, "netdev": netdev, "file": str(path)})
    finally:
        monitor.close()
    try:
        yield
    finally:
        monitor = connect()
        try:
            monitor.cmd("object-del", id=object_id)
        finally:
            monitor.close()


def pause(monitor: Monitor) -> None:
    """Stop the VM's vCPUs (devices and timers stop with them)."""
    monitor.cmd("stop")


def resume(monitor: Monitor) -> None:
    """Start the VM's vCPUs again (after :func:`pause`, a save, or a restore with ``-S``)."""
    monitor.cmd("cont")


def allow_guest_reboot(monitor: Monitor, allow: bool) -> None:
    """Let a guest reboot restart the VM (``allow``), or end it again, as ``-no-reboot`` has it.

    VMs run with ``-no-reboot`` so that a kernel panic (``panic=-1`` reboots)
    ends QEMU with the console tail instead of boot-looping unseen. A reboot
    someone asked for needs the opposite for its duration.
    """
    monitor.cmd("set-action", reboot="reset" if allow else "shutdown")


def hard_reset(monitor: Monitor) -> None:
    """Reset the machine at once, like its reset button: nothing in the guest is told or flushed."""
    monitor.cmd("system_reset")


def divert_writes(monitor: Monitor, device: str, overlay: Path) -> None:
    """From now on, write ``device``'s changes to ``overlay``, a qcow2 made on top of its current image.

    The current image is left as it was at this instant: with the VM
    paused, it is the disk half of a consistent save. (The overlay is made
    beforehand by :func:`create_overlay`: asked to make it itself, QEMU
    announces it on stdout, which is the serial console here.)
    """
    monitor.cmd(
        "blockdev-snapshot-sync", device=device, **{"snapshot-file": str(overlay), "format": "qcow2", "mode": "existing"}
    )


def rename_backing(monitor: Monitor, device: str, backing: Path) -> None:
    """Write into ``device``'s top image (and QEMU's view of it) that its backing file is now called ``backing``.

    For a backing file that was renamed while the VM ran (a snapshot's work
    directory moved into place): QEMU keeps reading it through its open
    file, but the name in the top image's header would lead ``qemu-img``
    (a later save's rebase) to a file that is gone.
    """
    for block in monitor.cmd("query-block"):
        if block.get("device") == device and "inserted" in block:
            monitor.cmd("change-backing-file", device=device, **{
                "image-node-name": block["inserted"]["node-name"], "backing-file": str(backing)})  # fmt: skip
            return
    raise VMStateError(f"VM {monitor.name!r} has no disk {device!r}")


def active_image(monitor: Monitor, device: str) -> Path:
    """The file ``device`` writes to now: the top of its chain (a save freezes it by :func:`divert_writes`)."""
    for block in monitor.cmd("query-block"):
        if block.get("device") == device and "inserted" in block:
            return _own_file(block["inserted"]["file"])
    raise VMStateError(f"VM {monitor.name!r} has no disk {device!r}")


def _own_file(name: str) -> Path:
    """The file of an image as QEMU names it: a path, or ``json:{...}`` when its options say more than a path.

    After :func:`rename_backing` QEMU's open backing node no longer matches
    the name in the image's header, so it describes the image in its
    ``json:`` form; the image's own file is its ``file.filename``.
    """
    if not name.startswith("json:"):
        return Path(name)
    options = json.loads(name[len("json:"):])
    return Path(options["file"]["filename"])


def start_save(monitor: Monitor, state_file: Path) -> None:
    """Begin writing the paused VM's RAM and device state, zstd-compressed, to ``state_file``."""
    zstd = find_program("zstd", "a VM's saved state is compressed with it", "zstd")
    monitor.cmd("migrate-set-parameters", **{"max-bandwidth": SAVE_BANDWIDTH})
    command = f"{shlex.quote(zstd)} -{ZSTD_LEVEL} -q -f -o {shlex.quote(str(state_file))}"
    monitor.cmd("migrate", uri=f"exec:{command}")


def incoming_uri(state_file: Path) -> str:
    """The ``-incoming`` URI that restores a VM from a file written by :func:`start_save`."""
    zstd = find_program("zstd", "a saved VM's state is read back through it", "zstd")
    return f"exec:{shlex.quote(zstd)} -d -c -q {shlex.quote(str(state_file))}"


def wait_migration(monitor: Monitor, timeout: float) -> None:
    """Wait until the VM's outgoing save or incoming restore has completed.

    Raises :class:`VMStateError` with QEMU's reason (and its stderr, where a
    bad state file is explained) when it failed or did not finish in time.
    """
    state: str | None = None

    def completed() -> bool:
        nonlocal state
        monitor.check_running()
        status = monitor.cmd("query-migrate")
        state = str(status.get("status"))
        if state in ("failed", "cancelled"):
            reason = status.get("error-desc", "no reason given")
            raise VMStateError(f"VM {monitor.name!r}: state transfer {state}: {reason}; "
                               f"QEMU stderr: {monitor.stderr().strip()[-500:] or '(empty)'}")
        return state == "completed"

    try:
        wait_for(f"VM {monitor.name!r}'s state transfer", completed, timeout, interval=POLL_INTERVAL,
                 fatal=(LaunchError,))
    except WaitTimeoutError:
        raise VMStateError(f"VM {monitor.name!r}: state transfer not done within {timeout:.0f}s ({state})") from None


def wait_incoming(monitor: Monitor, timeout: float) -> None:
    """Wait until a VM started with ``-incoming`` has loaded its state (its vCPUs stay stopped)."""
    deadline = time.monotonic() + timeout

    def loading_done() -> bool:
        # Before the incoming stream is read, query-migrate reports nothing or "setup".
        monitor.check_running()
        return bool(monitor.cmd("query-status").get("status") != "inmigrate")

    try:
        wait_for(f"VM {monitor.name!r} to load its saved state", loading_done, timeout, interval=POLL_INTERVAL,
                 fatal=(LaunchError,))
    except WaitTimeoutError:
        raise VMStateError(f"VM {monitor.name!r}: saved state not loaded within {timeout:.0f}s") from None
    wait_migration(monitor, max(1.0, deadline - time.monotonic()))


def create_overlay(backing: Path, backing_format: str, overlay: Path, in_use: bool = False) -> Path:
    """A new, empty qcow2 ``overlay`` whose reads fall through to ``backing`` (never written through it).

    ``in_use``: a running VM holds ``backing`` open for writing, so its size
    is read without taking QEMU's image lock (``-U``) and passed explicitly.
    """
    qemu_img = find_program("qemu-img", "a saved VM's disks are qcow2 overlays made with it", "qemu-utils")
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(backing), str(overlay)]
    if in_use:
        info = _run([qemu_img, "info", "-U", "--output=json", "-f", backing_format, str(backing)], backing)
        argv[2:2] = ["-u"]
        argv.append(str(json.loads(info)["virtual-size"]))
    _run(argv, overlay)
    return overlay


def flatten_onto(frozen: Path, base: Disk, target: Path) -> Path:
    """``target``: a qcow2 copy of ``frozen`` whose backing is ``base`` alone, whatever lay between them.

    ``frozen`` is a disk diverted from (:func:`divert_writes`), often an
    overlay on a cached snapshot's overlay on ``base``, with files that die
    with the session in between. The copy is rebased in qemu-img's safe mode:
    it writes into the copy every cluster the old chain holds above ``base``
    (found from allocation maps, so it reads megabytes, not the whole
    disk), and the guest reads the same bytes as before. ``frozen`` must no
    longer change; a ``target`` that is ``frozen`` itself is left as it is.
    """
    if target.exists() and frozen.samefile(target):
        return target
    qemu_img = find_program("qemu-img", "a saved VM's disk is rebased onto the node image with it", "qemu-utils")
    shutil.copyfile(frozen, target)
    _run([qemu_img, "rebase", "-q", "-f", "qcow2", "-b", str(base.path), "-F", base.format, str(target)], target)
    return target


def _run(argv: list[str], about: Path) -> str:
    """Run qemu-img supervised (it dies with the session) and bounded by :data:`QEMU_IMG_TIMEOUT`."""
    what = f"{' '.join(argv[:2])} {about}"
    try:
        result = run_supervised(argv, timeout=QEMU_IMG_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        raise VMStateError(timeout_message(what, expired, "Check that the disk holding it is not full or hung "
                                                          "(a qemu-img create or info takes milliseconds).")) from None
    if result.returncode != 0:
        raise VMStateError(f"{what} failed: {result.stderr.strip()}")
    return result.stdout
