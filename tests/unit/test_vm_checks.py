"""launch/vm.py's checks that need no running VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_smalltown.launch import vm


def test_swtpm_refuses_a_work_directory_with_a_comma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """swtpm splits ``--tpmstate dir=...`` at commas and has no escape: such a path is refused, never passed."""
    monkeypatch.setattr(vm, "Process", lambda *args, **kwargs: pytest.fail("swtpm was started"))
    workdir = tmp_path / "a,mode=0777"
    workdir.mkdir()
    with pytest.raises(vm.LaunchError, match="comma"):
        vm.start_swtpm(workdir)
