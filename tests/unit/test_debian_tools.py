"""Running Debian's packaging tools: what a failure tells the user."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pytest_smalltown.cli import build_parser
from pytest_smalltown.images import debian


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_failing_package_tool_says_what_to_remove_and_names_only_real_commands(private_cache: Path) -> None:
    with pytest.raises(debian.PackageError) as caught:
        debian.run_package_tool(["false"], "unpacking x.deb")
    message = str(caught.value)
    assert str(private_cache) in message and "rm -rf" in message
    for command in re.findall(r"(?<![-\w])smalltown ([a-z]+(?: [a-z]+)?)", message):
        try:
            build_parser().parse_args(command.split())
        except (SystemExit, argparse.ArgumentError):
            pytest.fail(f"the message names `smalltown {command}`, which does not exist:\n{message}")
