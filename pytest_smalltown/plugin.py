"""The pytest surface: marker, options, fixtures, test ordering and reports.

This module only wires pytest to objects that live elsewhere (settings,
spec, pool, cluster); it holds no launch logic of its own, so everything it
does is also available to the ``smalltown`` CLI.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_smalltown import aliases
from pytest_smalltown.launch.accel import cached_verdict, node_capacity, resolve_accel
from pytest_smalltown.parallel import SpecGroups, auto_workers, spec_scheduler
from pytest_smalltown.pool import ClusterPool, EvidenceSource, Launcher, SmalltownCluster
from pytest_smalltown.settings import OPTIONS, Settings, SettingsError, resolve
from pytest_smalltown.shard import NO_CLUSTER, ShardError, assign, estimate, load_durations, record_durations
from pytest_smalltown.spec import DEFAULT_SPEC, MARKER, MARKER_HELP, ClusterSpec, MarkerError, spec_from_marker
from pytest_smalltown.watch import DeathWatch

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from pytest_smalltown.debug import DebugClient

#: Fixtures that need a live cluster; an item using any of them is planned into the pool.
CLUSTER_FIXTURES = frozenset({"smalltown_cluster", "smalltown_debug", "kube", "kubeconfig"})

SPEC_KEY = pytest.StashKey[ClusterSpec]()
SESSION_KEY = pytest.StashKey["SmalltownSession"]()


class SmalltownSession:
    """Per-session state: the settings, the cluster pool, and seconds spent per spec (for durations)."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings = settings
        #: Names this run's failure dumps (``artifacts/<run id>/``): two sessions on one host, or
        #: one after another, never write into each other's. xdist workers share their controller's.
        self.run_id = run_id
        self.pool = ClusterPool()
        self.group_seconds: dict[str, float] = {}
        self.shard_summary: str | None = None
        self.capacity_summary: str | None = None  # why --smalltown-max-nodes=auto deselected tests
        self.worker_summary_lines: list[str] = []
        self.spec_groups: SpecGroups | None = None
        self.reported: set[ClusterSpec] = set()  # specs whose launch timings went into a JUnit report
        self.watch = DeathWatch()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smalltown", "Smalltown clusters in QEMU")
    for option in OPTIONS:
        # A yes/no setting also works as a bare flag (--smalltown-attach); =false still turns it off.
        flag_like = {"nargs": "?", "const": "true"} if option.metavar == "BOOL" else {}
        group.addoption(
            option.flag,
            dest=f"smalltown_{option.name}",
            default=None,
            metavar=option.metavar,
            help=f"{option.help} (env {option.env}, ini {option.ini}; default {option.default!r})",
            **flag_like,
        )
        parser.addini(option.ini, help=option.help, default=None)


def _session(config: pytest.Config) -> SmalltownSession:
    return config.stash[SESSION_KEY]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same orderly shutdown as Ctrl-C: pytest then runs
    # session teardown, which closes every cluster.
    raise KeyboardInterrupt(f"received signal {signum}")


def _resolve_settings(config: pytest.Config) -> Settings:
    """The ``--smalltown-*`` settings from the command line, environment and ini; bad values are usage errors."""
    cli = {option.name: config.getoption(f"smalltown_{option.name}") for option in OPTIONS}
    ini = {option.name: config.getini(option.ini) for option in OPTIONS}
    try:
        return resolve(cli, ini)
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    aliases.register(config)
    if _is_xdist_worker(config):
        run_id = config.workerinput["smalltown_run_id"]  # type: ignore[attr-defined]
    else:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    state = SmalltownSession(_resolve_settings(config), run_id)
    config.stash[SESSION_KEY] = state
    if getattr(config.option, "dist", "no") == "load" and not _is_xdist_worker(config):
        state.spec_groups = SpecGroups.create()
        config.add_cleanup(state.spec_groups.remove)
    state.watch.install()
    config.add_cleanup(state.watch.uninstall)
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)

        def restore() -> None:
            signal.signal(signal.SIGTERM, previous)

        config.add_cleanup(restore)


def item_spec(item: pytest.Item) -> ClusterSpec | None:
    """The cluster spec ``item`` needs, or None if it needs no cluster.

    Raises :class:`pytest.UsageError` naming the test for a malformed marker.
    """
    marker = item.get_closest_marker(MARKER)
    if marker is not None:
        try:
            return spec_from_marker(marker.args, marker.kwargs)
        except MarkerError as error:
            raise pytest.UsageError(f"{item.nodeid}: {error}") from None
    if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return DEFAULT_SPEC
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate markers, group tests by spec (first appearance order) and plan the pool."""
    specs: dict[int, ClusterSpec] = {}
    for index, item in enumerate(items):
        spec = item_spec(item)
        if spec is not None:
            specs[index] = spec
            item.stash[SPEC_KEY] = spec
    first_seen: dict[ClusterSpec, int] = {}
    for index, spec in specs.items():
        first_seen.setdefault(spec, index)

    def position(i: int) -> tuple[int, int, int]:
        # Tests without a cluster first (they are quick), then one group per
        # spec in order of first appearance; stable within each group.
        return (1, first_seen[specs[i]], i) if i in specs else (0, 0, i)

    order = sorted(range(len(items)), key=position)
    items[:] = [items[i] for i in order]
    session_state = _session(config)
    max_nodes = session_state.settings.max_nodes
    if max_nodes is None:
        max_nodes, session_state.capacity_summary = _host_max_nodes(
            session_state.settings, specs.values(), probe=not config.option.collectonly
        )
    if max_nodes is not None:
        _keep_small_specs(config, items, max_nodes)
    if session_state.settings.shard is not None:
        _keep_shard(config, items, session_state)
    if _is_xdist_worker(config) and "smalltown_spec_groups" in config.workerinput:  # type: ignore[attr-defined]
        # Written before this worker reports its collection, so the controller's scheduler sees it.
        SpecGroups.write(Path(config.workerinput["smalltown_spec_groups"]),  # type: ignore[attr-defined]
                         {item.nodeid: group_label(item) for item in items})
    session_state.pool.plan(spec for item in items if (spec := item.stash.get(SPEC_KEY, None)) is not None)


def group_label(item: pytest.Item) -> str:
    """The label a test's time is recorded and sharded under: its spec, or :data:`shard.NO_CLUSTER`."""
    spec = item.stash.get(SPEC_KEY, None)
    return str(spec) if spec is not None else NO_CLUSTER


def _host_max_nodes(
    settings: Settings, specs: Iterable[ClusterSpec], probe: bool = True
) -> tuple[int | None, str | None]:
    """``--smalltown-max-nodes=auto``: the node limit this host sets, and the line that says so (None: no limit).

    The accelerator is only resolved (a probe, cached per host) when some cluster has more
    nodes than the host has cores: below that every accelerator carries it. Without
    ``probe`` (``--collect-only``, which must start nothing) only an accelerator already
    known counts: chosen, or probed by an earlier run on this host.
    """
    biggest = max((spec.nodes for spec in specs), default=0)
    cpus = os.cpu_count() or 1
    if biggest <= cpus:
        return None, None
    accel: str | None
    if probe:
        try:
            accel = resolve_accel(settings.accel, settings.qemu).accel
        except Exception:  # the first launch meets the same problem and reports it in full
            return None, None
    else:
        accel = _known_accel(settings)
        if accel is None:
            return None, (f"smalltown: --collect-only starts no VM, so the accelerator is not probed; a run may "
                          f"deselect clusters over {cpus} node{'' if cpus == 1 else 's'} (one per core under TCG)")
    limit = node_capacity("kvm" if accel == "kvm" else "tcg", cpus)
    if biggest <= limit:
        return None, None
    return limit, (
        f"smalltown: tests of clusters over {limit} nodes deselected: under {accel.upper()} this {cpus}-core "
        f"host carries {limit} node VMs at once; --smalltown-max-nodes={biggest} runs them anyway"
    )


def _known_accel(settings: Settings) -> str | None:
    """The accelerator launches will use, if known without booting anything: chosen, or probed earlier on this host."""
    if settings.accel != "auto":
        return settings.accel
    verdict = cached_verdict(settings.qemu)
    return verdict.accel if verdict is not None else None


def _keep_small_specs(config: pytest.Config, items: list[pytest.Item], max_nodes: int) -> None:
    """Deselect every test whose cluster has more than ``max_nodes`` nodes (tests without a cluster stay)."""
    too_big = [item for item in items if (spec := item.stash.get(SPEC_KEY, None)) is not None and spec.nodes > max_nodes]
    if too_big:
        config.hook.pytest_deselected(items=too_big)
        dropped = {id(item) for item in too_big}
        items[:] = [item for item in items if id(item) not in dropped]


def _keep_shard(config: pytest.Config, items: list[pytest.Item], state: SmalltownSession) -> None:
    """Deselect every test whose spec is assigned to another shard."""
    shard = state.settings.shard
    assert shard is not None
    try:
        recorded = load_durations(state.settings.durations)
    except ShardError as error:
        raise pytest.UsageError(str(error)) from None
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(group_label(item), []).append(item)
    weights = {}
    for label, members in groups.items():
        spec = members[0].stash.get(SPEC_KEY, None)
        weights[label] = recorded.get(label, estimate(spec.nodes if spec is not None else 0, len(members)))
    assignment = assign(weights, shard.total)
    kept = [item for item in items if assignment[group_label(item)] == shard.index]
    deselected = [item for item in items if assignment[group_label(item)] != shard.index]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    mine = sorted(label for label, index in assignment.items() if index == shard.index)
    share = sum(weights[label] for label in mine)
    state.shard_summary = (
        f"smalltown shard {shard}: {', '.join(mine) or 'nothing'} ({len(kept)} tests, about {share:.0f}s "
        f"of {sum(weights.values()):.0f}s{' by recorded durations' if recorded else ' estimated'})"
    )


REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
NAMESPACE_KEY = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Run the test body watched: if its cluster dies meanwhile, the test fails at once (see :mod:`watch`)."""
    spec = item.stash.get(SPEC_KEY, None)
    state = _session(item.config)
    cluster = state.pool.live(spec) if spec is not None else None
    if cluster is None:
        return (yield)
    with state.watch.watching(cluster):
        return (yield)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Remember each phase's report, and attach cluster evidence to failures."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    item.stash.setdefault(REPORTS_KEY, {})[report.when] = report
    seconds = _session(item.config).group_seconds
    seconds[group_label(item)] = seconds.get(group_label(item), 0.0) + report.duration
    spec = item.stash.get(SPEC_KEY, None)
    if not report.failed or spec is None or report.when == "teardown":
        return
    session = _session(item.config)
    if session.settings.keep_on_failure and not session.settings.attach:
        session.pool.keep(spec)
    cluster = session.pool.live(spec)
    if not isinstance(cluster, EvidenceSource):
        return  # launch failed (its error already shows the consoles), or a stand-in without VMs
    from pytest_smalltown.evidence import report_sections, write_artifacts

    namespace = item.stash.get(NAMESPACE_KEY, None)
    for title, text in report_sections(cluster, namespace):
        report.sections.append((title, text))
    directory = (session.settings.artifacts or item.config.rootpath / "artifacts") / session.run_id
    try:
        written = write_artifacts(cluster, directory, item.nodeid, namespace)
        report.sections.append(("smalltown artifacts", str(written)))
    except OSError as error:
        report.sections.append(("smalltown artifacts", f"could not write to {directory}: {error}"))


def item_failed(item: pytest.Item) -> bool:
    """Whether setup or call of ``item`` failed so far."""
    reports = item.stash.get(REPORTS_KEY, {})
    return any(r.failed for r in reports.values())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    yield
    spec = item.stash.get(SPEC_KEY, None)
    if spec is not None:
        _session(item.config).pool.release(spec)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SESSION_KEY not in session.config.stash:
        return
    state = _session(session.config)
    kept = state.pool.kept_clusters()
    if kept and not _is_xdist_worker(session.config):
        _wait_while_kept(session.config, kept)
    state.pool.close_all()
    if _is_xdist_worker(session.config):
        # The controller prints the summary and writes the durations file, once, for all workers.
        session.config.workeroutput["smalltown"] = {  # type: ignore[attr-defined]
            "workerid": session.config.workerinput["workerid"],  # type: ignore[attr-defined]
            "summary": [record.summary_line() for _, record in sorted(state.pool.records.items())],
            "group_seconds": dict(state.group_seconds),
        }
        return
    if state.settings.durations is not None and state.group_seconds:
        # A spec's figure is its tests' setup, call and teardown: the first
        # setup includes the cluster's launch, the last teardown its close.
        record_durations(state.settings.durations, state.group_seconds)


def _wait_while_kept(config: pytest.Config, kept: dict[ClusterSpec, Any]) -> None:
    """``--smalltown-keep-on-failure``: leave the failed specs' clusters up until Ctrl-C or ``smalltown down``.

    The session itself stays alive as their owner, so nothing it started
    outlives it; the first kept cluster is recorded like one of ``smalltown
    up``, so the CLI's ``status``/``dbg``/``down`` and ``--smalltown-attach``
    reach it.
    """
    from pytest_smalltown.kept import claim, remove_state, write_state

    say = terminal_progress(config)
    first_spec, first = next(iter(kept.items()))
    if claim() is not None:  # held until this process ends
        write_state(first, os.getpid())
        say(f"kept the {first_spec} cluster after a failure; reach it with: smalltown status, smalltown dbg kubectl "
            f"get pods -A, smalltown dbg logs kube.kubelet (kubeconfig {first.kubeconfig_path})")
    else:
        say(f"kept the {first_spec} cluster after a failure, but another cluster is recorded for the smalltown "
            f"command (smalltown status); reach this one with: KUBECONFIG={first.kubeconfig_path} kubectl ...")
    for spec, cluster in list(kept.items())[1:]:
        say(f"also kept the {spec} cluster: KUBECONFIG={cluster.kubeconfig_path} kubectl ...")
    say(f"stop with: smalltown down (or Ctrl-C here, or kill {os.getpid()})")
    try:
        while True:
            for cluster in kept.values():
                cluster.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping the kept clusters")
    except Exception as error:  # a kept VM died: nothing left to wait for
        say(f"a kept cluster died: {str(error).splitlines()[0]}")
    finally:
        remove_state(os.getpid())


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What every run's log should say first: which image, which accelerator, which cache."""
    from pytest_smalltown.images.cache import cache_root
    from pytest_smalltown.launch.accel import cached_verdict

    if SESSION_KEY not in config.stash:
        return []
    settings = _session(config).settings
    if settings.attach:
        return ["smalltown: attached to the cluster 'smalltown up' keeps (smalltown status)"]
    if settings.accel != "auto":
        accel = f"{settings.accel} (chosen)"
    else:
        verdict = cached_verdict(settings.qemu)
        # The probe's reason can end in a console tail; its first clause says enough here.
        reason = verdict.reason.split(";")[0] if verdict else ""
        accel = f"{verdict.accel} (probed: {reason})" if verdict else "auto (probed at the first launch)"
    return [f"smalltown: image {settings.image}, accelerator {accel}, cache {cache_root()}"]


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    if SESSION_KEY not in config.stash:
        return None
    state = _session(config)
    lines = [line for line in (state.capacity_summary, state.shard_summary) if line]
    return "\n".join(lines) or None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if SESSION_KEY not in config.stash:
        return
    state = _session(config)
    lines = [record.summary_line() for _, record in sorted(state.pool.records.items())]
    lines += state.worker_summary_lines  # from pytest-xdist workers, each prefixed with its id
    if lines:
        terminalreporter.section("smalltown clusters")
        for line in lines:
            terminalreporter.write_line(line)


# --- pytest-xdist: one worker per spec, workers sized by the node budget ------------


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: as many workers as the host can run clusters side by side, not one per core.

    Each worker boots its own clusters; a core per worker would oversubscribe
    the host many times over under emulation.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own override wins
    settings = _resolve_settings(config)  # called before pytest_configure
    return auto_workers(settings.node_cpus, settings.node_memory)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller side: where a new worker writes which spec each of its tests needs."""
    state = _session(node.config)
    node.workerinput["smalltown_run_id"] = state.run_id
    if state.spec_groups is not None:
        node.workerinput["smalltown_spec_groups"] = str(state.spec_groups.file_for(node.gateway.id))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n`` with the default ``--dist load``: each spec's tests go to one worker, which boots it once.

    A scheduler of ours rather than xdist's ``loadgroup``: that one groups
    by rewriting node ids, which pytest 9.2 no longer reads (``Item.nodeid``
    comes from ``_id``), so its groups are silently lost.
    """
    state = _session(config)
    if config.getvalue("dist") != "load" or state.spec_groups is None:
        return None  # an explicit --dist mode is the user's choice
    return spec_scheduler(config, log, state.spec_groups)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Controller side: take a finished worker's cluster summary and measured seconds."""
    config = node.config
    output = getattr(node, "workeroutput", None) or {}
    if SESSION_KEY not in config.stash or "smalltown" not in output:
        return
    state = _session(config)
    worker = output["smalltown"]["workerid"]
    state.worker_summary_lines += [f"[{worker}] {line}" for line in output["smalltown"]["summary"]]
    for label, seconds in output["smalltown"]["group_seconds"].items():
        state.group_seconds[label] = state.group_seconds.get(label, 0.0) + seconds


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def smalltown_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved ``--smalltown-*`` settings of this session."""
    return _session(pytestconfig).settings


def terminal_progress(config: pytest.Config) -> Callable[[str], None]:
    """A progress printer that reaches the terminal even while pytest captures output.

    Image builds and cluster boots take minutes; a silent terminal during
    that time looks like a hang.
    """
    from pytest_smalltown.images.cache import stderr_progress

    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return stderr_progress

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"[smalltown] {message}")

    return progress


@pytest.fixture(scope="session")
def smalltown_progress(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Print a ``[smalltown]`` progress line on the terminal even while pytest captures output.

    For test steps that take minutes (a conformance run, a large image load),
    so that a CI log shows they are alive.
    """
    return terminal_progress(pytestconfig)


@pytest.fixture(scope="session")
def smalltown_launcher(smalltown_settings: Settings, pytestconfig: pytest.Config) -> Launcher:
    """How clusters are launched; override this fixture to launch differently.

    The default boots the configured image (the reference cluster unless
    ``--smalltown-image`` says otherwise) with :func:`pytest_smalltown.launcher.launch_cluster`.
    """
    from pytest_smalltown.launcher import launch_cluster
    from pytest_smalltown.kept import attach

    if smalltown_settings.attach:
        return attach
    progress = terminal_progress(pytestconfig)

    def launch(spec: ClusterSpec) -> Any:
        return launch_cluster(spec, smalltown_settings, progress)

    return launch


@pytest.fixture
def smalltown_cluster(request: pytest.FixtureRequest, smalltown_launcher: Launcher) -> Iterator[SmalltownCluster]:
    """The live cluster for this test's ``smalltown`` marker (1 node without one)."""
    spec = request.node.stash.get(SPEC_KEY, None)
    pool = _session(request.config).pool
    if spec is None:  # requested dynamically (getfixturevalue): plan it now
        spec = DEFAULT_SPEC
        request.node.stash[SPEC_KEY] = spec
        pool.plan([spec])
    cluster = pool.acquire(spec, smalltown_launcher)
    # For CI dashboards (JUnit <property>): which cluster, and on the test that booted it, where the time went.
    request.node.user_properties.append(("smalltown_spec", str(spec)))
    record = pool.records.get(spec)
    if record is not None and record.launch_seconds is not None and spec not in _session(request.config).reported:
        _session(request.config).reported.add(spec)
        request.node.user_properties.append(("smalltown_launch_seconds", f"{record.launch_seconds:.1f}"))
        request.node.user_properties += [(f"smalltown_phase_{name}", f"{sec:.1f}") for name, sec in record.phases.items()]
    yield cluster  # type: ignore[misc]  # launchers hand out full clusters; the pool needs only a ClusterHandle


@pytest.fixture
def smalltown_debug(smalltown_cluster: SmalltownCluster) -> DebugClient:
    """A NodeDebugService client of node 0 (retries transient failures)."""
    return smalltown_cluster.debug


@pytest.fixture
def smalltown_kube(smalltown_cluster: SmalltownCluster) -> ApiClient:
    """A ``kubernetes.client.ApiClient`` with cluster-admin debug credentials (also as ``kube``)."""
    return smalltown_cluster.kube


@pytest.fixture
def smalltown_kubeconfig(smalltown_cluster: SmalltownCluster) -> Path:
    """Path of the cluster's debug kubeconfig (mode 0600), for tools like kubectl (also as ``kubeconfig``)."""
    return smalltown_cluster.kubeconfig_path


@pytest.fixture
def smalltown_namespace(
    request: pytest.FixtureRequest, smalltown_kube: ApiClient, smalltown_settings: Settings
) -> Iterator[str]:
    """A fresh namespace for this test, deleted afterwards.

    With ``--smalltown-keep-namespace`` a failed test's namespace is kept for
    inspection (its name is in the report).
    """
    from pytest_smalltown.kube import create_namespace, delete_namespace

    name = create_namespace(smalltown_kube, request.node.name)
    request.node.stash[NAMESPACE_KEY] = name
    yield name
    if smalltown_settings.keep_namespace and item_failed(request.node):
        request.node.add_report_section("teardown", "smalltown", f"kept namespace {name} for inspection")
        return
    delete_namespace(smalltown_kube, name)
