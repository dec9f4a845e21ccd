"""Our busybox: the private apt its source is fetched through, its configuration rule, recipe and key (no network)."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.base.paths import CACHE_ENV
from pytest_smalltown.images import busybox, debian

TRIXIE = debian.Suite("trixie", "http://mirror.example/debian")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(debian, "host_proxy_config", lambda: [])
    return tmp_path / "cache"


# --- the private apt state ------------------------------------------------------------


def test_private_apt_config_keeps_everything_in_its_root(tmp_path: Path) -> None:
    text = debian.private_apt_config(tmp_path, as_root=False)
    settings = dict(line.rstrip(";").split(" ", 1) for line in text.splitlines())
    assert settings["Dir::Etc::Main"] == '"/dev/null"'  # the host's apt.conf is not read
    assert settings["Dir::Etc::Parts"] == f'"{tmp_path}/apt.conf.d"'  # nor its apt.conf.d (hooks)
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::Etc::PreferencesParts",
                "Dir::Etc::Trusted", "Dir::Etc::TrustedParts", "Dir::State", "Dir::State::Lists",
                "Dir::State::status", "Dir::Cache", "Dir::Log"):
        assert settings[key].startswith(f'"{tmp_path}/'), key
    assert "/etc/apt" not in text and "/var/lib" not in text
    assert "Sandbox" not in text
    as_root = debian.private_apt_config(tmp_path, as_root=True, extra=['Acquire::http::Proxy "http://p:3128";'])
    assert 'APT::Sandbox::User "root";' in as_root
    assert as_root.endswith('Acquire::http::Proxy "http://p:3128";\n')
    with pytest.raises(debian.PackageError, match="quote"):
        debian.private_apt_config(tmp_path / 'a"b', as_root=False)


def test_sources_are_signed_by_the_debian_keyring_only() -> None:
    assert debian.sources_list(TRIXIE) == (
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian trixie main\n")
    both = debian.sources_list(debian.Suite("trixie", components=("main", "contrib")), ("deb", "deb-src"))
    assert both.splitlines()[0].startswith("deb [signed-by=")
    assert both.splitlines()[1].endswith("http://deb.debian.org/debian trixie main contrib")


def test_proxy_settings_are_recognised() -> None:
    assert debian.PROXY_SETTING.match('Acquire::http::Proxy "http://proxy:3128";')
    assert debian.PROXY_SETTING.match('Acquire::https::Proxy::deb.debian.org "DIRECT";')
    assert not debian.PROXY_SETTING.match('APT::Update::Post-Invoke-Success:: "hook";')


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt")
def test_apt_reads_only_the_private_configuration(tmp_path: Path) -> None:
    """What apt itself makes of the file: our directories, and none of the host's hooks."""
    apt = debian.PrivateApt(TRIXIE, tmp_path)
    dump = subprocess.run(["apt-config", "dump"], env=apt.env, capture_output=True, text=True, check=True).stdout
    settings = dict(line.rstrip(";").split(" ", 1) for line in dump.lower().splitlines())
    assert settings["dir::state::lists"] == f'"{tmp_path}/lists"'.lower()
    assert settings["dir::etc::sourcelist"] == f'"{tmp_path}/sources.list"'.lower()
    assert settings["dir::etc"] == f'"{tmp_path}/etc"'.lower()  # auth.conf and the like: not the host's
    assert "post-invoke" not in dump.lower() and "pre-invoke" not in dump.lower()  # no host hooks
    assert (tmp_path / "sources.list").read_text() == debian.sources_list(TRIXIE)
    assert (tmp_path / "status").read_text() == ""


def test_a_missing_keyring_is_reported(tmp_path: Path) -> None:
    with pytest.raises(debian.PackageError, match="debian-archive-keyring"):
        debian.PrivateApt(debian.Suite("trixie", keyring=str(tmp_path / "none.gpg")), tmp_path / "apt")


def test_host_mirror_is_the_one_serving_the_host_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://security.example/debian-security bookworm-security main\n")
    (tmp_path / "b.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    monkeypatch.setattr(debian, "HOST_SOURCES", (str(tmp_path / "*.list"), str(tmp_path / "*.sources")))
    assert debian.host_mirror("bookworm") == "http://mirror.example/debian"
    assert debian.host_mirror("sid") == debian.DEFAULT_MIRROR


def test_one_line_entries_with_options() -> None:
    text = "deb [ arch=amd64 signed-by=/k.gpg ] http://m.example/debian bookworm main contrib # comment\n"
    assert debian.source_entries(text, deb822=False) == [(["deb"], ["http://m.example/debian"], ["bookworm"])]


# --- asking and fetching through it (apt faked) ------------------------------------------

SHOWSRC = """Package: busybox
Binary: busybox, busybox-static
Version: 1:1.37.0-6
Format: 3.0 (quilt)

Package: busybox
Version: 1:1.36.1-9
Format: 3.0 (quilt)

"""


def _fake_runs(monkeypatch: pytest.MonkeyPatch, stdout: str = "") -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []

    def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
        runs.append({"argv": argv, "cwd": cwd, "env": env})
        if argv[:3] == ["apt-get", "source", "-q"] and cwd is not None:
            (Path(cwd) / "busybox_1.37.0-6.dsc").write_text("dsc")
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    monkeypatch.setattr(debian, "run_supervised", run)
    return runs


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_source_version_is_the_newest_in_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _fake_runs(monkeypatch, SHOWSRC)
    apt = debian.PrivateApt(TRIXIE, tmp_path)
    assert apt.source_version("busybox") == "1:1.37.0-6"
    assert runs[0]["argv"] == ["apt-cache", "showsrc", "--only-source", "busybox"]
    assert runs[0]["env"]["APT_CONFIG"] == str(tmp_path / "apt.conf")
    assert debian.parse_showsrc(SHOWSRC, "busybox-static") == []
    assert debian.newest_version(["1.2-1", "1:0.1-1", "1.10-1"]) == "1:0.1-1"


def test_source_download_is_apts_and_names_the_dsc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _fake_runs(monkeypatch)
    apt = debian.PrivateApt(TRIXIE, tmp_path / "apt")
    dsc = apt.download_source("busybox", "1:1.37.0-6", tmp_path / "src")
    assert dsc == tmp_path / "src" / "busybox_1.37.0-6.dsc"
    (run,) = runs
    assert run["argv"] == ["apt-get", "source", "-q", "--download-only", "--only-source", "busybox=1:1.37.0-6"]
    assert run["cwd"] == tmp_path / "src" and run["env"]["APT_CONFIG"] == str(tmp_path / "apt" / "apt.conf")


def test_a_failing_apt_command_says_what_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "run_supervised",
                        lambda argv, **_: subprocess.CompletedProcess(argv, 100, "", "E: Failed to fetch InRelease"))
    apt = debian.PrivateApt(TRIXIE, tmp_path)
    with pytest.raises(debian.PackageError, match="trixie from http://mirror.example/debian.*Failed to fetch"):
        apt.update()


class _FakeApt:
    def __init__(self, answers: list[str | Exception]) -> None:
        self.answers = answers
        self.asked = 0

    @contextlib.contextmanager
    def __call__(self, suite: debian.Suite) -> Iterator[_FakeApt]:
        yield self

    def source_version(self, package: str) -> str:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_source_version_is_asked_once_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeApt(["1:1.37.0-6", "1:1.37.0-7"])
    monkeypatch.setattr(debian, "private_apt", fake)
    monkeypatch.setattr(debian, "_today", lambda: "2025-01-01")
    assert debian.source_version(TRIXIE, "busybox") == "1:1.37.0-6"
    assert debian.source_version(TRIXIE, "busybox") == "1:1.37.0-6"
    assert fake.asked == 1
    monkeypatch.setattr(debian, "_today", lambda: "2025-01-02")
    assert debian.source_version(TRIXIE, "busybox") == "1:1.37.0-7"
    assert fake.asked == 2
    # Another mirror or suite is another question.
    assert debian.source_version(debian.Suite("trixie"), "busybox") == "1:1.37.0-7"
    assert fake.asked == 3


def test_an_unreachable_mirror_falls_back_to_an_earlier_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeApt(["1:1.37.0-6", debian.PackageError("apt-get update failed\nE: no network")])
    monkeypatch.setattr(debian, "private_apt", fake)
    monkeypatch.setattr(debian, "_today", lambda: "2025-01-01")
    debian.source_version(TRIXIE, "busybox")
    monkeypatch.setattr(debian, "_today", lambda: "2025-01-02")
    warnings: list[str] = []
    assert debian.source_version(TRIXIE, "busybox", warn=warnings.append) == "1:1.37.0-6"
    assert warnings and "apt-get update failed" in warnings[0]
    with pytest.raises(debian.PackageError):
        debian.source_version(TRIXIE, "coreutils")  # nothing earlier to fall back to


# --- the configuration rule --------------------------------------------------------------

DEBIAN_STATIC = """#
# Automatically generated make config: don't edit
#
CONFIG_HAVE_DOT_CONFIG=y
CONFIG_STATIC=y
# CONFIG_FEATURE_DI_ENV_HACK is not set
CONFIG_ASH=y
"""


def test_config_edit_sets_what_it_is_given_and_nothing_else() -> None:
    edited = busybox.edit_config(DEBIAN_STATIC, busybox.CONFIG_CHANGES)
    assert edited == DEBIAN_STATIC.replace("# CONFIG_FEATURE_DI_ENV_HACK is not set", "CONFIG_FEATURE_DI_ENV_HACK=y")
    assert busybox.edit_config(edited, busybox.CONFIG_CHANGES) == edited  # already set: unchanged
    assert busybox.edit_config(DEBIAN_STATIC, {"CONFIG_STATIC": "n"}).count("CONFIG_STATIC=n\n") == 1
    assert busybox.parse_config(edited) == {"CONFIG_HAVE_DOT_CONFIG": "y", "CONFIG_STATIC": "y",
                                            "CONFIG_FEATURE_DI_ENV_HACK": "y", "CONFIG_ASH": "y"}


def test_config_edit_refuses_an_option_it_cannot_find_once() -> None:
    with pytest.raises(busybox.BusyboxBuildError, match="CONFIG_FEATURE_DI_ENV_HACK 0 times"):
        busybox.edit_config("CONFIG_ASH=y\n# CONFIG_FEATURE_DI_ENV_HACKS is not set\n", busybox.CONFIG_CHANGES)
    with pytest.raises(busybox.BusyboxBuildError, match="2 times"):
        busybox.edit_config(DEBIAN_STATIC + "CONFIG_FEATURE_DI_ENV_HACK=y\n", busybox.CONFIG_CHANGES)


@pytest.mark.parametrize(("expression", "expected"), [
    ("WGET", True), ("TAR", False), ("!TAR", True), ("WGET && TAR", False), ("TAR || WGET", True),
    ("(PS || MINIPS) && DESKTOP", True), ("!NOMMU && (SHELL_ASH || ASH)", True), ("WGET && !(TAR || PS)", False),
    ("PORT=80", True), ("PORT!=80", False), ("WGET # a comment's words", True),
])
def test_dependency_expressions(expression: str, expected: bool) -> None:
    values = {"CONFIG_WGET": "y", "CONFIG_TAR": "n", "CONFIG_PS": "y", "CONFIG_DESKTOP": "y", "CONFIG_ASH": "y",
              "CONFIG_PORT": "80"}
    assert busybox.holds(expression.split("#")[0], values) is expected


def test_an_unreadable_expression_fails_the_build() -> None:
    with pytest.raises(busybox.BusyboxBuildError, match="cannot read"):
        busybox.holds("WGET &&& TAR", {})
    with pytest.raises(busybox.BusyboxBuildError, match="cannot read"):
        busybox.holds("(WGET", {})


KCONFIG = """menu "Networking Utilities"

config WGET
	bool "wget (41 kb)"
	default y
	help
	wget is a utility for non-interactive download of files from HTTP
	if FOO is set, nothing happens: help text, not a block
	depends on NOTHING

config FEATURE_WGET_TIMEOUT
	bool "Enable timeout option -T SEC"
	default y
	depends on WGET

if WGET && !NOMMU # a comment
config FEATURE_WGET_DEEP
	bool "Inside an if block"
	depends on FEATURE_WGET_TIMEOUT
endif

choice
	prompt "Choose"
config SH_IS_ASH
	bool "ash"
endchoice

endmenu
"""


def test_kconfig_dependencies_include_if_blocks_but_not_help_text(tmp_path: Path) -> None:
    (tmp_path / "Config.in").write_text(KCONFIG)
    depends, choice_members = busybox.kconfig_depends([tmp_path / "Config.in"])
    assert depends == {"WGET": [], "FEATURE_WGET_TIMEOUT": ["WGET"],
                       "FEATURE_WGET_DEEP": ["WGET && !NOMMU", "FEATURE_WGET_TIMEOUT"], "SH_IS_ASH": []}
    assert choice_members == {"SH_IS_ASH"}


def test_applets_are_found_by_their_declarations(tmp_path: Path) -> None:
    (tmp_path / "networking").mkdir()
    (tmp_path / "networking/wget.c").write_text(
        "//applet:IF_WGET(APPLET(wget, BB_DIR_USR_BIN, BB_SUID_DROP))\n"
        "//applet:IF_RMMOD(IF_NOT_MODPROBE_SMALL(APPLET_NOEXEC(rmmod, rmmod, BB_DIR_SBIN, BB_SUID_DROP, rmmod)))\n"
        "//applet:IF_PS(  APPLET_NOEXEC(ps, ps, BB_DIR_BIN, BB_SUID_DROP, ps))\n"
        "//applet:#if ENABLE_FEATURE_TFTP_GET\n"
        "int x; // IF_NOT_AN_APPLET(\n")
    assert busybox.applet_symbols(tmp_path) == {"WGET", "RMMOD", "PS"}


def test_the_rule_turns_on_upstreams_options_of_the_applets_debian_ships() -> None:
    depends = {
        "WGET": [], "NC": [], "FTPD": [],
        "FEATURE_WGET_TIMEOUT": ["WGET"],                   # defconfig on, Debian off: on
        "FEATURE_WGET_DEEP": ["FEATURE_WGET_TIMEOUT"],      # belongs to wget through another option: on
        "FEATURE_WGET_OFF_UPSTREAM": ["WGET"],              # defconfig off too: off
        "NC_110_COMPAT": ["NC || NETCAT"],                  # not named FEATURE_: on
        "FEATURE_FTPD_WRITE": ["FTPD"],                     # an applet Debian leaves out: off
        "FEATURE_NC_NEEDS": ["NC && MODPROBE_SMALL"],       # a dependency Debian leaves off: off
        "FEATURE_WGET_UNFIT": ["WGET"],                     # excluded: off
        "FEATURE_EDITING": [],                              # no applet's: off
    }
    debian_values = {"CONFIG_WGET": "y", "CONFIG_NC": "y", "CONFIG_FTPD": "n"}
    defconfig = {f"CONFIG_{name}": "y" for name in depends} | {"CONFIG_FEATURE_WGET_OFF_UPSTREAM": "n"}
    chosen = busybox.applet_features(debian_values, defconfig, depends, {"WGET", "NC", "FTPD", "NETCAT"},
                                     exclude=["CONFIG_FEATURE_WGET_UNFIT"])
    assert chosen == ["CONFIG_FEATURE_WGET_DEEP", "CONFIG_FEATURE_WGET_TIMEOUT", "CONFIG_NC_110_COMPAT"]


def test_derived_configuration_is_debians_with_the_changes_and_the_features(tmp_path: Path) -> None:
    source, tree = tmp_path / "source", tmp_path / "defconfig"
    (source / "networking").mkdir(parents=True)
    (source / "networking/wget.c").write_text("//applet:IF_WGET(APPLET(wget, BB_DIR_USR_BIN, BB_SUID_DROP))\n")
    (source / "Config.in").write_text("config STATIC\n\tbool \"static\"\n")
    (tree / "networking").mkdir(parents=True)
    (tree / "networking/Config.in").write_text(KCONFIG)
    (tree / ".config").write_text("CONFIG_WGET=y\nCONFIG_FEATURE_WGET_TIMEOUT=y\nCONFIG_FEATURE_WGET_DEEP=y\n")
    debian_config = DEBIAN_STATIC + "CONFIG_WGET=y\n# CONFIG_FEATURE_WGET_TIMEOUT is not set\n" \
                                    "# CONFIG_FEATURE_WGET_DEEP is not set\n"
    config, features = busybox.derive_config(debian_config, tree, source)
    assert features == ["CONFIG_FEATURE_WGET_DEEP", "CONFIG_FEATURE_WGET_TIMEOUT"]
    assert busybox.parse_config(config) == {**busybox.parse_config(debian_config), "CONFIG_FEATURE_DI_ENV_HACK": "y",
                                            "CONFIG_FEATURE_WGET_TIMEOUT": "y", "CONFIG_FEATURE_WGET_DEEP": "y"}
    with pytest.raises(busybox.BusyboxBuildError, match="no applet declarations"):
        busybox.derive_config(debian_config, tree, tmp_path / "empty")


# --- the build recipe and key ----------------------------------------------------------


def test_build_steps_follow_debian_rules() -> None:
    configure, compile_ = busybox.build_steps(Path("/s"), Path("/b"), "1:1.37.0-6")
    assert configure[:3] == ["sh", "-c", 'yes "" | exec "$@"'] and configure[-2:] == ["KBUILD_SRC=/s", "silentoldconfig"]
    assert compile_[:4] == ["make", "-C", "/b", "all"]
    assert "BB_EXTRA_VERSION=Debian 1:1.37.0-6, pytest-smalltown" in compile_
    assert f"CONFIG_EXTRA_CFLAGS={busybox.CFLAGS} -ffile-prefix-map=/s=." in compile_
    assert busybox.DEBIAN_CONFIG[-1] == "debian/config/pkg/static"
    assert busybox.make_argv(Path("/s"), Path("/d"), "defconfig")[-2:] == ["KBUILD_SRC=/s", "defconfig"]


def test_busybox_key_covers_version_compiler_and_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = busybox.busybox_key("1:1.37.0-6", "gcc 12")
    assert base == busybox.busybox_key("1:1.37.0-6", "gcc 12")
    assert base != busybox.busybox_key("1:1.37.0-7", "gcc 12")
    assert base != busybox.busybox_key("1:1.37.0-6", "gcc 14")
    recipe = tmp_path / "busybox.py"
    recipe.write_text(Path(busybox.__file__).read_text().replace('"CONFIG_FEATURE_DI_ENV_HACK": "y"',
                                                                 '"CONFIG_FEATURE_DI_ENV_HACK": "n"'))
    monkeypatch.setattr(busybox, "__file__", str(recipe))
    assert base != busybox.busybox_key("1:1.37.0-6", "gcc 12")


def test_busybox_comes_from_trixie_on_the_hosts_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "host_mirror", lambda host_suite: f"http://mirror-for-{host_suite}.example/debian")
    asked: list[tuple[debian.Suite, str]] = []

    def source_version(suite: debian.Suite, package: str, warn: object = None) -> str:
        asked.append((suite, package))
        return "1:9"

    monkeypatch.setattr(debian, "source_version", source_version)
    assert busybox.source_version() == "1:9"
    assert asked == [(debian.Suite("trixie", "http://mirror-for-bookworm.example/debian"), "busybox")]


# --- the build-time checks -----------------------------------------------------------------


def _elf(program_header_types: list[int]) -> bytes:
    """A 64-bit ELF header and its program headers, of the given types (3 is PT_INTERP)."""
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)
    struct.pack_into("<HH", header, 0x36, 56, len(program_header_types))
    return bytes(header) + b"".join(struct.pack("<I", kind) + bytes(52) for kind in program_header_types)


def test_a_binary_with_an_interpreter_is_not_static(tmp_path: Path) -> None:
    (tmp_path / "static").write_bytes(_elf([1, 1, 4]))
    (tmp_path / "dynamic").write_bytes(_elf([6, 3, 1]))
    (tmp_path / "script").write_bytes(b"#!/bin/sh\n")
    assert busybox.is_static(tmp_path / "static")
    assert not busybox.is_static(tmp_path / "dynamic")
    assert not busybox.is_static(tmp_path / "script")
    assert not busybox.is_static(Path(sys.executable).resolve())


def _fake_busybox(tmp_path: Path, keep: str) -> Path:
    """A stand-in for ``busybox sh -c env`` that prints the variables whose names match ``keep``.

    Python, not a shell script: dash (/bin/sh) itself drops the names the check is about.
    """
    path = tmp_path / "busybox"
    path.write_text(f"#!{sys.executable}\nimport os, re\nassert os.sys.argv[1:] == ['sh', '-c', 'env']\n"
                    f"print(''.join(f'{{k}}={{v}}\\n' for k, v in os.environ.items() if re.fullmatch({keep!r}, k)))\n")
    os.chmod(path, 0o755)
    return path


def test_a_shell_that_keeps_every_name_passes(tmp_path: Path) -> None:
    busybox.check_env_passthrough(_fake_busybox(tmp_path, ".*"))


def test_a_shell_that_drops_invalid_names_fails_the_build(tmp_path: Path) -> None:
    with pytest.raises(busybox.BusyboxBuildError, match=r"drops .*data-1.*CONFIG_FEATURE_DI_ENV_HACK"):
        busybox.check_env_passthrough(_fake_busybox(tmp_path, "[A-Za-z_][A-Za-z0-9_]*"))


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs Debian's busybox(-static)")
def test_debians_own_busybox_is_what_the_check_catches() -> None:
    """The host's Debian busybox was built without the option: the check must reject it."""
    with pytest.raises(busybox.BusyboxBuildError, match="drops"):
        busybox.check_env_passthrough(Path("/bin/busybox"))


def test_kconfig_changing_our_configuration_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / ".config").write_text("CONFIG_WGET=y\n# CONFIG_FEATURE_WGET_TIMEOUT is not set\n")
    busybox._check_config_kept(tmp_path, "CONFIG_WGET=y\n# CONFIG_FEATURE_WGET_TIMEOUT is not set\n")
    with pytest.raises(busybox.BusyboxBuildError, match="FEATURE_WGET_TIMEOUT y->n"):
        busybox._check_config_kept(tmp_path, "CONFIG_WGET=y\nCONFIG_FEATURE_WGET_TIMEOUT=y\n")
