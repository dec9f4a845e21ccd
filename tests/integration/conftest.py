"""Fixtures for tests that boot real (tiny) VMs under QEMU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_smalltown.images.tinyvm import TinyImage, build_tiny_image
from pytest_smalltown.launch.accel import resolve_accel
from pytest_smalltown.launch.vm import make_workdir, remove_workdir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of this directory (only: this hook sees the whole session's items), so that
    ``-m "not integration"`` runs the unit tests alone."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_image() -> TinyImage:
    return build_tiny_image()


@pytest.fixture(scope="session")
def accel() -> str:
    """The accelerator these tests boot with (probed once per host for ``auto``)."""
    return resolve_accel(os.environ.get("SMALLTOWN_ACCEL", "auto")).accel


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_workdir("st-test-")
    yield path
    remove_workdir(path)
