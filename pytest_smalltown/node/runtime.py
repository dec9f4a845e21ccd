"""The container runtime (step 6): :class:`ContainerRuntime` starts containerd and imports images.

containerd runs under the supervisor; a background thread waits until it
answers (``ContainerdReady``), then imports the preloaded images: the image's
own archives (unless the pause and test images are already there, as on a
reboot), then every image-set disk the launcher attached (serial
``preload-<set>``, a raw ``docker save`` archive), and sets ``ImagesLoaded``.
:attr:`ContainerRuntime.images_loaded` is set when that thread ends either
way; the kubelet waits for it (step 9).

The debug service's LoadImage spools uploads under :attr:`image_spool_dir`
and imports them through the same :meth:`~ContainerRuntime.import_archive`.
Every import goes through ``ctr`` and one lock: a failed import is rolled
back by comparing the image list before and after it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pytest_smalltown import contract
from pytest_smalltown.node import components as comp
from pytest_smalltown.node import system
from pytest_smalltown.node.debug_service import SPOOL_PREFIX, FailedPrecondition, ImageImportError, Unavailable
from pytest_smalltown.node.pki import write_public
from pytest_smalltown.node.state import NodeState
from pytest_smalltown.node.supervisor import ComponentSpec

#: How long the kubelet waits for image imports before starting anyway. An
#: image set (hundreds of MB) takes minutes to import under emulation.
IMAGE_IMPORT_WAIT = 1200.0
#: Where LoadImage spools uploaded archives, under the data directory (on the
#: node's disk: archives can be larger than RAM, and /tmp is tmpfs).
IMAGE_SPOOL_DIR = "image-uploads"


def ctr_error(stderr: str, limit: int = 2000) -> str:
    """ctr's own error lines (``ctr: ...``) from its stderr, else all of it; at most ``limit`` characters.

    ctr also echoes containerd's log lines ("apply failure, attempting
    cleanup") that repeat the error in a less readable form.
    """
    lines = stderr.strip().splitlines()
    own = [line for line in lines if line.startswith("ctr: ")]
    return "\n".join(own or lines)[-limit:]


class ContainerRuntime:
    """containerd and the images in its ``k8s.io`` namespace (see the module docstring)."""

    def __init__(self, node: NodeState) -> None:
        self.node = node
        #: Set when the boot's image import has ended (imported, failed or given up).
        self.images_loaded = threading.Event()
        # One import at a time: a failed import is rolled back by comparing
        # the image list before and after it.
        self._import_lock = threading.Lock()

    @property
    def image_spool_dir(self) -> Path:
        """Where LoadImage spools uploads: on the data disk (see :data:`IMAGE_SPOOL_DIR`)."""
        return self.node.cfg.data / IMAGE_SPOOL_DIR

    def start_containerd(self) -> None:
        """Config, containerd under the supervisor, and the image import in the background."""
        cfg = self.node.cfg
        for d in (cfg.containerd_root, cfg.containerd_state, cfg.cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Uploads an earlier boot did not finish (LoadImage answers UNAVAILABLE
        # until containerd is ready, so none is in flight now).
        for stale in self.image_spool_dir.glob(f"{SPOOL_PREFIX}*"):
            stale.unlink(missing_ok=True)
        write_public(cfg.kube_dir / "containerd.toml", comp.containerd_config(cfg).encode())
        self.node.supervisor.start(ComponentSpec("containerd", comp.containerd_argv(cfg)))
        threading.Thread(target=self._import_images, name="image-import", daemon=True).start()

    def _ctr(self, *args: str, timeout: float = 120, stdin: Any = None) -> subprocess.CompletedProcess[str]:
        cfg = self.node.cfg
        argv = [cfg.bins.resolve("ctr"), "--address", str(cfg.containerd_socket), "-n", "k8s.io", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=stdin)

    def image_names(self) -> set[str]:
        """The names of the images in ``k8s.io``; :class:`Unavailable` when containerd does not answer."""
        res = self._ctr("images", "ls", "-q")
        if res.returncode != 0:
            raise Unavailable(f"containerd did not list its images: {res.stderr.strip()[-300:]}")
        return set(res.stdout.split())

    def import_archive(self, archive: Path, timeout: float = IMAGE_IMPORT_WAIT) -> set[str]:
        """Import a docker-archive or OCI tarball (a file or a block device) into k8s.io, unpacked.

        Returns the image names that are new. The one import path for the
        image's own archives, the image-set disks and LoadImage. On failure
        the images the import created are removed again: ``ctr images
        import`` records an image before it unpacks it, so an archive with a
        broken layer would otherwise leave an image that fails on first use.
        Raises :class:`ImageImportError` (ctr's error output) or
        :class:`TimeoutError` (ctr killed after ``timeout`` seconds).
        """
        with self._import_lock:
            before = self.image_names()
            error: Exception | None = None
            with open(archive, "rb") as stream:  # stdin, so a block device works like a file
                try:
                    res = self._ctr("images", "import", "-", timeout=timeout, stdin=stream)
                    if res.returncode != 0:
                        error = ImageImportError(ctr_error(res.stderr) or f"ctr exited with {res.returncode}")
                except subprocess.TimeoutExpired:
                    error = TimeoutError(f"ctr images import did not finish within {timeout:.0f}s")
            try:
                added = self.image_names() - before
            except Unavailable:
                if error is None:
                    raise
                self.node.log("could not check for images a failed import left behind")
                raise error from None
            if error is None:
                return added
            if added:
                removed = self._ctr("images", "rm", *sorted(added))
                self.node.log(f"removed {len(added)} image(s) of a failed import: {' '.join(sorted(added))}"
                              + ("" if removed.returncode == 0 else f" (failed: {removed.stderr.strip()[-300:]})"))
            raise error

    def check_image_import_ready(self) -> None:
        """LoadImage's precondition: containerd runs here and answers."""
        if not self.node.cfg.runs("containerd"):
            raise FailedPrecondition("this node runs no containerd to load images into")
        if not self.node.conditions.get("ContainerdReady"):
            raise Unavailable("containerd is not ready yet")

    def load_uploaded_image(self, archive: Path) -> set[str]:
        """LoadImage's import: :meth:`import_archive` with a timeout for the archive's size, logged."""
        size = archive.stat().st_size
        timeout = IMAGE_IMPORT_WAIT + (size >> 20) * contract.IMAGE_IMPORT_SECONDS_PER_MIB
        started = time.monotonic()
        try:
            added = self.import_archive(archive, timeout)
        except (ImageImportError, TimeoutError) as exc:
            self.node.log(f"LoadImage: {size} byte archive refused: {str(exc)[-300:]}")
            raise
        self.node.log(f"LoadImage: {size} byte archive imported in {time.monotonic() - started:.1f}s; "
                      f"new names: {' '.join(sorted(added)) or 'none'}")
        return added

    def _import_images(self) -> None:
        node = self.node
        try:
            deadline = time.monotonic() + 300
            while True:
                # ctr blocks while the socket is missing: wait for the socket first,
                # and treat a slow answer (TCG, busy host) as "not yet".
                if node.cfg.containerd_socket.exists():
                    try:
                        if self._ctr("version", timeout=30).returncode == 0:
                            break
                    except subprocess.TimeoutExpired:
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError("containerd did not answer within 300 s")
                time.sleep(0.3)
            node.conditions.set("ContainerdReady")
            node.log("containerd ready")
            present = self.image_names()
            wanted = {contract.PAUSE_IMAGE, contract.TEST_IMAGE}
            if wanted <= present:
                node.log("preloaded images already present")
            else:
                tars = sorted(node.cfg.images_dir.glob("*.tar"))
                for tar in tars:
                    try:
                        self.import_archive(tar, timeout=300)
                    except (ImageImportError, TimeoutError) as exc:
                        node.log(f"image import {tar.name} failed: {str(exc)[:300]}")
                present = self.image_names()
                missing = wanted - present
                node.log(f"imported {len(tars)} image archive(s)"
                         + (f"; MISSING {', '.join(sorted(missing))}" if missing else ""))
            self._import_preload_disks()
            node.conditions.set("ImagesLoaded")
        except Exception as exc:  # noqa: BLE001
            node.log(f"image import failed: {exc!r}")
        finally:
            self.images_loaded.set()

    def _import_preload_disks(self) -> None:
        """Stream every image-set disk into containerd (the disk is the archive itself).

        Images are unpacked here, on the boot's critical path, although
        containerd's CRI would unpack them on first use (``--no-unpack``):
        measured under emulation, a first container of the nautilus image then
        waited over 5 minutes for its unpack on a busy node and failed its
        conformance spec, while the unpack during boot cost about 6 minutes
        once per cluster.
        """
        for serial, device in system.disks_by_serial(contract.PRELOAD_DISK_SERIAL_PREFIX).items():
            started = time.monotonic()
            try:
                added = self.import_archive(device)
            except (ImageImportError, TimeoutError) as exc:
                self.node.log(f"image set {serial} ({device}): import failed: {str(exc)[-500:]}")
                continue
            self.node.log(f"image set {serial} ({device}): imported {len(added)} image(s) "
                          f"in {time.monotonic() - started:.1f}s")
