"""The ``smalltown`` command: the same launcher as the pytest plugin, for humans.

    smalltown image build [--only NAME]               build or refresh cached images (tiny, switch, node, uefi)
    smalltown image path uefi                         print the reference UEFI disk's path
    smalltown accel                                   which accelerator this host gets
    smalltown up [--nodes N]                          start a cluster and keep it running
    smalltown up --from DIR                           ... restored from a failed test's saved snapshot
    smalltown status | down                           show / stop that cluster
    smalltown dbg logs COMPONENT [--tail N] [--follow]
    smalltown dbg kubectl ARGS...                     kubectl with debug credentials
    smalltown dbg loadimage FILE [--node N]           import an image archive into the nodes' containerd
    smalltown reboot N [--hard]                       reboot node N and wait until it is Ready again
    smalltown freeze N [--for SECONDS]                stall node N (vCPUs stopped), then let it run on
    smalltown clock N --by +1h [--for SECONDS]        run node N's wall clock an hour ahead, then put it back
    smalltown net partition 0 1,2 | isolate N | degrade N --delay 200ms | restore N | heal | status | capture DIR
                                                      network faults, on until healed
    smalltown conformance [--nodes N] [--focus RE] [--smoke] [--kubeconfig PATH | --running]
                                                      the upstream conformance suite
    smalltown conformance --resume DIR [--running]    ... only the specs of DIR's run without a result

``up`` starts a background process that owns the cluster's VMs and records
how to reach it in a state file; ``down`` asks that process to stop, which
closes the cluster the same way the pytest plugin does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.paths import cache_root
from pytest_smalltown.base.progress import stderr_progress
from pytest_smalltown.contract import NodePort
from pytest_smalltown.faults import NODE_MONITOR_GRACE_SECONDS
from pytest_smalltown.images.preload import PRELOAD_SETS
from pytest_smalltown.kept import DOWN_TIMEOUT, KeptClusterError, KeptState, serve, start_keeper, stop_kept, wait_recorded
from pytest_smalltown.launch.accel import ACCEL_MODES
from pytest_smalltown.settings import DEFAULT_BOOT_TIMEOUT, OPTIONS, Settings, SettingsError, resolve

EXIT_USAGE = 2
#: The launch settings the cluster commands take as flags (the rest come from $SMALLTOWN_* or defaults).
#: The settings a cluster command takes as flags: the launch settings of the pytest options, one table.
CLUSTER_OPTIONS = tuple(option for option in OPTIONS if option.cluster)


def _settings(args: argparse.Namespace) -> Settings:
    """The launch settings from the command's flags, the environment and defaults; exits (2) on a bad value."""
    cli = {option.name: getattr(args, option.name, None) for option in CLUSTER_OPTIONS}
    try:
        return resolve(cli, {}, flag=lambda option: option.cli_flag)
    except SettingsError as error:
        print(f"smalltown: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _read_state() -> KeptState:
    """The kept cluster's state; exits with the reason if there is none to use."""
    try:
        return KeptState.read()
    except KeptClusterError as error:
        raise SystemExit(str(error)) from None


# --- image ----------------------------------------------------------------------

#: What ``smalltown image build`` builds, in order; ``uefi`` is the node as a UEFI disk.
IMAGE_TARGETS = ("tiny", "switch", "node", "uefi")


def cmd_image_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    targets = [args.only] if args.only else list(IMAGE_TARGETS)
    for target in targets:
        t0 = time.monotonic()
        if target == "tiny":
            from pytest_smalltown.images.tinyvm import build_tiny_image

            result: Any = build_tiny_image()
        elif target == "switch":
            from pytest_smalltown.images.switch import build_switch_image

            result = build_switch_image()
        elif target == "node":
            from pytest_smalltown.images.node import build_all_images

            result = build_all_images()
        else:
            from pytest_smalltown.images.uefi import build_uefi_image

            result = build_uefi_image()
        print(f"{target}: ready in {time.monotonic() - t0:.1f}s: {result}")
    print(f"all images ready in {time.monotonic() - started:.1f}s (cache: {cache_root()})")
    return 0


def cmd_image_path(args: argparse.Namespace) -> int:
    """Print only the path of the reference UEFI disk (built if needed; progress on stderr), for scripts."""
    from pytest_smalltown.images.uefi import build_uefi_image

    print(build_uefi_image())
    return 0


def cmd_accel(args: argparse.Namespace) -> int:
    from pytest_smalltown.launch.accel import resolve_accel

    result = resolve_accel(args.mode)
    print(f"{result.accel}: {result.reason} (probe {result.seconds:.1f}s)")
    return 0


# --- up / down ------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """The background process behind ``up``: launch, then keep the cluster (:func:`kept.serve`) until a signal; close."""
    from pytest_smalltown.launcher import launch_cluster, launch_saved
    from pytest_smalltown.spec import ClusterSpec, preload_sets

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.from_dir is not None:
        cluster = launch_saved(args.from_dir, _settings(args))
    else:
        cluster = launch_cluster(ClusterSpec(args.nodes, preload_sets(args.preload)), _settings(args))
    try:
        serve(cluster, stop, lambda message: print(message, flush=True))
    finally:
        cluster.close()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from pytest_smalltown.contract import check_node_count

    try:
        check_node_count(args.nodes, "--nodes")
    except ValueError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    _settings(args)  # a bad value is an error here, not in the background process's log
    what = f"a {args.nodes}-node cluster"
    if args.from_dir is not None:
        from pytest_smalltown.snapshots import open_saved

        args.from_dir = args.from_dir.absolute()  # the server runs elsewhere
        what = f"the {open_saved(args.from_dir).spec} cluster saved in {args.from_dir}"  # a bad DIR: said here, at once
    running = KeptState.running()
    if running is not None:
        print(f"a {running.spec.nodes}-node cluster is already running (pid {running.owner.pid}); stop it with: "
              "smalltown down")
        return 1
    argv = [sys.executable, "-m", "pytest_smalltown.cli", "_serve", "--nodes", str(args.nodes)]
    argv += [f"--preload={name}" for name in args.preload]
    argv += ["--from", str(args.from_dir)] if args.from_dir is not None else []
    for option in CLUSTER_OPTIONS:
        if getattr(args, option.name, None) is not None:
            argv += [option.cli_flag, str(getattr(args, option.name))]
    try:
        server, log_path = start_keeper(argv)
        print(f"starting {what} (log: {log_path}) ...", flush=True)
        state = wait_recorded(server, log_path, sys.stderr.write)
    except KeptClusterError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"cluster up (pid {state.owner.pid}), {state.how}:")
    print(f"  Kubernetes API   https://127.0.0.1:{state.ports[NodePort.KUBERNETES_API]}")
    print(f"  debug service    127.0.0.1:{state.ports[NodePort.DEBUG_SERVICE]}")
    print(f"  kubeconfig       {state.kubeconfig}")
    print(f"  try:             KUBECONFIG={state.kubeconfig} kubectl get nodes   or   smalltown dbg kubectl get nodes")
    print("  stop with:       smalltown down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_read_state().to_json(), indent=2))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the process that keeps the cluster (it closes the cluster), and only that process."""
    try:
        stopped = stop_kept(DOWN_TIMEOUT)
    except KeptClusterError as error:
        raise SystemExit(str(error)) from None
    if stopped:
        print("cluster stopped")
        return 0
    print(f"cluster did not stop in {DOWN_TIMEOUT:.0f}s; killed it")
    return 1


# --- dbg ------------------------------------------------------------------------


def _debug_client(args: argparse.Namespace) -> Any:
    from pytest_smalltown.debug import DebugClient
    from pytest_smalltown.launch.ports import dial_grpc

    port = args.debug_port or _read_state().ports[NodePort.DEBUG_SERVICE]
    return DebugClient(dial_grpc(port), retry_for=10, token=_debug_token(args))


def _debug_token(args: argparse.Namespace) -> str | None:
    """The token to send: ``--debug-token FILE`` with ``--debug-port``, else the kept cluster's."""
    from pytest_smalltown.debug import read_debug_token

    if args.debug_port:
        return read_debug_token(args.debug_token) if args.debug_token else None
    try:
        return _read_state().debug_token()
    except KeptClusterError as error:
        raise SystemExit(str(error)) from None


#: Help of ``--debug-token``, for every command that takes ``--debug-port``.
DEBUG_TOKEN_HELP = ("with --debug-port: the file with that cluster's debug token (its work directory's "
                    "debug-token); default: the running cluster's")


def _node_debug_ports(args: argparse.Namespace) -> dict[int, int]:
    """Host port of the debug service of each node the command is for (``--node``, else all of them)."""
    if args.debug_port:
        return {args.node or 0: args.debug_port}
    state = _read_state()
    try:
        return {i: state.node_debug_port(i) for i in (range(state.spec.nodes) if args.node is None else [args.node])}
    except KeptClusterError as error:
        raise SystemExit(str(error)) from None


def cmd_dbg_loadimage(args: argparse.Namespace) -> int:
    from pytest_smalltown.debug import DebugClient, ImageLoadError
    from pytest_smalltown.launch.ports import dial_grpc

    if not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    failed = 0
    token = _debug_token(args)
    for node, port in _node_debug_ports(args).items():
        started = time.monotonic()
        debug = DebugClient(dial_grpc(port), retry_for=10, token=token)
        try:
            debug.load_image(args.file)
        except ImageLoadError as error:
            print(f"node {node}: {error}", file=sys.stderr)
            failed += 1
            continue
        finally:
            debug.close()
        print(f"node {node}: loaded {args.file} in {time.monotonic() - started:.1f}s", flush=True)
    return 1 if failed else 0


def cmd_dbg_logs(args: argparse.Namespace) -> int:
    from pytest_smalltown.base.rpc import grpc

    debug = _debug_client(args)
    try:
        if args.follow:
            backlog = None if args.tail == 0 else args.tail
            for line in debug.logs(args.component, backlog=backlog, follow=True):
                print(line.text, flush=True)
        else:
            for text in debug.component_logs(args.component, args.tail):
                print(text)
    except grpc.RpcError as error:
        print(f"{error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_dbg_kubectl(args: argparse.Namespace) -> int:
    from pytest_smalltown.images.gobuild import build_program
    from pytest_smalltown.kube import write_kubeconfig

    debug = _debug_client(args)
    api_port = args.api_port or _read_state().ports[NodePort.KUBERNETES_API]
    kube = build_program("kube", stderr_progress)
    with tempfile.TemporaryDirectory(prefix="smalltown-kubectl-") as tmp:
        kubeconfig = write_kubeconfig(debug.debug_kubeconfig(), api_port, Path(tmp) / "kubeconfig")
        return subprocess.call([str(kube), "kubectl", f"--kubeconfig={kubeconfig}", *args.kubectl_args])


# --- node lifecycle -------------------------------------------------------------


def cmd_reboot(args: argparse.Namespace) -> int:
    from pytest_smalltown.attached import attach
    from pytest_smalltown.lifecycle import RebootError

    cluster = attach(_read_state().spec)
    try:
        print(f"node {args.node}: {'hard reset' if args.hard else 'graceful reboot'} ...", flush=True)
        result = cluster.reboot_node(args.node, hard=args.hard, timeout=args.timeout)
    except (RebootError, KeptClusterError, LookupError) as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        cluster.close()
    hung = f"; {result.hung_boots} boot(s) hung and were reset again" if result.hung_boots else ""
    print(f"node {args.node} ({result.node}) Ready again after {result.seconds_to_ready:.1f}s "
          f"(boot ID {result.new_boot_id}{hung})")
    return 0


def _hold_fault(seconds: float, fault: Callable[[Any], Any], on: str, off: str) -> int:
    """Attach to the kept cluster and hold ``fault(cluster)`` for ``seconds`` (Ctrl-C ends it sooner); the exit status.

    ``on`` is printed once the fault is on; ``off`` after it is undone,
    with ``{seconds}`` the time it lasted. The one loop behind ``freeze`` and ``clock``.
    """
    from pytest_smalltown.attached import attach

    if seconds <= 0:
        print(f"--for must be a positive number of seconds, got {seconds:g}", file=sys.stderr)
        return 2
    cluster = attach(_read_state().spec)
    try:
        with fault(cluster) as record:
            print(on, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(seconds)
    except (KeptClusterError, LookupError) as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        cluster.close()
    print(off.format(seconds=f"{record.seconds:.1f}"))
    return 0


def cmd_freeze(args: argparse.Namespace) -> int:
    return _hold_fault(args.seconds, lambda cluster: cluster.frozen(args.node),
                       f"node {args.node}: frozen (vCPUs stopped) for {args.seconds:g}s; Ctrl-C thaws it now",
                       f"node {args.node}: running again after {{seconds}}s frozen")  # fmt: skip


def cmd_clock(args: argparse.Namespace) -> int:
    from pytest_smalltown.faults import parse_clock_offset

    try:
        offset = parse_clock_offset(args.offset)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    return _hold_fault(args.seconds, lambda cluster: cluster.clock_stepped(args.node, offset),
                       f"node {args.node}: wall clock {offset:+g}s off the host's for {args.seconds:g}s; "
                       "Ctrl-C puts it back now",
                       f"node {args.node}: wall clock back on the host's after {{seconds}}s")  # fmt: skip


def cmd_net(args: argparse.Namespace) -> int:
    """``smalltown net ...``: network faults on the kept cluster; they stay on until ``net heal`` (or ``restore``)."""
    from pytest_smalltown.faults import FaultLog
    from pytest_smalltown.network import (LinkProfile, Network, NetworkFaultError, parse_duration_ms, parse_groups,
                                          parse_percent, parse_rate_kbit, request)  # fmt: skip

    state = _read_state()
    if state.switch_qmp_socket is None:
        print("an older smalltown started the kept cluster (no switch QMP socket recorded); restart it: "
              "smalltown down && smalltown up", file=sys.stderr)  # fmt: skip
        return 1
    network = Network(state.switch_qmp_socket, state.spec.nodes, FaultLog())
    try:
        if args.net_command == "status":
            status = network.status()
        elif args.net_command in ("partition", "isolate"):
            nodes = range(state.spec.nodes)
            groups = ([[args.node], [n for n in nodes if n != args.node]] if args.net_command == "isolate"
                      else parse_groups(args.groups))  # fmt: skip
            for node in (node for group in groups for node in group):
                network.check_node(node)
            status = request(network.control_socket, {"op": "partition", "groups": groups})
        elif args.net_command == "degrade":
            profile = LinkProfile(
                delay_ms=parse_duration_ms(args.delay) if args.delay else 0.0,
                jitter_ms=parse_duration_ms(args.jitter) if args.jitter else 0.0,
                loss_percent=parse_percent(args.loss) if args.loss else 0.0,
                rate_kbit=parse_rate_kbit(args.rate) if args.rate else 0,
            )
            network.check_node(args.node)
            status = request(network.control_socket, {"op": "degrade", "node": args.node, "link": profile.to_switch()})
        elif args.net_command == "restore":
            network.check_node(args.node)
            status = request(network.control_socket, {"op": "restore", "node": args.node})
        elif args.net_command == "heal":
            status = network.heal()
        else:  # capture
            with network.capture(args.directory) as files:
                print(f"capturing into {', '.join(map(str, files))} for {args.seconds:g}s; Ctrl-C stops it now",
                      flush=True)  # fmt: skip
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(args.seconds)
            for file in files:
                print(f"{file}: {file.stat().st_size} bytes")
            return 0
    except (ValueError, LookupError) as error:
        print(error, file=sys.stderr)
        return 2
    except NetworkFaultError as error:
        print(error, file=sys.stderr)
        return 1
    print(status)
    return 0


def _add_net_commands(commands: Any) -> None:
    net_parser = commands.add_parser("net", help="network faults on the running cluster (they stay on until healed)")
    net = net_parser.add_subparsers(dest="net_command", required=True)
    net.add_parser("status", help="the partition and degraded links on now")
    partition = net.add_parser("partition", help="cut groups of nodes off from each other: net partition 0 1,2")
    partition.add_argument("groups", nargs="+", metavar="GROUP", help="node numbers joined by commas")
    isolate = net.add_parser("isolate", help="cut one node off from every other")
    isolate.add_argument("node", type=int)
    degrade = net.add_parser("degrade", help="delay, drop or pace the frames sent to a node")
    degrade.add_argument("node", type=int)
    degrade.add_argument("--delay", help="e.g. 200ms")
    degrade.add_argument("--jitter", help="e.g. 20ms (around --delay)")
    degrade.add_argument("--loss", help="e.g. 5%%")
    degrade.add_argument("--rate", help="e.g. 1mbit, 500kbit")
    restore = net.add_parser("restore", help="give a degraded node its ordinary link back")
    restore.add_argument("node", type=int)
    net.add_parser("heal", help="end the partition and every degraded link")
    capture = net.add_parser("capture", help="write every frame on the nodes' cables into DIR/node<i>.pcap")
    capture.add_argument("directory", type=Path)
    capture.add_argument("--for", dest="seconds", type=float, default=60.0, metavar="SECONDS",
                         help="how long to capture (default 60; Ctrl-C stops sooner)")
    net_parser.set_defaults(func=cmd_net)


# --- conformance ----------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so that the suite and the cluster are stopped in order.

    A BaseException, as KeyboardInterrupt is: the waits of a launch retry on
    ``Exception`` (tenacity, ``except Exception`` loops) and its phases wrap an
    ``Exception`` into a ClusterLaunchError; neither may take a signal for an
    error of theirs.
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def _conformance_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of ``smalltown conformance``, before anything is built or started."""
    from pytest_smalltown.conformance.files import PLAN_NAME
    from pytest_smalltown.contract import check_node_count

    if args.resume is not None:
        given = [flag for flag, value in (("--focus", args.focus), ("--skip", args.skip), ("--smoke", args.smoke),
                                          ("--report-dir", args.report_dir)) if value]  # fmt: skip
        if given:
            return f"--resume continues a run with its own specs and report directory; {given[0]} cannot change them"
    elif args.rerun_failed:
        return "--rerun-failed runs the failed specs of a run again; give the run with --resume DIR"
    elif args.rerun_without_junit:
        return ("--rerun-without-junit runs again the specs of a run whose result is only in results.jsonl; "
                "give the run with --resume DIR")
    elif args.report_dir is not None and (args.report_dir / PLAN_NAME).exists():
        return f"{args.report_dir} holds a run already; continue it with --resume {args.report_dir}, or give another"
    if args.smoke and args.focus:
        return "--smoke and --focus both choose the specs; give one of them"
    if args.kubeconfig is None and not args.running:
        try:
            check_node_count(args.nodes, "--nodes")
        except ValueError as error:
            return str(error)
    if args.procs is not None and args.procs < 1:
        return "--procs must be at least 1"
    if args.running and args.kubeconfig is not None:
        return "--running and --kubeconfig both name the cluster; give one of them"
    return None


def _kept_conformance_kubeconfig() -> Path | None:
    """The kubeconfig of the cluster ``smalltown up`` keeps, if it has the conformance images (else says so)."""
    state = _read_state()
    if "conformance" not in state.spec.preload:
        print("the running cluster has no conformance images; restart it with: "
              "smalltown down && smalltown up --preload conformance", file=sys.stderr)
        return None
    return state.kubeconfig


def _interrupted_line(error: BaseException, report_dir: Path, launched: bool) -> str:
    """The one line an interrupted run ends with: what it has recorded so far and how to go on."""
    from pytest_smalltown.conformance.collect import load_report
    from pytest_smalltown.conformance.errors import ConformanceError

    what = "SIGTERM" if isinstance(error, _Terminated) else "Ctrl-C"
    stopped = "the suite and the cluster were stopped" if launched else "the suite was stopped"
    try:
        report = load_report(report_dir.absolute())
    except (ConformanceError, OSError):
        return f"conformance: interrupted ({what}) before the suite ran; nothing was recorded"
    return (f"conformance: interrupted ({what}); {stopped}; {report.passed} passed, "
            f"{report.failed} failed, {report.skipped} skipped, {report.not_run} not run of {report.total}; "
            f"report: {report_dir}; continue with: smalltown conformance --resume {report_dir}")


def _conformance_on_a_cluster(args: argparse.Namespace, focus: str | None, procs: int, report_dir: Path) -> Any:
    """Build the suite, then run (or resume) it on the cluster of ``--kubeconfig``, or on one launched for it.

    A launched cluster is closed afterwards, however the run ends; when a spec
    failed, its VMs' consoles are kept in the report directory first.
    """
    from pytest_smalltown.conformance.command import build_suite
    from pytest_smalltown.conformance.runner import resume_conformance, run_conformance

    # Build first: a cold e2e.test build takes long, and a cluster would idle meanwhile.
    binaries = build_suite(procs, stderr_progress)
    cluster = None
    try:
        if args.kubeconfig is not None:
            kubeconfig = args.kubeconfig
        else:
            from pytest_smalltown.launcher import launch_cluster
            from pytest_smalltown.spec import ClusterSpec

            spec = ClusterSpec(nodes=args.nodes, preload=("conformance",))
            cluster = launch_cluster(spec, _settings(args), stderr_progress)
            kubeconfig = cluster.kubeconfig_path
        options: dict[str, Any] = dict(report_dir=report_dir, procs=procs, progress=stderr_progress,
                                       binaries=binaries)  # fmt: skip
        if args.resume is not None:
            report = resume_conformance(kubeconfig, rerun_failed=args.rerun_failed,
                                        rerun_without_junit=args.rerun_without_junit, **options)  # fmt: skip
        else:
            report = run_conformance(kubeconfig, focus=focus, skip=args.skip, **options)
        if cluster is not None and not report.ok:
            cluster.dump(report.report_dir / "consoles")
        return report
    finally:
        if cluster is not None:
            cluster.close()


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run e2e.test against a new reference cluster (closed afterwards), the kept one, or that of ``--kubeconfig``.

    ``--resume DIR`` runs the specs of DIR's run that have no result yet. SIGTERM
    and Ctrl-C stop the suite and the cluster in order and exit 130 with one line.
    """
    from pytest_smalltown.conformance.errors import ConformanceError
    from pytest_smalltown.conformance.plan import RunPlan
    from pytest_smalltown.conformance.smoke import smoke_focus
    from pytest_smalltown.images.gobuild import GoBuildError

    problem = _conformance_usage_error(args)
    if problem is None:
        try:
            focus = smoke_focus() if args.smoke else args.focus
            procs = args.procs or (RunPlan.load(args.resume).procs if args.resume is not None else 1)
        except ConformanceError as error:
            problem = str(error)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    if args.running:
        args.kubeconfig = _kept_conformance_kubeconfig()
        if args.kubeconfig is None:
            return EXIT_USAGE
    report_dir = args.resume or args.report_dir or Path(f"conformance-{time.strftime('%Y%m%d-%H%M%S')}")
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        report = _conformance_on_a_cluster(args, focus, procs, report_dir)
    except (ConformanceError, GoBuildError) as error:
        print(f"conformance: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated) as error:
        print(_interrupted_line(error, report_dir, launched=args.kubeconfig is None), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    print(report.render())
    return 0 if report.ok else 1


# --- parser ---------------------------------------------------------------------


def _cluster_options(parser: argparse.ArgumentParser, nodes: int = 1, why: str = "") -> None:
    """``--nodes`` and one flag per launch setting (``settings.OPTIONS``), validated by ``settings.resolve``."""
    parser.add_argument("--nodes", type=int, default=nodes, help=f"number of nodes (default {nodes}{why})")
    for option in CLUSTER_OPTIONS:
        parser.add_argument(option.cli_flag, dest=option.name, metavar=option.metavar,
                            help=f"{option.help} (default: ${option.env} or {option.default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smalltown", description="Smalltown clusters in QEMU, by hand.")
    commands = parser.add_subparsers(dest="command", required=True)

    image = commands.add_parser("image", help="reference images").add_subparsers(dest="image_command", required=True)
    build = image.add_parser("build", help="build (or find cached) reference images, with timings")
    build.add_argument("--only", choices=IMAGE_TARGETS)
    build.set_defaults(func=cmd_image_build)
    path = image.add_parser("path", help="print the path of the reference node's UEFI disk (for --smalltown-image)")
    path.add_argument("which", choices=("uefi",), help="uefi: the GPT disk that boots through OVMF")
    path.set_defaults(func=cmd_image_path)

    accel = commands.add_parser("accel", help="probe which accelerator this host can use")
    accel.add_argument("mode", nargs="?", default="auto", choices=ACCEL_MODES)
    accel.set_defaults(func=cmd_accel)

    up = commands.add_parser("up", help="start a cluster in the background and print how to reach it")
    serve = commands.add_parser("_serve", help=argparse.SUPPRESS)
    for parser_ in (up, serve):
        _cluster_options(parser_)
        parser_.add_argument(
            "--preload", action="append", default=[], choices=PRELOAD_SETS,
            help="image set to import into every node (repeatable), e.g. conformance for `smalltown conformance "
                 "--kubeconfig`",
        )  # fmt: skip
        parser_.add_argument(
            "--from", dest="from_dir", type=Path, metavar="DIR",
            help="restore the cluster saved in DIR (a failed test's artifacts/.../snapshot, see "
                 "--smalltown-snapshot-on-failure) as it was, instead of launching one; its spec is the saved one's",
        )  # fmt: skip
    up.set_defaults(func=cmd_up)
    serve.set_defaults(func=cmd_serve)
    commands.add_parser("status", help="show the running cluster").set_defaults(func=cmd_status)
    commands.add_parser("down", help="stop the running cluster").set_defaults(func=cmd_down)

    reboot = commands.add_parser("reboot", help="reboot a node of the running cluster and wait until it is Ready again")
    reboot.add_argument("node", type=int, help="node index (0 runs the control plane)")
    reboot.add_argument("--hard", action="store_true", help="reset the VM instead of a clean shutdown (node 0: "
                        "etcd may lose its last writes)")
    reboot.add_argument("--timeout", type=float,
                        help=f"seconds to wait for it (default {DEFAULT_BOOT_TIMEOUT:g}: the default boot timeout)")
    reboot.set_defaults(func=cmd_reboot)

    freeze = commands.add_parser("freeze", help="stall a node of the running cluster (vCPUs stopped) for a while")
    freeze.add_argument("node", type=int, help="node index (0 runs the control plane: the API stops answering)")
    freeze.add_argument("--for", dest="seconds", type=float, default=60.0, metavar="SECONDS",
                        help=f"how long it stays frozen (default 60; a node without heartbeats is NotReady after "
                        f"{NODE_MONITOR_GRACE_SECONDS})")
    freeze.set_defaults(func=cmd_freeze)
    clock = commands.add_parser("clock", help="run a node's wall clock off the host's for a while")
    clock.add_argument("node", type=int, help="node index")
    clock.add_argument("--by", dest="offset", required=True, metavar="OFFSET",
                       help="how far: +1h, 90s; behind: --by=-30m")
    clock.add_argument("--for", dest="seconds", type=float, default=60.0, metavar="SECONDS",
                       help="how long (default 60; Ctrl-C ends it sooner)")
    clock.set_defaults(func=cmd_clock)
    _add_net_commands(commands)

    dbg_parser = commands.add_parser("dbg", help="talk to the nodes' debug services")
    dbg = dbg_parser.add_subparsers(dest="dbg_command", required=True)
    logs = dbg.add_parser("logs", help="print a component's log buffer")
    logs.add_argument("component", help="e.g. containerd, kube.kubelet, kube.apiserver, etcd")
    logs.add_argument("--tail", type=int, default=0, help="only the last N lines (0: all)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("--debug-port", type=int, help="host port of the debug service (default: the running cluster)")
    logs.add_argument("--debug-token", type=Path, help=DEBUG_TOKEN_HELP)
    logs.set_defaults(func=cmd_dbg_logs)
    kubectl = dbg.add_parser("kubectl", help="run kubectl with debug credentials")
    kubectl.add_argument("--debug-port", type=int, help=argparse.SUPPRESS)
    kubectl.add_argument("--debug-token", type=Path, help=argparse.SUPPRESS)
    kubectl.add_argument("--api-port", type=int, help=argparse.SUPPRESS)
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER, help="arguments for kubectl")
    kubectl.set_defaults(func=cmd_dbg_kubectl)
    loadimage = dbg.add_parser(
        "loadimage", help="import a container image archive (docker save / ctr export) into the nodes' containerd"
    )
    loadimage.add_argument("file", type=Path, help="a docker-archive or OCI tarball")
    loadimage.add_argument("--node", type=int, help="only this node (default: every node)")
    loadimage.add_argument(
        "--debug-port", type=int, help="host port of one node's debug service (default: the running cluster)"
    )
    loadimage.add_argument("--debug-token", type=Path, help=DEBUG_TOKEN_HELP)
    loadimage.set_defaults(func=cmd_dbg_loadimage)

    conformance = commands.add_parser(
        "conformance", help="run the upstream Kubernetes conformance suite (e2e.test) and summarise it"
    )
    _cluster_options(conformance, nodes=2, why=": the suite needs two schedulable nodes")
    conformance.add_argument("--focus", help=r"Ginkgo focus regexp (default: \[Conformance\])")
    conformance.add_argument("--skip", help="Ginkgo skip regexp")
    conformance.add_argument(
        "--smoke", action="store_true", help="run only the smoke subset (conformance.smoke.SMOKE_TESTS)"
    )
    conformance.add_argument(
        "--procs", type=int, help="parallel e2e.test processes via the Ginkgo CLI (default 1, or the resumed run's); "
        "[Serial] specs run on one process after the others",
    )  # fmt: skip
    conformance.add_argument(
        "--report-dir", type=Path,
        help="run.json, results.jsonl, JUnit, log and summary.txt (default ./conformance-TIMESTAMP)",
    )  # fmt: skip
    conformance.add_argument(
        "--resume", type=Path, metavar="DIR",
        help="run only the specs of DIR's run that have no result yet (same focus and skip), adding to its report",
    )  # fmt: skip
    conformance.add_argument(
        "--rerun-failed", action="store_true",
        help="with --resume: also run again the specs whose result is failed (their latest result counts)",
    )  # fmt: skip
    conformance.add_argument(
        "--rerun-without-junit", action="store_true",
        help="with --resume: also run again the specs whose result is only in results.jsonl, in no JUnit that "
        "e2e.test wrote (their latest result counts), so that the run's JUnit is whole",
    )  # fmt: skip
    conformance.add_argument(
        "--kubeconfig", type=Path, help="run against this existing cluster instead of launching one"
    )
    conformance.add_argument(
        "--running", action="store_true",
        help="run against the cluster `smalltown up --preload conformance` keeps (nothing is launched or stopped)",
    )  # fmt: skip
    conformance.set_defaults(func=cmd_conformance)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``smalltown`` command; its exit status.

    An error of ours (a :class:`SmalltownError`: a build step that failed, a
    launch that did not finish, a missing program) is a message for the user,
    not a bug: it ends the command with ``smalltown: <message>`` on stderr
    and exit status 1, without a traceback. Anything else still shows one.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SmalltownError as error:
        print(f"smalltown: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
