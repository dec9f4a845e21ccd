"""Running QEMU (and swtpm) as supervised child processes.

Every VM process:

* runs in its own process group (``start_new_session``), so a Ctrl-C in the
  terminal reaches pytest, which then tears the cluster down in order, rather
  than killing VMs mid-test behind its back;
* gets ``PR_SET_PDEATHSIG=SIGKILL``, so the kernel kills it if its parent
  dies without cleaning up, and is registered with the :mod:`~pytest_smalltown.base.processes`
  watchdog, which also removes the temporary directories;
* has its serial console captured to a log file and an in-memory tail that
  :meth:`VM.wait_for_console` watches without polling.

A VM that exits while someone waits on it raises :class:`VMExitedError` with
its exit status, stderr and console tail: the three things needed to tell a
bad QEMU option from a kernel panic from a hanging init.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.processes import reaper, stop_group, supervised_popen
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.waits import WaitTimeoutError, wait_for
from pytest_smalltown.launch.console import (
    CONSOLE_TAIL_LINES,
    RECENT_CONSOLE_LINES,
    Console,
    ConsoleTail,
    longest_soft_lockup,
)
from pytest_smalltown.launch.ports import PortMap, conflict_free_port_map
from pytest_smalltown.launch.qemu import VMConfig, check_paths, health_socket, inherited_fds, qemu_argv


class LaunchError(SmalltownError, RuntimeError):
    """A VM could not be started or did not reach the state asked for."""


class VMExitedError(LaunchError):
    """A VM's QEMU process exited while it was expected to be running."""

    def __init__(self, name: str, returncode: int, stderr: str, console_tail: list[str]) -> None:
        self.name = name
        self.returncode = returncode
        self.stderr = stderr
        self.console_tail = console_tail
        tail = "\n".join(f"    {line}" for line in console_tail[-20:]) or "    (no console output)"
        super().__init__(
            f"VM {name!r} exited with status {returncode}.\n"
            f"  QEMU stderr: {stderr.strip()[-2000:] or '(empty)'}\n"
            f"  last console lines:\n{tail}"
        )


class ConsoleTimeoutError(LaunchError):
    """A VM did not print what was awaited within the deadline."""

    def __init__(self, name: str, what: str, timeout: float, console_tail: list[str]) -> None:
        self.name = name
        self.console_tail = console_tail
        tail = "\n".join(f"    {line}" for line in console_tail[-30:]) or "    (no console output)"
        super().__init__(f"VM {name!r}: {what} not seen within {timeout:.0f}s; last console lines:\n{tail}")


class GuestHungError(LaunchError):
    """A running guest's kernel reports a CPU stuck (soft lockup) for longer than any load explains."""

    def __init__(self, name: str, seconds: int, console_tail: list[str]) -> None:
        self.name = name
        self.seconds = seconds
        self.console_tail = console_tail
        tail = "\n".join(f"    {line}" for line in console_tail[-20:])
        super().__init__(f"VM {name!r}: its kernel reports a CPU stuck for {seconds}s (soft lockup); the guest "
                         f"hung.\n  last console lines:\n{tail}")


#: A soft lockup this long is a hung guest, not a busy host: under TCG on a
#: loaded host the kernel reports CPUs stuck for 20-60 s and then recovers.
HUNG_GUEST_SECONDS = 120


def check_console_not_hung(console: Console, threshold: int = HUNG_GUEST_SECONDS) -> None:
    """Raise :class:`GuestHungError` if ``console``'s lines since its restart report a soft lockup of ``threshold`` s.

    The one rule for a VM's in-memory console and a kept node's log file alike.
    """
    stuck = longest_soft_lockup(console.this_boot(RECENT_CONSOLE_LINES))
    if stuck >= threshold:
        raise GuestHungError(console.name, stuck, console.console_tail(50))


class FirmwareBootError(LaunchError):
    """The UEFI firmware could not boot the disk: it said so on the console and will not boot anything else."""

    def __init__(self, name: str, line: str, console_tail: list[str]) -> None:
        self.name = name
        self.console_tail = console_tail
        tail = "\n".join(f"    {line}" for line in console_tail[-20:])
        super().__init__(f"VM {name!r}: the UEFI firmware could not boot its disk: {line.strip()}\n"
                         "  Check that the image is a GPT disk with an EFI system partition holding "
                         "EFI/BOOT/BOOTX64.EFI (or a boot entry in the OVMF vars given).\n"
                         f"  last console lines:\n{tail}")


#: OVMF's boot manager giving up on a boot option, or on all of them. It goes
#: on with network boot and then its shell, which would only end at the boot
#: deadline; the first disk option failing is already the answer.
_FIRMWARE_GAVE_UP = re.compile(r"BdsDxe: (failed to (?:load|start) Boot[0-9A-F]{4} .*|No bootable option or device was found.*)")


def check_firmware_booted(console: Console) -> None:
    """Raise :class:`FirmwareBootError` if ``console``'s lines since its restart say the firmware could not boot."""
    for line in console.this_boot(RECENT_CONSOLE_LINES):
        if match := _FIRMWARE_GAVE_UP.search(line):
            raise FirmwareBootError(console.name, match.group(0), console.console_tail(50))


class DiskFullError(LaunchError):
    """QEMU stopped a VM because a write to one of its disks failed for lack of space on the host."""

    def __init__(self, name: str, device: str, path: Path, console_tail: list[str]) -> None:
        self.name = name
        self.device = device
        self.path = path
        self.console_tail = console_tail
        tail = "\n".join(f"    {line}" for line in console_tail[-20:]) or "    (no console output)"
        super().__init__(
            f"VM {name!r} is stopped: a write to its disk {device} failed for lack of space on the host, and QEMU "
            f"paused it (werror=enospc). QEMU writes that disk to {path}; {free_space(path)}. Free space there and "
            "run again (QEMU keeps the throw-away overlays of snapshot disks in $TMPDIR, /var/tmp by default: "
            "point TMPDIR at a larger file system if that is the full one).\n"
            f"  last console lines:\n{tail}"
        )


def free_space(path: Path) -> str:
    """``"its file system has 1.2 GiB free of 20.0 GiB"``, for the file system holding ``path``."""
    try:
        info = os.statvfs(path.parent)
    except OSError as error:
        return f"the free space on its file system is unknown ({error.strerror})"
    return (f"its file system has {_size(info.f_bavail * info.f_frsize)} free of "
            f"{_size(info.f_blocks * info.f_frsize)}")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    exponent = min(3, (count.bit_length() - 1) // 10)
    return f"{count / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


#: How often at most :meth:`VM.check_running` asks QEMU for the VM's run state.
HEALTH_EVERY = 1.0
#: How long one such question may take; a monitor slower than that is asked again next time.
HEALTH_TIMEOUT = 2.0


def qmp_query(socket_path: Path, command: str, timeout: float = HEALTH_TIMEOUT) -> Any:
    """Run QMP ``command`` (no arguments) on a fresh connection to ``socket_path``; its return value.

    QMP is one JSON object per line: a greeting, then a reply per command,
    with events in between. Spoken here by hand rather than through
    ``qemu.qmp``, whose synchronous client runs the calling thread's asyncio
    loop: the death watch asks from its own thread while the main thread's
    monitors (a reboot, a save) may be running theirs.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        stream = sock.makefile("rwb")
        _qmp_message(stream.readline, "QMP")
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            reply = _qmp_message(stream.readline, "return")
        return reply


def _qmp_message(readline: Callable[[], bytes], key: str) -> Any:
    """The next QMP message carrying ``key`` (events are skipped); a QMP error is a :class:`ValueError`."""
    while True:
        line = readline()
        if not line:
            raise ConnectionError("QEMU closed the QMP connection")
        message = json.loads(line)
        if "error" in message:
            raise ValueError(f"QMP error: {message['error']}")
        if key in message:
            return message[key]


def check_not_stopped_on_full_disk(name: str, socket_path: Path, tail: Callable[[], list[str]]) -> None:
    """Raise :class:`DiskFullError` if QEMU stopped the VM because a disk write found the host's disk full.

    QEMU's default ``werror=enospc`` pauses a VM whose disk write fails with
    ENOSPC, silently: nothing on its stderr or console, and it never exits,
    so only the boot deadline (``--smalltown-boot-timeout``) ended such a launch or test. We keep
    that policy and ask QEMU (``query-status``: ``io-error``;
    ``query-block``: the drive whose ``io-status`` is ``nospace``) instead of
    switching to ``werror=report``, which would hand the error to the guest:
    its file systems would turn read-only or lose writes, and the failure
    would show minutes later as something else (a component crash, a test
    timeout), naming a guest device rather than the host file that filled up.
    Paused, the guest stays intact and the error names the file. A monitor
    that does not answer (QEMU starting, exiting, busy) is no verdict: the
    next check asks again, and an exit is the process check's to see.
    """
    try:
        if qmp_query(socket_path, "query-status").get("status") != "io-error":
            return
        device, path = _stopped_disk(qmp_query(socket_path, "query-block"))
    except (OSError, ValueError):
        return
    raise DiskFullError(name, device, path, tail())


def _stopped_disk(blocks: list[dict[str, Any]]) -> tuple[str, Path]:
    """The drive QEMU stopped on (``io-status`` ``nospace``, else any not ``ok``) and the host file it writes."""
    inserted = [block for block in blocks if "inserted" in block]
    ranked = sorted(inserted, key=lambda block: {"nospace": 0, "ok": 2}.get(block.get("io-status", "ok"), 1))
    if not ranked:
        raise ValueError("QEMU reports no disk")
    return ranked[0]["device"], written_file(ranked[0]["inserted"]["file"])


def written_file(name: str) -> Path:
    """The host file QEMU writes a drive to, from ``query-block``'s ``file``: a path, or ``json:{...}``.

    A ``snapshot=on`` drive is a throw-away qcow2 overlay (``/var/tmp/vl.XXXXXX``)
    over the image, described as JSON: the overlay's own file is where
    writes go, and whose file system filled up.
    """
    if not name.startswith("json:"):
        return Path(name)
    node: Any = json.loads(name.removeprefix("json:"))
    while isinstance(node, dict) and "file" in node:
        node = node["file"]
    if isinstance(node, dict):
        node = node.get("filename", name)
    return Path(str(node))


def make_workdir(prefix: str = "st-") -> Path:
    """A private temporary directory under /tmp with a short path.

    UNIX socket paths are limited to 108 bytes, and swtpm's control socket
    lives here, so it must not sit under a deep pytest tmp_path. The reaper
    removes it even if this process is SIGKILLed.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    reaper().watch_path(path)
    return path


def remove_workdir(path: Path) -> None:
    """Remove a directory made by :func:`make_workdir` and stop watching it."""
    shutil.rmtree(path, ignore_errors=True)
    reaper().forget_path(path)


class Process:
    """A supervised child process in its own process group (QEMU or swtpm)."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, pass_fds: Iterable[int] = (), capture_stdout: bool = False
    ) -> None:
        self.name = name
        self.argv = argv
        self._stderr_path = workdir / f"{name}.stderr"
        with open(self._stderr_path, "wb") as stderr:
            self._popen = supervised_popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else stderr,
                stderr=stderr,
                pass_fds=tuple(pass_fds),
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL to the whole group after ``grace`` seconds; returns the exit status."""
        if self._popen.poll() is None:
            try:
                self._popen.terminate()
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        return stop_group(self._popen)  # and anything it left in its group


class VM(Process):
    """A running QEMU VM with a captured serial console.

    ``history`` is console output from before this process existed (a VM
    restored from a snapshot continues the console of the VM that was
    saved): it starts the log and the tail, so evidence reads from boot on.
    """

    #: QMP socket of the liveness checks (:func:`~pytest_smalltown.launch.qemu.health_socket`); None: not asked.
    _health_socket: Path | None = None

    def __init__(self, config: VMConfig, workdir: Path, history: Sequence[str] = ()) -> None:
        binary = find_program(config.qemu, "the VMs run in it", "qemu-system-x86")
        check_paths(config)
        self.config = config
        self.console_log = workdir / f"{config.name}.console.log"
        self._history = list(history)
        if self._history:
            self._history.append(f"[pytest-smalltown: {config.name} restored from a snapshot; its console continues]")
        #: The console's last lines, in memory (the full log is :attr:`console_log`).
        self.console = ConsoleTail(config.name, self._history)
        self._health_socket = health_socket(config)
        self._health_lock = threading.Lock()
        self._next_health_check = 0.0
        argv = qemu_argv(dataclasses.replace(config, qemu=binary))
        super().__init__(config.name, argv, workdir, pass_fds=inherited_fds(config), capture_stdout=True)
        self._reader = threading.Thread(target=self._read_console, name=f"console-{config.name}", daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        """Copy QEMU's serial output to the log file and the in-memory tail until EOF.

        The pipe must be drained whatever happens: if this thread stopped,
        QEMU's serial writes would block and the guest would stall, and the
        failure would read as a console timeout. So a failing log file (disk
        full, removed directory) is reported once, in the tail, and reading
        goes on into memory only.
        """
        assert self._popen.stdout is not None
        log: BinaryIO | None = None
        try:
            log = open(self.console_log, "wb")
            log.writelines(f"{line}\n".encode() for line in self._history)
        except OSError as error:
            self._note_log_error(error)
        try:
            for raw in self._popen.stdout:
                if log is not None:
                    try:
                        log.write(raw)
                        log.flush()
                    except OSError as error:
                        self._note_log_error(error)
                        with contextlib.suppress(OSError):
                            log.close()
                        log = None
                self.console.append(raw.decode(errors="replace").rstrip("\r\n"))
        finally:
            if log is not None:
                with contextlib.suppress(OSError):
                    log.close()
            self.console.end()

    def _note_log_error(self, error: OSError) -> None:
        self.console.append(f"[pytest-smalltown: console log {self.console_log} not written from here on: {error}]")

    def console_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` console lines (from memory; the full log is :attr:`console_log`)."""
        return self.console.console_tail(lines)

    def note_reset(self) -> None:
        """Mark that the machine restarts now (a reset or a reboot), so that health checks read only the new boot."""
        self.console.note_reset()

    def exited_error(self) -> VMExitedError:
        returncode = self._popen.wait()
        self._reader.join(timeout=2)
        return VMExitedError(self.name, returncode, self.stderr(), self.console_tail(50))

    def check_running(self) -> None:
        """Raise :class:`VMExitedError` if QEMU has exited, :class:`DiskFullError` if it stopped the VM on a full disk.

        Every liveness check of the harness comes here (launch waits, the
        test's death watch, the pool, QMP waits), so a VM paused for lack of
        disk space is noticed within :data:`HEALTH_EVERY` seconds, as an exit is.
        """
        if self._popen.poll() is not None:
            raise self.exited_error()
        self._check_disks()

    def _check_disks(self) -> None:
        """:func:`check_not_stopped_on_full_disk` at most every :data:`HEALTH_EVERY` s, by one thread at a time."""
        socket_path = self._health_socket
        if socket_path is None or not self._health_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() < self._next_health_check:
                return
            self._next_health_check = time.monotonic() + HEALTH_EVERY
            check_not_stopped_on_full_disk(self.name, socket_path, lambda: self.console_tail(50))
        finally:
            self._health_lock.release()

    def check_not_hung(self, threshold: int = HUNG_GUEST_SECONDS) -> None:
        """Raise :class:`GuestHungError` if this boot's last console lines report a long soft lockup."""
        check_console_not_hung(self.console, threshold)

    def check_firmware_booted(self) -> None:
        """Raise :class:`FirmwareBootError` if the UEFI firmware reported that it could not boot the disk."""
        check_firmware_booted(self.console)

    def wait_for_console(self, pattern: str | re.Pattern[str], timeout: float, what: str | None = None) -> re.Match[str]:
        """Block until a console line (seen at any time since boot) matches ``pattern``.

        Raises :class:`VMExitedError` if QEMU exits first and
        :class:`ConsoleTimeoutError` (with the console tail) on the deadline.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        match = self.console.search(regex, timeout)
        if match is not None:
            return match
        if self.console.ended:
            raise self.exited_error()
        raise ConsoleTimeoutError(self.name, what or f"/{regex.pattern}/", timeout,
                                  self.console.console_tail(CONSOLE_TAIL_LINES))


def start_vm(config: VMConfig, workdir: Path, history: Sequence[str] = ()) -> VM:
    """Start ``config`` as a supervised QEMU process (``config.qemu``) whose files live in ``workdir``."""
    return VM(config, workdir, history)


PORT_RETRIES = 3


def start_vm_with_ports(
    make_config: Callable[[PortMap], VMConfig],
    guest_ports: Iterable[int],
    workdir: Path,
    settle: float = 5.0,
    history: Sequence[str] = (),
) -> tuple[VM, PortMap]:
    """Start a VM whose user-mode NIC forwards ``guest_ports`` to fresh host ports.

    A free port can be taken by someone else between choosing it and QEMU
    binding it; QEMU then exits at once ("Could not set up host forwarding
    rule"). That case is retried with a new port map, up to
    :data:`PORT_RETRIES` times; any other early exit is raised as is.
    Returns once every forwarded host port is listening.
    """
    ports = list(guest_ports)
    last_error: VMExitedError | None = None
    for _ in range(PORT_RETRIES):
        port_map = conflict_free_port_map(ports)
        vm = start_vm(make_config(port_map), workdir, history)
        try:
            wait_listening(vm, port_map.values(), settle)
            return vm, port_map
        except VMExitedError as error:
            vm.stop()
            if "host forwarding rule" not in error.stderr:
                raise
            last_error = error
        except BaseException:
            # Any other failure, Ctrl-C included: the VM is ours to stop.
            vm.stop()
            raise
    assert last_error is not None
    raise LaunchError(f"could not bind forwarded ports after {PORT_RETRIES} attempts: {last_error}")


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """TCP sockets in LISTEN state owned by process ``pid``, as (address, port)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            address_hex, port_hex = local.split(":")
            if len(address_hex) == 8:
                address = ".".join(str(b) for b in reversed(bytes.fromhex(address_hex)))
            else:
                address = address_hex
            found.add((address, int(port_hex, 16)))
    return found


def wait_listening(vm: VM, host_ports: Iterable[int], timeout: float) -> None:
    """Wait until the VM's QEMU process listens on every one of ``host_ports`` (else a :class:`LaunchError`)."""
    wanted = set(host_ports)
    missing = wanted

    def all_listening() -> bool:
        nonlocal missing
        vm.check_running()  # an exit is the answer at once (a LaunchError: fatal)
        missing = wanted - {port for _, port in listening_sockets(vm.pid)}
        return not missing

    try:
        wait_for(f"VM {vm.name!r} to listen on its host ports", all_listening, timeout, interval=0.05,
                 fatal=(LaunchError,))
    except WaitTimeoutError:
        raise LaunchError(f"VM {vm.name!r}: host ports {sorted(missing)} not listening after {timeout:.0f}s") from None


#: How long swtpm may take to create its control socket (it takes milliseconds).
SWTPM_START_TIMEOUT = 10.0


def start_swtpm(workdir: Path, name: str = "swtpm") -> tuple[Process, Path]:
    """Start a TPM 2.0 emulator for one VM; returns it and the socket QEMU connects to.

    ``--terminate`` makes swtpm exit when QEMU disconnects, and the process is
    supervised like a VM in case QEMU never connects. swtpm splits its
    ``key=value,...`` options at commas with no escape (unlike QEMU), so a
    work directory with a comma is refused rather than passed.
    """
    if "," in str(workdir):
        raise LaunchError(f"swtpm cannot use {workdir}: its options have no escape for the comma in that path")
    binary = find_program("swtpm", "a VM's TPM is emulated by it", "swtpm swtpm-tools", otherwise="disable the TPM")
    state = workdir / f"{name}-state"
    state.mkdir(exist_ok=True)
    sock = workdir / f"{name}.sock"
    argv = [binary, "socket", "--tpm2", "--tpmstate", f"dir={state}",
            "--ctrl", f"type=unixio,path={sock}", "--terminate", "--flags", "not-need-init,startup-clear"]  # fmt: skip
    process = Process(name, argv, workdir)

    def socket_made() -> bool:
        if sock.exists():
            return True
        if process.returncode is not None:
            raise LaunchError(f"swtpm exited with status {process.returncode}: {process.stderr()}")
        return False

    try:
        wait_for(f"swtpm to create {sock}", socket_made, SWTPM_START_TIMEOUT, interval=0.02, fatal=(LaunchError,))
    except WaitTimeoutError:
        process.stop()
        raise LaunchError(f"swtpm did not create {sock} within {SWTPM_START_TIMEOUT:.0f}s: "
                          f"{process.stderr()}") from None
    return process, sock
