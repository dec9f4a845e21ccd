"""launch/vm.py's checks that need no running VM."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pytest_smalltown.launch import vm
from pytest_smalltown.launch.qemu import DirectBoot, Disk, VMConfig


def test_swtpm_refuses_a_work_directory_with_a_comma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """swtpm splits ``--tpmstate dir=...`` at commas and has no escape: such a path is refused, never passed."""
    monkeypatch.setattr(vm, "Process", lambda *args, **kwargs: pytest.fail("swtpm was started"))
    workdir = tmp_path / "a,mode=0777"
    workdir.mkdir()
    with pytest.raises(vm.LaunchError, match="comma"):
        vm.start_swtpm(workdir)


#: A stand-in for QEMU: prints a console line and answers QMP on the harness's monitor socket (the second
#: -qmp), reporting the run state it is given, as QEMU 7.2 does for a VM it stopped on ENOSPC (werror=enospc).
FAKE_QEMU = r'''#!{python}
import json, os, socket, sys
status, overlay = {status!r}, {overlay!r}
sockets = [arg.split(",")[0].removeprefix("unix:") for i, arg in enumerate(sys.argv) if sys.argv[i - 1] == "-qmp"]
server = socket.socket(socket.AF_UNIX)
server.bind(sockets[-1])
server.listen(1)
print("console: booting", flush=True)
blocks = [{{"device": "pflash0", "io-status": "ok", "inserted": {{"file": "/fw/code.fd"}}}},
          {{"device": "disk0", "io-status": "nospace" if status == "io-error" else "ok", "inserted": {{
              "file": "json:" + json.dumps({{"driver": "qcow2", "file": {{"driver": "file", "filename": overlay}},
                                            "backing": {{"driver": "raw", "file": {{"driver": "file",
                                                                                  "filename": "/img/disk.raw"}}}}}})}}}}]
answers = {{"qmp_capabilities": {{}}, "query-status": {{"status": status, "running": status == "running"}},
           "query-block": blocks}}
while True:
    client, _ = server.accept()
    stream = client.makefile("rwb")
    stream.write(b'{{"QMP": {{"version": {{}}, "capabilities": []}}}}\n'); stream.flush()
    for line in stream:
        command = json.loads(line)["execute"]
        stream.write(b'{{"event": "STOP", "timestamp": {{"seconds": 0, "microseconds": 0}}}}\n')
        stream.write(json.dumps({{"return": answers[command]}}).encode() + b"\n"); stream.flush()
    client.close()
'''


def _fake_vm(tmp_path: Path, status: str) -> vm.VM:
    fake = tmp_path / "fake-qemu"
    overlay = tmp_path / "tmp" / "vl.ABC123"
    overlay.parent.mkdir()
    fake.write_text(FAKE_QEMU.format(python=sys.executable, status=status, overlay=str(overlay)))
    fake.chmod(0o755)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = VMConfig(name="node0", boot=DirectBoot(kernel), qemu=str(fake), disks=(Disk(kernel),),
                      qmp_socket=workdir / "node0.qmp")
    return vm.start_vm(config, workdir)


def _check_for(machine: vm.VM, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        machine.check_running()
        time.sleep(0.1)


def test_a_vm_that_qemu_stopped_on_a_full_disk_fails_its_liveness_check_at_once(tmp_path: Path) -> None:
    machine = _fake_vm(tmp_path, "io-error")
    try:
        machine.wait_for_console("console: booting", 10)
        started = time.monotonic()
        with pytest.raises(vm.DiskFullError) as caught:
            _check_for(machine, 5)
        assert time.monotonic() - started < 3
    finally:
        machine.stop(grace=0)
    message = str(caught.value)
    assert "disk0" in message and str(tmp_path / "tmp" / "vl.ABC123") in message
    assert "free" in message and "TMPDIR" in message and "console: booting" in message
    assert caught.value.device == "disk0" and caught.value.path == tmp_path / "tmp" / "vl.ABC123"


def test_a_running_vm_passes_its_liveness_check(tmp_path: Path) -> None:
    machine = _fake_vm(tmp_path, "running")
    try:
        machine.wait_for_console("console: booting", 10)
        _check_for(machine, 1.5)
    finally:
        machine.stop(grace=0)
