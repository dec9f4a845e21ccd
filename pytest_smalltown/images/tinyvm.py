"""The tiny test VM: Debian's kernel plus a busybox initramfs.

It boots in seconds under TCG and is what the launcher's and the switch's own
integration tests run, so that they exercise real QEMU, real virtio NICs and a
real guest network stack without needing the (large) node image. It is also
the payload of the accelerator probe.

Behaviour is chosen on the kernel command line, so one cached image serves
every test:

``tiny.name=NAME``        name reported in console lines and TCP answers
``tiny.ip=dhcp|A.B.C.D/NN`` configure eth0 (prints ``tinyvm: ip <addr>``)
``tiny.serve=P1,P2``      answer ``tinyvm <NAME> port <P>`` to each TCP connection
``tiny.ping=IP``          ping once the network is up (``tinyvm: ping <IP> ok|fail``)
``tiny.connect=IP:PORT[,IP:PORT...]`` open a TCP connection to each and send a line
                          (``tinyvm: connect <IP:PORT> ok|fail``, one line each)
(always)                  ``tinyvm: tpm 2`` when a TPM 2.0 device is present
``tiny.fwcfg=NAME``       print the md5 of fw_cfg entry NAME (``tinyvm: fwcfg <md5>``)
``tiny.poweroff=1``       power off right after ``tinyvm: ready`` (the accel probe)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import debian
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.initramfs import Initramfs
from pytest_smalltown.images.kernel import MODULE_LIST, add_modules, get_kernel
from pytest_smalltown.template import render

TINY_MODULES = ["virtio_pci", "virtio_mmio", "virtio_net", "virtio_rng", "qemu_fw_cfg"]

#: Console line printed once the tiny VM has done everything it was asked to.
READY_LINE = "tinyvm: ready"
#: First line the init script prints (used to time "launch to first serial line").
HELLO_LINE = "tinyvm: init"

INIT_SCRIPT = render(Path(__file__).parent / "files" / "tinyvm-init.sh", MODULE_LIST=MODULE_LIST)


@dataclass(frozen=True)
class TinyImage:
    """A bootable tiny VM: kernel and initramfs for direct boot."""

    kernel: Path
    initramfs: Path

    @staticmethod
    def cmdline(*options: str) -> str:
        """Kernel command line with the serial console and the given ``tiny.*`` options."""
        return " ".join(["console=ttyS0", "panic=-1", "quiet", *options])


def build_tiny_image(progress: Progress = stderr_progress) -> TinyImage:
    """Build (or find in the cache) the tiny VM image."""
    kernel = get_kernel(progress)
    busybox = debian.busybox(progress)
    key = hash_inputs([kernel.cache_key, f"{debian.BUSYBOX_PACKAGE}={busybox.version}", INIT_SCRIPT, *TINY_MODULES])

    def build(out: Path) -> None:
        image = Initramfs()
        image.copy("/bin/busybox", busybox.path, 0o755)
        for directory in ("/proc", "/sys", "/dev", "/tmp", "/etc"):
            image.directory(directory)
        image.file("/init", INIT_SCRIPT.encode(), 0o755)
        add_modules(image, kernel, TINY_MODULES)
        image.write(out / "initramfs.gz")

    root = cached_build("tinyvm", key, build, progress)
    return TinyImage(kernel=kernel.vmlinuz, initramfs=root / "initramfs.gz")
