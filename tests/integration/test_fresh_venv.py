"""The package in a fresh virtualenv builds the node image and boots a node, with nothing else installed.

The node image copies the host's versions of the agent's Python packages
(grpcio, protobuf, cryptography) into the guest; a package that only works
because the machine's Python happened to have one of them installed would
fail its users at the first image build. This installs the checkout the way
the README does, into an empty virtualenv (packages come from PyPI), then
builds the node image and runs a 1-node e2e module with that environment's
Python alone.

That module runs with ``--smalltown-snapshots=off`` and its own snapshot
directory, which doubles as the proof of that setting against a real VM:
the cluster boots cold and nothing is saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pytest_smalltown.snapshots import SNAPSHOT_DIR_ENV

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str | Path], timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_fresh_virtualenv_builds_the_node_image_and_boots_a_node(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    python = venv / "bin" / "python"
    assert "cryptography" not in run([python, "-m", "pip", "list"], timeout=60), "the virtualenv starts empty"
    run([python, "-m", "pip", "install", "-q", "-e", ROOT], timeout=900)

    built = run([venv / "bin" / "smalltown", "image", "build", "--only", "node"], timeout=3600)
    assert "node: ready" in built
    snapshot_dir = tmp_path / "snapshots"
    snapshot_dir.mkdir()
    # -P: nothing from the working directory on sys.path, only what the virtualenv has installed.
    tests = run([python, "-P", "-m", "pytest", "e2e/test_node.py", "-p", "no:cacheprovider", "-q",
                 "--smalltown-snapshots=off"], timeout=1800,
                env={**os.environ, SNAPSHOT_DIR_ENV: str(snapshot_dir)})  # fmt: skip
    assert " passed" in tests and "failed" not in tests, tests[-2000:]
    assert "1-node cluster: launched in" in tests and "booted (snapshots are off)" in tests, tests[-2000:]
    assert not list(snapshot_dir.iterdir()), "snapshots are off: nothing is saved"
