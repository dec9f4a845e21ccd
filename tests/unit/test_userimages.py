"""Test images made on the host: the preloaded test image's layers plus the test's files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from pytest_smalltown import userimages
from pytest_smalltown.images.oci import ImageLayer, Layer


def test_image_with_files_adds_one_layer_on_the_test_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = Layer.of(ImageLayer(files={"bin/busybox": (0o755, b"\x7fELF")}))
    monkeypatch.setattr(userimages, "base_layers", lambda progress=None: (base,))
    archive = userimages.image_with_files("example.test/app:1", {"/srv/run.sh": b"echo hi\n"}, tmp_path / "a.tar",
                                          cmd=("sh", "/srv/run.sh"))  # fmt: skip
    with tarfile.open(archive) as tar:
        [manifest] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["RepoTags"] == ["example.test/app:1"]
        assert len(manifest["Layers"]) == 2 and manifest["Layers"][0] == f"{base.hex}/layer.tar"
        config = json.load(tar.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        assert config["config"]["Cmd"] == ["sh", "/srv/run.sh"]
        top = tarfile.open(fileobj=io.BytesIO(tar.extractfile(manifest["Layers"][1]).read()))  # type: ignore[union-attr]
        script = top.getmember("srv/run.sh")
        assert script.mode == 0o755 and top.extractfile(script).read() == b"echo hi\n"  # type: ignore[union-attr]


def test_an_untagged_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userimages, "base_layers", lambda progress=None: (Layer.of(ImageLayer()),))
    with pytest.raises(ValueError, match="explicit tag"):
        userimages.image_with_files("example.test/app", {}, tmp_path / "a.tar")
