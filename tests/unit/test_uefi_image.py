"""The UEFI disk's parts: PE layout for the unified kernel image, the GPT, the ESP (real sfdisk and mtools)."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from pytest_smalltown.images import uefi
from pytest_smalltown.images.uefi import UefiImageError


def pe_image(sections: list[tuple[bytes, int, int]], image_base: int = 0x140000000, alignment: int = 0x1000,
             magic: int = 0x20B) -> bytes:
    """A PE32+ header with ``(name, virtual size, virtual address)`` sections (no section data)."""
    pe_offset = 0x80
    optional_size = 240
    data = bytearray(pe_offset + 24 + optional_size + 40 * len(sections))
    data[:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, pe_offset)
    data[pe_offset:pe_offset + 4] = b"PE\0\0"
    struct.pack_into("<HH12xH", data, pe_offset + 4, 0x8664, len(sections), optional_size)
    optional = pe_offset + 24
    struct.pack_into("<H", data, optional, magic)
    struct.pack_into("<QI", data, optional + 24, image_base, alignment)
    for index, (name, size, address) in enumerate(sections):
        struct.pack_into("<8sII", data, optional + optional_size + 40 * index, name, size, address)
    return bytes(data)


def test_new_sections_go_after_the_last_one_aligned() -> None:
    layout = uefi.pe_layout(pe_image([(b".text", 0xBFF0, 0x4000), (b".sdmagic", 0x34, 0x19100), (b".data", 0x10, 0x11000)]))
    assert (layout.image_base, layout.section_alignment) == (0x140000000, 0x1000)
    assert layout.end_of_sections == 0x19134, "the highest section's end, whatever the table's order"
    assert layout.align(layout.end_of_sections) == 0x1A000
    assert layout.align(0x1A000) == 0x1A000


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"XX" + b[2:], "no MZ header"),
    (lambda b: b[:0x80] + b"NE\0\0" + b[0x84:], "no PE signature"),
])  # fmt: skip
def test_a_stub_that_is_no_pe_file_is_refused(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UefiImageError, match=message):
        uefi.pe_layout(damage(pe_image([(b".text", 16, 0x1000)])))


def test_a_32_bit_stub_is_refused() -> None:
    with pytest.raises(UefiImageError, match="not PE32\\+"):
        uefi.pe_layout(pe_image([(b".text", 16, 0x1000)], magic=0x10B))


def test_partitions_are_mib_aligned_in_order_and_the_root_fits() -> None:
    esp, root, data = uefi.layout_partitions(root_bytes=(5 << 20) + 1)
    assert [p.name for p in (esp, root, data)] == ["ESP", "smalltown-root", "smalltown-data"]
    assert esp.start_mib == 1 and root.start_mib == esp.start_mib + esp.size_mib
    assert root.size_mib == 6, "a partial MiB of root file system still needs its MiB"
    assert data.start_mib == root.start_mib + root.size_mib and data.size_mib == uefi.DATA_MIB


def test_the_gpt_disk_holds_the_esp_and_root_bytes_where_its_table_says(tmp_path: Path) -> None:
    (tmp_path / "BOOTX64.EFI").write_bytes(b"not really an EFI program" * 100)
    uefi.make_esp(tmp_path / "BOOTX64.EFI", tmp_path / "esp.img", size_mib=40)
    root = tmp_path / "root.img"
    root.write_bytes(b"R" * (3 << 20) + b"end-of-root")
    disk = tmp_path / "disk.raw"
    uefi.make_gpt_disk(tmp_path / "esp.img", root, disk)

    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "gpt"
    assert [p["name"] for p in parts] == ["ESP", "smalltown-root", "smalltown-data"]
    assert parts[0]["type"] == uefi.ESP_TYPE and parts[2]["type"] == uefi.DATA_TYPE
    with open(disk, "rb") as f:
        f.seek(parts[1]["start"] * 512)
        assert f.read(root.stat().st_size) == root.read_bytes()
        f.seek(parts[2]["start"] * 512)
        assert not f.read(1 << 20).strip(b"\0"), "the data partition starts blank: the node formats it"
    # The ESP inside the disk is a FAT file system whose removable-media boot path holds the program.
    esp = tmp_path / "esp-from-disk.img"
    with open(disk, "rb") as f:
        f.seek(parts[0]["start"] * 512)
        esp.write_bytes(f.read(parts[0]["size"] * 512))
    copied = tmp_path / "copied.efi"
    subprocess.run(["mcopy", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI", str(copied)], check=True)
    assert copied.read_bytes() == (tmp_path / "BOOTX64.EFI").read_bytes()


def test_a_failing_tool_is_a_uefi_image_error_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(UefiImageError, match=r"mcopy \(the unified kernel image\) failed"):
        uefi.make_esp(tmp_path / "no-such-uki.efi", tmp_path / "esp.img", size_mib=34)
