"""Choosing the accelerator: prove KVM works before trusting it.

``/dev/kvm`` existing is not enough: on our CI machines it is a nested PVM
hypervisor on which a stock kernel hangs right after decompression. So
``auto`` boots the tiny VM under KVM with a short deadline and only picks KVM
if the guest reached init; otherwise TCG. The verdict is cached per host
(QEMU version, host kernel, CPU model), because the probe costs seconds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass

from pytest_smalltown import contract
from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.launch.qemu import QEMU_BINARY, Accel, DirectBoot, VMConfig

ACCEL_MODES: tuple[str, ...] = ("auto", "kvm", "tcg")
PROBE_DEADLINE = 20.0


@dataclass(frozen=True)
class ProbeResult:
    accel: Accel
    reason: str
    seconds: float
    host: str


def _host_fingerprint(qemu: str) -> str:
    try:
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "unknown-qemu"
    cpu = "unknown-cpu"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{version} | {platform.release()} | {cpu}"


def probe_kvm(qemu: str = QEMU_BINARY, deadline: float = PROBE_DEADLINE) -> ProbeResult:
    """Boot the tiny VM under KVM; KVM only if it reaches init within ``deadline``."""
    from pytest_smalltown.images.tinyvm import HELLO_LINE, TinyImage, build_tiny_image
    from pytest_smalltown.launch.vm import LaunchError, VMExitedError, make_workdir, remove_workdir, start_vm

    host = _host_fingerprint(qemu)
    started = time.monotonic()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ProbeResult("tcg", "/dev/kvm is missing or not accessible", 0.0, host)
    image = build_tiny_image()
    config = VMConfig(
        name="accel-probe",
        boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline("tiny.poweroff=1")),
        qemu=qemu,
        accel="kvm",
        memory_mib=256,
        rng=False,
    )
    workdir = make_workdir("st-probe-")
    vm = start_vm(config, workdir)
    try:
        vm.wait_for_console(HELLO_LINE, deadline, what="init under KVM")
        return ProbeResult("kvm", "tiny VM reached init under KVM", time.monotonic() - started, host)
    except VMExitedError as error:
        detail = (error.stderr.strip().splitlines() or [f"exit status {error.returncode}"])[-1]
        return ProbeResult("tcg", f"KVM unusable, QEMU exited: {detail}", time.monotonic() - started, host)
    except LaunchError as error:
        first = str(error).splitlines()[0]
        return ProbeResult("tcg", f"KVM unusable: {first}", time.monotonic() - started, host)
    finally:
        vm.stop(grace=1)
        remove_workdir(workdir)


def node_capacity(accel: Accel, host_cpus: int) -> int:
    """How many node VMs this host runs at once without its clusters failing under their own load.

    Under TCG a booting or serving reference node keeps about one host core busy
    (etcd, the apiserver, the kubelet and containerd, all emulated). On 2-core
    hosts two 2-vCPU nodes reached Ready in 150-200 s, but three took 660-930 s
    and their apiservers then timed out TLS handshakes and etcd writes, so tests
    failed on load, not on a bug. Under KVM a node costs a fraction of a core and
    only the switch's limit applies.
    """
    if accel == "kvm":
        return contract.MAX_NODES
    return max(1, host_cpus)


def _cache_file() -> str:
    return str(cache_root() / "accel-probe.json")


def cached_verdict(qemu: str = QEMU_BINARY) -> ProbeResult | None:
    """The verdict of an earlier ``auto`` probe on this host, or None (without probing)."""
    try:
        with open(_cache_file()) as cached:
            data = json.load(cached)
        if data.get("host") == _host_fingerprint(qemu):
            return ProbeResult(**data)
    except (OSError, ValueError, TypeError):
        pass
    return None


def known_accel(mode: str, qemu: str = QEMU_BINARY) -> ProbeResult | None:
    """What :func:`resolve_accel` would answer without probing: the chosen mode, or an earlier probe's verdict.

    None when ``auto`` has not been probed on this host yet; for callers that
    must start no VM (``pytest --collect-only``).
    """
    if mode not in ACCEL_MODES:
        raise ValueError(f"accelerator must be one of {', '.join(ACCEL_MODES)}, not {mode!r}")
    if mode != "auto":
        return ProbeResult(mode, "chosen explicitly", 0.0, "")  # type: ignore[arg-type]
    return cached_verdict(qemu)


def resolve_accel(mode: str, qemu: str = QEMU_BINARY) -> ProbeResult:
    """Turn ``auto|kvm|tcg`` into a concrete accelerator, probing (once per host) for ``auto``."""
    known = known_accel(mode, qemu)
    if known is not None:
        return known
    result = probe_kvm(qemu)
    with open(_cache_file(), "w") as out:
        json.dump(asdict(result), out)
    return result
