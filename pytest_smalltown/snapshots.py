"""Where saved clusters live: keys, the on-disk layout, checks, locking and pruning.

A Ready cluster saved once (``boot.py`` does the pausing and saving, see
:mod:`pytest_smalltown.launch.vmstate`) is restored by later sessions in
seconds instead of booted in minutes (``restore.py``). A snapshot is only
valid for exactly the inputs it was made from, so it is cached like an image:
in ``<cache>/snapshots/snapshot-<spec>-<key>/`` (or ``$SMALLTOWN_SNAPSHOT_DIR``),
where the key hashes the cluster's plan
(:meth:`pytest_smalltown.plan.ClusterPlan.snapshot_inputs`). One directory
holds (:class:`SnapshotLayout` names each file, for the writer and the reader)::

    manifest.json            inputs, file sizes and checksums, facts at save time
    nanoswitch.state.zst     RAM and device state of each VM (QEMU migration stream)
    node0.state.zst ...
    node0.qcow2 ...          each node's disk at the save instant (backing: the node image)
    enrolment-node1.pb ...   the fw_cfg files the nodes booted with (must exist to restore)
    debug-token              the cluster's debug token, which the saved nodes check
    nanoswitch.console.log … console output up to the save, shown before a restored VM's own

Snapshots hold the cluster's CA keys and credentials, so the directory is
private to its owner (0700), unlike images.

A snapshot that cannot be used (missing, half-written, corrupt, made from
other inputs) is *refused*: the caller boots cold, warns, and saves a new
one; only the mode ``require`` (a run that exists to prove restoring works)
turns a refusal into a failed launch, :class:`RestoreRequiredError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.base.processes import reaper
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images.cache import flock_announced, hash_inputs, prune
from pytest_smalltown.spec import ClusterSpec

#: Bump when the layout or the meaning of a snapshot changes. 2: the key hashes the
#: whole cluster plan; a snapshot of format 1 is missed once (a cold boot), never restored.
SNAPSHOT_FORMAT = 2
#: ``--smalltown-snapshots``: restore else boot and save; never either; boot and save anew; restore or fail.
MODES = ("auto", "off", "refresh", "require")
#: A restoring session holds its snapshot open; an older one is not needed by anyone.
KEEP_PER_SPEC = 1
#: Refuse a snapshot whose API server certificate expires sooner than this
#: (host clock): the host's clients would stop trusting it mid-session.
MIN_CERT_VALIDITY_SECONDS = 7 * 24 * 3600


#: How many changed inputs a "not restored" line names before it says how many more.
MAX_CHANGED_INPUTS_SHOWN = 8


class SnapshotRefused(SmalltownError):
    """This snapshot cannot be used; the message says why (shown in a warning, never a failure)."""


class SnapshotMissing(SnapshotRefused):
    """No snapshot of these inputs exists (the first launch after a change); the message says what changed."""


class RestoreRequiredError(SmalltownError, RuntimeError):
    """``--smalltown-snapshots=require``, and the cluster was not restored; the message says why.

    The launch fails instead of booting cold, so every test of the spec fails
    with the reason: a pass meant to run on restored clusters cannot pass on
    booted ones behind a warning nobody reads.
    """


class SnapshotWarning(UserWarning):
    """A snapshot was refused or could not be saved; the cluster was booted cold instead."""


SNAPSHOT_DIR_ENV = "SMALLTOWN_SNAPSHOT_DIR"


def snapshot_root() -> Path:
    """Where snapshots are kept: ``$SMALLTOWN_SNAPSHOT_DIR``, else ``snapshots/`` in the image cache."""
    explicit = os.environ.get(SNAPSHOT_DIR_ENV)
    root = Path(explicit) if explicit else cache_root() / "snapshots"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def snapshot_name(spec: ClusterSpec) -> str:
    """The cache name of a spec's snapshots, e.g. ``snapshot-2-node-conformance``."""
    return "snapshot-" + re.sub(r"[^a-z0-9-]+", "-", str(spec).lower())


MANIFEST = "manifest.json"
#: Written last into a finished snapshot: a directory without it is half-written.
COMPLETE = ".complete"


@dataclass(frozen=True)
class SnapshotLayout:
    """The name of every file of a snapshot in ``directory``: the save writes by it, the restore reads by it."""

    directory: Path

    def state(self, vm_name: str) -> Path:
        """The VM's RAM and device state (a zstd-compressed QEMU migration stream)."""
        return self.directory / f"{vm_name}.state.zst"

    def disk(self, node_index: int) -> Path:
        """Node ``node_index``'s disk at the save instant (qcow2, backed by the node image)."""
        return self.directory / f"node{node_index}.qcow2"

    def enrolment(self, node_index: int) -> Path:
        """The enrolment file node ``node_index`` booted with (fw_cfg): a restored VM needs the very same."""
        return self.directory / f"enrolment-node{node_index}.pb"

    @property
    def debug_token(self) -> Path:
        """The cluster's debug token: the saved nodes keep checking it."""
        # Imported here: debug.py pulls in grpc and kubernetes, which importing settings (and so this) must not.
        from pytest_smalltown.debug import DEBUG_TOKEN_FILE

        return self.directory / DEBUG_TOKEN_FILE

    def console_log(self, vm_name: str) -> Path:
        """The VM's console output up to the save."""
        return self.directory / f"{vm_name}.console.log"

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    @property
    def complete(self) -> Path:
        return self.directory / COMPLETE

    def console_history(self, vm_name: str) -> list[str]:
        """The VM's console lines up to the save (empty if none were kept)."""
        try:
            return self.console_log(vm_name).read_text(errors="replace").splitlines()
        except OSError:
            return []


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the snapshot in ``directory``, checked to have the shape :meth:`SnapshotWriter.commit` writes.

    A manifest comes from disk, where an edit, a crash, an older format or a
    bug can leave anything; raising :class:`SnapshotRefused` (why, in one
    line) here means no reader meets a KeyError or TypeError later on.
    """
    path = SnapshotLayout(directory).manifest
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SnapshotRefused(f"{path} is unreadable: {error}") from None
    wrong = _manifest_shape_error(manifest)
    if wrong:
        raise SnapshotRefused(f"{path} is not a snapshot manifest: {wrong}")
    assert isinstance(manifest, dict)
    return manifest


def _manifest_shape_error(manifest: Any) -> str:
    """What is wrong with the shape of a parsed manifest ("" if nothing)."""
    if not isinstance(manifest, dict):
        return f"a JSON object was expected, not {type(manifest).__name__}"
    inputs = manifest.get("inputs")
    if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
        return "'inputs' must map each input's name to a string"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "'files' must map file names to their size and sha256"
    for name, record in files.items():
        if not (isinstance(record, dict) and type(record.get("size")) is int and isinstance(record.get("sha256"), str)):
            return f"'files' entry {name!r} must be {{\"size\": <bytes>, \"sha256\": <hex>}}, not {json.dumps(record)}"
    if not isinstance(manifest.get("facts", {}), dict):
        return "'facts' must be a JSON object"
    return ""


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot directory and its manifest (as :func:`read_manifest` checked it)."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def layout(self) -> SnapshotLayout:
        """Where each of its files is."""
        return SnapshotLayout(self.directory)

    @property
    def spec(self) -> ClusterSpec:
        """The saved cluster's spec, as its inputs record it (:meth:`ClusterPlan.snapshot_inputs`'s ``spec``)."""
        try:
            return ClusterSpec.parse(self.manifest["inputs"].get("spec", ""))
        except ValueError as error:
            raise SnapshotRefused(f"{self.layout.manifest} names no cluster spec: {error}") from None

    @property
    def facts(self) -> dict[str, Any]:
        """What was true of the cluster when it was saved (see ``boot.py``'s save)."""
        facts: dict[str, Any] = self.manifest.get("facts", {})
        return facts

    def verify(self) -> None:
        """Raise :class:`SnapshotRefused` unless every file has the size and checksum it was saved with.

        Reading the files also brings them into the page cache, where QEMU
        is about to read them, so this runs beside the restore, not before it.
        """
        for name, expected in self.manifest["files"].items():
            path = self.directory / name
            try:
                digest = hashlib.sha256()
                size = 0
                with open(path, "rb") as data:
                    while chunk := data.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
            except OSError as error:
                raise SnapshotRefused(f"{path} cannot be read: {error}") from None
            if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                raise SnapshotRefused(f"{path} is corrupt (its size or checksum differs from when it was saved)")


def changed_inputs(saved: Mapping[str, str], here: Mapping[str, str]) -> str:
    """How a snapshot's recorded inputs differ from a plan's, as the end of a sentence ("" when they do not).

    Another format keys other things: listing every input "changed" would
    say nothing, so it is named alone; otherwise at most
    :data:`MAX_CHANGED_INPUTS_SHOWN` inputs are named, and the rest counted.
    """
    if saved.get("format") != here.get("format"):
        return f"is of snapshot format {saved.get('format', '1')}, this harness saves format {here.get('format')}"
    changed = sorted(k for k in set(saved) | set(here) if saved.get(k) != here.get(k))
    if not changed:
        return ""
    shown = ", ".join(changed[:MAX_CHANGED_INPUTS_SHOWN])
    more = f" and {len(changed) - MAX_CHANGED_INPUTS_SHOWN} more" if len(changed) > MAX_CHANGED_INPUTS_SHOWN else ""
    return f"was made from other inputs ({shown}{more} changed)"


def open_saved(directory: Path) -> Snapshot:
    """The complete snapshot a user points at (``smalltown up --from DIR``); :class:`SnapshotRefused` says what is wrong.

    Checked before any image is built or VM started: the directory exists,
    holds a manifest and its completion mark, and every file the manifest
    lists, at its size (the checksums are read beside the restore, as for
    a snapshot of the cache). Whether it fits this machine's images is the
    plan's question (:func:`changed_inputs`).
    """
    layout = SnapshotLayout(directory)
    if not directory.is_dir():
        raise SnapshotRefused(f"{directory} is not a directory; give the 'snapshot' directory a failed test left "
                              "in its artifacts (--smalltown-snapshot-on-failure)")
    if not layout.manifest.exists():
        raise SnapshotRefused(f"{directory} is not a saved cluster: it has no {MANIFEST}")
    if not layout.complete.exists():
        raise SnapshotRefused(f"{directory} is incomplete: its save did not finish (no {COMPLETE} mark)")
    manifest = read_manifest(directory)
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            raise SnapshotRefused(f"{directory} is incomplete: {name} is missing or truncated")
    return Snapshot(directory, manifest)


class SnapshotStore:
    """The snapshots of one cluster spec made from one set of inputs."""

    def __init__(self, spec: ClusterSpec, inputs: Mapping[str, str]) -> None:
        self.spec = spec
        self.inputs = dict(inputs)
        self.name = snapshot_name(spec)
        self.key = hash_inputs([json.dumps(self.inputs, sort_keys=True)])
        self.root = snapshot_root()
        self.directory = self.root / f"{self.name}-{self.key}"
        self.lock_path = self.root / f".{self.name}-{self.key}.lock"

    def lookup(self) -> Snapshot:
        """The complete snapshot for these inputs, or :class:`SnapshotRefused` saying why there is none usable."""
        if not SnapshotLayout(self.directory).complete.exists():
            raise SnapshotMissing(self._why_missing())
        manifest = read_manifest(self.directory)
        if manifest["inputs"] != self.inputs:
            raise SnapshotRefused(f"{self.directory} was made from other inputs than its name says")
        for name, expected in manifest["files"].items():
            path = self.directory / name
            if not path.is_file() or path.stat().st_size != expected["size"]:
                raise SnapshotRefused(f"{path} is missing or truncated")
        not_after = manifest.get("facts", {}).get("api_certificate_not_after")
        if isinstance(not_after, (int, float)) and not_after - time.time() < MIN_CERT_VALIDITY_SECONDS:
            raise SnapshotRefused(f"{self.directory}: its API server certificate expires within 7 days")
        return Snapshot(self.directory, manifest)

    def _why_missing(self) -> str:
        """Name the inputs that differ from the newest other snapshot of this spec, if there is one."""
        # Exactly this spec's: "snapshot-2-node-*" would also match "snapshot-2-node-conformance-*".
        ours = re.compile(rf"^{re.escape(self.name)}-[0-9a-f]{{16}}$")
        others = sorted(
            (p for p in self.root.iterdir() if ours.match(p.name) and (p / COMPLETE).exists() and p != self.directory),
            key=lambda p: (p / COMPLETE).stat().st_mtime,
            reverse=True,
        )
        for other in others:
            try:
                old_inputs = read_manifest(other)["inputs"]
            except SnapshotRefused:
                continue
            return f"the saved {self.spec} cluster {changed_inputs(old_inputs, self.inputs)}"
        return f"no {self.spec} cluster has been saved yet"

    @contextlib.contextmanager
    def reading(self, progress: Progress = stderr_progress) -> Iterator[None]:
        """Hold off pruning while a restore opens the snapshot's files (shared with other readers).

        A session pruning or discarding it holds the lock alone, briefly; a
        longer wait is said, with who holds it (:func:`flock_announced`).
        """
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            flock_announced(fd, self.lock_path, f"the saved {self.spec} cluster", progress, shared=True)
            yield
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove a snapshot that failed to restore, unless someone is reading it right now."""
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
        finally:
            os.close(fd)

    def begin(self) -> SnapshotWriter | None:
        """A private work directory to save into, or None if another session is saving these inputs now."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        work = Path(tempfile.mkdtemp(prefix=f".{self.name}-{self.key}.", dir=self.root))  # 0700
        reaper().watch_path(work)  # removed even if this session is killed mid-save
        return SnapshotWriter(self, work, fd)


class SnapshotWriter:
    """A snapshot being written: files go into :attr:`work`; :meth:`commit` makes it visible at once."""

    def __init__(self, store: SnapshotStore, work: Path, lock_fd: int) -> None:
        self.store = store
        self.work = work
        #: Where each file goes (the same names the restore reads, :attr:`Snapshot.layout`).
        self.layout = SnapshotLayout(work)
        self._lock_fd: int | None = lock_fd

    def commit(self, facts: Mapping[str, Any]) -> Snapshot:
        """Checksum every file, write the manifest and rename the work directory into place."""
        manifest = write_manifest(self.layout, self.store.inputs, facts)
        final = self.store.directory
        if final.exists():
            shutil.rmtree(final)
        os.rename(self.work, final)
        self._release()
        prune(self.store.name, keep=KEEP_PER_SPEC, root=self.store.root)
        return Snapshot(final, manifest)

    def abort(self) -> None:
        """Drop a half-written snapshot (a running VM may still hold its files open; that is fine)."""
        shutil.rmtree(self.work, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        reaper().forget_path(self.work)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def write_manifest(layout: SnapshotLayout, inputs: Mapping[str, str], facts: Mapping[str, Any]) -> dict[str, Any]:
    """Checksum every file of ``layout``, then write its manifest and, last, its completion mark; the manifest.

    The one writer of manifests: a snapshot of the cache (:meth:`SnapshotWriter.commit`)
    and a failed test's (``--smalltown-snapshot-on-failure``) are read alike.
    """
    files = {}
    for path in sorted(p for p in layout.directory.iterdir() if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as data:
            while chunk := data.read(1 << 20):
                digest.update(chunk)
        files[path.name] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    manifest = {"inputs": dict(inputs), "files": files, "facts": dict(facts), "saved_at": time.time()}
    layout.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    layout.complete.write_text(f"{time.time():.0f}\n")
    return manifest


@dataclass(frozen=True)
class SavedSnapshot:
    """A running cluster saved into a directory of its own (``--smalltown-snapshot-on-failure``): where, how big, how long."""

    directory: Path
    size_bytes: int
    seconds: float

    def describe(self) -> str:
        """One line for a test's report: the path, its size in MiB and the seconds the save took."""
        return (f"{self.directory} ({self.size_bytes / 2**20:.0f} MiB, saved in {self.seconds:.1f}s); "
                f"restore it with: smalltown up --from {self.directory}")


def describe_size(directory: Path) -> int:
    """Bytes on disk of a snapshot directory."""
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())
