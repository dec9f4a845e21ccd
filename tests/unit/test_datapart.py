"""The node's data partition logic that runs without a VM: finding it, recognising its contents, the token."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pytest_smalltown.node import datapart


def sysfs(tmp_path: Path, devices: dict[str, str | None]) -> Path:
    """A /sys/class/block look-alike: ``{device: GPT name or None for a whole disk}``."""
    root = tmp_path / "block"
    for name, partname in devices.items():
        (root / name).mkdir(parents=True)
        lines = ["MAJOR=254", f"DEVNAME={name}", "DEVTYPE=" + ("partition" if partname else "disk")]
        if partname:
            lines.append(f"PARTNAME={partname}")
        (root / name / "uevent").write_text("\n".join(lines) + "\n")
    return root


def test_the_data_partition_is_found_by_its_gpt_name(tmp_path: Path) -> None:
    block = sysfs(tmp_path, {"vda": None, "vda1": "ESP", "vda2": "smalltown-root", "vda3": "smalltown-data"})
    assert datapart.find_partition(sys_block=block) == "/dev/vda3"
    assert datapart.find_partition("smalltown-root", sys_block=block) == "/dev/vda2"


def test_a_disk_without_one_has_none(tmp_path: Path) -> None:
    assert datapart.find_partition(sys_block=sysfs(tmp_path, {"vda": None, "vdb": None})) is None
    assert datapart.find_partition(sys_block=tmp_path / "missing") is None


def test_without_a_data_partition_the_data_directory_is_made_on_the_root_fs(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datapart, "find_partition", lambda: None)
    state = datapart.prepare_data(tmp_path / "var/lib/smalltown", lambda _: None)
    assert (tmp_path / "var/lib/smalltown").is_dir()
    assert (state.device, state.sealed) == (None, False)
    assert "root file system" in state.description


def test_blank_ext4_and_other_contents_are_told_apart(tmp_path: Path) -> None:
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(2 << 20))
    ext4 = tmp_path / "ext4"
    ext4.write_bytes(bytes(8 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext4)], check=True)
    other = tmp_path / "other"
    other.write_bytes(b"\0" * 4096 + b"something" + bytes(2 << 20))
    assert datapart.is_blank(str(blank)) and not datapart.has_ext4(str(blank))
    assert datapart.has_ext4(str(ext4)) and not datapart.is_blank(str(ext4))
    assert not datapart.is_blank(str(other)) and not datapart.has_ext4(str(other))


def test_the_sealed_key_round_trips_through_the_luks_token() -> None:
    public, private = b"\x00\x01public part", b"private\xff part"
    assert datapart.parse_luks_token(datapart.luks_token(public, private)) == (public, private)


def test_a_foreign_token_is_refused_by_name() -> None:
    with pytest.raises(datapart.DataUnavailableError, match="systemd-tpm2"):
        datapart.parse_luks_token('{"type": "systemd-tpm2", "keyslots": ["0"]}')
