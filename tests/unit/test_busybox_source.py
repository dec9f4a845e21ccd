"""The conformance busybox: the private apt it is fetched through, its build recipe and key (no network)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_smalltown.images import cache, conformance, debian

TRIXIE = debian.Suite("trixie", "http://mirror.example/debian")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
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


# --- the build recipe and key ----------------------------------------------------------

DEBIAN_STATIC = """#
# Automatically generated make config: don't edit
#
CONFIG_HAVE_DOT_CONFIG=y
CONFIG_STATIC=y
# CONFIG_FEATURE_DI_ENV_HACK is not set
CONFIG_ASH=y
"""


def test_config_edit_sets_the_hack_and_nothing_else() -> None:
    edited = conformance.busybox_config(DEBIAN_STATIC)
    assert edited == DEBIAN_STATIC.replace("# CONFIG_FEATURE_DI_ENV_HACK is not set", "CONFIG_FEATURE_DI_ENV_HACK=y")
    assert conformance.busybox_config(edited) == edited  # already set: unchanged
    assert conformance.busybox_config(DEBIAN_STATIC, {"CONFIG_STATIC": "n"}).count("CONFIG_STATIC=n\n") == 1


def test_config_edit_refuses_an_option_it_cannot_find_once() -> None:
    with pytest.raises(conformance.ConformanceImageError, match="CONFIG_FEATURE_DI_ENV_HACK 0 times"):
        conformance.busybox_config("CONFIG_ASH=y\n# CONFIG_FEATURE_DI_ENV_HACKS is not set\n")
    with pytest.raises(conformance.ConformanceImageError, match="2 times"):
        conformance.busybox_config(DEBIAN_STATIC + "CONFIG_FEATURE_DI_ENV_HACK=y\n")


def test_build_steps_follow_debian_rules() -> None:
    configure, compile_ = conformance.busybox_build_steps(Path("/s"), Path("/b"), "1:1.37.0-6")
    assert configure[:3] == ["sh", "-c", 'yes "" | exec "$@"'] and configure[-2:] == ["KBUILD_SRC=/s", "silentoldconfig"]
    assert compile_[:4] == ["make", "-C", "/b", "all"]
    assert "BB_EXTRA_VERSION=Debian 1:1.37.0-6, FEATURE_DI_ENV_HACK" in compile_
    assert f"CONFIG_EXTRA_CFLAGS={conformance.BUSYBOX_CFLAGS} -ffile-prefix-map=/s=." in compile_
    assert conformance.BUSYBOX_DEBIAN_CONFIG[-1] == "debian/config/pkg/static"


def test_busybox_key_covers_version_config_recipe_and_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    base = conformance.busybox_key("1:1.37.0-6", "gcc 12")
    assert base == conformance.busybox_key("1:1.37.0-6", "gcc 12")
    assert base != conformance.busybox_key("1:1.37.0-7", "gcc 12")
    assert base != conformance.busybox_key("1:1.37.0-6", "gcc 14")
    monkeypatch.setattr(conformance, "BUSYBOX_CONFIG_CHANGES", {"CONFIG_FEATURE_DI_ENV_HACK": "n"})
    assert base != conformance.busybox_key("1:1.37.0-6", "gcc 12")
    monkeypatch.undo()
    monkeypatch.setattr(conformance, "BUSYBOX_SOURCE", "busybox-other")
    assert base != conformance.busybox_key("1:1.37.0-6", "gcc 12")
    monkeypatch.undo()
    monkeypatch.setattr(conformance, "BUSYBOX_CFLAGS", "-O0")
    assert base != conformance.busybox_key("1:1.37.0-6", "gcc 12")
    monkeypatch.undo()
    monkeypatch.setattr(conformance, "BUSYBOX_RECIPE", "conformance-busybox-v0")
    assert base != conformance.busybox_key("1:1.37.0-6", "gcc 12")


def test_the_archive_key_follows_the_busybox_source_version(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {conformance.archive_key("go1", "gcc1", ["curl=1"], "deb x", conformance.busybox_key(version, "gcc1"))
            for version in ("1:1.37.0-6", "1:1.37.0-7")}
    assert len(keys) == 2
    assert not any(v.startswith("busybox-static=") for v in conformance.TOOLS_PACKAGES)


def test_busybox_comes_from_trixie_on_the_hosts_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "host_mirror", lambda host_suite: f"http://mirror-for-{host_suite}.example/debian")
    asked: list[tuple[debian.Suite, str]] = []

    def source_version(suite: debian.Suite, package: str, warn: object = None) -> str:
        asked.append((suite, package))
        return "1:9"

    monkeypatch.setattr(debian, "source_version", source_version)
    assert conformance.busybox_source_version() == "1:9"
    assert asked == [(debian.Suite("trixie", "http://mirror-for-bookworm.example/debian"), "busybox")]


# --- the build-time check -----------------------------------------------------------------


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
    conformance.check_env_passthrough(_fake_busybox(tmp_path, ".*"))


def test_a_shell_that_drops_invalid_names_fails_the_build(tmp_path: Path) -> None:
    with pytest.raises(conformance.ConformanceImageError, match=r"drops .*data-1.*CONFIG_FEATURE_DI_ENV_HACK"):
        conformance.check_env_passthrough(_fake_busybox(tmp_path, "[A-Za-z_][A-Za-z0-9_]*"))


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs Debian's busybox(-static)")
def test_debians_own_busybox_is_what_the_check_catches() -> None:
    """The host's Debian busybox was built without the option: the check must reject it."""
    with pytest.raises(conformance.ConformanceImageError, match="drops"):
        conformance.check_env_passthrough(Path("/bin/busybox"))
