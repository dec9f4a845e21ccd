"""Container images for tests, made on the host without docker or a registry.

Nothing can be pulled inside a test cluster, so a test that needs its own
image builds one here and loads it with ``Cluster.load_image``. The image is
the preloaded test image (a complete busybox) with the test's files on top,
so it has a shell and every busybox applet::

    archive = image_with_files("example.test/app:1", {"srv/app.sh": b"echo hi"}, tmp_path / "app.tar")
    smalltown_cluster.load_image(archive)
    # a pod with image="example.test/app:1", image_pull_policy="Never"
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.contract import TEST_IMAGE
from pytest_smalltown.images.oci import Image, ImageConfig, ImageLayer, Layer, build_images, write_docker_archive


def base_layers(progress: Progress = stderr_progress) -> tuple[Layer, ...]:
    """The layers of the preloaded test image, as its cached archive holds them."""
    with tarfile.open(build_images(progress)[TEST_IMAGE]) as archive:
        manifest_file = archive.extractfile("manifest.json")
        assert manifest_file is not None
        [manifest] = json.load(manifest_file)
        layers = []
        for member in manifest["Layers"]:
            data = archive.extractfile(member)
            assert data is not None
            layers.append(Layer(data.read()))
    return tuple(layers)


def image_with_files(
    name: str,
    files: Mapping[str, bytes],
    out: Path,
    cmd: Sequence[str] = ("sh",),
    mode: int = 0o755,
    progress: Progress = stderr_progress,
) -> Path:
    """Write a ``docker save`` archive of image ``name``: the test image plus ``files`` (path -> content).

    ``name`` needs an explicit tag (``repo:tag``): with ``:latest`` the
    kubelet would try to pull. Files get ``mode`` (executable by default, so
    scripts run as they are). Returns ``out``.
    """
    extra = Layer.of(ImageLayer(files={path.lstrip("/"): (mode, data) for path, data in files.items()}))
    image = Image(name, (*base_layers(progress), extra), ImageConfig(cmd=tuple(cmd)))
    with out.open("wb") as archive:
        write_docker_archive([image], archive)
    return out
