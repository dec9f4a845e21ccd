"""LoadImage end to end in-process: DebugClient.load_image -> the real DebugServicer -> a fake importer.

The importer is the only double: it records what the servicer handed it, so
these tests see the bytes as the node would import them, and whether the
spool file is gone afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from pytest_smalltown.debug import IMAGE_CHUNK, DebugClient, ImageLoadError, load_image_timeout
from pytest_smalltown.node import debug_service
from pytest_smalltown.node.debug_service import (
    Conditions,
    DebugServicer,
    FailedPrecondition,
    ImageImportError,
    ImageLoader,
    Unavailable,
    serve,
)
from pytest_smalltown.node.logbuffer import LogRegistry


def _unused(*args: object) -> Any:
    raise AssertionError("LoadImage needs no kubeconfig or ticket")


class FakeImporter:
    """Records each archive it is given (path, bytes) and then behaves as told."""

    def __init__(self) -> None:
        self.received: list[tuple[Path, bytes]] = []
        self.fail_with: Exception | None = None
        self.not_ready: Exception | None = None

    def check_ready(self) -> None:
        if self.not_ready is not None:
            raise self.not_ready

    def __call__(self, archive: Path) -> None:
        self.received.append((archive, archive.read_bytes()))
        if self.fail_with is not None:
            raise self.fail_with


Node = tuple[FakeImporter, DebugClient, Path]


def _start(images: ImageLoader | None) -> tuple[grpc.Server, DebugClient]:
    servicer = DebugServicer(LogRegistry(), Conditions(()), _unused, _unused,
                             images=images)  # fmt: skip
    server, port = serve(servicer, "127.0.0.1:0", max_workers=4)
    return server, DebugClient(grpc.insecure_channel(f"127.0.0.1:{port}"), retry_for=2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    importer = FakeImporter()
    spool = tmp_path / "data" / "image-uploads"  # made on first use
    server, client = _start(ImageLoader(spool, importer.check_ready, importer))
    yield importer, client, spool
    client.close()
    server.stop(0)


def _archive(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "image.tar"
    path.write_bytes(os.urandom(size))
    return path


def test_a_multi_chunk_archive_arrives_intact_and_its_spool_file_is_removed(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    archive = _archive(tmp_path, 2 * IMAGE_CHUNK + 12345)  # three messages, the last one short
    client.load_image(archive)
    [(spooled, data)] = importer.received
    assert data == archive.read_bytes()
    assert spooled.parent == spool, "spooled in the node's data directory, not /tmp"
    assert not spooled.exists() and list(spool.iterdir()) == []


def test_a_failing_import_is_invalid_argument_with_the_importers_message(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    importer.fail_with = ImageImportError("ctr: unrecognized image format")
    archive = _archive(tmp_path, 5000)
    with pytest.raises(ImageLoadError) as info:
        client.load_image(archive)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(archive) in str(info.value) and "ctr: unrecognized image format" in str(info.value)
    assert isinstance(info.value.__cause__, grpc.RpcError)
    [(spooled, data)] = importer.received  # not retried: the archive will not get better
    assert data == archive.read_bytes()
    assert not spooled.exists() and list(spool.iterdir()) == []


def test_an_empty_archive_is_invalid_argument_and_never_imported(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    archive = tmp_path / "empty.tar"
    archive.touch()
    with pytest.raises(ImageLoadError, match=r"INVALID_ARGUMENT: empty image archive") as info:
        client.load_image(archive)
    assert str(archive) in str(info.value)
    assert importer.received == [] and list(spool.iterdir()) == []


def test_a_missing_file_is_a_file_error_before_any_rpc(node: Node, tmp_path: Path) -> None:
    importer, client, _ = node
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        client.load_image(tmp_path / "nope.tar")
    assert importer.received == []


def test_a_node_whose_containerd_is_starting_is_retried_then_named(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    importer.not_ready = Unavailable("containerd is not ready yet")
    archive = _archive(tmp_path, 100)
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="UNAVAILABLE: containerd is not ready yet") as info:
        client.load_image(archive, retry_for=0.5)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 10
    assert importer.received == [] and not spool.exists(), "refused before anything was spooled"
    importer.not_ready = None
    client.load_image(archive)
    assert importer.received[0][1] == archive.read_bytes()


def test_a_node_without_containerd_refuses_at_once(node: Node, tmp_path: Path) -> None:
    importer, client, _ = node
    importer.not_ready = FailedPrecondition("this node runs no containerd to load images into")
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="FAILED_PRECONDITION: this node runs no containerd"):
        client.load_image(_archive(tmp_path, 100), retry_for=30)
    assert time.monotonic() - started < 10, "FAILED_PRECONDITION is final for LoadImage: no 30 s of retries"


def test_a_servicer_without_an_image_loader_refuses(tmp_path: Path) -> None:
    server, client = _start(None)
    try:
        with pytest.raises(ImageLoadError, match="FAILED_PRECONDITION: this node runs no container runtime"):
            client.load_image(_archive(tmp_path, 100))
    finally:
        client.close()
        server.stop(0)


def _disk_usage_with_free(free: Callable[[], int]) -> Callable[[Path], SimpleNamespace]:
    """A stand-in for shutil.disk_usage (the servicer reads only ``free``)."""
    return lambda path: SimpleNamespace(free=free())


def test_a_full_disk_is_resource_exhausted_and_leaves_no_spool_file(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    importer, client, spool = node
    monkeypatch.setattr(debug_service.shutil, "disk_usage",
                        _disk_usage_with_free(lambda: debug_service.SPOOL_RESERVE_BYTES - 1))  # fmt: skip
    with pytest.raises(ImageLoadError, match="RESOURCE_EXHAUSTED: the node's disk is nearly full"):
        client.load_image(_archive(tmp_path, 3 * IMAGE_CHUNK))
    assert importer.received == [] and list(spool.iterdir()) == []


def test_an_archive_too_large_to_unpack_is_refused_before_the_import(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    importer, client, spool = node
    archive = _archive(tmp_path, 2 * IMAGE_CHUNK)
    # Room to spool it, not for blobs plus unpacked layers.
    free = debug_service.SPOOL_RESERVE_BYTES + archive.stat().st_size
    monkeypatch.setattr(debug_service.shutil, "disk_usage", _disk_usage_with_free(lambda: free))
    with pytest.raises(ImageLoadError, match=r"RESOURCE_EXHAUSTED: the node's disk has \d+ MiB free; importing"):
        client.load_image(archive)
    assert importer.received == [] and list(spool.iterdir()) == []


def test_an_import_that_runs_out_of_space_is_resource_exhausted(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    importer.fail_with = ImageImportError("ctr: failed to extract layer: write /var/lib/x: no space left on device")
    with pytest.raises(ImageLoadError, match="RESOURCE_EXHAUSTED: .*no space left on device"):
        client.load_image(_archive(tmp_path, 100))
    assert list(spool.iterdir()) == []


def test_an_import_timeout_is_deadline_exceeded(node: Node, tmp_path: Path) -> None:
    importer, client, spool = node
    importer.fail_with = TimeoutError("ctr images import did not finish within 1200s")
    with pytest.raises(ImageLoadError, match="DEADLINE_EXCEEDED: .*did not finish within 1200s"):
        client.load_image(_archive(tmp_path, 100))
    assert list(spool.iterdir()) == []


def test_the_default_deadline_grows_with_the_archive() -> None:
    assert load_image_timeout(0) >= 60
    assert load_image_timeout(1 << 30) > load_image_timeout(1 << 20) + 1000, "a GiB under TCG takes long"


def test_an_upload_the_client_abandons_leaves_no_spool_file(node: Node) -> None:
    importer, client, spool = node

    def parts() -> Iterator[debug_service.debug_pb2.ImagePart]:
        yield debug_service.debug_pb2.ImagePart(data_part=b"x" * 1000)
        time.sleep(3)  # the client's deadline passes mid-stream

    with pytest.raises(grpc.RpcError) as info:
        client.stub.LoadImage(parts(), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while spool.exists() and any(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spool.exists() or list(spool.iterdir()) == []
    assert importer.received == []
