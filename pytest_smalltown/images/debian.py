"""Fetching and unpacking Debian packages without installing them on the host.

Images are assembled from Debian's binary packages. ``apt-get download``
uses the host's configured mirrors (the only package source on our machines)
and ``dpkg-deb -x`` unpacks without running maintainer scripts, so nothing
here needs or touches the host's package state.

A few inputs come from another suite than the host's (:class:`Suite`): those
are read through a private apt state (:class:`PrivateApt`), with its own
configuration, lists and cache in a temporary directory, signed by the host's
Debian keyring; it never reads or writes ``/etc/apt`` or the host's lists.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.base.processes import run_supervised, timeout_message
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images.cache import cached_build, cleanup_hint, hash_inputs, remembered
from pytest_smalltown.images.tools import BuildError, run_tool

#: What apt resolves candidate versions from: its package lists, sources, pins
#: and configuration, and dpkg's installed state and architectures (apt does
#: not downgrade an installed package that is newer than the archive's).
APT_STATE: tuple[str, ...] = (
    "/var/lib/apt/lists/*", "/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
    "/etc/apt/preferences", "/etc/apt/preferences.d/*", "/etc/apt/apt.conf", "/etc/apt/apt.conf.d/*",
    "/var/lib/dpkg/status", "/var/lib/dpkg/arch",
)


class PackageError(BuildError):
    """A Debian package could not be resolved or fetched."""


def parse_show(show_output: str) -> dict[str, dict[str, str]]:
    """``{package: fields}`` from ``apt-cache show`` output (one paragraph per package version).

    The first paragraph of a package wins, which with ``--no-all-versions`` is
    the candidate apt would install.
    """
    packages: dict[str, dict[str, str]] = {}
    for paragraph in show_output.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            packages.setdefault(fields["Package"], fields)
    return packages


def apt_state() -> str:
    """A hash of the names, sizes and mtimes of the files in :data:`APT_STATE` (and of ``$APT_CONFIG``).

    It changes whenever ``apt-get update``, an install or a change of sources,
    pins or configuration could change a candidate version, and costs a few
    ``stat`` calls.
    """
    parts = [os.environ.get("APT_CONFIG", "")]
    for pattern in APT_STATE:
        for path in sorted(glob.glob(pattern)):
            info = os.stat(path)
            parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    return hash_inputs(parts)


#: Bound of a question to apt about its local state (apt-cache reads its lists: a second at most).
APT_QUERY_TIMEOUT = 300.0
#: What to do when apt could not fetch something from the host's mirror.
MIRROR_HINT = "Run 'apt-get update' (as root) and check that the mirror in /etc/apt/sources.list* is reachable."


def _ask_apt(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """What :func:`candidates` answers, from apt itself: one ``apt-cache`` call for all ``packages``."""
    find_program("apt-cache", "images are built from Debian packages", "apt")
    try:
        proc = run_supervised(["apt-cache", "show", "--no-all-versions", *packages], timeout=APT_QUERY_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        raise PackageError(timeout_message("apt-cache show", expired)) from None
    found = parse_show(proc.stdout)
    missing = [name for name in packages if name not in found]
    if missing:
        raise PackageError(
            f"Debian package(s) {', '.join(missing)} unknown to apt; run 'apt-get update' (as root) "
            f"and try again. apt said: {proc.stderr.strip()}"
        )
    return {name: found[name] for name in packages}


def candidates(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """The fields of the version apt would install, for each of ``packages``.

    Image cache keys are built from these versions on every lookup, and one
    ``apt-cache show`` costs about half a second (more on hosts whose apt
    keeps no binary cache, as Debian's container images configure it). So the
    answer is remembered (:func:`cache.remembered`) for as long as
    :func:`apt_state` is unchanged, and apt is asked once after each change.
    """
    token = f"{apt_state()}:{' '.join(packages)}"
    return remembered("apt-candidates", token, lambda: _ask_apt(packages))


def versions(packages: Sequence[str]) -> list[str]:
    """``name=version`` of the candidate of each of ``packages``, in their order (as image keys record them)."""
    found = candidates(packages)
    return [f"{name}={found[name]['Version']}" for name in packages]


def candidate(package: str) -> tuple[str, str]:
    """Return ``(version, depends)`` of the version apt would install for ``package``."""
    fields = candidates([package])[package]
    return fields["Version"], fields.get("Depends", "")


def download(packages: list[str], dest: Path) -> list[Path]:
    """Download the ``.deb`` files of ``packages`` (no dependencies) into ``dest``.

    Supervised and bounded by the reaper's ``TOOL_TIMEOUT`` (an hour, for a few
    packages): a mirror that stops sending ends in an error, not a hung build.
    """
    find_program("apt-get", "images are built from Debian packages", "apt")
    dest.mkdir(parents=True, exist_ok=True)
    # As root, apt downloads as the unprivileged _apt user, which cannot write
    # a private temp dir. Keep the directory private (another local user must
    # not be able to swap the kernel every VM boots) and let apt download as
    # root instead; it still checks each .deb against the signed index.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    what = f"apt-get download {' '.join(packages)}"
    try:
        proc = run_supervised(["apt-get", "download", "-q", *sandbox, *packages], cwd=dest)
    except subprocess.TimeoutExpired as expired:
        raise PackageError(timeout_message(what, expired, MIRROR_HINT)) from None
    if proc.returncode != 0:
        raise PackageError(f"{what} failed. {MIRROR_HINT} apt said: {proc.stderr.strip()[-2000:]}")
    return sorted(dest.glob("*.deb"))


#: What to do when dpkg-deb or dpkg-source fails on a damaged package file.
DAMAGED_PACKAGE_HINT = "If the package file is damaged, run the build again (nothing half-built is kept)."


def run_package_tool(argv: list[str], what: str) -> None:
    """Run a packaging tool (dpkg-deb, dpkg-source, depmod): a failure is a :class:`PackageError` in its own words."""
    run_tool(argv, what, hint=f"{DAMAGED_PACKAGE_HINT} {cleanup_hint()}", error=PackageError)


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` into ``dest`` (no maintainer scripts run)."""
    find_program("dpkg-deb", "images are built from Debian packages", "dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    run_package_tool(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")


#: Debian's statically linked busybox: the tiny VM's, the node initramfs's and the test image's userland.
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_MEMBER = "bin/busybox"


@dataclass(frozen=True)
class PackageFile:
    """One file taken out of a Debian package, and the package version it came from."""

    path: Path
    version: str


def package_file(package: str, member: str, progress: Progress = stderr_progress) -> PackageFile:
    """File ``member`` of ``package`` at the version apt would install: downloaded once, then cached.

    Several images carry the same file (busybox is in three); this is the one
    place that fetches it and knows where in its package it lives.
    """
    version, _ = candidate(package)
    name = Path(member).name

    def fetch(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            (deb,) = download([package], Path(tmp) / "debs")
            extract(deb, Path(tmp) / "root")
            shutil.copy2(Path(tmp) / "root" / member, out / name)

    root = cached_build(f"deb-{package}-{name}", hash_inputs([package, version, member]), fetch, progress)
    return PackageFile(root / name, version)


def busybox(progress: Progress = stderr_progress) -> PackageFile:
    """Debian's static busybox binary (:func:`package_file`)."""
    return package_file(BUSYBOX_PACKAGE, BUSYBOX_MEMBER, progress)


# --- another suite, through a private apt state -------------------------------------

#: The keyring of Debian's archive signing keys (package debian-archive-keyring).
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: The host's apt source files, in the order apt reads them.
HOST_SOURCES: tuple[str, ...] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list",
                                 "/etc/apt/sources.list.d/*.sources")


@dataclass(frozen=True)
class Suite:
    """A Debian suite to read besides the host's own, from ``mirror``, signed by a key in ``keyring``."""

    name: str
    mirror: str = DEFAULT_MIRROR
    components: tuple[str, ...] = ("main",)
    keyring: str = DEBIAN_KEYRING


def source_entries(text: str, deb822: bool) -> list[tuple[list[str], list[str], list[str]]]:
    """``(types, URIs, suites)`` of each enabled entry of an apt sources file.

    ``deb822`` for the ``.sources`` format, else one-line ``.list`` entries
    (``deb [options] uri suite components...``).
    """
    entries: list[tuple[list[str], list[str], list[str]]] = []
    if deb822:
        for paragraph in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                if line.startswith("#") or line[:1].isspace() or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
                continue
            entries.append((fields.get("types", "").split(), fields["uris"].split(), fields.get("suites", "").split()))
        return entries
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        rest = words[1:]
        if rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            entries.append(([words[0]], [rest[0]], [rest[1]]))
    return entries


def host_mirror(host_suite: str, default: str = DEFAULT_MIRROR) -> str:
    """The Debian mirror the host's apt uses for ``host_suite`` itself (not -updates or -security).

    Our machines reach Debian only through their configured mirror, and
    another suite of the same archive is there too. ``default`` if the
    host's sources name none.
    """
    for pattern in HOST_SOURCES:
        for path in sorted(glob.glob(pattern)):
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            for types, uris, suites in source_entries(text, path.endswith(".sources")):
                if "deb" in types and host_suite in suites and uris:
                    return uris[0].rstrip("/")
    return default


def sources_list(suite: Suite, kinds: Sequence[str] = ("deb-src",)) -> str:
    """The one-line sources of ``suite`` for a private apt: signed by ``suite.keyring`` only."""
    components = " ".join(suite.components)
    return "".join(f"{kind} [signed-by={suite.keyring}] {suite.mirror} {suite.name} {components}\n" for kind in kinds)


def private_apt_config(root: Path, as_root: bool, extra: Sequence[str] = ()) -> str:
    """The ``apt.conf`` of a private apt state in ``root``, for ``APT_CONFIG``.

    apt reads ``$APT_CONFIG`` before anything else, and this file points the
    main file, the ``apt.conf.d`` parts, sources, pins, trusted keys, lists,
    dpkg status and cache into ``root`` (or at nothing): none of the host's
    configuration is read (its apt.conf.d hooks do not run) and none of its
    state is written. ``-o`` options could not do that, as apt reads the
    host's files before the command line. ``as_root``: download as root
    rather than as ``_apt``, which could not write our private directory (apt
    still checks everything against the signed index). ``extra`` lines are
    added as they are (the host's proxy settings, see :func:`host_proxy_config`).
    """
    if '"' in str(root):
        raise PackageError(f"cannot use {root} for a private apt state (a quote in its path)")
    lines = [
        f'Dir::Etc "{root}/etc";',  # and so whatever else apt would read from /etc/apt (auth.conf)
        'Dir::Etc::Main "/dev/null";',
        f'Dir::Etc::Parts "{root}/apt.conf.d";',
        f'Dir::Etc::SourceList "{root}/sources.list";',
        f'Dir::Etc::SourceParts "{root}/sources.list.d";',
        'Dir::Etc::Preferences "/dev/null";',
        f'Dir::Etc::PreferencesParts "{root}/preferences.d";',
        f'Dir::Etc::Trusted "{root}/trusted.gpg";',
        f'Dir::Etc::TrustedParts "{root}/trusted.gpg.d";',
        f'Dir::State "{root}/state";',
        f'Dir::State::Lists "{root}/lists";',
        f'Dir::State::status "{root}/status";',
        f'Dir::Cache "{root}/cache";',
        f'Dir::Log "{root}/log";',
        'Acquire::Languages "none";',
    ]
    if as_root:
        lines.append('APT::Sandbox::User "root";')
    return "\n".join([*lines, *extra]) + "\n"


PROXY_SETTING = re.compile(r'^Acquire::(?:http|https|ftp)::Proxy(?:::[^ ]+)? ".*";$')


def host_proxy_config() -> list[str]:
    """The host apt's proxy settings (``Acquire::http::Proxy`` and the like), as ``apt-config dump`` lines.

    A private apt reads none of the host's configuration, but must reach the
    mirror the same way the host's apt does.
    """
    if shutil.which("apt-config") is None:
        return []
    proc = subprocess.run(["apt-config", "dump"], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if PROXY_SETTING.match(line)]


def parse_showsrc(output: str, package: str) -> list[str]:
    """The versions of source package ``package`` in ``apt-cache showsrc`` output."""
    found = []
    for paragraph in output.split("\n\n"):
        fields = parse_show(paragraph).get(package)
        if fields is not None:
            found.append(fields["Version"])
    return found


def newest_version(versions: Sequence[str]) -> str:
    """The highest of Debian ``versions`` (as ``dpkg --compare-versions`` orders them)."""
    def compare(a: str, b: str) -> int:
        if a == b:
            return 0
        return 1 if subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0 else -1

    return max(versions, key=functools.cmp_to_key(compare))


class PrivateApt:
    """apt for :class:`Suite` ``suite`` with all its configuration and state in ``root`` (see :func:`private_apt`)."""

    def __init__(self, suite: Suite, root: Path, kinds: Sequence[str] = ("deb-src",)) -> None:
        find_program("apt-get", "another Debian suite's packages are fetched with it", "apt")
        if not os.path.exists(suite.keyring):
            raise PackageError(f"{suite.keyring} is missing; apt checks {suite.name}'s index against it "
                               "(apt-get install debian-archive-keyring)")
        self.suite = suite
        self.root = root
        for directory in ("etc", "apt.conf.d", "sources.list.d", "preferences.d", "trusted.gpg.d", "state",
                          "lists/partial", "cache/archives/partial", "log"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "status").write_text("")
        (root / "sources.list").write_text(sources_list(suite, kinds))
        (root / "apt.conf").write_text(private_apt_config(root, os.geteuid() == 0, host_proxy_config()))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.root / "apt.conf"), "LC_ALL": "C"}

    def run(self, argv: list[str], what: str, cwd: Path | None = None) -> str:
        """Run an apt command on this state (supervised, bounded by the reaper's ``TOOL_TIMEOUT``).

        Its stdout, or a :class:`PackageError` naming the step, this state and its mirror.
        """
        where = f"apt configured by {self.root / 'apt.conf'}: {self.suite.name} from {self.suite.mirror}"
        try:
            proc = run_supervised(argv, cwd=cwd, env=self.env)
        except subprocess.TimeoutExpired as expired:
            raise PackageError(timeout_message(what, expired, f"Check that the mirror is reachable ({where}).")) from None
        if proc.returncode != 0:
            raise PackageError(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)} ({where}); check the mirror is "
                f"reachable. apt said: {(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc.stdout

    def update(self) -> None:
        """Fetch the suite's signed index (``InRelease``) and the lists it vouches for."""
        self.run(["apt-get", "update", "-q"], f"reading Debian {self.suite.name}'s index")

    def source_version(self, package: str) -> str:
        """The version of source package ``package`` in the suite (after :meth:`update`)."""
        output = self.run(["apt-cache", "showsrc", "--only-source", package], f"apt-cache showsrc {package}")
        found = parse_showsrc(output, package)
        if not found:
            raise PackageError(f"Debian {self.suite.name} has no source package {package!r}")
        return newest_version(found)

    def download_source(self, package: str, version: str, dest: Path) -> Path:
        """Download source package ``package`` at ``version`` into ``dest``; returns its ``.dsc``.

        apt checks the ``.dsc`` and every file it names against the hashes of
        the suite's ``Sources`` index, whose own hash the signed ``InRelease``
        vouches for.
        """
        dest.mkdir(parents=True, exist_ok=True)
        self.run(["apt-get", "source", "-q", "--download-only", "--only-source", f"{package}={version}"],
                 f"downloading the source of {package} {version}", cwd=dest)
        dsc = dest / f"{package}_{version.split(':', 1)[-1]}.dsc"
        if not dsc.is_file():
            raise PackageError(f"apt-get source {package}={version} left no {dsc.name} in {dest}")
        return dsc


@contextlib.contextmanager
def private_apt(suite: Suite, kinds: Sequence[str] = ("deb-src",)) -> Iterator[PrivateApt]:
    """A :class:`PrivateApt` of ``suite`` in a fresh temporary directory, updated; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="smalltown-apt-") as tmp:
        apt = PrivateApt(suite, Path(tmp), kinds)
        apt.update()
        yield apt


SOURCE_VERSION_MEMO = "debian-source-version"


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def _source_token(suite: Suite, package: str) -> str:
    return f"{suite.name} {suite.mirror} {' '.join(suite.components)} {suite.keyring} {package} "


def source_version(suite: Suite, package: str, warn: Callable[[str], None] | None = None) -> str:
    """The version of source package ``package`` in ``suite``, asked once per UTC day.

    Image keys are built from it on every lookup; asking costs an ``apt-get
    update`` of the suite (seconds, over the network), so the answer is
    remembered (:func:`cache.remembered`) for the day. If the mirror cannot be
    reached, the newest answer of an earlier day is used (and ``warn`` told),
    so a cached image stays usable offline.
    """
    prefix = _source_token(suite, package)

    def ask() -> str:
        with private_apt(suite) as apt:
            return apt.source_version(package)

    try:
        return remembered(SOURCE_VERSION_MEMO, prefix + _today(), ask)
    except PackageError as error:
        earlier = _earlier_answer(SOURCE_VERSION_MEMO, prefix)
        if earlier is None:
            raise
        if warn is not None:
            warn(f"could not ask Debian {suite.name} for {package}'s version, using {earlier} found earlier: "
                 f"{str(error).splitlines()[0]}")
        return earlier


def _earlier_answer(kind: str, prefix: str) -> str | None:
    """The newest answer :func:`cache.remembered` keeps for ``kind`` under a token starting with ``prefix``."""
    try:
        entries = json.loads((cache_root() / f"memo-{kind}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entries, dict):
        return None
    found = [value for token, value in entries.items() if token.startswith(prefix) and isinstance(value, str)]
    return found[-1] if found else None


def fetch_source(suite: Suite, package: str, version: str, dest: Path) -> Path:
    """Download source package ``package`` at ``version`` from ``suite``, verified, and unpack it.

    Returns the unpacked tree (``dest/source``), with
    Debian's patches applied as ``dpkg-source -x`` does; the downloaded files
    stay in ``dest``.
    """
    find_program("dpkg-source", "source packages are unpacked with it", "dpkg-dev")
    with private_apt(suite) as apt:
        dsc = apt.download_source(package, version, dest)
    tree = dest / "source"
    run_package_tool(["dpkg-source", "--no-copy", "-x", str(dsc), str(tree)], f"unpacking {dsc.name}")
    if not tree.is_dir():
        raise PackageError(f"dpkg-source -x {dsc.name} made no {tree}")
    return tree
