"""The container images of the Kubernetes [Conformance] e2e tests, built locally.

Reference nodes reach no registry, so every image a conformance test starts a
pod from must already be in the node's containerd under its exact upstream
name (``k8s.io/kubernetes/test/utils/image/manifest.go`` of the release we
build). :func:`build_conformance_archive` writes all of them into one
``docker save`` archive that the node agent streams into
``ctr -n k8s.io images import``.

How each image stands in for upstream's (what the tests run in it decides):

* ``agnhost``: the real agnhost, built from ``k8s.io/kubernetes/test/images/agnhost``
  at our Kubernetes version, laid out as its Dockerfile does: ``/agnhost``
  (entrypoint, default command ``pause``), the ``/agnhost-2`` link the
  entrypoint tests use, ``/uploads``, porter's ``/localhost.crt`` and
  ``/localhost.key``, the user ``user-defined-in-image`` (uid 1000) in the group
  ``group-defined-in-image`` (gid 50000), exposed ports 80 8080 8081 9376 5000,
  ``/coredns`` (our CoreDNS build; the DNS nameserver test runs it) and
  ``/usr/local/bin/iperf``. Upstream's base is Alpine with bind-tools, curl,
  netcat-openbsd, iproute2, iperf and bash; ours is the shared Debian layer
  below with the Debian packages of the same tools.
* ``jessie-dnsutils``: the Debian layer (dig, host, nslookup, getent are what
  the DNS tests run). It is bookworm, not jessie, and has no ``/coredns``.
* ``kitten`` / ``nautilus``: agnhost with upstream's picture and ``data.json``
  at ``/`` and ``test-webserver`` as command, as upstream builds them.
* ``nonroot``: the Debian layer with user 1234 (upstream: debian-base, USER 1234).
* ``nonewprivs``: busybox plus ``/usr/local/bin/nnp``, set-user-ID root, which
  prints its effective uid (upstream's program does the same; ours is
  rewritten in ``go/agnhost/nnp``).
* ``busybox``: the node's test image's busybox layer, the same binary
  (:mod:`pytest_smalltown.images.busybox`: Debian trixie's busybox 1.37, the
  version upstream's image has, with ``FEATURE_DI_ENV_HACK``, which the
  "various prefixes" Secret and ConfigMap specs need, and every applet's
  upstream options).
* ``httpd`` / ``nginx`` (both tags each): busybox httpd serving port 80 from
  ``/usr/local/apache2/htdocs`` (index.html says "It works!", as the kubectl
  tests expect) or ``/usr/share/nginx/html``, started by the commands the real
  images have (``httpd-foreground``; ``nginx -g 'daemon off;'``). Not
  reproduced: Apache's or nginx's configuration, modules, logs and their
  stop signals (the stand-in stops on SIGTERM).
* ``sample-apiserver``: the real one, built from ``k8s.io/sample-apiserver`` at
  the release's staging version, at ``/sample-apiserver`` (entrypoint; the
  aggregator test passes only arguments).
* ``etcd``: the etcd the node runs (v3.6 built from the Go module proxy) at
  ``/usr/local/bin/etcd``, the command the aggregator test's sidecar runs.
* ``pause``: our pause program under the suite's pause tag.

Layers are shared by content: the Debian layer is stored once for agnhost,
kitten, nautilus, jessie-dnsutils and nonroot, the busybox layer once for
busybox, httpd, nginx, nonewprivs, sample-apiserver and etcd, and containerd
deduplicates them by digest in the same way.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import busybox, debian, gobuild, oci, rootfs, userns
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.oci import Image, ImageConfig, ImageLayer, Layer
from pytest_smalltown.images.tools import BuildError, run_tool

E2E = "registry.k8s.io/e2e-test-images"

AGNHOST = f"{E2E}/agnhost:2.56"
BUSYBOX = f"{E2E}/busybox:1.37.0-1"
HTTPD = f"{E2E}/httpd:2.4.38-4"
HTTPD_NEW = f"{E2E}/httpd:2.4.39-4"
NGINX = f"{E2E}/nginx:1.14-4"
NGINX_NEW = f"{E2E}/nginx:1.15-4"
JESSIE_DNSUTILS = f"{E2E}/jessie-dnsutils:1.7"
KITTEN = f"{E2E}/kitten:1.7"
NAUTILUS = f"{E2E}/nautilus:1.7"
NONEWPRIVS = f"{E2E}/nonewprivs:1.3"
NONROOT = f"{E2E}/nonroot:1.4"
SAMPLE_APISERVER = f"{E2E}/sample-apiserver:1.29.2"
ETCD = "registry.k8s.io/etcd:3.6.4-0"
PAUSE = "registry.k8s.io/pause:3.10.1"

#: Every image the archive holds, by its upstream name.
CONFORMANCE_IMAGES: tuple[str, ...] = (
    AGNHOST, BUSYBOX, HTTPD, HTTPD_NEW, NGINX, NGINX_NEW, JESSIE_DNSUTILS, KITTEN, NAUTILUS,
    NONEWPRIVS, NONROOT, SAMPLE_APISERVER, ETCD, PAUSE,
)

#: Debian packages of the shared userland layer, on top of the Essential set:
#: the tools agnhost's Dockerfile installs (dig, curl, openbsd nc, ip/ss,
#: iperf, bash) and what else the tests run in those pods (GNU wget, whose -T
#: works; ps; ping; awk). busybox supplies the remaining commands Alpine's
#: busybox would have (see :func:`_link_missing_applets`).
TOOLS_PACKAGES: tuple[str, ...] = (
    "mawk", "bind9-dnsutils", "curl", "wget", "netcat-openbsd", "iproute2", "iperf", "procps",
    "iputils-ping", "busybox",
)

#: mmdebstrap sets merged /usr up itself with this hook, so apt installs the
#: empty usr-is-merged package instead of usrmerge and its Perl (~45 MB).
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"

GO_DIR = gobuild.GO_DIR
AGNHOST_MODULE = GO_DIR / "agnhost"
SAMPLE_APISERVER_MODULE = GO_DIR / "sample-apiserver"
#: Flags of our small Go builds; same environment as gobuild so that Go's
#: build cache, warmed by the Kubernetes build, is shared.
GO_LDFLAGS = "-s -w"

KUBERNETES_MODULE = f"k8s.io/kubernetes@{gobuild.KUBERNETES_VERSION}"

#: Where in the Kubernetes module the files upstream images copy in live.
UPSTREAM_FILES: dict[str, str] = {
    "localhost.crt": "test/images/agnhost/porter/localhost.crt",
    "localhost.key": "test/images/agnhost/porter/localhost.key",
    "kitten.jpg": "test/images/kitten/html/kitten.jpg",
    "kitten.json": "test/images/kitten/html/data.json",
    "nautilus.jpg": "test/images/nautilus/html/nautilus.jpg",
    "nautilus.json": "test/images/nautilus/html/data.json",
}

#: What ``/`` of the httpd stand-in serves (the page the kubectl tests look for).
HTTPD_INDEX = b"<html><body><h1>It works!</h1></body></html>\n"
NGINX_INDEX = b"<!DOCTYPE html>\n<html><head><title>nginx stand-in</title></head><body>ok</body></html>\n"


class ConformanceImageError(BuildError):
    """A conformance image could not be built."""


# --- inputs --------------------------------------------------------------------


def archive_key(go_version: str, gcc: str, versions: Sequence[str], sources_text: str, busybox_key: str) -> str:
    """Cache key of the archive: every recipe file and resolved input version.

    The Debian versions are those of the packages we ask for (as for the node
    rootfs); a dependency that changes alone does not rebuild the archive.
    ``busybox_key`` is the key of the busybox build (:func:`busybox.busybox_key`).
    """
    return hash_inputs([
        Path(__file__), Path(oci.__file__), oci.FILES_DIR, AGNHOST_MODULE, SAMPLE_APISERVER_MODULE,
        gobuild.program_key(gobuild.PROGRAMS["etcd"], go_version),
        gobuild.program_key(gobuild.PROGRAMS["coredns"], go_version),
        go_version, gobuild.GO_ENV_KEY, GO_LDFLAGS, gcc, *versions, *rootfs.DPKG_OPTIONS, rootfs.SUITE, sources_text,
        repr(CONFORMANCE_IMAGES), busybox_key, "conformance-v2",
    ])


def resolved_versions() -> list[str]:
    """``name=version`` of every Debian package we ask for (part of the archive's key)."""
    return debian.versions(TOOLS_PACKAGES)


# --- Go programs ---------------------------------------------------------------


def go_build(name: str, module_dir: Path, package: str, progress: Progress = stderr_progress) -> Path:
    """Build Go ``package`` in ``module_dir`` (cached by module, flags and toolchain).

    ``gobuild.build_program`` builds a module's own main package; agnhost and
    sample-apiserver are main packages of upstream modules, named as ``tool``
    directives in our go.mod files, so they are built by import path here
    with the same environment and flags, through gobuild's one supervised go
    build (heartbeat and bound included).
    """
    version = gobuild.go_version()
    key = hash_inputs([module_dir, package, GO_LDFLAGS, gobuild.GO_ENV_KEY, version, "conformance-go-v1"])
    program = gobuild.GoProgram(name, GO_LDFLAGS, module=module_dir.relative_to(GO_DIR).as_posix(), package=package)

    def build(out: Path) -> None:
        gobuild.compile_program(program, out / name, progress)

    return cached_build(f"go-{name}", key, build, progress) / name


def kubernetes_source(progress: Progress = stderr_progress) -> Path:
    """The Kubernetes module's directory in Go's module cache (downloaded if missing, supervised)."""
    proc = gobuild.run_go(["go", "mod", "download", "-json", KUBERNETES_MODULE], f"go mod download {KUBERNETES_MODULE}",
                          AGNHOST_MODULE, progress)
    return Path(json.loads(proc.stdout)["Dir"])


# --- the Debian layer ----------------------------------------------------------


def mmdebstrap_argv(target: Path, sources: list[str]) -> list[str]:
    """The mmdebstrap command line of the shared Debian userland (a directory tree).

    mmdebstrap rather than unpacking an apt-resolved closure with ``dpkg-deb -x``:
    the maintainer scripts must run (they set up the ``nc`` and ``awk``
    alternatives, ``ping``'s capabilities and the ld.so cache), and mmdebstrap is
    what the node rootfs is made with already.
    """
    return rootfs.mmdebstrap_argv(target, sources, TOOLS_PACKAGES, hook_dirs=(MERGED_USR_HOOK,))


PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")


def _link_missing_applets(root: Path, applets: Sequence[str]) -> list[str]:
    """Link each busybox applet that no Debian package provides into /usr/local/bin.

    Upstream's agnhost is Alpine, whose busybox gives every pod ``wget``,
    ``netstat``, ``vi`` and the like; Debian's tools win where both exist.
    """
    linked = []
    for applet in sorted(set(applets)):
        if applet == "busybox" or "/" in applet:
            continue
        if any(os.path.lexists(root / directory / applet) for directory in PATH_DIRS):
            continue
        (root / "usr/local/bin" / applet).symlink_to("/usr/bin/busybox")
        linked.append(applet)
    return linked


def _clean_rootfs(root: Path) -> None:
    """Drop what mmdebstrap copied from the build host or logged about the build."""
    for name in ("hostname", "resolv.conf", "mailname"):
        (root / "etc" / name).unlink(missing_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    for directory in ("var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/ldconfig"):
        path = root / directory
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    userns.remove_tree(child)
                else:
                    child.unlink()
    for pattern in ("var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in root.glob(pattern):
            path.unlink()


def debian_layer(sources: list[str], progress: Progress = stderr_progress) -> Layer:
    """The shared Debian userland, made with mmdebstrap and tarred reproducibly."""
    find_program("mmdebstrap", "the conformance images' Debian layer is made with it", "mmdebstrap")
    userns.check()
    tmp = tempfile.mkdtemp(prefix="smalltown-conformance-")
    try:
        root = Path(tmp) / "rootfs"
        progress(f"mmdebstrap {rootfs.SUITE} with {', '.join(TOOLS_PACKAGES)}")
        started = time.monotonic()
        run_tool(userns.as_root(mmdebstrap_argv(root, sources)), "mmdebstrap (the conformance images' Debian layer)",
                 env={**os.environ, "SOURCE_DATE_EPOCH": "0"}, error=ConformanceImageError)
        progress(f"  mmdebstrap done in {time.monotonic() - started:.0f}s")
        listed = run_tool(userns.as_root(["chroot", str(root), "/usr/bin/busybox", "--list"]),
                          "busybox --list in the Debian layer",
                          error=ConformanceImageError)
        _link_missing_applets(root, listed.stdout.split())
        _clean_rootfs(root)
        return Layer(oci.tar_directory(root))
    finally:
        userns.remove_tree(Path(tmp))


# --- image layouts -------------------------------------------------------------


def agnhost_layer(agnhost: bytes, coredns: bytes, upstream: dict[str, bytes], base_passwd: str,
                  base_group: str) -> ImageLayer:
    """What agnhost's Dockerfile adds on top of its base (see the module docstring)."""
    layer = ImageLayer()
    layer.files["agnhost"] = (0o755, agnhost)
    layer.symlinks["agnhost-2"] = "agnhost"
    layer.files["coredns"] = (0o755, coredns)
    layer.directories["uploads"] = 0o755
    layer.files["localhost.crt"] = (0o644, upstream["localhost.crt"])
    layer.files["localhost.key"] = (0o644, upstream["localhost.key"])
    layer.symlinks["usr/local/bin/iperf"] = "/usr/bin/iperf"
    layer.directories.update({"usr": 0o755, "usr/local": 0o755, "usr/local/bin": 0o755, "etc": 0o755})
    user = "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
    groups = "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"
    layer.files["etc/passwd"] = (0o644, (base_passwd + user).encode())
    layer.files["etc/group"] = (0o644, (base_group + groups).encode())
    layer.directories["home/user-defined-in-image"] = 0o755
    layer.owners["home/user-defined-in-image"] = (1000, 1000)
    return layer


def web_layer(docroot: str, index: bytes, command: str, script: bytes) -> ImageLayer:
    """A busybox-httpd stand-in: its document root with an index page and its start command."""
    layer = ImageLayer()
    layer.files[f"{docroot}/index.html"] = (0o644, index)
    layer.files[f"usr/local/bin/{command}"] = (0o755, script)
    layer.directories.update({"usr": 0o755, "usr/local": 0o755, "usr/local/bin": 0o755})
    return layer


def single_file_layer(path: str, data: bytes, mode: int = 0o755) -> ImageLayer:
    layer = ImageLayer()
    layer.files[path] = (mode, data)
    return layer


def conformance_images(
    busybox: Layer,
    debian_base: Layer,
    agnhost: Layer,
    pause: Layer,
    files: dict[str, bytes],
    binaries: dict[str, bytes],
) -> list[Image]:
    """The images, from their shared layers and the remaining files and programs.

    ``files`` has the :data:`UPSTREAM_FILES` keys; ``binaries`` has ``nnp``,
    ``sample-apiserver`` and ``etcd``. Kept free of builds so that tests can
    check names, layouts and configs with small stand-in layers.
    """
    serve = (oci.FILES_DIR / "serve-http.sh").read_bytes()
    httpd = Layer.of(web_layer("usr/local/apache2/htdocs", HTTPD_INDEX, "httpd-foreground", serve))
    nginx = Layer.of(web_layer("usr/share/nginx/html", NGINX_INDEX, "nginx", serve))
    httpd_config = ImageConfig(cmd=("httpd-foreground",), working_dir="/usr/local/apache2",
                               exposed_ports=("80/tcp",))
    nginx_config = ImageConfig(cmd=("nginx", "-g", "daemon off;"), exposed_ports=("80/tcp",))
    agnhost_config = ImageConfig(entrypoint=("/agnhost",), cmd=("pause",),
                                 exposed_ports=("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"))

    def picture(name: str) -> Layer:
        layer = ImageLayer()
        layer.files[f"{name}.jpg"] = (0o644, files[f"{name}.jpg"])
        layer.files["data.json"] = (0o644, files[f"{name}.json"])
        return Layer.of(layer)

    web_config = ImageConfig(entrypoint=("/agnhost",), cmd=("test-webserver",),
                             exposed_ports=agnhost_config.exposed_ports)
    return [
        Image(AGNHOST, (debian_base, agnhost), agnhost_config),
        Image(BUSYBOX, (busybox,), ImageConfig(cmd=("sh",))),
        Image(HTTPD, (busybox, httpd), httpd_config),
        Image(HTTPD_NEW, (busybox, httpd), httpd_config),
        Image(NGINX, (busybox, nginx), nginx_config),
        Image(NGINX_NEW, (busybox, nginx), nginx_config),
        Image(JESSIE_DNSUTILS, (debian_base,), ImageConfig(cmd=("bash",))),
        Image(KITTEN, (debian_base, agnhost, picture("kitten")), web_config),
        Image(NAUTILUS, (debian_base, agnhost, picture("nautilus")), web_config),
        Image(NONEWPRIVS, (busybox, Layer.of(single_file_layer("usr/local/bin/nnp", binaries["nnp"], 0o4755))),
              ImageConfig(cmd=("nnp",))),
        Image(NONROOT, (debian_base,), ImageConfig(cmd=("bash",), user="1234")),
        Image(SAMPLE_APISERVER, (busybox, Layer.of(single_file_layer("sample-apiserver", binaries["sample-apiserver"]))),
              ImageConfig(entrypoint=("/sample-apiserver",))),
        Image(ETCD, (busybox, Layer.of(single_file_layer("usr/local/bin/etcd", binaries["etcd"]))),
              # The aggregator spec runs this etcd in a pod on the node's disk; under
              # emulation its fsyncs outlast etcd's request timeout ("etcdserver:
              # request timed out"). etcd reads ETCD_* variables as flags; the node's
              # own etcd runs with the same setting.
              ImageConfig(cmd=("/usr/local/bin/etcd",), exposed_ports=("2379/tcp", "2380/tcp"),
                          env=(oci.DEFAULT_PATH, "ETCD_UNSAFE_NO_FSYNC=true"))),
        Image(PAUSE, (pause,), ImageConfig(entrypoint=("/pause",), env=())),
    ]


def _read_from_layer(layer: Layer, path: str) -> str:
    """A text file of a layer tar (the Debian base's /etc/passwd, which agnhost extends)."""
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
        for candidate in (path, f"./{path}"):
            try:
                member = tar.extractfile(candidate)
            except KeyError:
                continue
            if member is not None:
                return member.read().decode()
    raise ConformanceImageError(f"the Debian layer has no {path}")


# --- the archive ---------------------------------------------------------------

ARCHIVE_NAME = "conformance-images.tar"


def build_conformance_archive(progress: Progress = stderr_progress) -> Path:
    """Return the ``docker save`` archive of every image in :data:`CONFORMANCE_IMAGES`.

    Built once per input hash and cached; an unchanged second call costs one
    ``gcc --version``, reading the memos of Go's version, apt's candidates and
    busybox's source version (asked of Debian once a day) and hashing our
    recipe files. The archive's layers are gzipped and each is stored once.
    """
    go_version = gobuild.go_version()
    gcc = oci.gcc_version()
    versions = resolved_versions()
    busybox_version = busybox.source_version(progress)
    sources = rootfs.host_debian_sources()
    sources_text = "".join(Path(source).read_text() for source in sources)
    key = archive_key(go_version, gcc, versions, sources_text, busybox.busybox_key(busybox_version, gcc))

    def build(out: Path) -> None:
        binaries = {
            "etcd": gobuild.build_program("etcd", progress).read_bytes(),
            "sample-apiserver": go_build("sample-apiserver", SAMPLE_APISERVER_MODULE, "k8s.io/sample-apiserver",
                                         progress).read_bytes(),
            "nnp": go_build("nnp", AGNHOST_MODULE, "./nnp", progress).read_bytes(),
        }
        agnhost = go_build("agnhost", AGNHOST_MODULE, "k8s.io/kubernetes/test/images/agnhost", progress).read_bytes()
        coredns = gobuild.build_program("coredns", progress).read_bytes()
        source = kubernetes_source()
        files = {name: (source / rel).read_bytes() for name, rel in UPSTREAM_FILES.items()}
        busybox_layer = Layer.of(oci.busybox_layer_of(busybox.build_busybox(busybox_version, gcc, progress)))
        with tempfile.TemporaryDirectory() as tmp:
            progress("compiling pause (static C)")
            oci.compile_pause(Path(tmp) / "pause", PAUSE.rsplit(":", 1)[1])
            pause = Layer.of(oci.pause_layer((Path(tmp) / "pause").read_bytes()))
        debian_base = debian_layer(sources, progress)
        agnhost_files = agnhost_layer(agnhost, coredns, files, _read_from_layer(debian_base, "etc/passwd"),
                                      _read_from_layer(debian_base, "etc/group"))
        images = conformance_images(busybox_layer, debian_base, Layer.of(agnhost_files), pause, files, binaries)
        progress(f"writing {len(images)} images (gzipped layers)")
        with open(out / ARCHIVE_NAME, "wb") as handle:
            oci.write_docker_archive(images, handle, compress=True)
        (out / "versions.txt").write_text("".join(
            line + "\n" for line in [go_version, gcc, *versions, f"{busybox.SOURCE}-source={busybox_version}"]))
        size = (out / ARCHIVE_NAME).stat().st_size
        progress(f"conformance archive: {size / 2**20:.0f} MiB")

    return cached_build("conformance-images", key, build, progress) / ARCHIVE_NAME


if __name__ == "__main__":
    print(build_conformance_archive())
