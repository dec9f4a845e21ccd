"""The container images preloaded into the reference node (pause and busybox).

A cluster under test has no registry to pull from, so the node image carries
its two images as ``docker save``-style archives that the agent imports with
``ctr -n k8s.io images import`` before the kubelet starts. They are named as in
:mod:`pytest_smalltown.contract` with non-``latest`` tags, so the default pull
policy ``IfNotPresent`` never goes to the network.

The archives are written by hand (Python ``tarfile`` and ``json``) rather than
with a container engine: none is available on our build machines, and writing
them ourselves makes them byte-for-byte reproducible (fixed mtimes and owners,
sorted entries), so that the same inputs always give the same image digests.

* pause: a static C program of ours that, like upstream's, sleeps as the
  sandbox's PID 1 until SIGINT/SIGTERM and reaps any child handed to it.
* busybox: ``/bin/busybox`` from Debian's ``busybox-static`` plus applet links.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pytest_smalltown.contract import PAUSE_IMAGE, TEST_IMAGE
from pytest_smalltown.images import debian
from pytest_smalltown.images.cache import Progress, cached_build, hash_inputs, stderr_progress

#: Applets linked into the test image; what e2e tests may run in a pod.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "echo", "cat", "sleep", "ls", "wget", "nslookup", "nc", "env", "hostname",
    "true", "false", "date", "ps", "mkdir", "rm", "cp", "mv", "grep", "head", "tail", "wc",
    "test", "[", "printf", "id", "uname", "ip", "ifconfig", "ping", "touch", "find", "sed",
    "awk", "kill", "mount", "df", "du", "httpd", "timeout", "seq", "sort", "tr", "cut",
    "dd", "vi", "which", "whoami", "watch", "tee", "md5sum", "sha256sum", "xargs", "du",
)

PAUSE_SOURCE = r"""
/* pause: the sandbox process of a Kubernetes pod.
 * It holds the pod's namespaces open, exits cleanly on SIGINT/SIGTERM and, as
 * PID 1 of a shared PID namespace, reaps orphans so they never pile up as zombies. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { _exit(128 + sig); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause (pytest-smalltown) " PAUSE_VERSION);
        return 0;
    }
    if (getpid() != 1)
        fprintf(stderr, "pause: warning: not PID 1\n");
    struct sigaction term = {.sa_handler = on_term};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;)
        pause();
}
"""


@dataclass
class ImageLayer:
    """One filesystem layer, described entry by entry so the tar is reproducible."""

    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path -> (mode, data)
    symlinks: dict[str, str] = field(default_factory=dict)
    directories: dict[str, int] = field(default_factory=dict)

    def to_tar(self) -> bytes:
        """An uncompressed tar, root-owned, mtime 0, parents before children."""
        entries: dict[str, tarfile.TarInfo] = {}
        payload: dict[str, bytes] = {}

        def parent_dirs(path: str) -> None:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in entries:
                    entries[directory] = _info(directory, tarfile.DIRTYPE, self.directories.get(directory, 0o755))

        for path, mode in self.directories.items():
            parent_dirs(path)
            entries[path] = _info(path, tarfile.DIRTYPE, mode)
        for path, (mode, data) in self.files.items():
            parent_dirs(path)
            info = _info(path, tarfile.REGTYPE, mode)
            info.size = len(data)
            entries[path] = info
            payload[path] = data
        for path, target in self.symlinks.items():
            parent_dirs(path)
            info = _info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = target
            entries[path] = info
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(entries):
                content = payload.get(path)
                tar.addfile(entries[path], io.BytesIO(content) if content is not None else None)
        return buf.getvalue()


def _info(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_config(layer_tar: bytes, entrypoint: list[str], cmd: list[str], env: list[str]) -> bytes:
    """The image configuration JSON (OCI/Docker v1 config) for a single-layer amd64 image."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": env, "Entrypoint": entrypoint or None, "Cmd": cmd or None, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha256(layer_tar)}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pytest-smalltown oci.py"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def docker_archive(name: str, layer: ImageLayer, entrypoint: list[str], cmd: list[str], env: list[str]) -> bytes:
    """A ``docker save``-format archive of a one-layer image tagged ``name``.

    This is the layout containerd's importer turns into an image record named
    from ``RepoTags`` (it sets ``io.containerd.image.name`` itself), which is
    what ``ctr -n k8s.io images import`` of containerd 1.6 needs.
    """
    if ":" not in name.rsplit("/", 1)[-1]:
        raise ValueError(f"image name {name!r} needs an explicit tag (else pulls use :latest and Always)")
    layer_tar = layer.to_tar()
    layer_id = _sha256(layer_tar)
    config = image_config(layer_tar, entrypoint, cmd, env)
    config_name = f"{_sha256(config)}.json"
    manifest = [{"Config": config_name, "RepoTags": [name], "Layers": [f"{layer_id}/layer.tar"]}]
    repo, tag = name.rsplit(":", 1)
    members: dict[str, bytes] = {
        config_name: config,
        f"{layer_id}/layer.tar": layer_tar,
        "manifest.json": json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
        "repositories": json.dumps({repo: {tag: layer_id}}, sort_keys=True).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        directory = _info(layer_id, tarfile.DIRTYPE, 0o755)
        tar.addfile(directory)
        for member in sorted(members):
            info = _info(member, tarfile.REGTYPE, 0o644)
            info.size = len(members[member])
            tar.addfile(info, io.BytesIO(members[member]))
    return buf.getvalue()


def busybox_layer(busybox: bytes, applets: tuple[str, ...] = BUSYBOX_APPLETS) -> ImageLayer:
    """The test image's filesystem: busybox, its applet links and a minimal /etc."""
    layer = ImageLayer()
    layer.files["bin/busybox"] = (0o755, busybox)
    for applet in sorted(set(applets)):
        layer.symlinks[f"bin/{applet}"] = "busybox"
    layer.files["etc/passwd"] = (0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    layer.files["etc/group"] = (0o644, b"root:x:0:\nnogroup:x:65534:\n")
    layer.directories.update({"tmp": 0o1777, "root": 0o700, "proc": 0o755, "sys": 0o755, "dev": 0o755})
    # Debian's busybox applets look for their tools in /usr too; keep both valid.
    layer.symlinks["usr/bin"] = "../bin"
    return layer


def pause_layer(pause: bytes) -> ImageLayer:
    layer = ImageLayer()
    layer.files["pause"] = (0o755, pause)
    return layer


def compile_pause(dest: Path, version: str) -> None:
    """Compile :data:`PAUSE_SOURCE` as a static, stripped binary at ``dest``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise debian.PackageError("'gcc' is not installed; the pause image is a static C program (apt-get install gcc libc6-dev)")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pause.c"
        source.write_text(PAUSE_SOURCE)
        proc = subprocess.run(
            [gcc, "-static", "-Os", "-s", "-Wall", "-Werror", f'-DPAUSE_VERSION="{version}"',
             "-Wl,--build-id=none", "-o", str(dest), str(source)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise debian.PackageError(f"compiling pause failed:\n{proc.stderr[-3000:]}")


def _gcc_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        return "no-gcc"
    return subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


PAUSE_TAG_VERSION = PAUSE_IMAGE.rsplit(":", 1)[1]


def build_images(progress: Progress = stderr_progress) -> dict[str, Path]:
    """Return ``{image name: archive path}`` for :data:`PAUSE_IMAGE` and :data:`TEST_IMAGE`."""
    busybox_version, _ = debian.candidate("busybox-static")
    key = hash_inputs([
        PAUSE_IMAGE, TEST_IMAGE, PAUSE_SOURCE, _gcc_version(), "busybox-static=" + busybox_version,
        repr(BUSYBOX_APPLETS), Path(__file__), "oci-v1",
    ])

    def build(out: Path) -> None:
        pause = out / "pause.bin"
        progress("compiling pause (static C)")
        compile_pause(pause, PAUSE_TAG_VERSION)
        (out / "pause.tar").write_bytes(
            docker_archive(PAUSE_IMAGE, pause_layer(pause.read_bytes()), ["/pause"], [], [])
        )
        pause.unlink()
        progress(f"fetching busybox-static {busybox_version}")
        with tempfile.TemporaryDirectory() as tmp:
            (deb,) = debian.download(["busybox-static"], Path(tmp) / "debs")
            debian.extract(deb, Path(tmp) / "root")
            busybox = (Path(tmp) / "root" / "bin" / "busybox").read_bytes()
        (out / "busybox.tar").write_bytes(
            docker_archive(
                TEST_IMAGE, busybox_layer(busybox), [], ["sh"],
                ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            )
        )

    root = cached_build("oci-images", key, build, progress)
    return {PAUSE_IMAGE: root / "pause.tar", TEST_IMAGE: root / "busybox.tar"}
