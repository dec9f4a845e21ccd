"""Pure construction of QEMU command lines from typed options.

Nothing here starts a process or touches the file system, so every launch
option can be unit-tested by looking at the argv. Three shapes are supported:

* UEFI boot of a Smalltown disk image (q35, OVMF code read-only, OVMF vars and
  the disk as throw-away snapshots, optional swtpm TPM 2.0), as the original
  Smalltown launcher did;
* direct kernel boot (kernel, initramfs, command line, optional disk) on q35,
  which the reference node image uses because it skips firmware entirely;
* the microVM machine (``-M microvm``) the Nanoswitch runs on.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pytest_smalltown.launch.ports import PortMap

Machine = Literal["q35", "microvm"]
Accel = Literal["kvm", "tcg"]

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class DirectBoot:
    """Boot a Linux kernel directly: ``-kernel``/``-initrd``/``-append``."""

    kernel: Path
    initramfs: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class UefiBoot:
    """Boot through OVMF firmware from the first disk.

    The code image is mapped read-only; the vars image is used as a snapshot so
    that the firmware may write to it without changing the file.
    """

    ovmf_code: Path
    ovmf_vars: Path


@dataclass(frozen=True)
class SocketNic:
    """A NIC whose other end is an inherited socket (one end of a socketpair)."""

    fd: int
    mac: str


@dataclass(frozen=True)
class UserNic:
    """A NIC on QEMU user-mode networking (SLIRP), with host port forwards.

    Always ``restrict=on``: the guest reaches nothing through it, neither the
    host (SLIRP maps 10.0.2.2 to the host's loopback, where other clusters'
    debug services and a CI machine's local services listen) nor anything
    beyond; only the forwards, which the host opens towards the guest, work.
    Nodes cannot pull from registries anyway here; images are preloaded.
    """

    mac: str
    forwards: PortMap = field(default_factory=lambda: PortMap({}))


@dataclass(frozen=True)
class Disk:
    """A block device; ``snapshot`` makes every write go to a temporary overlay.

    ``read_only`` disks are shared between VMs as they are (no overlay, the
    guest sees a read-only device); ``serial`` is how the guest tells disks
    apart (``/sys/block/vdX/serial``, at most 20 bytes).
    """

    path: Path
    format: Literal["raw", "qcow2"] = "raw"
    snapshot: bool = True
    read_only: bool = False
    serial: str | None = None

    def __post_init__(self) -> None:
        if self.read_only and self.snapshot:
            raise ValueError(f"disk {self.path}: a read-only disk needs no snapshot (set snapshot=False)")
        if self.serial is not None and (len(self.serial.encode()) > 20 or "," in self.serial):
            raise ValueError(f"disk serial {self.serial!r}: at most 20 bytes and no commas")


@dataclass(frozen=True)
class VMConfig:
    """Everything that decides a VM's QEMU command line."""

    name: str
    boot: DirectBoot | UefiBoot
    #: The QEMU program that runs it (``--smalltown-qemu``): a saved state only loads into the QEMU that wrote it.
    qemu: str = QEMU_BINARY
    machine: Machine = "q35"
    accel: Accel = "tcg"
    memory_mib: int = 512
    cpus: int = 1
    nics: tuple[SocketNic | UserNic, ...] = ()
    disks: tuple[Disk, ...] = ()
    #: fw_cfg entries (name, file), e.g. the enrolment config.
    fw_cfg: tuple[tuple[str, Path], ...] = ()
    #: UNIX socket of a running swtpm; adds a TPM 2.0 device.
    tpm_socket: Path | None = None
    #: virtio-serial ports (name in the guest, UNIX socket QEMU listens on for the host end):
    #: a channel between one guest program and the host that no network reaches (the switch's faults).
    virtio_ports: tuple[tuple[str, Path], ...] = ()
    rng: bool = True
    no_reboot: bool = True
    #: TSC rate handed to a microVM kernel (None: the host's rate, see below).
    tsc_khz: int | None = None
    #: UNIX socket for QMP, QEMU's control protocol (pause, save, restore); a second one,
    #: :func:`health_socket`, serves the liveness checks.
    qmp_socket: Path | None = None
    #: Restore from a saved state: a migration URI (``exec:...``) QEMU reads at start.
    incoming: str | None = None
    #: Start with the vCPUs stopped (``-S``); QMP ``cont`` starts them.
    paused: bool = False
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.machine == "microvm" and isinstance(self.boot, UefiBoot):
            raise ValueError("the microvm machine has no firmware; use DirectBoot")
        if self.memory_mib < 16:
            raise ValueError(f"memory_mib={self.memory_mib} is too small to boot anything")
        if self.cpus < 1:
            raise ValueError(f"cpus={self.cpus} must be at least 1")


def option_value(value: str) -> str:
    """``value`` as it must appear inside a comma-separated QEMU option (``-drive file=...,...``).

    QEMU splits ``key=value,key=value`` options at every comma and reads a
    doubled comma as one literal comma. A path holding ``,snapshot=off,...``
    would otherwise add options of its own to the drive.
    """
    return value.replace(",", ",,")


def path_value(path: Path) -> str:
    """File name ``path`` as a value inside a QEMU option: commas doubled, never read as a block protocol.

    QEMU's block layer takes a file name whose first ``:`` comes before any
    ``/`` as ``protocol:...`` (``nbd:``, ``ssh:``, ``json:{...}``, which
    carries options of its own); a relative path gets a ``./`` so that it
    stays a file name. Every file name in :func:`qemu_argv` goes through here.
    """
    name = str(path)
    if not name.startswith("/"):
        name = "./" + name
    return option_value(name)


def random_mac() -> str:
    """A random locally administered unicast MAC address."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def host_tsc_khz() -> int:
    """The host CPU clock in kHz as /proc/cpuinfo reports it (2 GHz if unknown)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return 2_000_000


def microvm_cmdline(cmdline: str, tsc_khz: int) -> str:
    """Kernel arguments a microVM needs under emulation.

    A microVM has neither HPET nor ACPI PM timer, so the kernel can only
    calibrate the TSC against nothing; on a loaded TCG host that calibration
    fails and boot hangs right after "Marking TSC unstable" (measured: about
    half of the boots). ``tsc_early_khz`` skips the calibration.
    """
    if "tsc_early_khz=" in cmdline:
        return cmdline
    return f"{cmdline} tsc_early_khz={tsc_khz}".strip()


def accel_args(accel: Accel) -> list[str]:
    """Accelerator and CPU model: the host CPU under KVM, TCG's full feature set otherwise."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def _virtio(machine: Machine, kind: str) -> str:
    # microvm has no PCI bus: its virtio devices sit on virtio-mmio transports.
    return f"virtio-{kind}-device" if machine == "microvm" else f"virtio-{kind}-pci"


def qemu_argv(config: VMConfig) -> list[str]:
    """The full QEMU argv for ``config``.

    The serial console is connected to QEMU's stdout (``-chardev stdio``) so that
    the supervisor can keep both a log file and an in-memory tail; there is no
    human monitor and no display, and QMP only when asked for.
    """
    argv = [config.qemu, "-name", option_value(config.name), "-nodefaults", "-no-user-config", "-display", "none"]
    if config.machine == "microvm":
        # Defaults: ACPI describes the virtio-mmio devices (no virtio_mmio.device=
        # arguments needed) and the ISA serial port is the console.
        argv += ["-M", "microvm"]
    else:
        argv += ["-M", "q35"]
    argv += accel_args(config.accel)
    argv += ["-m", str(config.memory_mib), "-smp", str(config.cpus)]
    argv += ["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]
    argv += ["-monitor", "none"]
    for monitor in (config.qmp_socket, health_socket(config)):
        if monitor is not None:
            argv += ["-qmp", f"unix:{path_value(monitor)},server=on,wait=off"]
    if config.paused:
        argv.append("-S")
    if config.incoming is not None:
        argv += ["-incoming", config.incoming]
    if config.no_reboot:
        argv.append("-no-reboot")

    boot = config.boot
    if isinstance(boot, DirectBoot):
        # -kernel and -initrd take the whole argument as one file name (no option syntax).
        argv += ["-kernel", str(boot.kernel)]
        if boot.initramfs is not None:
            argv += ["-initrd", str(boot.initramfs)]
        cmdline = boot.cmdline
        if config.machine == "microvm":
            cmdline = microvm_cmdline(cmdline, config.tsc_khz or host_tsc_khz())
        if cmdline:
            argv += ["-append", cmdline]
    else:
        argv += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={path_value(boot.ovmf_code)}",
            "-drive", f"if=pflash,format=raw,snapshot=on,file={path_value(boot.ovmf_vars)}",
        ]  # fmt: skip

    for index, disk in enumerate(config.disks):
        drive = f"id=disk{index},if=none,format={disk.format},snapshot={'on' if disk.snapshot else 'off'}"
        if disk.read_only:
            drive += ",readonly=on"
        device = f"{_virtio(config.machine, 'blk')},drive=disk{index}"
        if disk.serial is not None:
            device += f",serial={disk.serial}"
        argv += ["-drive", f"{drive},file={path_value(disk.path)}", "-device", device]

    for index, nic in enumerate(config.nics):
        if isinstance(nic, SocketNic):
            netdev = f"socket,id=net{index},fd={nic.fd}"
        else:
            netdev = ",".join([f"user,id=net{index}", "restrict=on", *nic.forwards.hostfwd_rules()])
        argv += ["-netdev", netdev, "-device", f"{_virtio(config.machine, 'net')},netdev=net{index},mac={nic.mac}"]

    for name, path in config.fw_cfg:
        argv += ["-fw_cfg", f"name={option_value(name)},file={path_value(path)}"]

    if config.tpm_socket is not None:
        argv += [
            "-chardev", f"socket,id=tpmsock,path={path_value(config.tpm_socket)}",
            "-tpmdev", "emulator,id=tpm0,chardev=tpmsock",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip

    if config.virtio_ports:
        argv += ["-device", f"{_virtio(config.machine, 'serial')},id=vserial0"]
    for index, (name, path) in enumerate(config.virtio_ports):
        argv += [
            "-chardev", f"socket,id=vport{index},path={path_value(path)},server=on,wait=off",
            "-device", f"virtserialport,bus=vserial0.0,chardev=vport{index},name={option_value(name)}",
        ]  # fmt: skip

    if config.rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                 "-device", f"{_virtio(config.machine, 'rng')},rng=rng0"]  # fmt: skip

    argv += list(config.extra_args)
    return argv


def health_socket(config: VMConfig) -> Path | None:
    """The QMP socket of the harness's liveness checks, beside :attr:`VMConfig.qmp_socket` (None without one).

    QEMU serves one client per QMP socket at a time and makes the next one
    wait: checks sharing the control socket would queue behind a reboot or a
    save that holds it for minutes (and ``smalltown reboot`` behind them).
    """
    return None if config.qmp_socket is None else health_socket_of(config.qmp_socket)


def health_socket_of(qmp_socket: Path) -> Path:
    """The liveness checks' QMP socket of the VM whose control socket is ``qmp_socket`` (for a kept cluster's)."""
    return qmp_socket.with_name(qmp_socket.name + ".health")


def inherited_fds(config: VMConfig) -> tuple[int, ...]:
    """File descriptors the QEMU process must inherit (socket NIC ends)."""
    return tuple(nic.fd for nic in config.nics if isinstance(nic, SocketNic))


def check_paths(config: VMConfig) -> None:
    """Fail early, naming the file, when an input of ``config`` does not exist."""
    paths: list[tuple[str, Path]] = []
    if isinstance(config.boot, DirectBoot):
        paths.append(("kernel", config.boot.kernel))
        if config.boot.initramfs is not None:
            paths.append(("initramfs", config.boot.initramfs))
    else:
        paths += [("OVMF code", config.boot.ovmf_code), ("OVMF vars", config.boot.ovmf_vars)]
    paths += [("disk image", disk.path) for disk in config.disks]
    paths += [(f"fw_cfg {name}", path) for name, path in config.fw_cfg]
    for what, path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{config.name}: {what} {path} does not exist")
