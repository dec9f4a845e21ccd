"""The programs a run needs and the command line of one chunk: ``e2e.test`` alone, or the Ginkgo CLI over it.

The suite runs on the host against the cluster's forwarded API server; the
framework flags below say why each one is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.base.progress import Progress, stderr_progress

#: Default focus: every spec that is part of the conformance profile.
CONFORMANCE_FOCUS = r"\[Conformance\]"

#: Ginkgo's whole-suite timeout. Its default (1h) would cut a full conformance
#: run on emulated nodes in the middle; per-spec timeouts still apply.
SUITE_TIMEOUT = "24h"


@dataclass(frozen=True)
class SuiteBinaries:
    """The programs a run needs: ``e2e.test``, the ``kube`` multi-call binary, the Ginkgo CLI."""

    e2e: Path
    kube: Path
    #: Only needed for parallel runs (``procs > 1``); ``e2e.test`` alone runs serially.
    ginkgo: Path | None = None


def build_suite(procs: int = 1, progress: Progress = stderr_progress) -> SuiteBinaries:
    """Build (or find in the cache) what a run with ``procs`` processes needs."""
    from pytest_smalltown.images.gobuild import build_program

    return SuiteBinaries(
        e2e=build_program("e2e", progress),
        kube=build_program("kube", progress),
        ginkgo=build_program("ginkgo", progress) if procs > 1 else None,
    )


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides the command line of one run (one chunk)."""

    kubeconfig: Path
    report_dir: Path
    kubectl: Path
    focus: str = CONFORMANCE_FOCUS
    skip: str | None = None
    procs: int = 1
    #: ``e2e.test --report-prefix``: gives each chunk's JUnit its own file name.
    report_prefix: str = ""


def framework_args(options: RunOptions) -> list[str]:
    """Flags of the Kubernetes e2e framework (``test/e2e/framework``), for every process."""
    args = [
        f"--kubeconfig={options.kubeconfig}",
        # The fallback provider: no cloud API, and not in the framework's list
        # of providers with SSH, so SSH-only specs skip instead of failing.
        "--provider=skeleton",
        f"--kubectl-path={options.kubectl}",
        f"--report-dir={options.report_dir}",
        # Perf data and other side files go beside the report, not in /tmp.
        f"--e2e-output-dir={options.report_dir}",
        # Our control plane is processes on the node, not kube-system pods:
        # there are no system pods to wait for before the suite starts.
        "--minStartupPods=-1",
        # Otherwise the suite ends by running cluster/log-dump/log-dump.sh from
        # a Kubernetes checkout to SSH into nodes; node logs come from
        # NodeDebugService instead.
        "--disable-log-dump=true",
    ]
    if options.report_prefix:
        args.append(f"--report-prefix={options.report_prefix}")
    return args


def ginkgo_args(options: RunOptions) -> list[str]:
    """Ginkgo flags (without the ``ginkgo.`` prefix that ``e2e.test`` wants for them)."""
    args = [
        f"timeout={SUITE_TIMEOUT}",
        "no-color",
        # One line per finished spec, so progress can be read line by line.
        "force-newlines",
        # Verbose: every finished spec is reported with its name (by default a
        # passed spec is a bare bullet), which is what results.jsonl is made
        # from. Skips are not silenced: a spec skipped at run time
        # (e2eskipper) would vanish with them; the price is one bare "S" line
        # in the log per spec the focus filters out.
        "v",
        f"focus={options.focus}",
    ]
    if options.skip:
        args.append(f"skip={options.skip}")
    return args


def build_command(binaries: SuiteBinaries, options: RunOptions) -> list[str]:
    """The argv of a run: ``e2e.test`` alone, or the Ginkgo CLI driving ``procs`` copies of it."""
    if options.procs < 1:
        raise ConformanceError(f"procs must be at least 1, got {options.procs}")
    if options.procs == 1:
        return [str(binaries.e2e), *(f"--ginkgo.{arg}" for arg in ginkgo_args(options)), *framework_args(options)]
    if binaries.ginkgo is None:
        raise ConformanceError(f"running with {options.procs} processes needs the Ginkgo CLI, which was not given")
    return [
        str(binaries.ginkgo), f"--procs={options.procs}", *(f"--{arg}" for arg in ginkgo_args(options)),
        str(binaries.e2e), "--", *framework_args(options),
    ]  # fmt: skip
