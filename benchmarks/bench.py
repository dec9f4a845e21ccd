#!/usr/bin/env python3
"""Measure pytest-smalltown against the targets of DESIGN section 5 and print the figures.

Not a test: nothing here asserts on time (our machines are shared and noisy);
it prints what it measured so that figures can be compared run to run.

    python benchmarks/bench.py                 # tiny VM, probe, switch, 1- and 2-node clusters
    python benchmarks/bench.py --nodes 1       # only the 1-node cluster
    python benchmarks/bench.py --e2e           # also time `pytest e2e/`, cold and restored
    python benchmarks/bench.py --uefi          # direct boot vs the UEFI disk with a TPM, side by side
    python benchmarks/bench.py --snapshot-tools   # fresh vs shared clusters, a failed cluster's save,
                                                  # a TPM cluster restored vs booted

Each cluster size is booted cold (and saved as a snapshot), then restored
from that snapshot, in one run, so the ratio between the two is measured
side by side. Snapshots go to a private directory that is removed at the
end: the user's saved clusters are neither used nor replaced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client as k8s

from pytest_smalltown.cluster import Cluster
from pytest_smalltown.images.tinyvm import HELLO_LINE, TinyImage, build_tiny_image
from pytest_smalltown.kube import create_namespace, delete_namespace, exec_in_pod, busybox_pod, wait_pod_phase
from pytest_smalltown.launch.accel import probe_kvm, resolve_accel
from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
from pytest_smalltown.launch.switch import launch_switch
from pytest_smalltown.launch.vm import make_workdir, remove_workdir, start_vm
from pytest_smalltown.launcher import launch_cluster
from pytest_smalltown.settings import resolve
from pytest_smalltown.snapshots import SNAPSHOT_DIR_ENV, describe_size
from pytest_smalltown.spec import ClusterSpec

ROOT = Path(__file__).resolve().parents[1]


def quiet(message: str) -> None:
    pass


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def bench_tiny(accel: str) -> float:
    """The baseline every cluster figure is compared with: a tiny VM's boot on this host, now."""
    image = build_tiny_image(quiet)
    workdir = make_workdir("st-bench-")
    try:
        samples = []
        for _ in range(3):
            config = VMConfig(name="bench-tiny", accel=accel, memory_mib=256,  # type: ignore[arg-type]
                              boot=DirectBoot(image.kernel, image.initramfs, TinyImage.cmdline()))  # fmt: skip
            vm = start_vm(config, workdir)
            started = vm.started_at
            vm.wait_for_console(HELLO_LINE, 120)
            samples.append(time.monotonic() - started)
            vm.stop()
        print(f"tiny VM launch -> first serial line ({accel}): median {statistics.median(samples):.2f}s "
              f"of {', '.join(f'{s:.2f}' for s in samples)} ({load()})")  # fmt: skip
        return statistics.median(samples)
    finally:
        remove_workdir(workdir)


def bench_probe() -> None:
    result = probe_kvm()
    print(f"accelerator probe: {result.seconds:.2f}s -> {result.accel} ({result.reason}) ({load()})")


def bench_switch(accel: str) -> None:
    samples = []
    for _ in range(3):
        with launch_switch(2, accel=accel, progress=quiet) as switch:
            samples.append(switch.ready_after)
    print(f"switch start -> forwarding: median {statistics.median(samples):.2f}s of "
          f"{', '.join(f'{s:.2f}' for s in samples)} ({load()})")  # fmt: skip


def bench_workload(cluster: Cluster) -> None:
    namespace = create_namespace(cluster.kube, "bench")
    core = k8s.CoreV1Api(cluster.kube)
    try:
        starts = []
        for i in range(3):
            started = time.monotonic()
            core.create_namespaced_pod(namespace, busybox_pod(f"p{i}", ["sleep", "3600"]))
            wait_pod_phase(cluster.kube, namespace, f"p{i}", ("Running",), 300)
            starts.append(time.monotonic() - started)
        execs = []
        for _ in range(5):
            started = time.monotonic()
            result = exec_in_pod(cluster.kube, namespace, "p0", ["true"])
            execs.append(time.monotonic() - started)
            assert result.exit_code == 0
        print(f"  pod create -> Running: median {statistics.median(starts):.2f}s of "
              f"{', '.join(f'{s:.2f}' for s in starts)} (target <= 10s)")  # fmt: skip
        print(f"  exec round trip: median {statistics.median(execs):.2f}s of "
              f"{', '.join(f'{s:.2f}' for s in execs)} (target <= 2s)")  # fmt: skip
    finally:
        delete_namespace(cluster.kube, namespace)


def launch_to_ready(cluster: Cluster, total: float) -> float:
    """Seconds from launch to all Ready, without the image lookup and the snapshot save."""
    return total - cluster.phase_seconds.get("images", 0.0) - cluster.phase_seconds.get("snapshot-save", 0.0)


def bench_cluster(nodes: int, tiny: float | None, options: dict[str, str] | None = None, label: str = "") -> None:
    """Boot cold (saving a snapshot), then restore that snapshot: both to Ready, side by side."""
    figures = {}
    for mode in ("refresh", "auto"):
        started = time.monotonic()
        cluster = launch_cluster(ClusterSpec(nodes), resolve({**(options or {}), "snapshots": mode}, {}), quiet)
        total = time.monotonic() - started
        try:
            figures[mode] = launch_to_ready(cluster, total)
            phases = ", ".join(f"{name} {secs:.1f}s" for name, secs in cluster.phase_seconds.items())
            what = "cold boot" if mode == "refresh" else "restore"
            print(f"{nodes}-node{label} cluster, {what}: launch -> all Ready {figures[mode]:.1f}s without image lookup "
                  f"and save ({cluster.how}); {phases} ({load()})")  # fmt: skip
            if mode == "refresh":
                if cluster.snapshot is None and "saved as a snapshot" not in cluster.how:
                    print("  (no snapshot was saved; the restore below boots cold)")
                save = cluster.phase_seconds.get("snapshot-save")
                saved = [p for p in Path(os.environ[SNAPSHOT_DIR_ENV]).glob(f"snapshot-{nodes}-node-*")]
                if save is not None and saved:
                    print(f"  snapshot save {save:.1f}s, {describe_size(saved[0]) / 2**20:.0f} MiB on disk")
                if tiny:
                    print(f"  cold boot = {figures[mode] / tiny:.1f}x the tiny VM's boot measured above "
                          f"(target: closer to 10x)")  # fmt: skip
            for node in cluster.nodes:
                print(f"  {node.name} QEMU RSS {rss_mib(node.vm.pid):.0f} MiB (target <= 2560)")
            if mode == "auto" and not options:
                bench_workload(cluster)
        finally:
            cluster.close()
    print(f"  restore / cold boot = 1/{figures['refresh'] / figures['auto']:.1f} (target <= 1/10)")


#: N tests that each make a namespace, on a shared cluster or (fresh) each on a restored one of its own.
FRESH_MODULE = """
import pytest
from kubernetes import client as k8s

pytestmark = pytest.mark.smalltown(nodes={nodes}, fresh={fresh})


@pytest.mark.parametrize("i", range({tests}))
def test_makes_a_namespace(smalltown_kube, i):
    k8s.CoreV1Api(smalltown_kube).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=f"bench-{{i}}")))
"""


def bench_snapshot_tools(nodes: int, tests: int = 4) -> None:
    """Snapshots as a tool (issue 26), side by side: fresh vs shared, a failed cluster's save, TPM restore vs boot."""
    from pytest_smalltown.images.uefi import build_uefi_image

    # The spec's snapshot first (booted and saved), so that both runs below restore.
    launch_cluster(ClusterSpec(nodes), resolve({"snapshots": "auto"}, {}), quiet).close()
    walls = {}
    with tempfile.TemporaryDirectory(prefix="st-bench-fresh-") as directory:
        for fresh in (False, True):
            (Path(directory) / "test_bench_fresh.py").write_text(FRESH_MODULE.format(nodes=nodes, fresh=fresh,
                                                                                    tests=tests))  # fmt: skip
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                                     "no:randomly", "test_bench_fresh.py"], cwd=directory, capture_output=True,
                                    text=True)  # fmt: skip
            walls[fresh] = time.monotonic() - started
            last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(f"{tests} tests on {'a fresh' if fresh else 'one shared'} {nodes}-node cluster"
                  f"{' each' if fresh else ''}: {walls[fresh]:.1f}s wall, exit {result.returncode}: {last}")
    print(f"  a fresh cluster costs {(walls[True] - walls[False]) / tests:.1f}s per test over a shared one "
          f"(restore and close, minus the tests' share of one launch)")

    cluster = launch_cluster(ClusterSpec(nodes), resolve({"snapshots": "auto"}, {}), quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="st-bench-saved-", dir=Path.home()) as directory:
            saved = cluster.save_snapshot(Path(directory) / "snapshot")
            print(f"{nodes}-node cluster saved as a failed test's would be: {saved.seconds:.1f}s, "
                  f"{saved.size_bytes / 2**20:.0f} MiB ({cluster.how})")
    finally:
        cluster.close()
    bench_cluster(nodes, None, {"image": str(build_uefi_image(quiet)), "tpm": "true"}, label=" UEFI + TPM")


def bench_uefi(nodes: int, tiny: float | None) -> None:
    """Direct kernel boot vs the UEFI disk through OVMF with a swtpm per node: both cold, to Ready, side by side."""
    from pytest_smalltown.images.uefi import build_uefi_image

    paths = {"direct boot": {"snapshots": "off"},
             "UEFI + TPM": {"snapshots": "off", "image": str(build_uefi_image(quiet)), "tpm": "true"}}  # fmt: skip
    figures = {}
    for what, options in paths.items():
        started = time.monotonic()
        cluster = launch_cluster(ClusterSpec(nodes), resolve(options, {}), quiet)
        try:
            figures[what] = launch_to_ready(cluster, time.monotonic() - started)
            phases = ", ".join(f"{name} {secs:.1f}s" for name, secs in cluster.phase_seconds.items())
            print(f"{nodes}-node cluster, {what}: launch -> all Ready {figures[what]:.1f}s; {phases} ({load()})")
        finally:
            cluster.close()
    ratio = figures["UEFI + TPM"] / figures["direct boot"]
    print(f"  UEFI + TPM / direct boot = {ratio:.2f}"
          + (f"; tiny VM x {figures['direct boot'] / tiny:.0f} and x {figures['UEFI + TPM'] / tiny:.0f}" if tiny else ""))


def bench_e2e() -> None:
    """``pytest e2e/`` twice: booting (and saving) every cluster, then restoring them all."""
    walls = {}
    for mode in ("refresh", "auto"):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "e2e/", "-q", "-p", "no:cacheprovider",
                                 f"--smalltown-snapshots={mode}"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        walls[mode] = time.monotonic() - started
        last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        what = "booting and saving every cluster" if mode == "refresh" else "restoring every cluster"
        print(f"pytest e2e/ {what}: {walls[mode]:.0f}s wall, exit {result.returncode}: {last}")
    print(f"  restored / cold = 1/{walls['refresh'] / walls['auto']:.1f} (target <= 1/3)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster sizes to measure (default 1 and 2)")
    parser.add_argument("--skip-small", action="store_true", help="skip tiny VM, probe and switch figures")
    parser.add_argument("--e2e", action="store_true", help="also time a whole pytest e2e/ run")
    parser.add_argument("--uefi", action="store_true", help="instead of cold vs restored: direct boot vs the "
                        "UEFI disk with a TPM, per cluster size")
    parser.add_argument("--snapshot-tools", action="store_true", help="instead of cold vs restored: fresh vs shared "
                        "clusters, a failed cluster's save, a TPM cluster restored vs booted, per cluster size")
    args = parser.parse_args()
    accel = resolve_accel(os.environ.get("SMALLTOWN_ACCEL", "auto")).accel
    print(f"host: {os.cpu_count()} CPUs, accelerator {accel}, {load()}")
    snapshot_dir = tempfile.mkdtemp(prefix="st-bench-snapshots-", dir=Path.home())
    os.environ[SNAPSHOT_DIR_ENV] = snapshot_dir
    try:
        tiny = None
        if not args.skip_small:
            bench_probe()
            tiny = bench_tiny(accel)
            bench_switch(accel)
        for nodes in args.nodes or [1, 2]:
            if args.uefi:
                bench_uefi(nodes, tiny)
            elif args.snapshot_tools:
                bench_snapshot_tools(nodes)
            else:
                bench_cluster(nodes, tiny)
        if args.e2e:
            bench_e2e()
    finally:
        shutil.rmtree(snapshot_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
