"""A cluster's launch, decided once: :class:`ClusterPlan`.

:meth:`ClusterPlan.resolve` is the only place that reads the settings for a
launch. It checks what no build or probe can fix (in milliseconds), resolves
QEMU (binary, version, accelerator), builds or finds the images, and returns
a frozen plan: the VM of the switch and of every node as it boots, lacking
only what exists once the VMs run (cables, host ports, control sockets, the
cluster's own fw_cfg files and disk overlays). Booting
(:mod:`pytest_smalltown.boot`) and restoring (:mod:`pytest_smalltown.restore`)
start exactly these VMs, so a restore gets the devices the save had.

The snapshot key is a hash of the plan (:meth:`ClusterPlan.snapshot_inputs`):
every field of the plan and of every VM in it is part of the key unless
:data:`NOT_IN_SNAPSHOT_KEY` or :data:`VM_FIELDS_NOT_IN_SNAPSHOT_KEY` say why
not, so a new launch input cannot be left out of it by mistake.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.contract import SWITCH_FORWARDED_PORTS
from pytest_smalltown.base.progress import Progress
from pytest_smalltown.launch.accel import resolve_accel
from pytest_smalltown.launch.qemu import DirectBoot, Disk, UefiBoot, VMConfig
from pytest_smalltown.launch.switch import switch_config
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.phases import Phases
from pytest_smalltown.settings import Settings
from pytest_smalltown.snapshots import SNAPSHOT_FORMAT
from pytest_smalltown.spec import ClusterSpec

#: Plan fields that do not shape the saved guests: a snapshot serves every value of them.
NOT_IN_SNAPSHOT_KEY: dict[str, str] = {
    "boot_timeout": "how long a launch waits, not what runs",
    "snapshots": "whether to save or restore at all",
    "snapshots_source": "where that mode came from, for messages",
    "images_seconds": "how long finding the images took",
}
#: VM fields that do not shape the saved guest.
VM_FIELDS_NOT_IN_SNAPSHOT_KEY: dict[str, str] = {
    # The version decides whether a saved state loads (``ClusterPlan.qemu_version``
    # is in the key); two paths to the same QEMU may share snapshots.
    "qemu": "the QEMU binary's path",
}


def check_host_inputs(settings: Settings) -> str:
    """Fail in milliseconds, naming the option, on what no build or probe can fix; return QEMU's path.

    QEMU, a user-given image and its firmware, swtpm when a TPM is asked for:
    checked before the accelerator probe and any image build (minutes when
    cold), so a typo costs nothing.
    """
    qemu = find_program(settings.qemu, "the cluster's VMs run in it", "qemu-system-x86", otherwise="set --smalltown-qemu")
    if settings.tpm:
        find_program("swtpm", "--smalltown-tpm gives each node a TPM it emulates", "swtpm swtpm-tools",
                     otherwise="drop --smalltown-tpm")
    if settings.image == "reference":
        return qemu
    path = Path(settings.image).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"--smalltown-image {path} does not exist; give the path of a Smalltown disk image "
            "or 'reference' for the built-in reference image"
        )
    for what, firmware in (("--smalltown-ovmf-code", settings.ovmf_code), ("--smalltown-ovmf-vars", settings.ovmf_vars)):
        if not firmware.exists():
            raise FileNotFoundError(f"{what} {firmware} does not exist; install Debian's ovmf package or set it")
    return qemu


def node_boot(settings: Settings, progress: Progress) -> tuple[DirectBoot | UefiBoot, Disk]:
    """Boot method and disk of the configured node image (building the reference image if needed).

    Its user-given inputs were checked by :func:`check_host_inputs`.
    """
    if settings.image == "reference":
        from pytest_smalltown.images.node import build_node_image

        image = build_node_image(progress)
        return DirectBoot(image.kernel, image.initramfs, image.cmdline), Disk(image.disk, "raw")
    path = Path(settings.image).expanduser()
    return UefiBoot(settings.ovmf_code, settings.ovmf_vars), Disk(path, "qcow2" if path.suffix == ".qcow2" else "raw")


def preload_disks(spec: ClusterSpec, progress: Progress) -> tuple[Disk, ...]:
    """One read-only disk per image set the spec preloads, shared by every node."""
    from pytest_smalltown.images.preload import build_preload_archive, disk_serial

    return tuple(
        Disk(build_preload_archive(name, progress), "raw", snapshot=False, read_only=True, serial=disk_serial(name))
        for name in spec.preload
    )


def qemu_version(qemu: str) -> str:
    """``qemu --version``'s first line: a snapshot only loads into the QEMU that wrote it."""
    result = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0].strip()


def file_identity(path: Path) -> str:
    """Path, size and modification time: a cheap stand-in for a content hash of a big image file.

    Cached images have their content hash in their directory name already;
    a user-given disk image is identified this way so that replacing it
    invalidates the snapshot without hashing gigabytes at every launch.
    """
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class ClusterPlan:
    """Everything one launch of a cluster starts, resolved once from the spec and the settings."""

    spec: ClusterSpec
    #: The switch's VM without its cables and host ports (``launch/switch.py: start_switch`` adds them).
    switch: VMConfig
    #: Node i's VM as it boots: its first disk is the node image (a boot that saves puts an overlay there),
    #: the others the preloaded image sets; its cable, control socket, fw_cfg files and TPM come at start.
    nodes: tuple[VMConfig, ...]
    #: Attach a swtpm TPM 2.0 to every node (``--smalltown-tpm``).
    tpm: bool
    #: ``qemu --version`` of :attr:`VMConfig.qemu`: a saved state only loads into the QEMU that wrote it.
    qemu_version: str
    #: Seconds a cluster may take to become ready (``--smalltown-boot-timeout``), and a reboot's default.
    boot_timeout: float
    #: ``--smalltown-snapshots``: auto, off, refresh or require (``snapshots.MODES``).
    snapshots: str
    #: Where :attr:`snapshots` was set (``--smalltown-snapshots``, ``$SMALLTOWN_SNAPSHOTS``, ``default``...).
    snapshots_source: str
    #: How long :meth:`resolve` took to find or build the images (the launch's ``images`` phase).
    images_seconds: float

    @classmethod
    def resolve(cls, spec: ClusterSpec, settings: Settings, progress: Progress) -> ClusterPlan:
        """Check the host's inputs, resolve QEMU and the accelerator, find or build the images: the plan.

        Raises at once (``FileNotFoundError``,
        :class:`~pytest_smalltown.launch.vm.ProgramNotFoundError`) on a
        missing program or file the settings name; an image build that fails
        is a :class:`~pytest_smalltown.phases.ClusterLaunchError` of phase ``images``.
        """
        qemu = check_host_inputs(settings)
        accel = resolve_accel(settings.accel, qemu).accel
        phases = Phases(spec, progress)
        with phases.phase("images"):
            boot, disk = node_boot(settings, progress)
            extra_disks = preload_disks(spec, progress)
            from pytest_smalltown.images.switch import build_switch_image

            switch_image = build_switch_image(progress)
            version = qemu_version(qemu)
        node = VMConfig(name="node", boot=boot, qemu=qemu, accel=accel, memory_mib=settings.node_memory,
                        cpus=settings.node_cpus, disks=(disk, *extra_disks))  # fmt: skip
        return cls(
            spec=spec,
            switch=switch_config(switch_image, spec.nodes, SWITCH_FORWARDED_PORTS, accel, qemu),
            nodes=tuple(dataclasses.replace(node, name=f"node{index}") for index in range(spec.nodes)),
            tpm=settings.tpm,
            qemu_version=version,
            boot_timeout=settings.boot_timeout,
            snapshots=settings.snapshots,
            snapshots_source=settings.sources.get("snapshots", "default"),
            images_seconds=phases.seconds["images"],
        )

    def snapshot_inputs(self) -> dict[str, str]:
        """Everything a saved cluster depends on, by dotted name: the snapshot key hashes it, a refusal names what changed.

        Every field of the plan and of its VMs, files by :func:`file_identity`,
        except those :data:`NOT_IN_SNAPSHOT_KEY` and
        :data:`VM_FIELDS_NOT_IN_SNAPSHOT_KEY` name.
        """
        inputs = {"format": str(SNAPSHOT_FORMAT)}
        for field in dataclasses.fields(self):
            if field.name not in NOT_IN_SNAPSHOT_KEY:
                _flatten(field.name, getattr(self, field.name), inputs)
        return inputs


def _flatten(name: str, value: object, into: dict[str, str]) -> None:
    """Put ``value`` into ``into`` as strings under ``name`` (dataclasses and tuples by their parts)."""
    if isinstance(value, ClusterSpec):
        into[name] = str(value)  # a spec's string is its identity ("2-node+conformance")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if isinstance(value, VMConfig) and field.name in VM_FIELDS_NOT_IN_SNAPSHOT_KEY:
                continue
            _flatten(f"{name}.{field.name}", getattr(value, field.name), into)
    elif isinstance(value, tuple):
        into[name] = str(len(value))
        for index, item in enumerate(value):
            _flatten(f"{name}.{index}", item, into)
    elif isinstance(value, Path):
        into[name] = file_identity(value)
    else:
        into[name] = str(value)
