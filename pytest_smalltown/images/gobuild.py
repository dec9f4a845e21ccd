"""Building the reference node's Go programs (Kubernetes, etcd, CoreDNS) and the conformance suite.

Each program is a tiny Go module of ours under ``images/go/<name>`` whose
``go.mod``/``go.sum`` pin an upstream release; ``go build`` fetches the sources
through the Go module proxy. Kubernetes takes tens of minutes on two cores the
first time, so two caches matter:

* Go's own build cache (``go env GOCACHE``) keeps compiled packages. It is only
  hit when the flags and environment are *identical* to the earlier build, so
  :data:`GO_ENV` and the flags below must not drift; with a warm cache a build
  is little more than a relink.
* Our artifact cache (:func:`cache.cached_build`) keeps the linked binary, keyed
  by the module's files, the flags and ``go version``, so an unchanged program
  is not even relinked.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images.cache import cached_build, hash_inputs, stat_signature
from pytest_smalltown.images.tools import BuildError, run_tool

GO_DIR = Path(__file__).parent / "go"

#: Kubernetes release our ``go/kube/go.mod`` pins; stamped into the binary so
#: that ``kubectl version`` and the apiserver's /version report it.
KUBERNETES_VERSION = "v1.34.4"

#: Environment of every build. ``GOWORK=off`` ignores any go.work above us,
#: ``GOTOOLCHAIN=local`` forbids silently downloading another toolchain (which
#: would also miss the build cache), ``CGO_ENABLED=0`` makes static binaries
#: that run on the node whatever its libc.
GO_ENV: dict[str, str] = {"GOWORK": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
#: :data:`GO_ENV` as every Go cache key spells it (``CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off``).
GO_ENV_KEY = " ".join(f"{k}={v}" for k, v in sorted(GO_ENV.items()))


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = [
        ("k8s.io/component-base/version.gitVersion", version),
        ("k8s.io/component-base/version.gitMajor", major),
        ("k8s.io/component-base/version.gitMinor", minor),
        ("k8s.io/component-base/version.gitTreeState", "clean"),
        ("k8s.io/component-base/version.buildDate", "1970-01-01T00:00:00Z"),
        ("k8s.io/client-go/pkg/version.gitVersion", version),
    ]
    return " ".join(["-s -w", *(f"-X {name}={value}" for name, value in stamps)])


@dataclass(frozen=True)
class GoProgram:
    """One Go program: its module directory, the package to build and its flags.

    Most programs are ``go build .`` of their own module. The conformance suite
    is the test binary of an upstream package (``go test -c``), built from a
    module of ours that pins the same versions as ``kube`` so that the two
    builds share Go's build cache.
    """

    name: str
    ldflags: str
    #: Directory under ``images/go`` holding go.mod/go.sum (default: ``name``).
    module: str | None = None
    #: Package to build, relative (``.``) or an import path from the module's build list.
    package: str = "."
    #: Build the package's test binary (``go test -c``) instead of a command.
    test: bool = False
    #: How long a cold build takes, for the progress message.
    cold_build: str = "minutes"

    @property
    def module_dir(self) -> Path:
        return GO_DIR / (self.module or self.name)

    @property
    def binary(self) -> str:
        """File name of the built program (``e2e.test`` for a test binary, as upstream names it)."""
        return f"{self.name}.test" if self.test else self.name

    def build_args(self, output: Path) -> list[str]:
        """The exact ``go build`` argv (kept identical to warm Go's build cache)."""
        if self.test:
            # -vet=off: vet checks the suite's sources, which upstream already did.
            return ["go", "test", "-c", "-vet=off", "-trimpath", "-ldflags", self.ldflags,
                    "-o", str(output), self.package]
        return ["go", "build", "-trimpath", "-ldflags", self.ldflags, "-o", str(output), self.package]

    def key_parts(self) -> list[str]:
        """What the cache key needs beyond module files and flags.

        Empty for a plain ``go build .``, so the keys of the node's programs
        stay what they were before test binaries existed.
        """
        if self.package == "." and not self.test:
            return []
        return [f"package={self.package}", f"test={self.test}"]


PROGRAMS: dict[str, GoProgram] = {
    "kube": GoProgram("kube", _kube_ldflags(KUBERNETES_VERSION), cold_build="tens of minutes"),
    "etcd": GoProgram("etcd", "-s -w"),
    "coredns": GoProgram("coredns", "-s -w"),
}

#: Programs that run on the host against a cluster, not inside the node: kept
#: out of :data:`PROGRAMS` so the node image neither builds nor contains them.
#: ``e2e`` is the upstream conformance suite (``e2e.test``) with the same
#: version stamps as ``kube``, so its version checks agree with the cluster;
#: ``ginkgo`` is the CLI that runs it in parallel, built from the same module
#: so that it is exactly the Ginkgo version compiled into ``e2e.test``.
HOST_PROGRAMS: dict[str, GoProgram] = {
    "e2e": GoProgram("e2e", _kube_ldflags(KUBERNETES_VERSION), package="k8s.io/kubernetes/test/e2e",
                     test=True, cold_build="tens of minutes"),
    "ginkgo": GoProgram("ginkgo", "-s -w", module="e2e", package="github.com/onsi/ginkgo/v2/ginkgo"),
}


class GoBuildError(BuildError):
    """The Go toolchain is missing or a build failed."""


def go_version() -> str:
    """``go version`` output, e.g. ``go version go1.26.8 linux/amd64``; part of every cache key.

    A lookup of the node image asks for it once per program; the answer is
    remembered per process for as long as the ``go`` binary is the same file
    (path and stat signature). A ``go`` that is a script (a version manager's
    shim, which may pick another toolchain on each call) is asked every time.
    """
    go = shutil.which("go")
    if go is None:
        raise GoBuildError(
            "the Go toolchain ('go') is not on PATH; the reference node image builds "
            "Kubernetes, etcd and CoreDNS from source. Install Go >= 1.26 "
            "(https://go.dev/dl/) and try again."
        )
    binary = os.path.realpath(go)
    with open(binary, "rb") as handle:
        is_elf = handle.read(4) == b"\x7fELF"
    if is_elf:
        return _remembered_go_version(binary, stat_signature(os.stat(binary)))
    return _ask_go_version(go)


@functools.lru_cache(maxsize=8)
def _remembered_go_version(binary: str, signature: str) -> str:
    """:func:`_ask_go_version` of ``binary``, once per stat ``signature`` of it."""
    return _ask_go_version(binary)


def _ask_go_version(go: str) -> str:
    proc = subprocess.run([go, "version"], capture_output=True, text=True, env=go_env())
    if proc.returncode != 0:
        raise GoBuildError(f"'go version' failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def go_env() -> dict[str, str]:
    """The environment of every go command: the caller's, with :data:`GO_ENV` over it."""
    return {**os.environ, **GO_ENV}


def program_key(program: GoProgram, version: str) -> str:
    """Cache key of one program: its module files, flags, environment and toolchain."""
    return hash_inputs([program.module_dir, program.ldflags, GO_ENV_KEY, version, "gobuild-v1", *program.key_parts()])


#: Bound of one go command. A cold Kubernetes build takes tens of minutes on two cores (``e2e.test``: 632 s
#: with the kube build running beside it); one still going after two hours is stuck.
GO_TIMEOUT = 2 * 3600.0
#: How often a silent go command says it is still alive.
HEARTBEAT_SECONDS = 60.0
#: What to do about a go command that failed or ran out of time.
GO_HINT = ("Go keeps what it compiled and downloaded (its build and module caches), so a new run goes on from "
           "there; if it stalls fetching modules, check that the Go module proxy (go env GOPROXY) is reachable.")


def _heartbeat(what: str, progress: Progress, done: threading.Event, every: float) -> None:
    """Say that a long, silent go command is still alive."""
    started = time.monotonic()
    while not done.wait(every):
        progress(f"  {what}: still running ({time.monotonic() - started:.0f}s)")


def run_go(argv: list[str], what: str, cwd: Path, progress: Progress = stderr_progress,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a go command the one way every build here runs one: supervised, with a heartbeat, bounded.

    Under the reaper it dies with the session (and takes its compilers
    along); the heartbeat tells a user watching a silent build that it is
    alive; :data:`GO_TIMEOUT` stops one that hangs. Failures are
    :class:`GoBuildError` naming ``what``. ``env`` defaults to :data:`GO_ENV`
    over the caller's environment.
    """
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(what, progress, done, HEARTBEAT_SECONDS), daemon=True)
    beat.start()
    try:
        return run_tool(argv, what, cwd=cwd, env=env or go_env(), hint=GO_HINT, error=GoBuildError, timeout=GO_TIMEOUT)
    finally:
        done.set()


def compile_program(program: GoProgram, output: Path, progress: Progress = stderr_progress,
                    env: dict[str, str] | None = None, nice: int | None = None) -> Path:
    """Build ``program`` to ``output`` through :func:`run_go`, with the argv that keeps Go's build cache warm.

    ``nice`` lowers the build's priority (the switch's, built while VMs may be running).
    """
    version = go_version().removeprefix("go version ")
    progress(f"go build {program.name} ({version}); a relink if Go's build cache is warm, else {program.cold_build}")
    argv = program.build_args(output)
    if nice is not None:
        argv = ["nice", "-n", str(nice), *argv]
    run_go(argv, f"go build {program.name}", program.module_dir, progress, env)
    if not output.is_file():
        raise GoBuildError(f"go build of {program.name} reported success but wrote no {output}")
    return output


def build_program(name: str, progress: Progress = stderr_progress) -> Path:
    """Return the path of Go program ``name`` (see :data:`PROGRAMS`, :data:`HOST_PROGRAMS`), building it if needed."""
    known = {**PROGRAMS, **HOST_PROGRAMS}
    try:
        program = known[name]
    except KeyError:
        raise GoBuildError(f"unknown Go program {name!r}; known: {', '.join(sorted(known))}") from None
    key = program_key(program, go_version())

    def build(out: Path) -> None:
        compile_program(program, out / program.binary, progress)

    return cached_build(f"go-{name}", key, build, progress) / program.binary
