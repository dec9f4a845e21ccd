"""Container images for the reference node, written as ``docker save`` archives by hand.

A cluster under test has no registry to pull from, so every image a pod uses
is carried by the node and imported with ``ctr -n k8s.io images import``
before the kubelet starts. Images are named with non-``latest`` tags, so the
default pull policy ``IfNotPresent`` never goes to the network.

The archives are written with Python ``tarfile`` and ``json`` rather than with
a container engine: none is available on our build machines, and writing them
ourselves makes them byte-for-byte reproducible (fixed mtimes and owners,
sorted entries), so that the same inputs always give the same image digests.

This module has the general parts (layers, image configs, multi-image
archives whose images share layers) and the node's own two images:

* pause: a static C program of ours that, like upstream's, sleeps as the
  sandbox's PID 1 until SIGINT/SIGTERM and reaps any child handed to it.
* busybox (the test image): our static busybox (:mod:`pytest_smalltown.images.busybox`,
  the same binary as the conformance images') with a link in /bin for every
  applet it has, and the /etc files its static glibc needs to resolve names
  (see :func:`busybox_layer`).

The conformance suite's images are in :mod:`pytest_smalltown.images.conformance`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from pytest_smalltown.base.processes import run_supervised
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.contract import PAUSE_IMAGE, TEST_IMAGE
from pytest_smalltown.images import busybox, userns
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.tools import BuildError, run_tool

#: Files copied into images (scripts); package data next to this module.
FILES_DIR = Path(__file__).parent / "container_files"

#: The PATH of images that do not say otherwise (Docker's default).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Applets every test image must have (what tests run in pods). The image gets
#: every applet its busybox binary has; these are only checked to be among them.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "echo", "cat", "sleep", "ls", "wget", "nslookup", "nc", "env", "hostname",
    "true", "false", "date", "ps", "mkdir", "rm", "cp", "mv", "grep", "head", "tail", "wc",
    "test", "[", "printf", "id", "uname", "ip", "ifconfig", "ping", "touch", "find", "sed",
    "awk", "kill", "mount", "df", "du", "httpd", "timeout", "seq", "sort", "tr", "cut",
    "dd", "vi", "which", "whoami", "watch", "tee", "md5sum", "sha256sum", "xargs", "tar",
)

#: pause, the sandbox process of every pod: a static C program built with the host's gcc.
PAUSE_SOURCE = Path(__file__).parent / "files" / "pause.c"


class ImageBuildError(BuildError):
    """An image could not be assembled from its parts."""


# --- layers --------------------------------------------------------------------


@dataclass
class ImageLayer:
    """One filesystem layer, described entry by entry so the tar is reproducible.

    Everything is owned by root unless ``owners`` says otherwise; modes may
    carry set-user-ID and sticky bits (``0o4755``, ``0o1777``).
    """

    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path -> (mode, data)
    symlinks: dict[str, str] = field(default_factory=dict)
    directories: dict[str, int] = field(default_factory=dict)
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (uid, gid)

    def to_tar(self) -> bytes:
        """An uncompressed tar, mtime 0, parents before children."""
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
        for path, (uid, gid) in self.owners.items():
            entries[path].uid, entries[path].gid = uid, gid
            entries[path].uname = entries[path].gname = ""
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


def tar_directory(root: Path, empty: Collection[str] = ("dev", "proc", "sys", "run", "tmp")) -> bytes:
    """A reproducible tar of the tree at ``root`` (a Debian rootfs made by mmdebstrap).

    Owners (as :mod:`userns` sees them for a non-root build), modes (set-user-ID included), symlinks and hard links are kept as
    they are on disk; mtimes become 0 and entries are sorted, parents first, so
    the same tree always gives the same layer digest. The directories in
    ``empty`` are kept without their contents: the container runtime mounts
    its own /dev, /proc, /sys and /run, and what mmdebstrap left in them (device
    nodes, the build's temporary files) does not belong in an image.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(directory, root)
            if rel_dir != ".":
                _add_path(tar, Path(directory), rel_dir)
            if rel_dir in empty:
                dirnames.clear()
                continue
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(directory) / name
                if path.is_dir() and not path.is_symlink():
                    continue  # added when os.walk enters it
                _add_path(tar, path, name if rel_dir == "." else f"{rel_dir}/{name}")
    return buf.getvalue()


def _add_path(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname)
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        return  # sockets, fifos and device nodes are the runtime's business
    info.mtime = 0
    info.uname = info.gname = ""
    info.uid, info.gid = userns.inner_owner(info.uid, info.gid)  # a tree a non-root build made
    if info.isreg():
        with open(path, "rb") as handle:
            tar.addfile(info, handle)
    else:
        tar.addfile(info)


@dataclass(frozen=True)
class Layer:
    """A layer as an image holds it: its uncompressed tar, and the tar's digest.

    Layers are compared by ``diff_id``; an archive stores each distinct layer
    once however many of its images use it, and containerd then stores and
    unpacks it once too.
    """

    tar: bytes = field(repr=False)

    @classmethod
    def of(cls, layer: ImageLayer) -> Layer:
        return cls(layer.to_tar())

    @cached_property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the uncompressed tar, as the image config lists it."""
        return f"sha256:{_sha256(self.tar)}"

    @property
    def hex(self) -> str:
        return self.diff_id.removeprefix("sha256:")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- images and archives -------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config: what a Dockerfile's instructions set."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (DEFAULT_PATH,)
    working_dir: str = "/"
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"

    def to_json(self) -> dict[str, object]:
        config: dict[str, object] = {
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint) or None,
            "Cmd": list(self.cmd) or None,
            "WorkingDir": self.working_dir,
        }
        if self.user:
            config["User"] = self.user
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        return config


@dataclass(frozen=True)
class Image:
    """A named image: its layers, bottom first, and its config."""

    name: str
    layers: tuple[Layer, ...]
    config: ImageConfig = ImageConfig()

    def __post_init__(self) -> None:
        if ":" not in self.name.rsplit("/", 1)[-1]:
            raise ValueError(f"image name {self.name!r} needs an explicit tag (else pulls use :latest and Always)")
        if not self.layers:
            raise ValueError(f"image {self.name!r} has no layers")

    def config_json(self) -> bytes:
        """The image configuration JSON (Docker v1 / OCI config) for amd64 Linux."""
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": self.config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pytest-smalltown oci.py"}
                        for _ in self.layers],
        }
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_docker_archive(images: Sequence[Image], out: BinaryIO, compress: bool = False) -> None:
    """Write a ``docker save``-format archive of ``images`` to ``out``.

    This is the layout containerd's importer (``ctr images import``, 1.6 too)
    turns into one image record per ``RepoTags`` entry. Each distinct layer is
    stored once, in ``<diff id hex>/layer.tar``; with ``compress`` it is gzipped
    (``layer.tar.gz``) — the importer detects gzip and keeps the blob as it is,
    which keeps big archives small on the node's disk. Gzip runs with mtime 0,
    so the output stays reproducible.
    """
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate image names in one archive: {sorted(names)}")
    members: dict[str, bytes] = {}
    directories: set[str] = set()
    manifest: list[dict[str, object]] = []
    repositories: dict[str, dict[str, str]] = {}
    stored: dict[str, str] = {}  # diff id -> member name
    for image in images:
        for layer in image.layers:
            if layer.diff_id not in stored:
                member = f"{layer.hex}/layer.tar" + (".gz" if compress else "")
                members[member] = gzip.compress(layer.tar, compresslevel=6, mtime=0) if compress else layer.tar
                directories.add(layer.hex)
                stored[layer.diff_id] = member
        config = image.config_json()
        config_name = f"{_sha256(config)}.json"
        members[config_name] = config
        manifest.append({"Config": config_name, "RepoTags": [image.name],
                         "Layers": [stored[layer.diff_id] for layer in image.layers]})
        repo, tag = image.name.rsplit(":", 1)
        repositories.setdefault(repo, {})[tag] = image.layers[-1].hex
    members["manifest.json"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    members["repositories"] = json.dumps(repositories, sort_keys=True).encode()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory in sorted(directories):
            tar.addfile(_info(directory, tarfile.DIRTYPE, 0o755))
        for member in sorted(members):
            info = _info(member, tarfile.REGTYPE, 0o644)
            info.size = len(members[member])
            tar.addfile(info, io.BytesIO(members[member]))


def docker_archive(name: str, layer: ImageLayer, entrypoint: list[str], cmd: list[str], env: list[str]) -> bytes:
    """A ``docker save``-format archive of a one-layer image tagged ``name``."""
    image = Image(name, (Layer.of(layer),), ImageConfig(tuple(entrypoint), tuple(cmd), tuple(env)))
    buf = io.BytesIO()
    write_docker_archive([image], buf)
    return buf.getvalue()


# --- busybox -------------------------------------------------------------------


def busybox_applets(binary: Path) -> list[str]:
    """The applets the busybox at ``binary`` has, as it lists them itself."""
    proc = run_supervised([str(binary), "--list"])
    applets = proc.stdout.split()
    if proc.returncode != 0 or not applets:
        raise ImageBuildError(f"'{binary} --list' failed (exit {proc.returncode}): {proc.stderr.strip()}")
    missing = sorted(set(BUSYBOX_APPLETS) - set(applets))
    if missing:
        raise ImageBuildError(f"{binary} lacks applets the test image needs: {', '.join(missing)}")
    return applets


def busybox_layer(binary: bytes, applets: Sequence[str] = BUSYBOX_APPLETS) -> ImageLayer:
    """A complete busybox userland: the binary, a /bin link per applet and a small /etc.

    * Every applet is a link in /bin, and /sbin, /usr/bin and /usr/sbin point
      there, so both PATH lookups (``kubectl cp`` runs ``tar``) and absolute
      paths (``/usr/bin/env``) work, as in upstream's busybox image.
    * ``/etc/nsswitch.conf`` says ``hosts: files dns``. Our busybox is a
      static glibc binary: without that file its resolver never asks DNS at
      all (static glibc's built-in default has no ``dns``), so
      ``wget http://service/`` in a pod fails with "bad address".
    """
    layer = ImageLayer()
    layer.files["bin/busybox"] = (0o755, binary)
    for applet in sorted(set(applets) - {"busybox"}):  # Debian's static build lists itself
        layer.symlinks[f"bin/{applet}"] = "busybox"
    layer.symlinks["sbin"] = "bin"
    layer.symlinks["usr/bin"] = "../bin"
    layer.symlinks["usr/sbin"] = "../bin"
    layer.files["etc/passwd"] = (0o644, b"root:x:0:0:root:/root:/bin/sh\n"
                                        b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                                        b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    layer.files["etc/group"] = (0o644, b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n")
    layer.files["etc/nsswitch.conf"] = (0o644, b"passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\n")
    layer.files["etc/hosts"] = (0o644, b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    layer.directories.update({"tmp": 0o1777, "root": 0o700, "proc": 0o755, "sys": 0o755, "dev": 0o755,
                              "etc": 0o755, "var": 0o755, "usr/local/bin": 0o755})
    return layer


def busybox_layer_of(binary: Path) -> ImageLayer:
    """:func:`busybox_layer` of the busybox at ``binary``, asking it what applets it has."""
    return busybox_layer(binary.read_bytes(), busybox_applets(binary))


# --- pause ---------------------------------------------------------------------


def pause_layer(pause: bytes) -> ImageLayer:
    layer = ImageLayer()
    layer.files["pause"] = (0o755, pause)
    return layer


def compile_pause(dest: Path, version: str) -> None:
    """Compile :data:`PAUSE_SOURCE` as a static, stripped binary at ``dest``."""
    gcc = find_program("gcc", "the pause image is a static C program", "gcc libc6-dev")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pause.c"
        shutil.copyfile(PAUSE_SOURCE, source)
        run_tool([gcc, "-static", "-Os", "-s", "-Wall", "-Werror", f'-DPAUSE_VERSION="{version}"',
                  "-Wl,--build-id=none", "-o", str(dest), str(source)], "compiling pause", error=ImageBuildError)


def gcc_version() -> str:
    """First line of ``gcc --version``: part of the cache key of anything holding pause."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return "no-gcc"
    return subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


PAUSE_TAG_VERSION = PAUSE_IMAGE.rsplit(":", 1)[1]


def images_key(gcc: str, busybox_key: str) -> str:
    """Cache key of :func:`build_images`: the compiler, the busybox build's key and our recipe."""
    return hash_inputs([
        PAUSE_IMAGE, TEST_IMAGE, PAUSE_SOURCE, gcc, busybox_key, repr(BUSYBOX_APPLETS), Path(__file__), FILES_DIR,
        "oci-v3",
    ])


def build_images(progress: Progress = stderr_progress) -> dict[str, Path]:
    """Return ``{image name: archive path}`` for :data:`PAUSE_IMAGE` and :data:`TEST_IMAGE`."""
    gcc = gcc_version()
    busybox_version = busybox.source_version(progress)
    key = images_key(gcc, busybox.busybox_key(busybox_version, gcc))

    def build(out: Path) -> None:
        pause = out / "pause.bin"
        progress("compiling pause (static C)")
        compile_pause(pause, PAUSE_TAG_VERSION)
        (out / "pause.tar").write_bytes(
            docker_archive(PAUSE_IMAGE, pause_layer(pause.read_bytes()), ["/pause"], [], [])
        )
        pause.unlink()
        binary = busybox.build_busybox(busybox_version, gcc, progress)
        (out / "busybox.tar").write_bytes(
            docker_archive(TEST_IMAGE, busybox_layer_of(binary), [], ["sh"], [DEFAULT_PATH])
        )

    root = cached_build("oci-images", key, build, progress)
    return {PAUSE_IMAGE: root / "pause.tar", TEST_IMAGE: root / "busybox.tar"}
