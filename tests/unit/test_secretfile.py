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


def test_a_reader_of_the_old_file_never_sees_the_new_secret(tmp_path: Path) -> None:
    """Someone who opened the file while it was readable keeps that descriptor after any chmod: the secret must
    go into a new file, created 0600, and never into the old one."""
    existing = tmp_path / "kubeconfig"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    with open(existing, "rb") as other_user:
        write_private(existing, b"secret")
        assert other_user.read() == b"old"
    assert existing.read_bytes() == b"secret"


def test_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim's data")
    planted = tmp_path / "kubeconfig"
    planted.symlink_to(victim)
    dangling = tmp_path / "ticket.pb"
    dangling.symlink_to(tmp_path / "world-readable-copy")
    for path in (planted, dangling):
        write_private(path, b"secret")
        assert not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"secret"
    assert victim.read_bytes() == b"victim's data"
    assert not (tmp_path / "world-readable-copy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubeconfig", "ticket.pb", "victim"]  # no temp file left
