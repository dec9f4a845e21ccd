"""The pytest surface, driven through pytester with an in-process launcher double.

The double records every launch and close in a file, so the tests can check
exactly what the pool did; nothing here starts QEMU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

#: What every stand-in conftest starts with: a log of events the outer test reads back.
RECORDER = r"""
import json, os
from pathlib import Path
import pytest

EVENTS = Path(os.environ["SMALLTOWN_TEST_EVENTS"])

def record(*event):
    with EVENTS.open("a") as out:
        out.write(json.dumps(list(event)) + "\n")
"""

DOUBLE = RECORDER + r"""

class FakeCluster:
    def __init__(self, spec):
        self.spec = spec
        self.debug = f"debug-of-{spec.nodes}"
        self.kube = f"kube-of-{spec.nodes}"
        self.kubeconfig_path = Path("/nonexistent/kubeconfig")
        self.debug_token_path = Path("/nonexistent/debug-token")
        self.phase_seconds = {"switch": 0.5, "nodes": 1.5}
        self.how = "booted"
        self.ports = {7837: 1, 6443: 2}
        self.nodes = []
        self.switch_qmp_socket = None
        self.dead = False
    def kill_a_vm(self):
        self.dead = True
    def check_alive(self):
        if self.dead:
            raise RuntimeError("VM 'node0' exited with status 137; last console lines: kernel panic")
    def close(self):
        record("close", self.spec.nodes)

@pytest.fixture(scope="session")
def smalltown_launcher():
    def launch(spec):
        record("launch", spec.nodes)
        if os.environ.get("SMALLTOWN_TEST_FAIL") == str(spec.nodes):
            raise RuntimeError(f"boom: node 0 never became ready")
        if os.environ.get("SMALLTOWN_TEST_INTERRUPT") == str(spec.nodes):
            raise KeyboardInterrupt
        return FakeCluster(spec)
    return launch
"""


@pytest.fixture
def events(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    path = pytester.path / "events.jsonl"
    monkeypatch.setenv("SMALLTOWN_TEST_EVENTS", str(path))
    # The double starts no VM, so the host's node limit under TCG (max-nodes=auto) must not apply.
    monkeypatch.setenv("SMALLTOWN_ACCEL", "kvm")
    pytester.makeconftest(DOUBLE)

    def read() -> list[list]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    return read


def test_each_spec_launches_once_and_closes_when_no_longer_needed(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        r"""
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_a(smalltown_cluster, events_now):
            assert smalltown_cluster.spec.nodes == 1

        @pytest.mark.smalltown(nodes=2)
        def test_b(smalltown_cluster, kube, smalltown_debug):
            assert kube == "kube-of-2" and smalltown_debug == "debug-of-2"

        @pytest.mark.smalltown(nodes=1)
        def test_c(smalltown_cluster):
            assert smalltown_cluster.spec.nodes == 1

        def test_plain():
            pass

        @pytest.fixture
        def events_now():
            return None
        """
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    # Tests were regrouped: the cluster-free test first, then both 1-node tests, then the 2-node one.
    order = [line.split("::")[1].split()[0] for line in result.outlines if "PASSED" in line]
    assert order == ["test_plain", "test_a", "test_c", "test_b"]
    # Each spec launched exactly once; the 1-node cluster closed before the 2-node one started.
    assert events() == [["launch", 1], ["close", 1], ["launch", 2], ["close", 2]]
    result.stdout.fnmatch_lines(["*smalltown clusters*", "1-node cluster: launched in *, booted (switch 0.5s, nodes 1.5s)*"])


def test_unmarked_cluster_fixture_gets_one_node(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        def test_x(kube):
            assert kube == "kube-of-1"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert events() == [["launch", 1], ["close", 1]]


def test_failed_launch_is_remembered(pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLTOWN_TEST_FAIL", "2")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=2)
        def test_one(smalltown_cluster): pass

        @pytest.mark.smalltown(nodes=2)
        def test_two(smalltown_cluster): pass

        @pytest.mark.smalltown(nodes=1)
        def test_three(smalltown_cluster): pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    assert events() == [["launch", 2], ["launch", 1], ["close", 1]]
    result.stdout.fnmatch_lines(
        ["*RuntimeError: boom: node 0 never became ready*", "*failed earlier in this session: boom*"]
    )


@pytest.mark.parametrize(
    ("marker", "fragment"),
    [
        ("smalltown(nodes=0)", "nodes=0) is out of range"),
        ("smalltown(nodes='two')", "must be an integer, got 'two'"),
        ("smalltown(nodes=2.0)", "must be an integer"),
        ("smalltown(nodes=True)", "must be an integer"),
        ("smalltown(nodes=99)", "out of range"),
        ("smalltown(node=2)", "unknown keyword(s) node"),
        ("smalltown(2)", "keyword arguments only"),
        ("smalltown(preload='kitchen-sink')", "unknown image set(s) kitchen-sink; known: conformance"),
        ("smalltown(preload=3)", "takes a set name or a list of them"),
        ("smalltown(fresh='yes')", "smalltown(fresh=...) takes True or False, got 'yes'"),
        ("smalltown(fresh=1)", "smalltown(fresh=...) takes True or False, got 1"),
    ],
)
def test_bad_marker_is_a_usage_error_naming_the_test(pytester: pytest.Pytester, events, marker: str, fragment: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        def test_fine(smalltown_cluster): pass

        @pytest.mark.{marker}
        def test_broken(smalltown_cluster): pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_bad_marker_is_a_usage_error_naming_the_test.py::test_broken: *{fragment}*"])
    assert events() == [], "nothing may be launched when a marker is malformed"


def test_marker_is_registered_with_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.smalltown(nodes=1, preload=(), fresh=False): run this test against a "
                                 "Smalltown cluster*fresh=True the test gets a cluster of its own*"])  # fmt: skip


def test_strict_markers_accept_smalltown(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_x(smalltown_cluster): pass
        """
    )
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_bad_option_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--smalltown-accel=hvf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--smalltown-accel (from --smalltown-accel) = 'hvf' is invalid*"])


def test_option_sources_precedence_through_pytest(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nsmalltown_node_memory = 1024\nsmalltown_accel = kvm\n")
    monkeypatch.setenv("SMALLTOWN_ACCEL", "tcg")
    pytester.makepyfile(
        """
        def test_x(smalltown_settings):
            assert smalltown_settings.node_memory == 1024  # ini
            assert smalltown_settings.accel == "tcg"       # env beats ini
            assert smalltown_settings.node_cpus == 3       # command line
        """
    )
    pytester.runpytest("--smalltown-node-cpus=3").assert_outcomes(passed=1)


def test_cluster_closed_when_session_is_interrupted(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_a(smalltown_cluster):
            raise KeyboardInterrupt

        @pytest.mark.smalltown(nodes=1)
        def test_b(smalltown_cluster): pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert events() == [["launch", 1], ["close", 1]]


def test_ctrl_c_during_a_launch_ends_with_a_summary_not_a_traceback(
    pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMALLTOWN_TEST_INTERRUPT", "1")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_a(smalltown_cluster): pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*1-node cluster: FAILED to launch: KeyboardInterrupt*"])
    assert "IndexError" not in result.stdout.str() + result.stderr.str()


EVIDENCE_DOUBLE = r"""
from pathlib import Path
import pytest

class FakeDebug:
    def __init__(self, node="node0"):
        self.node = node
    def component_logs(self, component, tail=0, retry_for=None):
        return [f"{self.node} {component} line {i}" for i in range(3)]
    def close(self):
        pass

class EvidenceCluster:
    debug = FakeDebug()
    kube = None
    def __init__(self, spec):
        self.spec = spec
    def node_debug(self, index):
        if index == 2:
            raise ConnectionError("node 2 is powered off")
        return FakeDebug(f"node{index}")
    def consoles(self, lines=40):
        return {"node0": ["smalltown: [ 12.0] kubelet started"], "nanoswitch": ["nanoswitch: forwarding"]}
    def check_alive(self):
        pass
    def dump(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "node0.console.log").write_text("full console\n")
        return [directory / "node0.console.log"]
    def close(self):
        pass

@pytest.fixture(scope="session")
def smalltown_launcher():
    return EvidenceCluster
"""


def test_failed_test_report_carries_cluster_evidence_and_artifacts(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(EVIDENCE_DOUBLE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=3)
        def test_broken(smalltown_cluster):
            assert False, "pod never became Ready"

        @pytest.mark.smalltown(nodes=3)
        def test_fine(smalltown_cluster):
            pass
        """
    )
    artifacts = pytester.path / "dumps"
    result = pytester.runpytest(f"--smalltown-artifacts={artifacts}", "--smalltown-max-nodes=3")
    result.assert_outcomes(passed=1, failed=1)
    # Every node's kubelet, not only node 0's: the failing pod may be on any node.
    result.stdout.fnmatch_lines([
        "*smalltown console node0*", "*kubelet started*",
        "*smalltown kube.kubelet (node0, last 25)*", "*node0 kube.kubelet line 2*",
        "*smalltown kube.kubelet (node1, last 25)*", "*node1 kube.kubelet line 2*",
        "*smalltown kube.kubelet (node2, last 25)*", "*could not read: node 2 is powered off*",
        "*smalltown artifacts*",
    ])  # fmt: skip
    (run,) = artifacts.iterdir()  # one directory per run
    (dump,) = run.iterdir()
    assert "test_broken" in dump.name
    assert (dump / "consoles" / "node0.console.log").read_text() == "full console\n"
    components = dump / "components"
    assert (components / "node0" / "containerd.log").read_text().startswith("node0 containerd line 0")
    assert (components / "node1" / "kube.kubelet.log").read_text().startswith("node1 kube.kubelet line 0")
    assert (components / "node2" / "unreadable.txt").read_text() == "node 2 is powered off\n"
    assert "test_fine" not in " ".join(p.name for p in run.iterdir())


def test_two_sessions_at_once_keep_their_failure_dumps_apart(pytester: pytest.Pytester) -> None:
    """Two pytest processes running the same suite side by side: each run's dumps in a directory of its own."""
    pytester.makeconftest(EVIDENCE_DOUBLE)
    pytester.makepyfile(
        """
        import os, time
        from pathlib import Path

        def test_broken(smalltown_cluster):
            # Both sessions are inside their test at the same time before either fails.
            Path(f"started-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while len(list(Path(".").glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert False, f"broken in {os.getpid()}"
        """
    )
    artifacts = pytester.path / "dumps"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--smalltown-artifacts={artifacts}"]
    runs = [subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all("1 failed" in output for output in outputs), outputs
    dumps = sorted(artifacts.iterdir())
    assert len(dumps) == 2, f"one run directory per session: {dumps}"
    for run in runs:
        (mine,) = [d for d in dumps if d.name.endswith(f"-{run.pid}")]
        (dump,) = mine.iterdir()
        assert (dump / "consoles" / "node0.console.log").read_text() == "full console\n"


NAMESPACE_DOUBLE = DOUBLE + r"""
import pytest_smalltown.kube as kube_helpers

@pytest.fixture(autouse=True)
def fake_namespaces(monkeypatch):
    monkeypatch.setattr(kube_helpers, "create_namespace", lambda api, hint: record("create", hint) or f"ns-{hint}")
    monkeypatch.setattr(kube_helpers, "delete_namespace", lambda api, name: record("delete", name))
"""


@pytest.mark.parametrize("keep", [False, True])
def test_namespace_is_deleted_unless_kept_after_failure(
    pytester: pytest.Pytester, events, keep: bool  # type: ignore[no-untyped-def]
) -> None:
    pytester.makeconftest(NAMESPACE_DOUBLE)
    pytester.makepyfile(
        """
        def test_ok(smalltown_namespace):
            assert smalltown_namespace == "ns-test_ok"

        def test_bad(smalltown_namespace):
            assert False
        """
    )
    args = ["--smalltown-keep-namespace=true"] if keep else []
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1, failed=1)
    deletes = [e[1] for e in events() if e[0] == "delete"]
    assert deletes == (["ns-test_ok"] if keep else ["ns-test_ok", "ns-test_bad"])
    if keep:
        result.stdout.fnmatch_lines(["*kept namespace ns-test_bad for inspection*"])


def test_preload_is_part_of_the_cluster_identity() -> None:
    from pytest_smalltown.spec import ClusterSpec, request_from_marker

    plain = request_from_marker((), {"nodes": 2}).spec
    preloaded = request_from_marker((), {"nodes": 2, "preload": ["conformance", "conformance"]}).spec
    assert preloaded == request_from_marker((), {"nodes": 2, "preload": "conformance"}).spec == ClusterSpec(2, ("conformance",))
    assert plain != preloaded, "a cluster without the image set cannot serve a test that needs it"
    assert str(preloaded) == "2-node+conformance"


def test_progress_fixture_reaches_the_terminal_through_capture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_long_step(smalltown_progress):
            print("captured, not shown")
            smalltown_progress("step 3/22 done")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*[[]smalltown[]] step 3/22 done*"])
    assert "captured, not shown" not in result.stdout.str()


def test_a_cluster_that_died_fails_its_remaining_tests_at_once_and_the_next_spec_runs(
    pytester: pytest.Pytester, events
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_first(smalltown_cluster):
            smalltown_cluster.kill_a_vm()

        @pytest.mark.smalltown(nodes=1)
        def test_second(smalltown_cluster):
            pass

        @pytest.mark.smalltown(nodes=1)
        def test_third(smalltown_cluster):
            pass

        @pytest.mark.smalltown(nodes=2)
        def test_other_spec(smalltown_cluster):
            assert smalltown_cluster.spec.nodes == 2
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*died after its launch*status 137*kernel panic*"])
    # The dead cluster is closed once and never relaunched; the other spec launches normally.
    assert events() == [["launch", 1], ["close", 1], ["launch", 2], ["close", 2]]


SHARDED_SUITE = """
import pytest

@pytest.mark.smalltown(nodes=1)
@pytest.mark.parametrize("i", range(3))
def test_one(smalltown_cluster, i):
    pass

@pytest.mark.smalltown(nodes=2)
def test_two(smalltown_cluster):
    pass

@pytest.mark.smalltown(nodes=3)
def test_three(smalltown_cluster):
    pass

def test_plain():
    pass
"""


def test_shards_keep_whole_specs_balance_by_recorded_durations_and_cover_every_test(
    pytester: pytest.Pytester, events
) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    durations = pytester.path / "durations.json"
    ran: dict[int, set[str]] = {}
    launched: dict[int, list[int]] = {}
    for index in (1, 2):
        # Every CI job starts from the same committed file (each run then updates its own copy).
        durations.write_text(json.dumps({"version": 1, "groups": {"1-node": 100, "2-node": 500, "3-node": 450}}))
        before = len(events())
        result = pytester.runpytest("-v", f"--smalltown-shard={index}/2", f"--smalltown-durations={durations}")
        assert result.ret == pytest.ExitCode.OK
        ran[index] = {line.split("::")[1].split(" ")[0] for line in result.outlines if " PASSED" in line}
        launched[index] = [nodes for what, nodes in events()[before:] if what == "launch"]
        result.stdout.fnmatch_lines([f"smalltown shard {index}/2: *by recorded durations*"])
    # Heaviest first onto the lightest shard: 2-node (500) -> 1; 3-node (450) -> 2; 1-node (100) -> 2
    # (450 < 500); the quick plain test -> 1 (500 < 550).
    assert ran[1] == {"test_two", "test_plain"}
    assert ran[2] == {"test_three", "test_one[0]", "test_one[1]", "test_one[2]"}
    assert sorted(launched[1]) == [2] and sorted(launched[2]) == [1, 3]


def test_durations_are_recorded_per_spec_and_merged(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    durations = pytester.path / "durations.json"
    durations.write_text(json.dumps({"version": 1, "groups": {"5-node": 999.0}}))
    pytester.runpytest(f"--smalltown-durations={durations}").assert_outcomes(passed=6)
    groups = json.loads(durations.read_text())["groups"]
    assert set(groups) == {"1-node", "2-node", "3-node", "no-cluster", "5-node"}
    assert groups["5-node"] == 999.0 and all(seconds >= 0 for seconds in groups.values())


def test_max_nodes_deselects_bigger_clusters_and_launches_only_what_fits(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    result = pytester.runpytest("-v", "--smalltown-max-nodes=1")
    result.assert_outcomes(passed=4, deselected=2)
    ran = {line.split("::")[1].split(" ")[0] for line in result.outlines if " PASSED" in line}
    assert ran == {"test_plain", "test_one[0]", "test_one[1]", "test_one[2]"}, "tests without a cluster stay"
    assert [nodes for what, nodes in events() if what == "launch"] == [1]


def test_auto_max_nodes_deselects_what_a_small_tcg_host_cannot_carry(
    pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    monkeypatch.setenv("SMALLTOWN_ACCEL", "tcg")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=5, deselected=1)
    result.stdout.fnmatch_lines(["smalltown: tests of clusters over 2 nodes deselected: under TCG this 2-core host*"
                                 "--smalltown-max-nodes=3 runs them anyway"])  # fmt: skip
    assert sorted(nodes for what, nodes in events() if what == "launch") == [1, 2]
    events_before = len(events())
    pytester.runpytest("--smalltown-max-nodes=3").assert_outcomes(passed=6)
    assert sorted(nodes for what, nodes in events()[events_before:] if what == "launch") == [1, 2, 3]


def test_auto_max_nodes_leaves_kvm_hosts_alone(pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    result = pytester.runpytest()
    result.assert_outcomes(passed=6)
    assert "deselected" not in result.stdout.str()


@pytest.mark.parametrize("value", ["0", "9", "one"])
def test_a_bad_max_nodes_is_a_usage_error(pytester: pytest.Pytester, events, value: str) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    result = pytester.runpytest(f"--smalltown-max-nodes={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--smalltown-max-nodes*is invalid*"])
    assert events() == []


@pytest.mark.parametrize("shard", ["3/2", "0/2", "two", "1/0"])
def test_a_bad_shard_is_a_usage_error(pytester: pytest.Pytester, events, shard: str) -> None:
    pytester.makepyfile(SHARDED_SUITE)
    result = pytester.runpytest(f"--smalltown-shard={shard}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--smalltown-shard*is invalid*"])
    assert events() == []


def test_xdist_runs_each_spec_on_one_worker_launches_it_once_and_merges_the_summary(
    pytester: pytest.Pytester, events
) -> None:
    pytest.importorskip("xdist")  # a dev dependency: installed by setup-host with the package
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.smalltown(nodes=1)
        @pytest.mark.parametrize("i", range(4))
        def test_one(smalltown_cluster, i):
            print("RAN", os.environ["PYTEST_XDIST_WORKER"], smalltown_cluster.spec.nodes)

        @pytest.mark.smalltown(nodes=2)
        @pytest.mark.parametrize("i", range(4))
        def test_two(smalltown_cluster, i):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-v")
    result.assert_outcomes(passed=9)
    launches = [nodes for what, nodes in events() if what == "launch"]
    assert sorted(launches) == [1, 2], "each spec's cluster is launched exactly once across the workers"
    # Each spec's tests ran on a single worker (its group), and the controller shows both workers' clusters.
    workers_by_spec: dict[str, set[str]] = {}
    for line in result.outlines:
        if "PASSED" in line and ("test_one" in line or "test_two" in line):
            worker = line.split("]")[0].split("[")[-1]
            workers_by_spec.setdefault("one" if "test_one" in line else "two", set()).add(worker)
    assert all(len(workers) == 1 for workers in workers_by_spec.values()), workers_by_spec
    result.stdout.fnmatch_lines_random(["[[]gw?[]] 1-node cluster: launched in *", "[[]gw?[]] 2-node cluster: launched in *"])


def test_auto_workers_follow_the_node_budget_not_the_core_count() -> None:
    from pytest_smalltown.parallel import auto_workers

    assert auto_workers(2, 2048, cpus=2, memory_mib=24 * 1024) == 1  # this kind of machine
    assert auto_workers(2, 2048, cpus=16, memory_mib=24 * 1024) == 8
    assert auto_workers(2, 2048, cpus=64, memory_mib=16 * 1024) == 6  # memory-bound
    assert auto_workers(4, 2048, cpus=2, memory_mib=4096) == 1  # never zero


@pytest.mark.parametrize(("broken", "fine", "before_down", "kept"), [
    # A shared cluster's failure keeps it; the other spec's closes as usual.
    ("nodes=1", "nodes=2", [["launch", 1], ["launch", 2], ["close", 2]], "the 1-node cluster"),
    # A fresh test's failure keeps its own cluster, not the shared one of its spec.
    ("nodes=1, fresh=True", "nodes=1", [["launch", 1], ["launch", 1], ["close", 1]],
     "the 1-node (fresh, of test_keep.py::test_broken) cluster"),
])  # fmt: skip
def test_keep_on_failure_keeps_the_failed_tests_cluster_until_smalltown_down(
    tmp_path: Path, broken: str, fine: str, before_down: list[list[object]], kept: str
) -> None:
    import os
    import subprocess
    import sys
    import threading
    import time

    (tmp_path / "conftest.py").write_text(DOUBLE)
    (tmp_path / "test_keep.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.smalltown({broken})\ndef test_broken(smalltown_cluster):\n    assert False\n\n"
        f"@pytest.mark.smalltown({fine})\ndef test_fine(smalltown_cluster):\n    pass\n"
    )
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "SMALLTOWN_TEST_EVENTS": str(events), "SMALLTOWN_CACHE_DIR": str(tmp_path / "cache")}
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "--smalltown-keep-on-failure"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        state = tmp_path / "cache" / "run" / "cluster.json"
        deadline = time.monotonic() + 60
        while not state.exists() and session.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.exists(), session.communicate(timeout=10)[0] if session.poll() is not None else "no state"
        assert json.loads(state.read_text())["pid"] == session.pid and json.loads(state.read_text())["nodes"] == 1
        read = lambda: [json.loads(line) for line in events.read_text().splitlines()]  # noqa: E731
        assert read() == before_down, "the passing test's cluster closes as usual"
        status = subprocess.run([sys.executable, "-m", "pytest_smalltown.cli", "status"], env=env,
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert status.returncode == 0 and '"nodes": 1' in status.stdout, status.stderr
        # Reap the session as it exits, as the shell that started it would (down polls for the pid).
        outputs: list[str] = []
        reaper = threading.Thread(target=lambda: outputs.append(session.communicate(timeout=90)[0]))
        reaper.start()
        down = subprocess.run([sys.executable, "-m", "pytest_smalltown.cli", "down"], env=env,
                              capture_output=True, text=True, timeout=90)  # fmt: skip
        reaper.join(timeout=90)
        assert down.returncode == 0 and "cluster stopped" in down.stdout, down.stdout + down.stderr
        output = outputs[0]
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert session.returncode == 1, output
    assert f"kept {kept} after a failure" in output and "smalltown down" in output
    assert read()[-1] == ["close", 1] and not state.exists()


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_attach_uses_the_kept_cluster_of_the_same_spec_and_tears_nothing_down(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    cache = pytester.path / "cache"
    (cache / "run").mkdir(parents=True)
    kubeconfig = pytester.path / "kept.kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    state = {"pid": os.getpid(), "nodes": 2, "preload": [], "ports": {"7837": 1, "6443": 2},
             "kubeconfig": str(kubeconfig), "consoles": {}, "phases": {}}  # fmt: skip
    (cache / "run" / "cluster.json").write_text(json.dumps(state))
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(cache))
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_smalltown.attached import AttachedCluster

        @pytest.mark.smalltown(nodes=2)
        def test_on_the_kept_cluster(smalltown_cluster, kubeconfig):
            assert isinstance(smalltown_cluster, AttachedCluster)
            assert str(kubeconfig) == {str(kubeconfig)!r}

        @pytest.mark.smalltown(nodes=1)
        def test_needs_another_spec(smalltown_cluster):
            pass
        """
    )
    result = pytester.runpytest("--smalltown-attach", "-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the kept cluster is 2-node, but these tests need 1-node*smalltown up --nodes 1*"])
    assert (cache / "run" / "cluster.json").exists(), "attaching leaves the kept cluster and its record alone"


def test_report_header_and_junit_properties(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=2)
        @pytest.mark.parametrize("i", range(2))
        def test_two(smalltown_cluster, i):
            pass
        """
    )
    result = pytester.runpytest("--junitxml=report.xml", "--smalltown-accel=tcg")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["smalltown: image reference, accelerator tcg (chosen), cache *"])
    junit = (pytester.path / "report.xml").read_text()
    assert junit.count('name="smalltown_spec" value="2-node"') == 2
    assert junit.count('name="smalltown_launch_seconds"') == 1, "only the test that booted the cluster"
    assert 'name="smalltown_phase_switch" value="0.5"' in junit


def test_short_fixture_names_are_aliases_of_the_prefixed_ones(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        r"""
        def test_names(smalltown_kube, kube, smalltown_kubeconfig, kubeconfig):
            assert kube is smalltown_kube == "kube-of-1"
            assert kubeconfig is smalltown_kubeconfig
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_with_kubetest_installed_its_fixture_names_stay_its_own(pytester: pytest.Pytester, events) -> None:
    # A stand-in registered under kubetest's plugin name, defining its `kube` fixture.
    pytester.makepyfile(kubetest="import pytest\n\n@pytest.fixture\ndef kube():\n    return 'kubetest-kube'\n")
    pytester.makepyfile(
        test_both=r"""
        def test_both(kube, smalltown_kube):
            assert kube == "kubetest-kube" and smalltown_kube == "kube-of-1"
        """
    )
    pytester.syspathinsert()
    pytester.runpytest("-p", "kubetest", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_cluster_that_dies_during_a_test_fails_that_test_at_once(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        r"""
        import time
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_dies(smalltown_cluster):
            smalltown_cluster.kill_a_vm()
            time.sleep(120)  # a client waiting for a node that is gone

        @pytest.mark.smalltown(nodes=1)
        def test_after(smalltown_cluster):
            pass

        def test_unrelated():
            time.sleep(1.5)  # no stray interrupt once the watched test is over
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    # Without the watch the sleep would end and the test pass; the next test of the spec does not wait either.
    result.stdout.fnmatch_lines(["*ClusterDiedDuringTest: the cluster died while this test ran: VM 'node0' exited "
                                 "with status 137*"])  # fmt: skip
    result.stdout.fnmatch_lines(["*ClusterDied: the 1-node cluster died after its launch*"])


def test_a_cluster_that_dies_while_a_test_waits_fails_the_wait_at_once(pytester: pytest.Pytester, events) -> None:
    """wait_for counts an Exception from its check as "not yet"; the death of the cluster must not be one."""
    pytester.makepyfile(
        r"""
        import time
        import pytest
        from pytest_smalltown.base.waits import wait_for

        @pytest.mark.smalltown(nodes=1)
        def test_waits(smalltown_cluster):
            smalltown_cluster.kill_a_vm()
            # The check is where the wait spends its time, so that is where the watch's interrupt lands.
            wait_for("a node that is gone", lambda: time.sleep(0.5), timeout=20, interval=0.01)
        """
    )
    started = time.monotonic()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ClusterDiedDuringTest: the cluster died while this test ran*"])
    assert time.monotonic() - started < 10, "the test failed at once, not at the wait's timeout"


def test_collect_only_never_starts_a_vm(pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-nodes=auto needs the accelerator; --co must not boot the KVM probe to learn it (nor build its image)."""
    from pytest_smalltown.launch.accel import ProbeResult, _host_fingerprint

    pytester.makepyfile(SHARDED_SUITE)
    monkeypatch.delenv("SMALLTOWN_ACCEL")  # auto: proving KVM boots a VM
    monkeypatch.setenv("SMALLTOWN_CACHE_DIR", str(pytester.path / "cache"))  # no verdict cached yet
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    probes: list[object] = []

    def probe(qemu: str) -> ProbeResult:
        probes.append(qemu)
        return ProbeResult("tcg", "tiny VM did not reach init under KVM", 1.0, _host_fingerprint(qemu))

    monkeypatch.setattr("pytest_smalltown.launch.accel.probe_kvm", probe)
    result = pytester.runpytest("--co", "-q")
    assert result.ret == pytest.ExitCode.OK and probes == [], "no VM started to collect"
    result.stdout.fnmatch_lines(["smalltown: --collect-only starts no VM, so the accelerator is not probed; "
                                 "a run may deselect clusters over 1 node*"])  # fmt: skip
    assert "6 tests collected" in result.stdout.str()
    pytester.runpytest("-q").assert_outcomes(passed=4, deselected=2)  # a run probes, once per host
    assert len(probes) == 1
    collected = pytester.runpytest("--co", "-q")
    assert "4/6 tests collected (2 deselected)" in collected.stdout.str(), "with a verdict known, --co shows the run"
    assert len(probes) == 1


def test_each_feature_is_a_plugin_object_registered_by_name(pytester: pytest.Pytester, events) -> None:
    """As pytest registers its own (terminalreporter, cacheprovider): one object per feature, optional ones only when asked."""
    pytester.makepyfile(
        """
        def test_names(pytestconfig):
            manager = pytestconfig.pluginmanager
            names = {name for name, _ in manager.list_name_plugin() if name and name.startswith("smalltown-")}
            assert names == {"smalltown-aliases", "smalltown-specs", "smalltown-capacity", "smalltown-durations", "smalltown-xdist",
                             "smalltown-clusters", "smalltown-evidence", "smalltown-shard",
                             "smalltown-keep-on-failure"}, names
        """
    )
    pytester.runpytest("--smalltown-shard=1/1", "--smalltown-keep-on-failure").assert_outcomes(passed=1)
    pytester.makepyfile(
        """
        def test_names(pytestconfig):
            manager = pytestconfig.pluginmanager
            assert manager.get_plugin("smalltown-shard") is None
            assert manager.get_plugin("smalltown-keep-on-failure") is None, "attach never keeps"
        """
    )
    pytester.runpytest("--smalltown-keep-on-failure", "--smalltown-attach").assert_outcomes(passed=1)


# --- fresh=True: a cluster of the test's own ------------------------------------

FRESH_SUITE = r"""
import pytest
from conftest import record

@pytest.fixture
def seen(request, smalltown_cluster):
    # Which cluster object each test got, and when its own teardown ran (before the cluster's close).
    record("test", request.node.name, id(smalltown_cluster))
    yield
    record("teardown", request.node.name)

@pytest.mark.smalltown(nodes=1)
def test_shared_a(seen):
    pass

@pytest.mark.smalltown(nodes=1, fresh=True)
def test_fresh_b(seen):
    pass

@pytest.mark.smalltown(nodes=1)
def test_shared_c(seen):
    pass

@pytest.mark.smalltown(nodes=1, fresh=True)
def test_fresh_d(seen):
    pass
"""


def test_fresh_tests_get_a_cluster_each_closed_after_their_teardown_and_shared_tests_still_share(
    pytester: pytest.Pytester, events
) -> None:
    pytester.makepyfile(FRESH_SUITE)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    got = events()
    # The shared tests run first, together (first appearance); the fresh ones after, each on a cluster launched
    # for it and closed once its teardown is over. The fresh tests are no use of the shared cluster: it closes
    # after test_shared_c, before the first fresh launch, so two clusters never run at once.
    assert [e[:2] for e in got] == [
        ["launch", 1], ["test", "test_shared_a"], ["teardown", "test_shared_a"],
        ["test", "test_shared_c"], ["teardown", "test_shared_c"], ["close", 1],
        ["launch", 1], ["test", "test_fresh_b"], ["teardown", "test_fresh_b"], ["close", 1],
        ["launch", 1], ["test", "test_fresh_d"], ["teardown", "test_fresh_d"], ["close", 1],
    ]  # fmt: skip
    cluster = {e[1]: e[2] for e in got if e[0] == "test"}
    assert cluster["test_shared_a"] == cluster["test_shared_c"]
    assert len({cluster["test_shared_a"], cluster["test_fresh_b"], cluster["test_fresh_d"]}) == 3
    result.stdout.fnmatch_lines([
        "*smalltown clusters*",
        "1-node cluster: launched in *, booted (switch 0.5s, nodes 1.5s), closed in *",
        "1-node fresh cluster of *::test_fresh_b: launched in *, booted *, closed in *",
        "1-node fresh cluster of *::test_fresh_d: launched in *, booted *, closed in *",
    ])  # fmt: skip


def test_a_module_asks_for_fresh_clusters_once_with_pytestmark(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.smalltown(nodes=2, fresh=True)

        def test_one(smalltown_cluster):
            assert smalltown_cluster.spec.nodes == 2

        def test_two(smalltown_kube):
            assert smalltown_kube == "kube-of-2"
        """
    )
    result = pytester.runpytest("--junitxml=report.xml")
    result.assert_outcomes(passed=2)
    assert events() == [["launch", 2], ["close", 2], ["launch", 2], ["close", 2]]
    junit = (pytester.path / "report.xml").read_text()
    assert junit.count('name="smalltown_launch_seconds"') == 2, "each fresh test launched its own cluster"


def test_fresh_tests_are_no_use_of_the_shared_pool() -> None:
    from pytest_smalltown.pool import ClusterPool
    from pytest_smalltown.spec import ClusterSpec

    closed: list[str] = []

    class Handle:
        def __init__(self, name: str) -> None:
            self.name = name

        def check_alive(self) -> None:
            pass

        def close(self) -> None:
            closed.append(self.name)

    names = iter(["shared", "own"])
    launch = lambda spec: Handle(next(names))  # noqa: E731
    pool, spec = ClusterPool(), ClusterSpec(1)
    pool.plan([spec])
    shared = pool.acquire(spec, launch)
    pool.release(spec)
    assert closed == ["shared"], "its one planned use is over, whatever fresh tests of the spec follow"
    own = pool.launch_own(spec, launch, "test_x")
    assert own is not shared and pool.live(spec) is None, "a test's own cluster is never the spec's shared one"
    pool.close_own(own)
    assert closed == ["shared", "own"]


def test_attach_with_a_fresh_test_is_a_usage_error_at_collection(pytester: pytest.Pytester, events) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_shared(smalltown_cluster): pass

        @pytest.mark.smalltown(nodes=1, fresh=True)
        def test_fresh(smalltown_cluster): pass
        """
    )
    result = pytester.runpytest("--smalltown-attach")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*::test_fresh: smalltown(fresh=True) needs a cluster of its own, but "
                                 "--smalltown-attach runs every test on the kept cluster*run fresh tests without "
                                 "--smalltown-attach, or leave them out*"])  # fmt: skip
    assert events() == [], "nothing starts"
    pytester.runpytest("--smalltown-attach", "-k", "not fresh", "--co").assert_outcomes()  # leaving them out works


def test_a_fresh_cluster_that_dies_during_its_test_fails_it_at_once_and_spares_the_spec(
    pytester: pytest.Pytester, events
) -> None:
    pytester.makepyfile(
        r"""
        import time
        import pytest

        @pytest.mark.smalltown(nodes=1, fresh=True)
        def test_dies(smalltown_cluster):
            smalltown_cluster.kill_a_vm()
            time.sleep(120)  # a client waiting for a node that is gone

        @pytest.mark.smalltown(nodes=1, fresh=True)
        def test_next_fresh(smalltown_cluster):
            pass

        @pytest.mark.smalltown(nodes=1)
        def test_shared(smalltown_cluster):
            pass
        """
    )
    started = time.monotonic()
    result = pytester.runpytest("-p", "no:cacheprovider")
    # The watch sees the test's own cluster (there is no shared one running to watch).
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ClusterDiedDuringTest: the cluster died while this test ran: VM 'node0' exited*"])
    assert time.monotonic() - started < 60
    assert events() == [["launch", 1], ["close", 1]] * 3, "the dead cluster was the test's alone"


def test_a_failed_fresh_test_report_carries_its_own_clusters_evidence(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(EVIDENCE_DOUBLE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1, fresh=True)
        def test_broken(smalltown_cluster):
            assert False, "pod never became Ready"
        """
    )
    artifacts = pytester.path / "dumps"
    result = pytester.runpytest(f"--smalltown-artifacts={artifacts}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*smalltown console node0*", "*kubelet started*", "*smalltown artifacts*"])
    (run,) = artifacts.iterdir()
    (dump,) = run.iterdir()
    assert (dump / "consoles" / "node0.console.log").read_text() == "full console\n"


def test_xdist_runs_fresh_clusters_of_one_spec_side_by_side(pytester: pytest.Pytester, events) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import os, time
        from pathlib import Path
        import pytest

        @pytest.mark.smalltown(nodes=1, fresh=True)
        @pytest.mark.parametrize("i", range(2))
        def test_fresh(smalltown_cluster, i):
            # Both tests are inside their own cluster's test at the same time, on two workers.
            Path(f"started-{i}-{os.environ['PYTEST_XDIST_WORKER']}").touch()
            deadline = time.monotonic() + 30
            while len(list(Path(".").glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(list(Path(".").glob("started-*"))) == 2, "the other fresh test did not run meanwhile"
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert {p.name.split("-")[-1] for p in pytester.path.glob("started-*")} == {"gw0", "gw1"}
    assert sorted(events()) == [["close", 1], ["close", 1], ["launch", 1], ["launch", 1]]


SAVING_DOUBLE = RECORDER + r"""
from pytest_smalltown.snapshots import SavedSnapshot

class SavingCluster:
    def __init__(self, spec):
        self.spec = spec
    def save_snapshot(self, directory):
        directory.mkdir(parents=True)
        record("save", str(directory))
        return SavedSnapshot(directory, 300 * 2**20, 12.5)
    def check_alive(self):
        pass
    def close(self):
        record("close")

@pytest.fixture(scope="session")
def smalltown_launcher():
    return SavingCluster

@pytest.fixture
def torn_down(request):
    yield
    record("teardown", request.node.name)
"""


def test_snapshot_on_failure_is_a_setting_of_every_source(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        """
        import os

        def test_x(smalltown_settings):
            assert smalltown_settings.snapshot_on_failure is (os.environ["EXPECT"] == "on")
        """
    )
    monkeypatch.setenv("EXPECT", "off")
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECT", "on")
    pytester.runpytest("--smalltown-snapshot-on-failure").assert_outcomes(passed=1)  # a bare flag
    monkeypatch.setenv("SMALLTOWN_SNAPSHOT_ON_FAILURE", "yes")
    pytester.runpytest().assert_outcomes(passed=1)
    result = pytester.runpytest("--smalltown-snapshot-on-failure=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--smalltown-snapshot-on-failure (from --smalltown-snapshot-on-failure) = 'maybe' is invalid*"])


def test_a_failed_tests_cluster_is_saved_into_its_artifacts_before_teardown(
    pytester: pytest.Pytester, events, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(SAVING_DOUBLE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.smalltown(nodes=1)
        def test_broken(smalltown_cluster, torn_down):
            assert False, "pod never became Ready"

        @pytest.mark.smalltown(nodes=1)
        def test_fine(smalltown_cluster, torn_down):
            pass

        @pytest.fixture
        def broken_setup(smalltown_cluster):
            raise RuntimeError("no namespace")

        @pytest.mark.smalltown(nodes=1)
        def test_broken_setup(broken_setup):
            pass
        """
    )
    artifacts = pytester.path / "dumps"
    result = pytester.runpytest(f"--smalltown-artifacts={artifacts}", "--smalltown-snapshot-on-failure", "-p",
                                "no:randomly")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    (run,) = artifacts.iterdir()
    broken = run / "test_a_failed_tests_cluster_is_saved_into_its_artifacts_before_teardown.py_test_broken" / "snapshot"
    setup = broken.parent.with_name(broken.parent.name + "_setup") / "snapshot"
    # Saved while the test's fixtures still stood, and the cluster ran on for the next tests; nothing for the pass.
    assert events() == [["save", str(broken)], ["teardown", "test_broken"], ["teardown", "test_fine"],
                        ["save", str(setup)], ["close"]]  # fmt: skip
    result.stdout.fnmatch_lines([f"*smalltown snapshot*", f"{broken} (300 MiB, saved in 12.5s); restore it with: "
                                 f"smalltown up --from {broken}"])  # fmt: skip


def test_without_the_option_a_failed_tests_cluster_is_not_saved(pytester: pytest.Pytester, events) -> None:
    pytester.makeconftest(SAVING_DOUBLE)
    pytester.makepyfile(
        """
        def test_broken(smalltown_cluster):
            assert False
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert events() == [["close"]]
    assert "smalltown snapshot" not in result.stdout.str()


def test_a_cluster_that_cannot_be_saved_is_said_in_the_report(pytester: pytest.Pytester, events) -> None:
    """The stand-in of the evidence tests has no save_snapshot, as an attached cluster has none: the report says so."""
    pytester.makepyfile(
        """
        def test_broken(smalltown_cluster):
            assert False
        """
    )
    result = pytester.runpytest("--smalltown-snapshot-on-failure")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*smalltown snapshot*", "not saved: this cluster cannot be saved from here*"])
