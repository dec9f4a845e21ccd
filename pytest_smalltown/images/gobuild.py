"""Building the reference node's Go programs (Kubernetes, etcd, CoreDNS).

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

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.images.cache import Progress, cached_build, hash_inputs, stderr_progress

GO_DIR = Path(__file__).parent / "go"

#: Kubernetes release our ``go/kube/go.mod`` pins; stamped into the binary so
#: that ``kubectl version`` and the apiserver's /version report it.
KUBERNETES_VERSION = "v1.34.4"

#: Environment of every build. ``GOWORK=off`` ignores any go.work above us,
#: ``GOTOOLCHAIN=local`` forbids silently downloading another toolchain (which
#: would also miss the build cache), ``CGO_ENABLED=0`` makes static binaries
#: that run on the node whatever its libc.
GO_ENV: dict[str, str] = {"GOWORK": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


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
    """One Go program of the node image: its module directory and build flags."""

    name: str
    ldflags: str

    @property
    def module_dir(self) -> Path:
        return GO_DIR / self.name

    def build_args(self, output: Path) -> list[str]:
        """The exact ``go build`` argv (kept identical to warm Go's build cache)."""
        return ["go", "build", "-trimpath", "-ldflags", self.ldflags, "-o", str(output), "."]


PROGRAMS: dict[str, GoProgram] = {
    "kube": GoProgram("kube", _kube_ldflags(KUBERNETES_VERSION)),
    "etcd": GoProgram("etcd", "-s -w"),
    "coredns": GoProgram("coredns", "-s -w"),
}


class GoBuildError(RuntimeError):
    """The Go toolchain is missing or a build failed."""


def go_version() -> str:
    """``go version`` output, e.g. ``go version go1.26.8 linux/amd64``; part of every cache key."""
    go = shutil.which("go")
    if go is None:
        raise GoBuildError(
            "the Go toolchain ('go') is not on PATH; the reference node image builds "
            "Kubernetes, etcd and CoreDNS from source. Install Go >= 1.24 "
            "(https://go.dev/dl/) and try again."
        )
    proc = subprocess.run([go, "version"], capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise GoBuildError(f"'go version' failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _env() -> dict[str, str]:
    return {**os.environ, **GO_ENV}


def program_key(program: GoProgram, version: str) -> str:
    """Cache key of one program: its module files, flags, environment and toolchain."""
    env = " ".join(f"{k}={v}" for k, v in sorted(GO_ENV.items()))
    return hash_inputs([program.module_dir, program.ldflags, env, version, "gobuild-v1"])


def _heartbeat(name: str, progress: Progress, done: threading.Event, every: float) -> None:
    """Say that a long, silent ``go build`` is still alive."""
    started = time.monotonic()
    while not done.wait(every):
        progress(f"  go build {name}: still running ({time.monotonic() - started:.0f}s)")


def build_program(
    name: str,
    progress: Progress = stderr_progress,
    heartbeat_seconds: float = 60.0,
) -> Path:
    """Return the path of Go program ``name`` (``kube``, ``etcd``, ``coredns``), building it if needed."""
    try:
        program = PROGRAMS[name]
    except KeyError:
        raise GoBuildError(f"unknown Go program {name!r}; known: {', '.join(sorted(PROGRAMS))}") from None
    version = go_version()
    key = program_key(program, version)

    def build(out: Path) -> None:
        output = out / name
        hint = "tens of minutes" if name == "kube" else "minutes"
        progress(f"go build {name} ({version.removeprefix('go version ')}); "
                 f"a relink if Go's build cache is warm, else {hint}")
        done = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(name, progress, done, heartbeat_seconds), daemon=True)
        beat.start()
        try:
            proc = subprocess.run(
                program.build_args(output),
                cwd=program.module_dir,
                env=_env(),
                capture_output=True,
                text=True,
            )
        finally:
            done.set()
        if proc.returncode != 0:
            raise GoBuildError(f"go build of {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        if not output.is_file():
            raise GoBuildError(f"go build of {name} reported success but wrote no {output}")

    return cached_build(f"go-{name}", key, build, progress) / name


def build_all(progress: Progress = stderr_progress) -> dict[str, Path]:
    """Build (or find) every Go program of the node image, ``{name: binary}``."""
    return {name: build_program(name, progress) for name in PROGRAMS}
