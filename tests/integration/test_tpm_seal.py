"""Sealing the data partition's key with tpm2-tools against real TPMs (swtpm on the host).

The node agent's :class:`~pytest_smalltown.node.datapart.Tpm` is the code that
runs in the node; here it talks to swtpm over TCP instead of /dev/tpmrm0.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_smalltown.node.datapart import DataUnavailableError, Tpm

TpmFactory = Callable[[str], Tpm]


def free_port_pair() -> int:
    """A port P with P and P+1 free (swtpm's command and control ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as control:
            try:
                control.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture
def tpms(tmp_path: Path) -> Iterator[TpmFactory]:
    """Start a swtpm per name (its state in ``tmp_path/<name>``) and hand out a Tpm speaking to it."""
    for tool in ("swtpm", "tpm2_createprimary"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run scripts/setup-host")
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> Tpm:
        state = tmp_path / name
        state.mkdir()
        port = free_port_pair()
        process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--flags", "not-need-init,startup-clear",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1", "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"swtpm did not start: {process.stderr.read() if process.stderr else ''!r}")
                time.sleep(0.05)
        work = tmp_path / f"{name}-work"
        work.mkdir()
        return Tpm(work, tcti=f"swtpm:host=127.0.0.1,port={port}")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_the_tpm_that_sealed_a_key_unseals_it(tpms: TpmFactory) -> None:
    tpm = tpms("node")
    key = os.urandom(64)
    public, private = tpm.seal(key)
    assert key not in public + private, "the sealed object does not carry the key in the clear"
    assert tpm.unseal(public, private) == key


def test_another_tpm_cannot_unseal_it_and_says_why(tpms: TpmFactory) -> None:
    public, private = tpms("sealer").seal(os.urandom(64))
    with pytest.raises(DataUnavailableError, match="sealed by another TPM"):
        tpms("stranger").unseal(public, private)
