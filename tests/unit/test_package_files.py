"""The scripts, C and configuration the images carry are checked as what they are.

They live as files in the package (not in Python strings) so that these
checks can read them: shellcheck for shell, the C compiler with warnings as
errors for C, a TOML parser for containerd's configuration.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from pytest_smalltown.images import node, oci
from pytest_smalltown.node import components
from pytest_smalltown.template import TemplateError, render

PACKAGE = Path(node.__file__).resolve().parents[1]
REPO = PACKAGE.parent
#: The package's scripts, and the repository's own (setup and CI) when this is a checkout.
SHELL_SCRIPTS = sorted(PACKAGE.rglob("*.sh")) + [p for p in (REPO / "scripts/setup-host", REPO / ".ci/run") if p.exists()]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"'{name}' is not installed; scripts/setup-host installs it (apt-get install {name})")
    return path


def test_every_package_script_is_found() -> None:
    names = {path.name for path in SHELL_SCRIPTS}
    assert {"node-init.sh", "smalltown-agent.sh", "tinyvm-init.sh", "udhcpc.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: str(path.relative_to(REPO)))
def test_shell_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run([_tool("shellcheck"), "--norc", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pause_compiles_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [_tool("gcc"), "-fsyntax-only", "-Wall", "-Wextra", "-Werror", '-DPAUSE_VERSION="test"', str(oci.PAUSE_SOURCE)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_containerd_template_is_toml_before_and_after_rendering() -> None:
    tomllib.loads(components.CONTAINERD_CONFIG.read_text())  # placeholders sit inside strings
    rendered = render(components.CONTAINERD_CONFIG, ROOT="/r", STATE="/s", SOCKET="/sock", PAUSE="pause:1",
                      CNI_BIN="/cni/bin", CNI_CONF="/cni/conf")
    assert tomllib.loads(rendered)["grpc"]["address"] == "/sock"
    assert "@" not in rendered


def test_render_refuses_a_missing_or_an_unused_value(tmp_path: Path) -> None:
    template = tmp_path / "t.sh"
    template.write_text('a="@A@" b="@B@"\n')
    assert render(template, A="1", B="2") == 'a="1" b="2"\n'
    with pytest.raises(TemplateError, match=r"without values: \['B'\]"):
        render(template, A="1")
    with pytest.raises(TemplateError, match=r"without placeholders: \['C'\]"):
        render(template, A="1", B="2", C="3")


def test_the_node_gets_its_scripts_and_templates() -> None:
    files = node.python_sources()
    assert "template.py" in files
    assert "node/files/udhcpc.sh" in files and "node/files/containerd.toml" in files
