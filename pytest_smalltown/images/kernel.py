"""Debian's stock kernel and its modules, shared by every reference image.

The kernel comes from the ``linux-image-amd64`` package as apt resolves it on
this host, unpacked into the cache (never installed). Debian builds virtio,
ext4, bridge, netfilter and friends as modules, so each image carries the
closure of the modules it needs in its initramfs and loads them in
dependency order at boot (:func:`add_modules`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import debian
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.initramfs import Initramfs

KERNEL_PACKAGE = "linux-image-amd64"


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel: the bootable image and its module tree."""

    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>
    release: str
    package_version: str

    @property
    def cache_key(self) -> str:
        """Identifies this kernel in the hashes of images built on it."""
        return f"{KERNEL_PACKAGE}={self.package_version}/{self.release}"


def _resolve_kernel_package() -> tuple[str, str]:
    """The versioned image package behind the metapackage, e.g. ``linux-image-6.1.0-56-amd64``."""
    version, depends = debian.candidate(KERNEL_PACKAGE)
    for alternative in depends.split(","):
        name = alternative.split("(")[0].split("|")[0].strip()
        if name.startswith("linux-image-"):
            return name, version
    raise debian.PackageError(f"cannot tell which kernel {KERNEL_PACKAGE} {version} depends on: {depends!r}")


def get_kernel(progress: Progress = stderr_progress) -> Kernel:
    """Return Debian's current amd64 kernel, downloading and unpacking it on first use."""
    package, version = _resolve_kernel_package()
    key = hash_inputs([package, version, "depmod-v1"])

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            progress(f"downloading {package} {version}")
            (deb,) = debian.download([package], Path(tmp))
            debian.extract(deb, out / "root")
        release = package.removeprefix("linux-image-")
        # The package ships no modules.dep: depmod makes it at install time.
        debian.run_package_tool(["depmod", "-b", str(out / "root"), release], f"depmod for {release}")
        (out / "release").write_text(release)
        (out / "version").write_text(version)

    find_program("depmod", "the kernel's module index is made with it", "kmod")
    root = cached_build("kernel", key, build, progress)
    release = (root / "release").read_text()
    return Kernel(
        vmlinuz=root / "root" / "boot" / f"vmlinuz-{release}",
        modules_dir=root / "root" / "lib" / "modules" / release,
        release=release,
        package_version=(root / "version").read_text(),
    )


def _canonical(module: str) -> str:
    return module.removesuffix(".ko").replace("-", "_")


def module_load_order(kernel: Kernel, names: list[str]) -> list[Path]:
    """The ``.ko`` files for ``names`` and everything they depend on, dependencies first.

    Modules built into the kernel are skipped silently; an unknown name is an error
    (a typo here would otherwise surface as a missing device at boot).
    """
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[_canonical(Path(path).name)] = (path, [_canonical(Path(d).name) for d in rest.split()])
    builtin = {
        _canonical(Path(line).name) for line in (kernel.modules_dir / "modules.builtin").read_text().split()
    }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in deps:
            if name in builtin:
                return
            raise KeyError(f"kernel {kernel.release} has no module {name!r}")
        path, requires = deps[name]
        for dep in requires:
            visit(dep)
        order.append(kernel.modules_dir / path)

    for name in names:
        visit(_canonical(name))
    return order


MODULE_LIST = "/etc/modules-load-order"


def add_modules(image: Initramfs, kernel: Kernel, names: list[str]) -> list[str]:
    """Put ``names`` and their dependencies into ``image`` under /lib/modules/<release>.

    Also writes :data:`MODULE_LIST`, one in-archive path per line in load
    order, so that an init script can simply ``insmod`` each line.
    Returns the in-archive paths in load order.
    """
    loaded: list[str] = []
    for module in module_load_order(kernel, names):
        inside = f"/lib/modules/{kernel.release}/{module.relative_to(kernel.modules_dir)}"
        image.copy(inside, module, 0o644)
        loaded.append(inside)
    image.file(MODULE_LIST, "".join(p + "\n" for p in loaded).encode())
    return loaded
