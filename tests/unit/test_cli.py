"""The smalltown CLI's argument handling and its errors when no cluster runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize(
    "command", [["status"], ["down"], ["dbg", "logs", "containerd"], ["reboot", "1"], ["freeze", "1"]]
)
def test_commands_needing_a_cluster_say_how_to_start_one(command: list[str]) -> None:
    with pytest.raises(SystemExit, match="no cluster is running \\(start one with: smalltown up\\)"):
        main(command)


@pytest.mark.parametrize("content", ['{"pid": 12', "[1, 2]", '{"ports": {}}'])
def test_a_corrupt_state_file_is_a_clear_error_not_a_traceback(content: str) -> None:
    from pytest_smalltown.kept import state_path

    state_path().parent.mkdir(parents=True)
    state_path().write_text(content)
    with pytest.raises(SystemExit, match="cluster state file .* start again with: smalltown up"):
        main(["status"])
    assert state_path().read_text() == content, "the file is evidence: left as it was"


def test_reboot_of_a_cluster_an_older_smalltown_kept_says_what_to_do() -> None:
    from pytest_smalltown.attached import AttachedCluster
    from pytest_smalltown.kept import KeptClusterError, KeptState

    # What a state file of an older smalltown records: no QMP sockets.
    state = KeptState.from_json({"pid": 1, "nodes": 2, "ports": {}, "kubeconfig": "/x"}, Path("cluster.json"))
    kept = AttachedCluster(state, debug=None, kube=None)
    with pytest.raises(KeptClusterError, match="no QMP sockets recorded.*smalltown down && smalltown up"):
        kept.reboot_node(1)
    with pytest.raises(KeptClusterError, match="no switch QMP socket recorded"):
        kept.forward_node_port(30080)
    with pytest.raises(KeptClusterError, match="no QMP sockets recorded"), kept.frozen(1):
        pass


def test_freeze_refuses_a_duration_that_is_no_stall_before_it_looks_for_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["freeze", "1", "--for", "0"]) == 2
    assert "--for must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_up_rejects_a_bad_node_count_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--nodes", "0"]) == 2
    assert "--nodes is out of range: a cluster has 1 to 8 nodes, got 0" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_smalltown.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "dbg" in result.stdout and "up" in result.stdout


def test_conformance_running_needs_a_kept_cluster_with_the_conformance_images(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import os

    from pytest_smalltown.kept import state_path

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


def _unused(*args: object) -> Any:
    raise AssertionError("LoadImage needs no kubeconfig or ticket")


class _Node:
    """A real DebugServicer whose importer records what it was given."""

    def __init__(self, spool: Path, fail: str = "") -> None:
        import grpc

        from pytest_smalltown.node.debug_service import Conditions, DebugServicer, ImageImportError, ImageLoader, serve
        from pytest_smalltown.node.logbuffer import LogRegistry

        self.received: list[bytes] = []

        def import_archive(path: Path) -> None:
            self.received.append(path.read_bytes())
            if fail:
                raise ImageImportError(fail)

        loader = ImageLoader(spool, lambda: None, import_archive)
        servicer = DebugServicer(LogRegistry(), Conditions(()), _unused, _unused,
                                 images=loader)  # fmt: skip
        self.server: grpc.Server
        self.server, self.port = serve(servicer, "127.0.0.1:0", max_workers=2)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[_Node]]:
    started = [_Node(tmp_path / "spool0"), _Node(tmp_path / "spool1", fail="ctr: unrecognized image format")]
    yield started
    for node in started:
        node.server.stop(0)


def _keep(nodes: list[_Node], per_node_ports: bool = True) -> None:
    import json
    import os

    from pytest_smalltown.kept import state_path

    ports = {"7837": nodes[0].port, "6443": 1}
    if per_node_ports:
        ports.update({str(27837 + i): node.port for i, node in enumerate(nodes)})
    state_path().parent.mkdir(parents=True)
    state_path().write_text(json.dumps({"pid": os.getpid(), "nodes": len(nodes), "ports": ports, "kubeconfig": "/x"}))


def test_dbg_loadimage_loads_into_every_node_and_names_the_ones_that_refuse(
    nodes: list[_Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"an image archive")
    _keep(nodes)
    assert main(["dbg", "loadimage", str(archive)]) == 1
    assert [node.received for node in nodes] == [[b"an image archive"]] * 2
    out, err = capsys.readouterr()
    assert f"node 0: loaded {archive}" in out
    assert f"node 1: the node did not load image archive {archive}: INVALID_ARGUMENT" in err
    assert "ctr: unrecognized image format" in err


def test_dbg_loadimage_to_one_node(nodes: list[_Node], tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"x")
    _keep(nodes)
    assert main(["dbg", "loadimage", str(archive), "--node", "0"]) == 0
    assert [len(node.received) for node in nodes] == [1, 0]
    with pytest.raises(SystemExit, match="--node 2: the running cluster has nodes 0..1"):
        main(["dbg", "loadimage", str(archive), "--node", "2"])


def test_dbg_loadimage_on_a_cluster_kept_before_per_node_ports(nodes: list[_Node], tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"x")
    _keep(nodes, per_node_ports=False)
    assert main(["dbg", "loadimage", str(archive), "--node", "0"]) == 0, "node 0 through the 7837 forward"
    with pytest.raises(SystemExit, match="forwards no debug port for node 1"):
        main(["dbg", "loadimage", str(archive)])


def test_dbg_loadimage_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dbg", "loadimage", str(tmp_path / "nope.tar")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cluster_commands_take_every_launch_setting_from_the_one_option_table() -> None:
    from pytest_smalltown.settings import OPTIONS

    parser = build_parser()
    launch = [o for o in OPTIONS if o.cluster]
    assert {o.name for o in launch} >= {"image", "accel", "node_memory", "node_cpus", "snapshots", "qemu", "tpm"}
    argv = ["up", "--nodes", "2"]
    for option in launch:
        argv += [option.cli_flag, f"value-of-{option.name}"]
    args = parser.parse_args(argv)
    assert all(getattr(args, o.name) == f"value-of-{o.name}" for o in launch)
    assert not hasattr(parser.parse_args(["up"]), "keep_namespace"), "session settings are pytest's only"


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--node-memory", "16", "at least 1024 MiB"),
    ("--accel", "fast", "must be one of auto, kvm, tcg"),
    ("--boot-timeout", "nan", "finite number"),
])  # fmt: skip
def test_a_bad_launch_setting_is_refused_before_anything_starts(
    flag: str, value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smalltown.kept import state_path

    with pytest.raises(SystemExit) as exited:
        main(["up", flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} (from {flag}) = '{value}' is invalid" in err and why in err
    assert not state_path().parent.exists(), "nothing was started or written"


def test_one_cluster_is_kept_at_a_time_even_when_two_are_started_side_by_side(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``up`` while another process holds the slot is refused before it starts anything."""
    import os

    from pytest_smalltown.kept import claim

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pytest_smalltown.kept import claim; "
         "print(claim() is not None, flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert claim() is None, "the slot is taken while its holder lives"
        started: list[Any] = []
        monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
        assert main(["up", "--nodes", "1"]) == 1
        assert "another cluster is being started or kept right now" in capsys.readouterr().err
        assert started == [], "nothing was started"
    finally:
        holder.kill()
        holder.wait()
    fd = claim()
    assert fd is not None, "the kernel freed the slot when its holder was killed"
    os.close(fd)


# --- down: the recorded owner, and only it ----------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that is not a cluster's owner (or stands in for one)."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    process.kill()
    process.wait()


def _record_owner(pid: int, owner: str | None) -> None:
    import json

    from pytest_smalltown.kept import state_path

    state = {"pid": pid, "nodes": 1, "ports": {"7837": 1, "6443": 2}, "kubeconfig": "/x"}
    if owner is not None:
        state["owner"] = owner
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps(state))


def test_down_stops_the_process_that_keeps_the_cluster(
    sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smalltown.kept import state_path
    from pytest_smalltown.kept import process_identity

    _record_owner(sleeper.pid, process_identity(sleeper.pid))
    assert main(["down"]) == 0  # a zombie has exited too: it needs no reaping to count as stopped
    assert "cluster stopped" in capsys.readouterr().out
    assert sleeper.wait(timeout=5) == -15
    assert state_path().exists(), "the owner removes its record as it stops (this stand-in does not)"


def test_down_leaves_a_process_that_got_the_dead_owners_pid_alone(sleeper: subprocess.Popen[bytes]) -> None:
    """The owner died and the kernel gave its pid to another process: that one is not the cluster."""
    from pytest_smalltown.kept import state_path
    from pytest_smalltown.kept import process_identity

    identity = process_identity(os.getpid())
    assert identity is not None
    boot, _ = identity.split("/")
    _record_owner(sleeper.pid, f"{boot}/1")  # the pid's owner started at another time
    with pytest.raises(SystemExit, match="the recorded cluster is gone"):
        main(["down"])
    assert sleeper.poll() is None, "not signalled"
    assert not state_path().exists(), "a stale record is removed"


def test_down_of_an_owner_recorded_without_its_start_time_signals_nothing(sleeper: subprocess.Popen[bytes]) -> None:
    """A state file of an older smalltown names a bare pid: down cannot tell it from a pid's next user."""
    _record_owner(sleeper.pid, None)
    with pytest.raises(SystemExit, match=f"cannot tell .* kill {sleeper.pid}"):
        main(["down"])
    assert sleeper.poll() is None


#: ``smalltown down`` as another user: imported as root, then run as nobody.
DOWN_AS_NOBODY = """
import os, sys
from pytest_smalltown.cli import main
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
sys.exit(main(["down"]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_down_of_another_users_cluster_is_a_clear_error(sleeper: subprocess.Popen[bytes]) -> None:
    """The state names a live owner that we may not signal: say whose it is, no PermissionError traceback."""
    import json
    import tempfile

    from pytest_smalltown.kept import process_identity

    cache = Path(tempfile.mkdtemp(prefix="smalltown-down-"))
    try:
        cache.chmod(0o755)  # nobody reads the state in it
        state = cache / "run" / "cluster.json"
        state.parent.mkdir(mode=0o755)
        owner = process_identity(sleeper.pid)
        state.write_text(json.dumps({"pid": sleeper.pid, "owner": owner, "nodes": 1, "ports": {}, "kubeconfig": "/x"}))
        state.chmod(0o644)
        down = subprocess.run([sys.executable, "-c", DOWN_AS_NOBODY], env={**os.environ, "SMALLTOWN_CACHE_DIR": str(cache)},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert down.returncode != 0 and "Traceback" not in down.stderr, down.stderr
    assert f"pid {sleeper.pid}, which keeps the cluster, belongs to another user (root)" in down.stderr
    assert sleeper.poll() is None


def test_conformance_resume_takes_its_specs_and_report_directory_from_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume DIR continues DIR's run: flags that would choose other specs or another directory are refused."""
    args = build_parser().parse_args(["conformance", "--resume", str(tmp_path)])
    assert (args.resume, args.procs) == (tmp_path, None), "--procs defaults to the resumed run's"
    for extra in (["--smoke"], ["--focus", "x"], ["--skip", "Slow"], ["--report-dir", str(tmp_path / "other")]):
        assert main(["conformance", "--resume", str(tmp_path), *extra]) == 2
        assert f"{extra[0]} cannot change them" in capsys.readouterr().err
    assert main(["conformance", "--resume", str(tmp_path), "--kubeconfig", "/x"]) == 2
    assert f"{tmp_path} holds no conformance run (run.json is missing)" in capsys.readouterr().err


def test_conformance_refuses_to_start_a_run_in_a_directory_that_holds_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run.json").write_text("{}")
    assert main(["conformance", "--report-dir", str(tmp_path), "--kubeconfig", "/x"]) == 2
    assert f"continue it with --resume {tmp_path}" in capsys.readouterr().err


def test_sigterm_in_smalltown_conformance_is_not_an_error_anything_may_catch() -> None:
    """Like KeyboardInterrupt: `except Exception` (tenacity's retries, the launch's phase wrapper) lets it through."""
    from pytest_smalltown.cli import _Terminated

    assert issubclass(_Terminated, BaseException) and not issubclass(_Terminated, Exception)


#: A stand-in for ``smalltown _serve``: says something, then records a cluster kept by itself (or fails).
FAKE_SERVER = """
import json, os, sys, time
from pytest_smalltown.kept import Owner, KeptState, process_identity
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.spec import ClusterSpec
print("booting the switch", flush=True)
if sys.argv[1] == "fail":
    sys.exit(3)
time.sleep(1.5)
pid = os.getpid()
KeptState(Owner(pid, process_identity(pid)), ClusterSpec(1), PortMap({7837: 4001, 6443: 4002}), "/x/kubeconfig").write()
time.sleep(60)
"""


@pytest.mark.parametrize("outcome", ["up", "fail"])
def test_up_shows_the_servers_log_until_the_cluster_is_recorded(
    outcome: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_smalltown import cli

    servers: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def serve(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        servers.append(real_popen([sys.executable, "-c", FAKE_SERVER, outcome], **kwargs))
        return servers[-1]

    monkeypatch.setattr(cli.subprocess, "Popen", serve)
    try:
        code = main(["up"])
    finally:
        for server in servers:
            server.kill()
            server.wait()
    out, err = capsys.readouterr()
    assert "booting the switch" in err
    if outcome == "up":
        assert code == 0 and f"cluster up (pid {servers[0].pid}), booted:" in out
        assert "https://127.0.0.1:4002" in out and "KUBECONFIG=/x/kubeconfig" in out
    else:
        assert code == 1 and "the cluster failed to start (exit 3)" in err


def _snapshot_dir(tmp_path: Path, complete: bool = True, files: dict[str, bytes] | None = None) -> Path:
    """A directory shaped like a saved cluster: files, a manifest listing them, and (``complete``) its mark."""
    import hashlib
    import json

    directory = tmp_path / "snapshot"
    directory.mkdir()
    files = {"node0.state.zst": b"state", "node0.qcow2": b"disk"} if files is None else files
    for name, data in files.items():
        (directory / name).write_bytes(data)
    listed = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}
    inputs = {"format": "2", "spec": "1-node"}
    (directory / "manifest.json").write_text(json.dumps({"inputs": inputs, "files": listed, "facts": {}}))
    if complete:
        (directory / ".complete").write_text("0\n")
    return directory


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "nowhere", "nowhere is not a directory; give the 'snapshot' directory a failed test left"),
    (lambda tmp: tmp, "is not a saved cluster: it has no manifest.json"),
    (lambda tmp: _snapshot_dir(tmp, complete=False), "snapshot is incomplete: its save did not finish"),
    (lambda tmp: (_snapshot_dir(tmp) / "node0.state.zst").unlink() or tmp / "snapshot",
     "snapshot is incomplete: node0.state.zst is missing or truncated"),
])  # fmt: skip
def test_up_from_a_bad_directory_says_what_is_wrong_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, message: str
) -> None:
    directory = make(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["up", "--from", str(directory)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("smalltown: ") and message in err, err
    from pytest_smalltown.kept import state_path

    assert not state_path().parent.joinpath("up.log").exists(), "no server was started"
