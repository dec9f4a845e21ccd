"""Builder for the Nanoswitch image: Debian's kernel plus a one-program initramfs.

The switch microVM's /init is ``go/nanoswitch`` (bridge, DHCP, NAT and TCP
forwarding in one static Go binary, ~3.5 MB). A single program instead of
busybox + iproute2 + nft + dnsmasq keeps the initramfs small and the boot short
under TCG emulation, and the kernel modules it needs come from the same
Debian kernel every other image uses.

Nothing cluster-specific is baked in: ports, target and leases come from the
kernel command line (see ``pytest_smalltown.launch.switch``), so one cached
image serves every cluster shape and is rebuilt only when its inputs change.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.gobuild import GO_ENV_KEY, GoProgram, compile_program, go_env, go_version
from pytest_smalltown.images.initramfs import Initramfs
from pytest_smalltown.images.kernel import Kernel, add_modules, get_kernel

# Everything the switch needs that Debian builds as modules; add_modules puts
# each module's modules.dep dependencies before it. virtio_mmio serves QEMU's
# microvm transport, virtio_pci its pcie=on variant. crc32c_generic must come
# first although no modules.dep line says so: libcrc32c (a dependency of nf_tables) asks the crypto API for
# "crc32c" at load time, and with no modprobe in the image nothing would load
# the implementation on demand (finit_module then fails with ENOENT).
MODULES = [
    "crc32c_generic",
    "virtio_mmio",
    "virtio_pci",
    "virtio_net",
    "bridge",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_nat",  # dnat of NodePorts to node 0
    "nft_ct",  # the fence: replies to the switch's own connections pass
    "nft_reject_ipv4",  # the fence: a connection from the nodes' side is reset
    "virtio_console",  # the host's fault channel (a virtio-serial port)
    "sch_netem",  # a degraded link (delay, jitter, loss, rate)
    "nft_meta_bridge",  # a partition: meta iifname/oifname in the bridge family
]

# Bump when the layout of the image changes in a way the hashed inputs miss.
BUILDER_VERSION = "nanoswitch-image-v1"

#: The nanoswitch program as gobuild sees it (module dir images/go/nanoswitch).
#: Building through the same argv and environment as the node's Go programs
#: keeps Go's build cache warm across all of them.
PROGRAM = GoProgram("nanoswitch", "-s -w")
GO_DIR = PROGRAM.module_dir


@dataclass(frozen=True)
class SwitchImage:
    """What QEMU needs to boot the switch: ``-kernel`` and ``-initrd``."""

    kernel: Path
    initramfs: Path


def source_files() -> list[Path]:
    """The files whose contents determine the binary (Go tests excluded on purpose)."""
    files = sorted(p for p in GO_DIR.glob("*.go") if not p.name.endswith("_test.go"))
    return [*files, GO_DIR / "go.mod", GO_DIR / "go.sum"]


def cache_key(kernel: Kernel, toolchain: str) -> str:
    """Hash of every input of the image: sources, module list, kernel, flags and Go toolchain."""
    return hash_inputs(
        [BUILDER_VERSION, *source_files(), "\n".join(MODULES), kernel.cache_key, PROGRAM.ldflags, GO_ENV_KEY, toolchain]
    )


def go_build_env() -> dict[str, str]:
    """gobuild's environment plus ``-mod=readonly``: a build never edits go.mod/go.sum behind the cache key."""
    env = go_env()
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-mod=readonly"]))
    return env


def build_nanoswitch(dest: Path, progress: Progress = stderr_progress) -> None:
    """Compile the nanoswitch program to ``dest`` (static, ``-trimpath``), niced for the busy host.

    Through gobuild's one supervised go build: it dies with the session,
    says it is alive while silent and is stopped if it hangs.
    """
    compile_program(PROGRAM, dest, progress, env=go_build_env(), nice=10)


def build_switch_image(progress: Progress = stderr_progress) -> SwitchImage:
    """Return the switch's kernel and initramfs, building the initramfs if its inputs changed."""
    kernel = get_kernel(progress)
    key = cache_key(kernel, go_version())  # go_version() also checks that Go is installed

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="nanoswitch-") as tmp:
            binary = Path(tmp) / "nanoswitch"
            build_nanoswitch(binary, progress)
            image = Initramfs()
            image.copy("/init", binary, 0o755)
            for directory in ("/proc", "/sys", "/dev", "/tmp"):
                image.directory(directory)
            add_modules(image, kernel, MODULES)
            image.write(out / "initramfs.gz")

    root = cached_build("nanoswitch", key, build, progress)
    return SwitchImage(kernel=kernel.vmlinuz, initramfs=root / "initramfs.gz")
