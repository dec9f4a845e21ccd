"""The reference node image: Debian bookworm, upstream Kubernetes, our agent as init.

A node boots by direct kernel boot (q35): Debian's kernel, a small initramfs
that loads the modules a Kubernetes node needs and switches root to the disk,
and a raw ext4 disk used as a throw-away snapshot. The build has stages, each
cached on its own (:func:`cache.cached_build`) so that a change only redoes
what depends on it:

1. ``node-rootfs`` (:mod:`~pytest_smalltown.images.rootfs`): Debian bookworm
   with containerd, runc, the CNI plugins, Python 3 and the agent's wheels.
2. Go programs (:mod:`gobuild`) and preloaded container images (:mod:`oci`).
3. ``node-image``: the rootfs plus the Go binaries, image archives and our
   Python packages, packed with ``mke2fs -d`` (no mounts; a non-root build acts
   as root in a user namespace, :mod:`userns`), and the initramfs. Cheap; keyed
   by everything above plus our Python sources, so editing the agent rebuilds
   only this.

In-image layout (the paths the node agent relies on are ``contract.IMAGE_*``):

* ``/usr/local/bin/{kube,etcd,coredns}`` (``IMAGE_BIN_DIR``) and ``kube``
  symlinks named ``kubectl``, ``kubelet``, ``kube-apiserver``,
  ``kube-controller-manager``, ``kube-scheduler``, ``kube-proxy``;
* ``/opt/smalltown/images/*.tar`` (``IMAGE_ARCHIVE_DIR``, ``docker save``
  archives) and its ``images.json`` (``{image name: file name}``);
* ``/opt/smalltown/lib/pytest_smalltown`` (our code), ``/opt/smalltown/site``
  (wheels), ``/opt/smalltown/bin/smalltown-agent`` (the init);
* ``/opt/smalltown/image.json``: versions and the build key;
  ``/opt/smalltown/packages.txt``: every Debian package in the rootfs;
* ``/lib/modules/<release>``: the network/filesystem module subset with
  ``modules.dep``, so ``modprobe`` (and the kernel's on-demand loading) works
  after the initramfs is gone; the initramfs already loaded :data:`BOOT_MODULES`.
* At the agent's start ``/`` is the ext4 disk mounted read-write, ``/dev``
  (devtmpfs), ``/proc`` and ``/sys`` are mounted; PID 1 is ``tini``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.contract import IMAGE_ARCHIVE_DIR, IMAGE_BIN_DIR
from pytest_smalltown.images import debian, gobuild, oci, userns
from pytest_smalltown.images.cache import cached_build, file_digest, hash_inputs
from pytest_smalltown.images.initramfs import Initramfs
from pytest_smalltown.images.kernel import MODULE_LIST, Kernel, add_modules, get_kernel
from pytest_smalltown.images.rootfs import build_rootfs
from pytest_smalltown.images.tools import run_tool
from pytest_smalltown.template import render

#: Modules the initramfs loads before switching root. Beyond booting (virtio,
#: ext4 and the crc32c it needs, fw_cfg for the enrolment file) these are what
#: containerd (overlayfs), the bridge CNI plugin (bridge, veth, br_netfilter),
#: kube-proxy in iptables or nftables mode (with Debian's iptables-nft: the
#: nf_tables core, nft_compat for the xt_* matches and targets it uses) and
#: the NAT of pod traffic need. Loaded up front because kube-proxy and the CNI
#: plugins check for them rather than load them.
BOOT_MODULES: tuple[str, ...] = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "virtio_console",
    "crc32c_generic", "ext4", "qemu_fw_cfg",
    "overlay", "bridge", "br_netfilter", "veth", "tun",
    "nf_conntrack", "nf_nat", "nf_tables", "nft_compat", "nft_chain_nat", "nft_ct",
    "nft_masq", "nft_nat", "nft_reject_inet", "nft_fib_inet", "nft_numgen",
    "ip_tables", "iptable_nat", "iptable_filter", "iptable_mangle", "iptable_raw",
    "ip6_tables", "ip6table_nat", "ip6table_filter", "ip6table_mangle", "ip6table_raw",
    "xt_conntrack", "xt_MASQUERADE", "xt_comment", "xt_mark", "xt_addrtype", "xt_multiport",
    "xt_statistic", "xt_nat", "xt_tcpudp", "xt_set", "ipt_REJECT", "ip6t_REJECT", "nf_reject_ipv4",
    "sch_htb", "sch_ingress",
)

#: Module directories copied into the rootfs for on-demand loading after boot.
ROOTFS_MODULE_DIRS: tuple[str, ...] = (
    "kernel/net", "kernel/crypto", "kernel/lib", "kernel/fs/overlayfs",
    "kernel/drivers/net/veth.ko", "kernel/drivers/net/tun.ko", "kernel/drivers/net/dummy.ko",
    "kernel/drivers/net/vxlan", "kernel/drivers/net/wireguard", "kernel/drivers/net/macvlan.ko",
    "kernel/drivers/net/ipvlan",
    "kernel/drivers/md", "kernel/arch/x86/crypto",  # dm-crypt and its ciphers (the UEFI image's data partition)
)

KUBE_LINKS: tuple[str, ...] = (
    "kubectl", "kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
)

#: Our Python that runs in the node (only these; the rest is host-side).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NODE_PYTHON: tuple[str, ...] = ("__init__.py", "contract.py", "template.py", "api", "node")
#: What of those directories the node needs: code, and the scripts and templates the agent renders.
NODE_FILE_SUFFIXES: tuple[str, ...] = (".py", ".pyi", ".sh", ".toml")

AGENT_PATH = "/opt/smalltown/bin/smalltown-agent"
FILES_DIR = Path(__file__).parent / "files"
#: The init that tini starts (it runs our agent with the in-image Python path).
AGENT_SCRIPT = (FILES_DIR / "smalltown-agent.sh").read_text()

#: Free space on the disk beyond the rootfs, for containerd's content and
#: snapshots and etcd's data. The file is sparse: it costs only what is written.
DISK_FREE_BYTES = 6 << 30

#: Size of the root file system's journal: enough for a node's metadata
#: bursts (image import, etcd), small enough to cost nothing in a sparse file.
JOURNAL_MIB = 32

#: Kernel command line of a node. ``panic=-1`` plus QEMU's ``-no-reboot`` turns a
#: dead init into a QEMU exit instead of a hang. ``loglevel=5`` lets warnings
#: through, so that a soft lockup's report carries the stuck CPU's registers
#: and call trace (printed at the default level, which 4 hid): what the
#: rare TCG hang (docs/internals.md) needs to be understood.
CMDLINE = "console=ttyS0 panic=-1 loglevel=5 mitigations=off"

#: The initramfs's /init: load :data:`BOOT_MODULES`, mount the disk, switch root to the agent.
INIT_SCRIPT = render(FILES_DIR / "node-init.sh", AGENT_PATH=AGENT_PATH, MODULE_LIST=MODULE_LIST)


T = TypeVar("T")


@dataclass(frozen=True)
class NodeImage:
    """A bootable reference node: direct kernel boot of ``kernel`` + ``initramfs``, root on ``disk``."""

    kernel: Path
    initramfs: Path
    disk: Path
    cmdline: str


# --- stage 3: the disk and the initramfs ----------------------------------------

def python_sources(package_root: Path = PACKAGE_ROOT) -> dict[str, bytes]:
    """Our in-node files (Python, and the agent's scripts and templates), ``{path relative to the package: contents}``.

    ``node/`` may not exist yet in a checkout; whatever is there is copied and hashed.
    """
    files: dict[str, bytes] = {}
    for name in NODE_PYTHON:
        path = package_root / name
        if path.is_file():
            files[name] = path.read_bytes()
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts and file.suffix in NODE_FILE_SUFFIXES:
                    files[str(file.relative_to(package_root))] = file.read_bytes()
    return files


def _sources_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def build_initramfs(kernel: Kernel, busybox: Path, modules: tuple[str, ...] = BOOT_MODULES) -> Initramfs:
    """The node's initramfs: busybox, :data:`BOOT_MODULES` in load order and :data:`INIT_SCRIPT`."""
    image = Initramfs()
    image.copy("/bin/busybox", busybox, 0o755)
    image.file("/init", INIT_SCRIPT.encode(), 0o755)
    for directory in ("/dev", "/proc", "/sys", "/newroot", "/etc"):
        image.directory(directory)
    add_modules(image, kernel, list(modules))
    return image


def _copy_rootfs_modules(kernel: Kernel, root: Path) -> None:
    dest = root / "lib/modules" / kernel.release
    for rel in ROOTFS_MODULE_DIRS:
        source = kernel.modules_dir / rel
        if not source.exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (kernel.modules_dir / meta).exists():
            shutil.copy2(kernel.modules_dir / meta, dest / meta)
    run_tool(["depmod", "-b", str(root), kernel.release], "depmod in the rootfs")


def make_disk(root: Path, disk: Path, free_bytes: int = DISK_FREE_BYTES) -> None:
    """Pack directory ``root`` into a sparse raw ext4 image ``disk`` with ``free_bytes`` to spare.

    ``mke2fs -d`` copies a tree into a new filesystem without mounting it,
    keeping owners, modes and symlinks. With a (small) journal: the disk is a
    throw-away snapshot, but it lives through reboots within one QEMU, and a
    hard reset (power cut) of a journal-less ext4 left metadata half-written
    (containerd's database then failed to open at every start). The kernel
    replays the journal at mount; the initramfs has no fsck.
    """
    mke2fs = find_program("mke2fs", "the node disk is made with it", "e2fsprogs")
    used = int(run_tool(userns.as_root(["du", "-s", "--block-size=1", str(root)]), "du").stdout.split()[0])
    size_mib = (used * 13 // 10 + free_bytes) >> 20
    disk.unlink(missing_ok=True)
    journal_mib = max(4, min(JOURNAL_MIB, size_mib // 4))  # small test disks get a smaller one
    # The host's mke2fs.conf is ignored and every ext4 feature named, so that the
    # disk is the same whatever distribution builds it (and the 6.1 kernel reads it).
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1", "MKE2FS_CONFIG": "/dev/null"}
    run_tool(userns.as_root([mke2fs, "-q", "-F", "-O", "has_journal,extent,huge_file,flex_bg,metadata_csum,dir_nlink,extra_isize,64bit",
          "-b", "4096", "-I", "256", "-J", f"size={journal_mib}", "-i", "16384", "-L", "smalltown-root",
          "-U", "5a11c0de-0000-4000-8000-000000000001",
          "-E", "root_owner=0:0,hash_seed=5a11c0de-0000-4000-8000-000000000002,nodiscard",
          "-d", str(root), str(disk), f"{size_mib}M"]), "mke2fs", env=env)


def image_key(rootfs: Path, kernel: Kernel, binaries: dict[str, Path], archives: dict[str, Path],
              sources: dict[str, bytes], busybox_version: str) -> str:
    """Cache key of the final image: every stage's identity plus our code and recipe."""
    return hash_inputs([
        rootfs.parent.name,  # "node-rootfs-<its key>": the rootfs's identity, not where the cache lives
        kernel.cache_key, busybox_version,
        *(f"{name}:{file_digest(path)}" for name, path in sorted(binaries.items())),
        *(f"{name}:{file_digest(path)}" for name, path in sorted(archives.items())),
        _sources_digest(sources), INIT_SCRIPT, AGENT_SCRIPT, CMDLINE, repr(BOOT_MODULES),
        repr(ROOTFS_MODULE_DIRS), str(DISK_FREE_BYTES), Path(__file__),
    ])


def _assemble(staging: Path, kernel: Kernel, binaries: dict[str, Path], archives: dict[str, Path],
              sources: dict[str, bytes], info: dict[str, object], rootfs_packages: Path) -> None:
    """Add our parts to ``staging`` (a hard-linked copy of the rootfs: never modify existing files)."""
    bin_dir = staging / IMAGE_BIN_DIR.lstrip("/")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        shutil.copyfile(path, bin_dir / name)
        (bin_dir / name).chmod(0o755)
    for link in KUBE_LINKS:
        (bin_dir / link).symlink_to("kube")
    images_dir = staging / IMAGE_ARCHIVE_DIR.lstrip("/")
    images_dir.mkdir(parents=True)
    index: dict[str, str] = {}
    for name, path in sorted(archives.items()):
        shutil.copyfile(path, images_dir / path.name)
        index[name] = path.name
    (images_dir / "images.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    lib = staging / "opt/smalltown/lib/pytest_smalltown"
    for rel, data in sources.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_bytes(data)
    agent = staging / AGENT_PATH.lstrip("/")
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text(AGENT_SCRIPT)
    agent.chmod(0o755)
    (staging / "opt/smalltown/image.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(rootfs_packages, staging / "opt/smalltown/packages.txt")
    # Byte-compile with the node's own interpreter now: the disk is a throw-away
    # snapshot, so .pyc files written at boot would be lost and the agent's
    # imports recompiled under emulation on every boot.
    run_tool(userns.as_root(["chroot", str(staging), "python3", "-m", "compileall", "-q", "/opt/smalltown/lib"]),
         "byte-compiling the agent")
    _copy_rootfs_modules(kernel, staging)


def build_node_image(progress: Progress = stderr_progress, timings: dict[str, float] | None = None) -> NodeImage:
    """Build (or find in the cache) the reference node image and everything it is made of.

    ``timings``, if given, receives the seconds each step took (cache hits are fast).
    """
    steps: dict[str, float] = {} if timings is None else timings

    def step(name: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        result = fn()
        steps[name] = time.monotonic() - started
        progress(f"step {name}: {steps[name]:.1f}s")
        return result

    # The host prerequisites most often missing (a non-root user's subordinate
    # ids, mmdebstrap for the rootfs, gcc for the OCI images) are checked first,
    # so that a host that cannot build says so in seconds, not after the Go builds.
    userns.check()
    rootfs: Path = step("rootfs", lambda: build_rootfs(progress))
    archives: dict[str, Path] = step("oci-images", lambda: oci.build_images(progress))
    kernel: Kernel = step("kernel", lambda: get_kernel(progress))
    binaries: dict[str, Path] = {}
    for program in gobuild.PROGRAMS:
        binaries[program] = step(f"go-{program}", functools.partial(gobuild.build_program, program, progress))
    busybox_version, _ = debian.candidate(debian.BUSYBOX_PACKAGE)
    sources = python_sources()
    if not any(rel.startswith("node/") for rel in sources):
        progress("warning: pytest_smalltown/node/ is missing; the image has no agent to run")
    key = image_key(rootfs, kernel, binaries, archives, sources, busybox_version)
    info: dict[str, object] = {
        "key": key, "kubernetes": gobuild.KUBERNETES_VERSION, "kernel": kernel.release,
        "go": gobuild.go_version(), "rootfs": (rootfs.parent / "versions.txt").read_text().split(),
        "images": sorted(archives),
    }

    def build(out: Path) -> None:
        staging = out / "staging"
        progress("assembling the node tree (hard-linked copy of the rootfs)")
        run_tool(userns.as_root(["cp", "-al", str(rootfs), str(staging)]), "copying the rootfs")
        _assemble(staging, kernel, binaries, archives, sources, info, rootfs.parent / "packages.txt")
        progress("mke2fs -d (packing the disk image)")
        make_disk(staging, out / "disk.raw")
        userns.remove_tree(staging)
        progress("writing the initramfs")
        build_initramfs(kernel, debian.busybox(progress).path).write(out / "initramfs.gz")
        shutil.copyfile(kernel.vmlinuz, out / "vmlinuz")
        (out / "cmdline").write_text(CMDLINE + "\n")
        (out / "image.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(rootfs.parent / "packages.txt", out / "packages.txt")

    root: Path = step("node-image", lambda: cached_build("node-image", key, build, progress))
    return NodeImage(kernel=root / "vmlinuz", initramfs=root / "initramfs.gz", disk=root / "disk.raw",
                     cmdline=(root / "cmdline").read_text().strip())


def build_all_images(progress: Progress = stderr_progress) -> dict[str, Path]:
    """What ``smalltown image build`` runs for the node: every artifact, with per-step timings.

    Returns the node image's files by role (``kernel``, ``initramfs``, ``disk``).
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    image = build_node_image(progress, timings)
    total = time.monotonic() - started
    progress("node image timings: " + ", ".join(f"{name} {secs:.1f}s" for name, secs in timings.items())
             + f"; total {total:.1f}s")
    return {"kernel": image.kernel, "initramfs": image.initramfs, "disk": image.disk}
