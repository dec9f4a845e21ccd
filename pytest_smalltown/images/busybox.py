"""The busybox of every busybox-based image we build: the node's test image and the conformance images.

One recipe: Debian trixie's ``busybox`` source package (1.37, the version
upstream's e2e busybox image has), configured as Debian configures its
``busybox-static`` package, with two changes, and built as debian/rules builds
it, statically:

* ``FEATURE_DI_ENV_HACK``: Debian's patches make ash drop environment entries
  whose names are not shell identifiers (``data-1``) unless it is set; the
  conformance specs "with various prefixes" run ``sh -c env`` with such names.
* Every applet Debian ships gets the options upstream documents: each option
  that belongs to an applet Debian enables and that busybox's own ``make
  defconfig`` turns on is turned on too (:func:`applet_features`). Debian
  leaves some out (bookworm's wget had no ``-T``, trixie's nc has no ``-z``,
  its awk no ``sqrt``), and a pod's script gets a crash or "invalid option"
  where upstream's image works.

Why a PATH wrapper cannot paper over a missing option: Debian's configuration
sets ``FEATURE_SH_STANDALONE`` (and ``FEATURE_PREFER_APPLETS``), so ash looks
a command name up among its own applets before it searches PATH
(``find_command`` in shell/ash.c) and runs the applet, whatever comes first
in PATH. Only a name with a slash escapes that. ``sh -c "wget -T 3 ..."``
therefore ran the applet, never ``/usr/local/bin/wget``.

The build fails unless the configuration took: kconfig must leave it as
written, the binary must be static, keep the variables the conformance specs
pass and run the offline rows of :data:`applets.APPLET_TABLE`.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_smalltown.base.processes import run_supervised
from pytest_smalltown.base.programs import find_program
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.images import applets, debian, rootfs
from pytest_smalltown.images.cache import cached_build, hash_inputs
from pytest_smalltown.images.tools import BuildError

#: Where busybox is built from: this suite's source package of this name (read
#: through a private apt state, :class:`debian.PrivateApt`).
SUITE = "trixie"
SOURCE = "busybox"
#: Debian's configuration of its busybox-static package, as debian/rules puts
#: it together: the OS's overrides (empty for Linux), then the flavour's, which
#: oldconfig must leave as it is (debian/rules checks the same).
DEBIAN_CONFIG: tuple[str, ...] = ("debian/config/os/linux", "debian/config/pkg/static")
#: What we change in it besides :func:`applet_features`. Debian's patches
#: (revert-9c143ce5..., then temp-deb-installer-hack) make ash drop environment
#: entries whose names are not shell identifiers unless this is set; Debian
#: sets it for the installer's udeb only.
CONFIG_CHANGES: dict[str, str] = {"CONFIG_FEATURE_DI_ENV_HACK": "y"}
#: Options of applets Debian ships that defconfig turns on and we leave off, with why.
UNFIT_FEATURES: dict[str, str] = {
    "CONFIG_FEATURE_LS_COLOR_IS_DEFAULT": "a default, not an option: ls would colour what it prints on a "
                                          "terminal, where Debian's prints plain text; --color works either way",
}
#: debian/rules' flags (``hardening=+all``, less -O2 so that busybox's own -Os
#: applies), fixed here rather than asked of this host's dpkg-buildflags.
CFLAGS = ("-fstack-protector-strong -fstack-clash-protection -Wformat -Werror=format-security "
          "-fcf-protection -Wdate-time -D_FORTIFY_SOURCE=2")
LDFLAGS = "-Wl,-z,relro -Wl,-z,now"
#: Variable names the "various prefixes" Secret/ConfigMap specs pass to ``sh -c env``
#: (their key ``data-1`` without and with each prefix): the built busybox must keep them all.
ENV_PROBE_NAMES: tuple[str, ...] = ("data-1", "1-data-1", "$_-data-1", "ABC_data-1", "#@!data-1")
#: The name of its builds in the cache.
CACHE_NAME = "busybox"


class BusyboxBuildError(BuildError):
    """busybox could not be built, or the binary is not what the recipe asks for."""


# --- the source ------------------------------------------------------------------


def suite() -> debian.Suite:
    """Debian's :data:`SUITE`, from the mirror the host's apt uses."""
    return debian.Suite(SUITE, debian.host_mirror(rootfs.SUITE))


def source_version(progress: Progress = stderr_progress) -> str:
    """The version of :data:`SOURCE` in :data:`SUITE` (asked once a day, see :func:`debian.source_version`)."""
    return debian.source_version(suite(), SOURCE, warn=progress)


# --- the configuration -------------------------------------------------------------

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """``{"CONFIG_X": value}`` of a kconfig ``.config``; an option written as not set reads ``"n"``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if match := _SET.match(line):
            values[match[1]] = match[2]
        elif match := _UNSET.match(line):
            values[match[1]] = "n"
    return values


def edit_config(config: str, changes: Mapping[str, str]) -> str:
    """``config`` (a ``.config``) with ``changes`` (``{"CONFIG_X": "y"}``) made.

    Each option must be in it exactly once, set or ``# ... is not set``: a
    source whose configuration no longer names it needs a look at this
    recipe, not a build that silently lacks it.
    """
    lines = config.splitlines(keepends=True)
    for option, value in changes.items():
        pattern = re.compile(rf"^(?:{re.escape(option)}=.*|# {re.escape(option)} is not set)$")
        found = [i for i, line in enumerate(lines) if pattern.match(line.rstrip("\n"))]
        if len(found) != 1:
            raise BusyboxBuildError(f"Debian's busybox configuration names {option} {len(found)} times, "
                                    "not once; update the recipe (images/busybox.py) for this source version")
        lines[found[0]] = f"{option}={value}\n"
    return "".join(lines)


_APPLET_LINE = re.compile(r"^//applet:\s*IF_(\w+)\(", re.M)


def applet_symbols(source: Path) -> set[str]:
    """The config symbol of every applet the source can build (``WGET``, ``SH_IS_ASH``, ...).

    Each applet is declared in its C file by a line such as
    ``//applet:IF_WGET(APPLET(wget, BB_DIR_USR_BIN, BB_SUID_DROP))``; the
    first ``IF_`` names the symbol that builds it.
    """
    found: set[str] = set()
    for path in source.rglob("*.c"):
        found.update(_APPLET_LINE.findall(path.read_text(errors="replace")))
    return found


def kconfig_depends(paths: Iterable[Path]) -> tuple[dict[str, list[str]], set[str]]:
    """Each option's dependencies in the Kconfig files ``paths``, and the options that are choices' members.

    The dependencies of an option are its ``depends on`` expressions and the
    conditions of the ``if`` blocks around it, all of which must hold.
    Members of a ``choice`` exclude each other, so no rule turns one on.
    """
    depends: dict[str, list[str]] = {}
    choice_members: set[str] = set()
    for path in paths:
        conditions: list[str] = []
        current: str | None = None
        in_help = in_choice = False
        for line in path.read_text(errors="replace").splitlines():
            if in_help and (not line.strip() or line[:1].isspace()):
                continue  # help text runs until the next unindented line
            in_help = False
            keyword, _, rest = line.split("#", 1)[0].strip().partition(" ")
            if keyword in ("help", "---help---"):
                in_help = True
            elif keyword in ("config", "menuconfig"):
                current = rest.strip()
                depends.setdefault(current, []).extend(conditions)
                if in_choice:
                    choice_members.add(current)
            elif keyword == "depends" and current is not None:
                depends[current].append(rest.strip().removeprefix("on").strip())
            elif keyword == "if":
                conditions.append(rest.strip())
                current = None
            elif keyword == "endif":
                conditions.pop()
                current = None
            elif keyword in ("choice", "endchoice", "menu", "endmenu", "comment", "source", "mainmenu"):
                in_choice = keyword == "choice" or (in_choice and keyword != "endchoice")
                current = None
    return depends, choice_members


_TOKEN = re.compile(r"\s*(\|\||&&|!=|[!=()]|\w+|\"[^\"]*\")")


def holds(expression: str, values: Mapping[str, str]) -> bool:
    """Whether a Kconfig dependency expression holds for ``values`` (``{"CONFIG_X": "y"}``).

    The grammar busybox uses: symbols, ``!``, ``&&``, ``||``, parentheses and
    ``=``/``!=`` comparisons; a symbol holds if it is ``y`` (or ``m``), and
    one the configuration does not name does not.
    """
    tokens: list[str] = _TOKEN.findall(expression)
    unreadable = BusyboxBuildError(f"cannot read the Kconfig expression {expression!r}")
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise unreadable
    position = 0

    def peek() -> str:
        return tokens[position] if position < len(tokens) else ""

    def take() -> str:
        nonlocal position
        if position == len(tokens):
            raise unreadable
        position += 1
        return tokens[position - 1]

    def value() -> str:
        """A symbol's value; a string, a number or an unknown symbol stands for itself (as in kconfig)."""
        token = take()
        if not re.fullmatch(r'\w+|"[^"]*"', token):
            raise unreadable
        return token.strip('"') if token.startswith('"') else values.get(f"CONFIG_{token}", token)

    def primary() -> bool:
        if peek() == "!":
            take()
            return not primary()
        if peek() == "(":
            take()
            result = either()
            if take() != ")":
                raise unreadable
            return result
        left = value()
        if peek() in ("=", "!="):
            equal = take() == "="
            return (left == value()) == equal
        return left in ("y", "m")

    def both() -> bool:
        result = primary()
        while peek() == "&&":
            take()
            result = primary() and result
        return result

    def either() -> bool:
        result = both()
        while peek() == "||":
            take()
            result = both() or result
        return result

    result = either()
    if position != len(tokens):
        raise unreadable
    return result


def applet_features(debian_values: Mapping[str, str], defconfig: Mapping[str, str],
                    depends: Mapping[str, list[str]], applet_names: set[str],
                    exclude: Iterable[str] = ()) -> list[str]:
    """The options to turn on so that every applet Debian enables has the options upstream documents.

    An option belongs to an applet when its dependencies name the applet's
    symbol, or name an option that belongs to it (``FEATURE_FIND_DELETE``
    depends on ``FIND``; ``FEATURE_CPIO_P`` on ``FEATURE_CPIO_O``, which depends on ``CPIO``).
    Turned on: each option that belongs to an applet Debian enables, that
    ``make defconfig`` (upstream's own choice, the one its documentation is
    generated from) turns on, that Debian leaves off, that is not an applet
    itself nor a choice's member nor in ``exclude``, and whose dependencies
    hold once the others are on (so kconfig keeps it).
    """
    enabled = {name for name in applet_names if debian_values.get(f"CONFIG_{name}") == "y"}
    owned = _owned_by(enabled, depends, applet_names)
    values = dict(debian_values)
    excluded = set(exclude)
    chosen: list[str] = []
    changed = True
    while changed:
        changed = False
        for name in sorted(owned):
            option = f"CONFIG_{name}"
            if (defconfig.get(option) == "y" and values.get(option) != "y" and option not in excluded
                    and all(holds(expression, values) for expression in depends[name])):
                values[option] = "y"
                chosen.append(option)
                changed = True
    return sorted(chosen)


def _owned_by(enabled: set[str], depends: Mapping[str, list[str]], applet_names: set[str]) -> set[str]:
    """The options (not applets) whose dependencies name an enabled applet, directly or through another such option."""
    symbols = {name: set(re.findall(r"\b[A-Z][A-Z0-9_]*\b", " ".join(expressions)))
               for name, expressions in depends.items() if name not in applet_names}
    owned: set[str] = set()
    while True:
        more = {name for name, named in symbols.items() if name not in owned and named & (enabled | owned)}
        if not more:
            return owned
        owned |= more


def derive_config(debian_config: str, defconfig_tree: Path, source: Path) -> tuple[str, list[str]]:
    """Debian's configuration with :data:`CONFIG_CHANGES` and the :func:`applet_features`, and those features.

    ``defconfig_tree`` is where ``make defconfig`` ran: its ``.config`` and
    the Kconfig files it generated from the sources' ``//config:`` comments.
    """
    names = applet_symbols(source)
    if not names:
        raise BusyboxBuildError(f"found no applet declarations in {source}: the recipe's reading of busybox's "
                                "sources no longer fits them")
    depends, choice_members = kconfig_depends([*defconfig_tree.rglob("Config.in"), source / "Config.in"])
    debian_values = parse_config(edit_config(debian_config, CONFIG_CHANGES))
    features = applet_features(debian_values, parse_config((defconfig_tree / ".config").read_text()), depends,
                               names, exclude=[*UNFIT_FEATURES, *(f"CONFIG_{m}" for m in choice_members)])
    return edit_config(debian_config, {**CONFIG_CHANGES, **{option: "y" for option in features}}), features


# --- the build -----------------------------------------------------------------------


def make_argv(source: Path, build: Path, target: str) -> list[str]:
    """``make target`` for an out-of-tree build of ``source`` in ``build``."""
    return ["make", "-C", str(build), "-f", str(source / "Makefile"), f"KBUILD_SRC={source}", target]


def build_steps(source: Path, build: Path, version: str) -> list[list[str]]:
    """The commands that configure and compile busybox from ``source`` in ``build``, as debian/rules does.

    ``silentoldconfig`` (with ``yes ""`` answering any question by its
    default) writes the Makefile and headers for ``build/.config``; ``all``
    compiles and strips ``build/busybox``.
    """
    return [
        ["sh", "-c", 'yes "" | exec "$@"', "sh", *make_argv(source, build, "silentoldconfig")],
        ["make", "-C", str(build), "all", f"BB_EXTRA_VERSION=Debian {version}, pytest-smalltown",
         f"CONFIG_EXTRA_CFLAGS={CFLAGS} -ffile-prefix-map={source}=.", f"CONFIG_EXTRA_LDFLAGS={LDFLAGS}"],
    ]


def busybox_key(version: str, gcc: str) -> str:
    """Cache key of the build: the source's version, the compiler and this recipe (the whole module)."""
    return hash_inputs([SOURCE, SUITE, version, gcc, Path(__file__)])


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = run_supervised(argv, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise BusyboxBuildError(f"building busybox failed (exit {proc.returncode}): {' '.join(argv)}\n"
                                f"{(proc.stderr or proc.stdout)[-4000:]}")


def _configure(source: Path, work: Path, env: dict[str, str], progress: Progress) -> tuple[Path, str, list[str]]:
    """Run defconfig, derive our configuration from it and Debian's, and set ``work/build`` up with it."""
    defconfig_tree = work / "defconfig"
    defconfig_tree.mkdir()
    _run(make_argv(source, defconfig_tree, "defconfig"), defconfig_tree, env)
    *overrides, flavour = [(source / part).read_text() for part in DEBIAN_CONFIG]
    config, features = derive_config(flavour, defconfig_tree, source)
    progress(f"busybox: {len(features)} options Debian leaves off turned on: "
             + " ".join(option.removeprefix("CONFIG_") for option in features))
    build = work / "build"
    build.mkdir()
    (build / ".config").write_text("".join(overrides) + config)
    return build, config, features


def build_busybox(version: str, gcc: str, progress: Progress = stderr_progress) -> Path:
    """The static busybox binary of our images (cached by :func:`busybox_key`).

    Debian's :data:`SOURCE` at ``version``, fetched and verified through a
    private apt (:func:`debian.fetch_source`), configured by
    :func:`derive_config` and built as debian/rules builds it, in a clean
    environment, then checked (:func:`check_binary`).
    """
    def build(out: Path) -> None:
        for tool, package in (("make", "make"), ("gcc", "gcc libc6-dev"), ("bzip2", "bzip2"), ("xz", "xz-utils"),
                              ("patch", "patch")):
            find_program(tool, "busybox is built from Debian's source", package)
        with tempfile.TemporaryDirectory(prefix="smalltown-busybox-") as tmp:
            progress(f"fetching Debian {SUITE}'s {SOURCE} source {version}")
            source = debian.fetch_source(suite(), SOURCE, version, Path(tmp) / "src")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "KCONFIG_NOTIMESTAMP": "1",
                   "MAKEFLAGS": f"-j{os.cpu_count() or 1}"}
            build_dir, config, features = _configure(source, Path(tmp), env, progress)
            progress(f"compiling busybox {version} (static)")
            configure, compile_ = build_steps(source, build_dir, version)
            _run(configure, build_dir, env)
            _check_config_kept(build_dir, config)
            _run(compile_, build_dir, env)
            check_binary(build_dir / "busybox")
            shutil.copy2(build_dir / "busybox", out / "busybox")
            (out / "config").write_text(config)
            (out / "features.txt").write_text("".join(f"{option}\n" for option in features))
            (out / "version.txt").write_text(f"{SOURCE}={version} ({SUITE}) {gcc}\n")

    return cached_build(CACHE_NAME, busybox_key(version, gcc), build, progress) / "busybox"


# --- the checks ------------------------------------------------------------------------


def _check_config_kept(build: Path, config: str) -> None:
    """Fail if kconfig changed what we wrote: an option we turned on whose dependencies did not hold, or a new one."""
    kept = parse_config((build / ".config").read_text())
    wanted = parse_config(config)
    changed = sorted(option for option in wanted.keys() | kept.keys()
                     if wanted.get(option, "n") != kept.get(option, "n"))
    if changed:
        raise BusyboxBuildError(
            "busybox's oldconfig changed our configuration (Debian's with the applet features turned on): "
            + ", ".join(f"{option} {wanted.get(option, '-')}->{kept.get(option, '-')}" for option in changed[:20])
            + f"; compare {DEBIAN_CONFIG[-1]} with the result and update the recipe (images/busybox.py)")


def is_static(binary: Path) -> bool:
    """Whether the ELF64 file ``binary`` has no program interpreter (``PT_INTERP``): a static executable.

    The image has no libc for a dynamic one, and ``ldd`` cannot be trusted on an untrusted binary.
    """
    data = binary.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def check_env_passthrough(binary: Path) -> None:
    """Fail unless ``busybox sh -c env`` passes on variables named :data:`ENV_PROBE_NAMES`."""
    probe = {name: f"value-{i}" for i, name in enumerate(ENV_PROBE_NAMES)}
    proc = run_supervised([str(binary), "sh", "-c", "env"], env={"PATH": "/usr/bin:/bin", **probe})
    printed = set(proc.stdout.splitlines())
    dropped = [name for name, value in probe.items() if f"{name}={value}" not in printed]
    if proc.returncode != 0 or dropped:
        raise BusyboxBuildError(
            f"the busybox built at {binary} drops environment variables that are not shell identifiers "
            f"({', '.join(dropped) or 'sh -c env failed'}; exit {proc.returncode}), so the 'various prefixes' "
            f"Secret and ConfigMap specs would fail: {', '.join(CONFIG_CHANGES)} did not take effect "
            f"in Debian's {SOURCE} source; check the recipe (images/busybox.py). {proc.stderr.strip()[-500:]}"
        )


def check_binary(binary: Path) -> None:
    """Fail unless ``binary`` is static, keeps odd variable names, and runs the applet table's offline rows."""
    if not is_static(binary):
        raise BusyboxBuildError(f"{binary} is not a static executable (CONFIG_STATIC lost?); the images have no libc")
    check_env_passthrough(binary)
    with tempfile.TemporaryDirectory(prefix="smalltown-applets-") as tmp:
        failures = applets.run_on_host(binary, Path(tmp), [row for row in applets.APPLET_TABLE if not row.needs])
    if failures:
        raise BusyboxBuildError(f"the busybox built at {binary} fails applet invocations upstream's accepts "
                                "(an option the configuration lacks?):\n" + "\n".join(failures))
