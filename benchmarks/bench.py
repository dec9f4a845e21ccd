#!/usr/bin/env python3
"""Measure pytest-smalltown against the targets of DESIGN section 5 and print the figures.

Not a test: nothing here asserts on time (our machines are shared and noisy);
it prints what it measured so that figures can be compared run to run.

    python benchmarks/bench.py                 # tiny VM, probe, switch, 1- and 2-node clusters
    python benchmarks/bench.py --nodes 1       # only the 1-node cluster
    python benchmarks/bench.py --e2e           # also time a whole `pytest e2e/` run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client as k8s

from pytest_smalltown.cluster import Cluster, launch_cluster
from pytest_smalltown.images.tinyvm import HELLO_LINE, TinyImage, build_tiny_image
from pytest_smalltown.kube import create_namespace, delete_namespace, exec_in_pod, busybox_pod, wait_pod_phase
from pytest_smalltown.launch.accel import probe_kvm, resolve_accel
from pytest_smalltown.launch.qemu import DirectBoot, VMConfig
from pytest_smalltown.launch.switch import launch_switch
from pytest_smalltown.launch.vm import make_workdir, remove_workdir, start_vm
from pytest_smalltown.settings import resolve
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


def bench_tiny(accel: str) -> None:
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


def bench_cluster(nodes: int) -> None:
    settings = resolve({}, {})
    started = time.monotonic()
    cluster = launch_cluster(ClusterSpec(nodes), settings, quiet)
    total = time.monotonic() - started
    try:
        boot = total - cluster.phase_seconds.get("images", 0.0)
        target = 60 * nodes
        phases = ", ".join(f"{name} {secs:.1f}s" for name, secs in cluster.phase_seconds.items())
        print(f"{nodes}-node cluster: launch -> all Ready {boot:.1f}s without image lookup (target <= {target}s); "
              f"{phases} ({load()})")  # fmt: skip
        for node in cluster.nodes:
            print(f"  {node.name} QEMU RSS {rss_mib(node.vm.pid):.0f} MiB (target <= 2560)")
        print(f"  switch QEMU RSS {rss_mib(cluster.switch.vm.pid):.0f} MiB")
        bench_workload(cluster)
        for node in cluster.nodes:
            print(f"  {node.name} QEMU RSS after workload {rss_mib(node.vm.pid):.0f} MiB")
    finally:
        cluster.close()


def bench_e2e() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "e2e/", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"pytest e2e/: {time.monotonic() - started:.0f}s wall, exit {result.returncode}: {last} (target <= 360s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="cluster sizes to measure (default 1 and 2)")
    parser.add_argument("--skip-small", action="store_true", help="skip tiny VM, probe and switch figures")
    parser.add_argument("--e2e", action="store_true", help="also time a whole pytest e2e/ run")
    args = parser.parse_args()
    accel = resolve_accel(os.environ.get("SMALLTOWN_ACCEL", "auto")).accel
    print(f"host: {os.cpu_count()} CPUs, accelerator {accel}, {load()}")
    if not args.skip_small:
        bench_probe()
        bench_tiny(accel)
        bench_switch(accel)
    for nodes in args.nodes or [1, 2]:
        bench_cluster(nodes)
    if args.e2e:
        bench_e2e()
    return 0


if __name__ == "__main__":
    sys.exit(main())
