"""Early boot: the file systems, cgroups and sysctls a Kubernetes node needs.

The agent runs right after the initramfs hands over (tini is PID 1, we are
its child), so nothing is mounted that the initramfs did not move over.
mount(2) is called through ctypes rather than by forking ``mount``: under
emulation every fork+exec of a dynamically linked tool costs tens of
milliseconds, and these are a dozen calls on the critical path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_SHARED = 1 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> bool:
    """mount(2); returns False if something is already mounted there (EBUSY)."""
    Path(target).mkdir(parents=True, exist_ok=True)
    rc = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            return False
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")
    return True


def is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


#: (source, target, fstype, flags, data) in mount order.
MOUNTS: tuple[tuple[str, str, str, int, str], ...] = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    # CNI's state (libcni's cached ADD results, host-local's address reservations)
    # describes pod sandboxes, and no sandbox outlives a boot. On disk it outlived
    # a hard reset as empty files (written without fsync), and containerd then
    # failed every StopPodSandbox of the dead pods with "failed to get network
    # cached result", so kubelet never re-created them. A boot starts with none.
    ("tmpfs", "/var/lib/cni", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, "nsdelegate"),
    ("bpf", "/sys/fs/bpf", "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700"),
    ("securityfs", "/sys/kernel/security", "securityfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
)

SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # inotify limits: kubelet, containerd and CoreDNS each watch many files.
    "fs.inotify.max_user_instances": "1024",
    "fs.inotify.max_user_watches": "524288",
}


def mount_all(log: Callable[[str], None]) -> None:
    for source, target, fstype, flags, data in MOUNTS:
        try:
            # Skip what the initramfs moved over: some file systems (proc) would
            # stack a second mount instead of failing with EBUSY.
            if is_mountpoint(target):
                continue
            mount(source, target, fstype, flags, data)
        except OSError as exc:
            # Optional file systems (bpf, securityfs) may be missing from the kernel.
            log(f"mount {target} failed: {exc}")
    # Kubelet and containerd need shared propagation for mount propagation modes.
    try:
        mount("none", "/", "", MS_REC | MS_SHARED)
    except OSError as exc:
        log(f"make-rshared / failed: {exc}")
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                         ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
                         ("/dev/ptmx", "pts/ptmx")):
        if not os.path.lexists(link):
            try:
                os.symlink(target, link)
            except OSError:
                pass
    # /dev/kmsg is what kubelet's OOM watcher reads; devtmpfs provides it.


def enable_cgroup_controllers(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """Delegate every available controller to children (kubelet creates /kubepods)."""
    available = (cgroup_root / "cgroup.controllers").read_text().split()
    wanted = " ".join("+" + c for c in available)
    if wanted:
        (cgroup_root / "cgroup.subtree_control").write_text(wanted)
    return available


def apply_sysctls(values: dict[str, str], log: Callable[[str], None]) -> None:
    for key, value in values.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            path.write_text(value)
        except OSError as exc:
            log(f"sysctl {key}={value} failed: {exc}")


def set_hostname(name: str) -> None:
    socket.sethostname(name)


def link_up(ip_bin: str, dev: str) -> None:
    subprocess.run([ip_bin, "link", "set", dev, "up"], check=True, capture_output=True)


def first_nic(sys_class_net: Path = Path("/sys/class/net")) -> str | None:
    """The first non-loopback, non-virtual interface (the VM's virtio NIC)."""
    candidates = []
    for dev in sorted(sys_class_net.iterdir()):
        if dev.name == "lo":
            continue
        # Physical (including virtio) devices have a "device" link; bridges and veths do not.
        if (dev / "device").exists():
            candidates.append(dev.name)
    return candidates[0] if candidates else None


def disks_by_serial(prefix: str, sys_block: Path = Path("/sys/block"), dev: Path = Path("/dev")) -> dict[str, Path]:
    """Block devices whose virtio serial starts with ``prefix``: ``{serial: /dev/vdX}``."""
    found = {}
    for block in sorted(sys_block.glob("vd*")):
        try:
            serial = (block / "serial").read_text().strip()
        except OSError:
            continue
        if serial.startswith(prefix):
            found[serial] = dev / block.name
    return found


def memory_summary() -> str:
    """MemTotal/MemAvailable for the console (guest memory figures in reports)."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            info[k] = int(v.split()[0])
        used = info["MemTotal"] - info["MemAvailable"]
        return f"memory used {used // 1024} MiB of {info['MemTotal'] // 1024} MiB"
    except (OSError, KeyError, ValueError):
        return "memory unknown"
