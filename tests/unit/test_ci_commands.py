"""CI runs the README's commands, and nothing else: each of its commands is one the README gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pytest_smalltown

REPO = Path(pytest_smalltown.__file__).resolve().parents[1]


def readme_commands() -> set[str]:
    """Every line of the README's ``sh`` blocks, without its comment."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    return {line.split("  #")[0].strip() for block in blocks for line in block.splitlines()}


def ci_commands() -> list[str]:
    """The commands ``.ci/run`` runs (its lines that are neither comments nor its own setup)."""
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    own = ("set ", "cd ", "export ")
    return [line for line in lines if line and not line.startswith(("#", *own))]


@pytest.mark.skipif(not (REPO / ".ci/run").exists(), reason="no .ci/run in this checkout")
def test_ci_runs_the_commands_the_readme_gives() -> None:
    commands = ci_commands()
    assert any("--smalltown-snapshots=require" in command for command in commands), "the restored pass proves restores"
    missing = [command for command in commands if command not in readme_commands()]
    assert missing == [], "commands CI runs that the README does not give"
