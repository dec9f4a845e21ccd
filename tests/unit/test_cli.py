"""The smalltown CLI's argument handling and its errors when no cluster runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_smalltown.cli import build_parser, main


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(tmp_path / "cache"))


def test_subcommands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["dbg", "logs", "kube.kubelet", "--tail", "20", "-f"])
    assert (args.component, args.tail, args.follow) == ("kube.kubelet", 20, True)
    args = parser.parse_args(["dbg", "kubectl", "get", "pods", "-A"])
    assert args.kubectl_args == ["get", "pods", "-A"]
    assert parser.parse_args(["up", "--nodes", "3"]).nodes == 3


@pytest.mark.parametrize("command", [["status"], ["down"], ["dbg", "logs", "containerd"]])
def test_commands_needing_a_cluster_say_how_to_start_one(command: list[str]) -> None:
    with pytest.raises(SystemExit, match="no cluster is running \\(start one with: smalltown up\\)"):
        main(command)


@pytest.mark.parametrize("content", ['{"pid": 12', "[1, 2]", '{"ports": {}}'])
def test_a_corrupt_state_file_is_a_clear_error_not_a_traceback(content: str) -> None:
    from pytest_smalltown.cli import state_path

    state_path().parent.mkdir(parents=True)
    state_path().write_text(content)
    with pytest.raises(SystemExit, match="cluster state file .* start again with: smalltown up"):
        main(["status"])
    assert state_path().read_text() == content, "the file is evidence: left as it was"


def test_up_rejects_a_bad_node_count_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--nodes", "0"]) == 2
    assert "--nodes must be between 1 and 8" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_smalltown.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "dbg" in result.stdout and "up" in result.stdout


def test_conformance_running_needs_a_kept_cluster_with_the_conformance_images(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import os

    from pytest_smalltown.cli import state_path

    with pytest.raises(SystemExit, match="no cluster is running"):
        main(["conformance", "--running", "--smoke"])
    state_path().parent.mkdir(parents=True)
    state_path().write_text(json.dumps({"pid": os.getpid(), "nodes": 2, "preload": [], "kubeconfig": "/x"}))
    assert main(["conformance", "--running", "--smoke"]) == 2
    assert "smalltown up --preload conformance" in capsys.readouterr().err
    assert build_parser().parse_args(["up", "--preload", "conformance"]).preload == ["conformance"]


def test_conformance_boots_two_nodes_by_default() -> None:
    """The suite itself requires two schedulable nodes; one would fail a spec before anything else."""
    assert build_parser().parse_args(["conformance"]).nodes == 2
    assert build_parser().parse_args(["up"]).nodes == 1
