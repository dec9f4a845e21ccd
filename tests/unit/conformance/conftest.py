"""The fixture of the runner's tests: a fake e2e.test in the test's own directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fakes import FakeSuite


@pytest.fixture
def fake(tmp_path: Path) -> FakeSuite:
    """A fake suite of ``fakes.SPECS`` whose specs all pass until :meth:`FakeSuite.will` says otherwise."""
    return FakeSuite.create(tmp_path)
