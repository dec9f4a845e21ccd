"""Stage 1 of the reference node image: the Debian bookworm root file system.

``mmdebstrap`` makes a tree of :data:`ROOTFS_PACKAGES` (containerd, runc, the
CNI plugins, iptables/nftables, Python 3, ...) from the host's own Debian
mirrors, and pip adds the exact host versions of the agent's wheels (gRPC,
protobuf, cryptography). It is the slowest stage to make (downloads) and the
one that changes least, so it is cached on its own, keyed by the package list,
the versions apt resolves for it today, the wheel versions and the recipe.
:mod:`pytest_smalltown.images.node` builds the bootable image on top of it.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import debian, userns
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.tools import BuildError, run_tool

SUITE = "bookworm"

#: Debian packages of the node rootfs (on top of the Essential set).
ROOTFS_PACKAGES: tuple[str, ...] = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "nftables",
    "iproute2",
    "kmod",
    "conntrack",
    "socat",
    "util-linux",
    "mount",
    "procps",
    "ca-certificates",
    "python3",
    "libstdc++6",  # grpcio's wheel links against it
    "tini",
    "busybox-static",
    "ethtool",
    # The data partition of the UEFI image (images/uefi.py): LUKS2 with its
    # key sealed to the TPM (node/datapart.py), ext4 inside.
    "cryptsetup-bin",
    "tpm2-tools",
    "e2fsprogs",
)

#: dpkg filters: documentation, manuals and translations are dead weight on a
#: test node (copyright files stay, they are the licences).
DPKG_OPTIONS: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
)

#: Python distributions of the agent, installed as wheels at the host's versions
#: (with their dependencies): the generated gRPC modules must match them.
AGENT_WHEELS: tuple[str, ...] = ("grpcio", "protobuf", "cryptography")

#: glibc of bookworm (2.36); wheels are picked for it, not for whatever the host
#: runs. pip does not widen an explicit ``--platform`` to older glibc tags, so
#: every compatible tag is listed, newest first.
WHEEL_PLATFORMS: tuple[str, ...] = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
)
PYTHON_VERSION = "3.11"

#: Bumped when the rootfs recipe changes in a way the other inputs don't show.
ROOTFS_RECIPE = "node-rootfs-v3"


class RootfsError(BuildError):
    """The node rootfs could not be made (the message says which step and why)."""


def wheel_requirements(roots: tuple[str, ...] = AGENT_WHEELS) -> list[str]:
    """``name==version`` pins for ``roots`` and their runtime dependencies, as installed on the host.

    The host is where the gRPC modules were generated and the tests run, so the
    node gets exactly the same versions. Dependencies are followed through the
    installed metadata (markers evaluated for a CPython 3.11 Linux target).
    """
    environment = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".2",
                   "platform_python_implementation": "CPython", "implementation_name": "cpython",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "extra": ""}
    pins: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise RootfsError(
                f"Python package {name!r} is not installed on this host; the node image installs the "
                f"host's versions of {', '.join(AGENT_WHEELS)} (pip install pytest-smalltown)"
            ) from None
        pins[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(environment):
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def host_debian_sources() -> list[str]:
    """The host's apt source files for :data:`SUITE`, passed to mmdebstrap as its mirrors.

    Our machines reach Debian only through their configured mirrors, so the
    rootfs uses exactly those. On a host without bookworm sources mmdebstrap
    falls back to its default (deb.debian.org plus updates and security).
    """
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    found: list[str] = []
    for path in candidates:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        if any(SUITE in line for line in lines):
            found.append(str(path))
    return found


def resolved_versions(packages: tuple[str, ...] = ROOTFS_PACKAGES) -> list[str]:
    """``name=version`` as apt on this host resolves each package (part of the rootfs key)."""
    return debian.versions(packages)


def rootfs_key(versions: list[str], wheels: list[str], sources_text: str) -> str:
    """Cache key of the rootfs: the recipe and every resolved input version."""
    return hash_inputs([ROOTFS_RECIPE, SUITE, *versions, *DPKG_OPTIONS, *wheels, *WHEEL_PLATFORMS,
                        PYTHON_VERSION, sources_text, f"ownership={userns.OWNERSHIP}"])


def mmdebstrap_argv(target: Path, sources: list[str], packages: tuple[str, ...] = ROOTFS_PACKAGES,
                    hook_dirs: tuple[str, ...] = ()) -> list[str]:
    """The mmdebstrap command line that makes a bookworm tree of ``packages`` in directory ``target``.

    The node rootfs and the conformance images' Debian layer are both made
    with it, so they get the same suite, dpkg path exclusions and apt options.
    """
    argv = ["mmdebstrap", "--mode=root", "--variant=essential", "--format=directory",
            *(f"--hook-dir={hook}" for hook in hook_dirs), "--include=" + ",".join(packages)]
    argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTIONS]
    argv += ["--aptopt=Acquire::Languages \"none\""]
    return argv + [SUITE, str(target), *sources]


def _neutralise_host_files(root: Path) -> None:
    """Replace what mmdebstrap copied from the build host (its name, its DNS server).

    They would leak the builder's network into every node and make the image
    depend on where it was built. The agent rewrites all of them at boot from
    its identity and DHCP lease; they are plain files (not symlinks into /run)
    so it can.
    """
    (root / "etc/hostname").write_text("smalltown\n")
    (root / "etc/hostname").chmod(0o644)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("")
    resolv.chmod(0o644)
    (root / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
    )


#: Bound of the mmdebstrap run: it downloads ~150 MB and unpacks them (24 s measured with a near mirror);
#: after an hour it is stuck on a mirror that stopped sending.
MMDEBSTRAP_TIMEOUT = 3600.0


def make_tree(root: Path, sources: list[str], progress: Progress = stderr_progress) -> None:
    """mmdebstrap the node's bookworm tree into ``root`` (as root, or in the build's user namespace), bounded."""
    find_program("mmdebstrap", "the node rootfs is made with it", "mmdebstrap")
    userns.check()
    progress(f"mmdebstrap {SUITE} with {len(ROOTFS_PACKAGES)} packages (downloads ~150 MB)")
    started = time.monotonic()
    mirrors = ", ".join(sources) or "mmdebstrap's default, deb.debian.org"
    run_tool(userns.as_root(mmdebstrap_argv(root, sources)), "mmdebstrap", error=RootfsError,
             timeout=MMDEBSTRAP_TIMEOUT, hint=f"Check that the Debian mirrors it uses ({mirrors}) are reachable.")
    progress(f"  mmdebstrap done in {time.monotonic() - started:.0f}s")


def build_rootfs(progress: Progress = stderr_progress) -> Path:
    """Return the cached bookworm rootfs directory (stage 1), building it if needed.

    As root mmdebstrap runs as it is; anyone else builds it in a user
    namespace (:mod:`userns`), and gets a rootfs of their own.
    """
    versions = resolved_versions()
    wheels = wheel_requirements()
    sources = host_debian_sources()
    sources_text = "".join(Path(s).read_text() for s in sources)
    key = rootfs_key(versions, wheels, sources_text)

    def build(out: Path) -> None:
        root = out / "rootfs"
        make_tree(root, sources, progress)
        _neutralise_host_files(root)
        version_check = ["chroot", str(root), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        inside = run_tool(userns.as_root(version_check), "python3 in rootfs", error=RootfsError).stdout.strip()
        if inside != PYTHON_VERSION:
            raise RootfsError(f"rootfs python3 is {inside}, wheels are picked for {PYTHON_VERSION}")
        progress(f"pip install --target /opt/smalltown/site {' '.join(wheels)}")
        run_tool([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-deps", "--only-binary=:all:", *(f"--platform={tag}" for tag in WHEEL_PLATFORMS),
                  "--python-version", PYTHON_VERSION, "--implementation", "cp",
                  "--target", str(root / "opt/smalltown/site"), *wheels],
                 "pip install of the agent's wheels", error=RootfsError)
        (out / "versions.txt").write_text("".join(line + "\n" for line in versions + wheels))
        # The key covers the requested packages only; record the whole resolved
        # set so that what a given image contains can always be looked up.
        listing = ["chroot", str(root), "dpkg-query", "-W", "-f=${Package}=${Version}\\n"]
        packages = run_tool(userns.as_root(listing), "listing the rootfs packages", error=RootfsError).stdout
        (out / "packages.txt").write_text(packages)

    return cached_build("node-rootfs", key, build, progress) / "rootfs"
