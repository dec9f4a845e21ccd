"""The reference node as a UEFI disk: booted the way a Smalltown image boots.

A real Smalltown image is a GPT disk whose EFI system partition holds a
unified kernel image, with a root and a separate data partition. This module
makes the reference node in that shape, from the direct-boot image's parts
and Debian packages, without root and without mounting anything:

1. partition ``ESP`` (FAT32, made with mtools): ``EFI/BOOT/BOOTX64.EFI``, the
   removable-media path OVMF boots without any boot entry. It is a unified
   kernel image: systemd-boot's EFI stub (Debian ``systemd-boot-efi``) with the
   os-release, the kernel command line, Debian's kernel and our initramfs
   added as PE sections by ``objcopy``;
2. partition ``smalltown-root``: the reference node's ext4 disk, byte for byte;
3. partition ``smalltown-data``: empty. On its first boot the node agent makes
   it a LUKS2 volume whose key is sealed to the TPM, and unseals it on later
   boots (:mod:`pytest_smalltown.node.datapart`).

``smalltown image build --only uefi`` prints the disk's path; the plugin
boots it with ``--smalltown-image=<path>`` (add ``--smalltown-tpm``).
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import debian
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.node import CMDLINE, build_node_image
from pytest_smalltown.images.tools import BuildError, run_tool

#: Partition names (GPT labels). The agent finds the data partition by its name.
ESP_NAME = "ESP"
ROOT_NAME = "smalltown-root"
DATA_NAME = "smalltown-data"

ESP_MIB = 64
#: The data partition holds the node's key, its PKI, etcd and the local
#: volumes. Sparse in the image file: only what the node writes costs space.
DATA_MIB = 4096
#: Partitions start on MiB boundaries; 1 MiB before the first holds the
#: protective MBR and the primary GPT, 1 MiB after the last the backup GPT.
ALIGN_MIB = 1

#: The root partition is the second partition of the first virtio disk.
UEFI_CMDLINE = f"{CMDLINE} smalltown.root=/dev/vda2"

#: Where Debian's systemd-boot-efi puts the stub a unified kernel image starts from.
STUB_PATH = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"

#: GPT type GUIDs (UEFI spec; the Discoverable Partitions Specification).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # root, x86-64
DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # Linux file system data

#: Bumped when the layout changes in a way the inputs don't show.
UEFI_RECIPE = "node-uefi-v1"


class UefiImageError(BuildError):
    """The UEFI disk could not be assembled (the message says which part and why)."""


@dataclass(frozen=True)
class PeLayout:
    """Where new sections may go in a PE image: past every existing one, aligned."""

    image_base: int
    section_alignment: int
    end_of_sections: int

    def align(self, offset: int) -> int:
        step = self.section_alignment
        return (offset + step - 1) // step * step


def pe_layout(image: bytes) -> PeLayout:
    """Read the image base, section alignment and end of the last section of a PE32+ file.

    The stub's sections are laid out by its linker; the sections a unified
    kernel image adds must start after them, at virtual addresses aligned to
    the stub's SectionAlignment, or the firmware's loader rejects the image.
    """
    if image[:2] != b"MZ":
        raise UefiImageError("the EFI stub is not a PE file (no MZ header)")
    (pe_offset,) = struct.unpack_from("<I", image, 0x3C)
    if image[pe_offset:pe_offset + 4] != b"PE\0\0":
        raise UefiImageError("the EFI stub is not a PE file (no PE signature)")
    coff = pe_offset + 4
    sections, optional_size = struct.unpack_from("<H12xH", image, coff + 2)
    optional = coff + 20
    (magic,) = struct.unpack_from("<H", image, optional)
    if magic != 0x20B:
        raise UefiImageError(f"the EFI stub is not PE32+ (optional header magic {magic:#x})")
    image_base, section_alignment = struct.unpack_from("<QI", image, optional + 24)
    table = optional + optional_size
    end = 0
    for index in range(sections):
        virtual_size, virtual_address = struct.unpack_from("<II", image, table + 40 * index + 8)
        end = max(end, virtual_address + virtual_size)
    return PeLayout(image_base, section_alignment, end)


def unified_kernel_image(stub: Path, parts: list[tuple[str, Path]], out: Path) -> None:
    """Write ``out``: ``stub`` with each ``(section name, file)`` of ``parts`` added as a loadable section.

    This is what ``ukify`` does (systemd 253 and later; bookworm has 252):
    each file becomes a section at the next free aligned virtual address.
    """
    objcopy = find_program("objcopy", "the unified kernel image is assembled with it", "binutils")
    layout = pe_layout(stub.read_bytes())
    argv = [objcopy]
    offset = layout.align(layout.end_of_sections)
    for name, path in parts:
        argv += ["--add-section", f"{name}={path}",
                 "--change-section-vma", f"{name}={layout.image_base + offset:#x}"]  # fmt: skip
        offset = layout.align(offset + path.stat().st_size)
    run_tool([*argv, str(stub), str(out)], "objcopy (assembling the unified kernel image)",
             error=UefiImageError)


def make_esp(uki: Path, esp: Path, size_mib: int = ESP_MIB) -> None:
    """Make ``esp``, a FAT32 file system holding ``uki`` as ``EFI/BOOT/BOOTX64.EFI`` (mtools: no mount)."""
    mformat = find_program("mformat", "the EFI system partition is made with it", "mtools")
    with open(esp, "wb") as f:
        f.truncate(size_mib << 20)
    run_tool([mformat, "-i", str(esp), "-F", "-N", "5a11c0de", "-v", "ESP", "::"], "mformat (the ESP)",
             error=UefiImageError)
    run_tool(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "mmd (the ESP's directories)", error=UefiImageError)
    run_tool(["mcopy", "-i", str(esp), str(uki), "::/EFI/BOOT/BOOTX64.EFI"], "mcopy (the unified kernel image)",
             error=UefiImageError)


@dataclass(frozen=True)
class Partition:
    name: str
    type_guid: str
    uuid: str
    start_mib: int
    size_mib: int


def layout_partitions(root_bytes: int, esp_mib: int = ESP_MIB, data_mib: int = DATA_MIB) -> list[Partition]:
    """The three partitions, MiB-aligned, in disk order (fixed UUIDs: the same inputs make the same disk)."""
    root_mib = -(-root_bytes // (1 << 20))
    esp = Partition(ESP_NAME, ESP_TYPE, "5a11c0de-0000-4000-8000-0000000000e1", ALIGN_MIB, esp_mib)
    root = Partition(ROOT_NAME, ROOT_TYPE, "5a11c0de-0000-4000-8000-0000000000e2", esp.start_mib + esp_mib, root_mib)
    data = Partition(DATA_NAME, DATA_TYPE, "5a11c0de-0000-4000-8000-0000000000e3", root.start_mib + root_mib, data_mib)
    return [esp, root, data]


def sfdisk_script(partitions: list[Partition]) -> str:
    """The sfdisk input that writes a GPT with ``partitions`` (sectors of 512 bytes)."""
    lines = ["label: gpt", "label-id: 5A11C0DE-0000-4000-8000-0000000000E0", "unit: sectors"]
    for p in partitions:
        lines.append(f"start={p.start_mib * 2048}, size={p.size_mib * 2048}, type={p.type_guid}, "
                     f"uuid={p.uuid}, name=\"{p.name}\"")
    return "\n".join(lines) + "\n"


def make_gpt_disk(esp: Path, root: Path, disk: Path) -> list[Partition]:
    """Write ``disk``: a sparse GPT disk with ``esp`` and ``root`` copied in and an empty data partition."""
    sfdisk = find_program("sfdisk", "the GPT is written with it", "fdisk")
    partitions = layout_partitions(root.stat().st_size)
    end_mib = partitions[-1].start_mib + partitions[-1].size_mib + ALIGN_MIB
    with open(disk, "wb") as f:
        f.truncate(end_mib << 20)
    run_tool([sfdisk, "--no-reread", "--no-tell-kernel", "-q", str(disk)], "sfdisk (the GPT)",
             input=sfdisk_script(partitions), error=UefiImageError)
    for partition, content in zip(partitions, (esp, root)):
        # conv=sparse keeps the root file system's holes holes in the disk file.
        run_tool(["dd", f"if={content}", f"of={disk}", "bs=1M", f"seek={partition.start_mib}",
                  "conv=notrunc,sparse", "status=none"],
                 f"dd (the {partition.name} partition)", error=UefiImageError)  # fmt: skip
    return partitions


def efi_stub(progress: Progress = stderr_progress) -> Path:
    """systemd-boot's EFI stub (Debian's ``systemd-boot-efi`` at apt's candidate version), cached."""
    return debian.package_file("systemd-boot-efi", STUB_PATH, progress).path


def make_uefi_disk(stub: Path, kernel: Path, initramfs: Path, cmdline: str, os_release: str, root: Path,
                   out: Path) -> Path:
    """Write ``out/disk.raw``: the GPT disk booting ``kernel`` + ``initramfs`` + ``cmdline`` through UEFI.

    Its root partition is a copy of the file system image ``root``. The unified
    kernel image is kept beside it as ``out/BOOTX64.EFI``.
    """
    work = out / "work"
    work.mkdir(parents=True)
    (work / "os-release").write_text(os_release)
    (work / "cmdline").write_text(cmdline + "\0")
    unified_kernel_image(stub, [
        (".osrel", work / "os-release"), (".cmdline", work / "cmdline"), (".linux", kernel), (".initrd", initramfs),
    ], out / "BOOTX64.EFI")  # fmt: skip
    make_esp(out / "BOOTX64.EFI", work / "esp.img")
    make_gpt_disk(work / "esp.img", root, out / "disk.raw")
    shutil.rmtree(work)
    return out / "disk.raw"


def build_uefi_image(progress: Progress = stderr_progress) -> Path:
    """Build (or find in the cache) the reference node's UEFI disk; returns its path."""
    image = build_node_image(progress)
    stub = efi_stub(progress)
    key = hash_inputs([UEFI_RECIPE, image.disk.parent.name, stub.parent.name, UEFI_CMDLINE,
                       str(ESP_MIB), str(DATA_MIB), Path(__file__)])
    os_release = ('NAME="Smalltown reference node"\nID=smalltown-reference\n'
                  f'PRETTY_NAME="Smalltown reference node (UEFI)"\nBUILD_ID={image.disk.parent.name}\n')

    def build(out: Path) -> None:
        progress("unified kernel image (systemd-boot stub + kernel + initramfs + command line), ESP, GPT disk")
        make_uefi_disk(stub, image.kernel, image.initramfs, UEFI_CMDLINE, os_release, image.disk, out)

    return cached_build("node-uefi", key, build, progress) / "disk.raw"
