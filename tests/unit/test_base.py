"""The base layer: one error root, one way to find a program, one polling helper, and layers without cycles."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import time
from pathlib import Path

import pytest

import pytest_smalltown
from pytest_smalltown import cli
from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.programs import ProgramNotFoundError, find_program
from pytest_smalltown.base.waits import HopelessWaitError, WaitTimeoutError, wait_for
from pytest_smalltown.images.node import NODE_PYTHON

PACKAGE = Path(pytest_smalltown.__file__).parent

#: Errors that are BaseExceptions on purpose: they must get through every ``except Exception``.
DELIBERATE_BASE_EXCEPTIONS = {"pytest_smalltown.watch.ClusterDiedDuringTest", "pytest_smalltown.cli._Terminated"}


def _in_node_image(module: str) -> bool:
    """Whether ``module`` is code the node image copies (it runs in the guest and imports nothing of the host side)."""
    top = module.removeprefix("pytest_smalltown.").split(".")[0]
    return top in {name.removesuffix(".py") for name in NODE_PYTHON if name != "__init__.py"}


def _host_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages([str(PACKAGE)], "pytest_smalltown.")]
    return [name for name in names if not _in_node_image(name)]


def test_every_error_of_the_host_side_is_a_smalltown_error() -> None:
    """One root, so that the CLI and the plugin can tell our errors (one line) from bugs (a traceback)."""
    strays = []
    for name in _host_modules():
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name):
                continue
            qualified = f"{name}.{attribute}"
            if issubclass(value, Warning):  # a category for warnings.warn, never raised
                continue
            if qualified in DELIBERATE_BASE_EXCEPTIONS:
                assert not issubclass(value, Exception), f"{qualified} must stay a BaseException that is no Exception"
                continue
            if not issubclass(value, SmalltownError):
                strays.append(qualified)
    assert not strays, f"error classes without the SmalltownError root: {strays}"


def test_errors_keep_the_builtin_parents_callers_catch() -> None:
    from pytest_smalltown.images.tools import BuildError
    from pytest_smalltown.launch.ports import PortNotForwardedError
    from pytest_smalltown.launch.vm import LaunchError
    from pytest_smalltown.settings import SettingsError

    assert issubclass(BuildError, RuntimeError) and issubclass(LaunchError, RuntimeError)
    assert issubclass(SettingsError, ValueError) and issubclass(WaitTimeoutError, TimeoutError)
    assert issubclass(ProgramNotFoundError, RuntimeError)
    assert issubclass(PortNotForwardedError, KeyError)
    assert str(PortNotForwardedError(80, [6443])).startswith("guest port 80 is not forwarded")  # not KeyError's repr


def _imports(path: Path) -> set[str]:
    """Every module of ours ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_smalltown"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pytest_smalltown"))
    return found


def test_the_base_layer_imports_only_itself() -> None:
    for path in sorted((PACKAGE / "base").glob("*.py")):
        outside = {name for name in _imports(path) if not name.startswith("pytest_smalltown.base")}
        assert not outside, f"{path.name} imports {outside}: base/ is the bottom layer"


def test_images_do_not_import_the_launcher() -> None:
    for path in sorted((PACKAGE / "images").glob("*.py")):
        launcher = {name for name in _imports(path) if name.startswith("pytest_smalltown.launch")}
        assert not launcher, f"images/{path.name} imports {launcher}: what both use lives in base/"


# --- programs -------------------------------------------------------------------


def test_find_program_returns_the_path_of_an_installed_program() -> None:
    assert os.path.basename(find_program("sh", "scripts run in it", "dash")) == "sh"


def test_a_missing_program_says_what_it_is_for_and_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProgramNotFoundError) as caught:
        find_program("zstd", "a VM's saved state is compressed with it", "zstd")
    assert str(caught.value) == ("'zstd' is not installed; a VM's saved state is compressed with it "
                                 "(apt-get install zstd, or run scripts/setup-host)")


def test_a_missing_program_names_what_else_the_user_can_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProgramNotFoundError, match=r"\(apt-get install swtpm swtpm-tools, or run scripts/setup-host, "
                                                   r"or drop --smalltown-tpm\)$"):
        find_program("swtpm", "each node's TPM is emulated by it", "swtpm swtpm-tools",
                     otherwise="drop --smalltown-tpm")


def test_a_program_given_by_path_that_is_not_there_is_named_as_a_path(tmp_path: Path) -> None:
    (tmp_path / "qemu").write_text("not executable")
    for path in (tmp_path / "qemu", tmp_path / "nonexistent"):
        with pytest.raises(ProgramNotFoundError, match=f"^'{path}' is not an executable file; the VMs run in it"):
            find_program(str(path), "the VMs run in it", "qemu-system-x86")


# --- waits ----------------------------------------------------------------------


def test_a_hopeless_wait_ends_at_once() -> None:
    calls = []

    def check() -> None:
        calls.append(1)
        raise HopelessWaitError("the pod ended Failed")

    started = time.monotonic()
    with pytest.raises(HopelessWaitError):
        wait_for("the pod to succeed", check, timeout=30, interval=0.05)
    assert calls == [1] and time.monotonic() - started < 5


def test_a_fatal_error_ends_the_wait_and_others_mean_not_yet() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not up yet")
        raise LookupError("gone for good")

    with pytest.raises(LookupError):
        wait_for("a thing", check, timeout=30, interval=0.01, fatal=(LookupError,))
    assert len(calls) == 3


# --- the CLI's one place for our errors -------------------------------------------


def test_the_cli_prints_an_error_of_ours_as_one_line_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: object) -> int:
        raise ProgramNotFoundError("'qemu-system-x86_64' is not installed; the VMs run in it")

    monkeypatch.setattr(cli, "cmd_accel", fails)
    with pytest.raises(SystemExit) as exited:
        cli.main(["accel", "tcg"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "smalltown: 'qemu-system-x86_64' is not installed; the VMs run in it\n"


def test_the_cli_leaves_a_bug_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def breaks(args: object) -> int:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(cli, "cmd_accel", breaks)
    with pytest.raises(KeyError):
        cli.main(["accel", "tcg"])


def test_a_process_started_by_a_nice_session_is_as_nice_in_its_own_session() -> None:
    """Under sched_autogroup a new session ignores its parent's niceness unless it is passed on."""
    import subprocess
    import sys

    autogroup = Path("/proc/self/autogroup")
    assert autogroup.exists(), "this test needs a kernel with autogroups (Debian's have them)"
    script = (
        "import os, time\n"
        "from pytest_smalltown.base.processes import supervised_popen, stop_group\n"
        "niceness = os.nice(7)\n"
        "child = supervised_popen(['sleep', '30'])\n"
        "print(niceness, open(f'/proc/{child.pid}/autogroup').read().strip())\n"
        "stop_group(child)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    niceness, autogroup_line = result.stdout.split(" ", 1)
    assert int(niceness) >= 7 and autogroup_line.strip().endswith(f"nice {niceness}"), result.stdout
