"""Credentials written on the host are the owner's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pytest_smalltown.secretfile import write_private


def test_new_and_existing_files_end_up_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fresh = write_private(tmp_path / "ticket.pb", b"secret")
        existing = tmp_path / "kubeconfig"
        existing.write_text("old")
        existing.chmod(0o644)
        write_private(existing, b"new")
    finally:
        os.umask(old)
    for path, content in ((fresh, b"secret"), (existing, b"new")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == content
