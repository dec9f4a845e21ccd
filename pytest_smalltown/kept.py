"""A cluster kept running between sessions, and how a session attaches to it.

``smalltown up`` (and a pytest session run with ``--smalltown-keep-on-failure``
whose tests failed) records the running cluster in one state file: the
process that owns the VMs, the forwarded ports, the kubeconfig and the
console logs. The CLI's ``status``/``dbg``/``down`` read it, and
``pytest --smalltown-attach`` runs a session against that cluster instead of
booting one: fresh namespaces per test as always, nothing torn down at the
end.

The whole protocol lives here, so its two keepers (``up``'s server and a
pytest session) and its readers agree on it: :func:`claim` (one kept cluster
per cache), :class:`KeptState` (the state file, read and written only
through it), :func:`serve` and :func:`wait_while_kept` (keeping),
:func:`stop_kept` (``down``); :mod:`pytest_smalltown.attached` builds a
session's clients from a :class:`KeptState` (``--smalltown-attach``, ``smalltown reboot``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pwd
import select
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.paths import cache_root

# Imported with the module, not when a wait starts: a keeper's state is on disk by then, and a
# `smalltown down` (SIGTERM) that landed in a slow import would escape the wait's Ctrl-C handling.
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.vm import GuestHungError
from pytest_smalltown.pool import ClusterHandle
from pytest_smalltown.spec import ClusterSpec


class KeptClusterError(SmalltownError, RuntimeError):
    """No usable kept cluster; the message says how to get one."""


def state_path() -> Path:
    """Where the kept cluster is recorded."""
    return cache_root() / "run" / "cluster.json"


def claim() -> int | None:
    """Take the one kept-cluster slot of this cache; returns the lock's file descriptor, or None if taken.

    Only one cluster at a time is recorded in the state file. Two ``smalltown
    up`` (or two sessions keeping a failed cluster) started side by side would
    both find no state file and overwrite each other's; the slot is an
    ``flock`` instead, held by the process that owns the kept cluster for as
    long as it lives (``up`` hands its descriptor to that process), and freed
    by the kernel however that process ends.
    """
    path = state_path().with_name("cluster.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def process_identity(pid: int) -> str | None:
    """Who process ``pid`` is: this boot's id and its start time, or None if there is no such process.

    A pid alone names a process only while it lives: once it exits, the kernel
    gives the number to a later process. Its start time (clock ticks since
    boot, ``/proc/<pid>/stat`` field 22) with the boot's id tells them apart.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces and ")": field 3 on follow the last ")".
    return f"{boot}/{stat[stat.rindex(')') + 2:].split()[19]}"


@dataclass(frozen=True)
class Owner:
    """The process that keeps the cluster (its VMs die with it): its pid and :func:`process_identity`.

    ``identity`` is None in a state file of an older smalltown, which
    recorded the bare pid: such an owner can be looked at but not signalled.
    """

    pid: int
    identity: str | None

    def running(self) -> bool:
        """Whether the recorded process still runs (not merely some process with its pid)."""
        identity = process_identity(self.pid)
        return identity is not None and self.identity in (None, identity)

    def stop(self, timeout: float) -> bool:
        """SIGTERM the owner, which closes the cluster; SIGKILL it after ``timeout`` s. True if it stopped by itself.

        The process is held by a pidfd before it is identified, so no signal
        can reach a process that took its pid meanwhile; the pidfd also says
        when it has exited, whether or not its parent has reaped it yet.
        """
        if self.identity is None:
            raise KeptClusterError(
                f"the cluster state names pid {self.pid} without its start time (an older smalltown wrote it), so "
                f"smalltown cannot tell that process from a later one with the same pid; if `ps -o args= -p "
                f"{self.pid}` shows the cluster's 'smalltown _serve' or pytest, stop it with: kill {self.pid}"
            )
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return True
        try:
            if process_identity(self.pid) != self.identity:
                return True  # it exited since the state was read
            if self._signal(pidfd, signal.SIGTERM) and _exited(pidfd, timeout):
                return True
            self._signal(pidfd, signal.SIGKILL)  # its VMs die with it (PDEATHSIG)
            _exited(pidfd, timeout)
            return False
        finally:
            os.close(pidfd)

    def _signal(self, pidfd: int, signum: int) -> bool:
        """Send ``signum``; False if the process had exited already."""
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            raise KeptClusterError(
                f"pid {self.pid}, which keeps the cluster, belongs to another user ({_user_of(self.pid)}): only they "
                "(or root) can stop it"
            ) from None
        return True


def _exited(pidfd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process behind ``pidfd`` to exit (a pidfd turns readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _user_of(pid: int) -> str:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class KeptState:
    """What the state file records of a kept cluster: who keeps it and how to reach it.

    One JSON object on disk (``cluster.json``), written by the keeping
    process and read by the CLI and by ``--smalltown-attach``. Fields that
    older smalltown versions did not record read as empty (None, ``[]``,
    ``{}``); the features that need them say so when used.
    """

    owner: Owner
    spec: ClusterSpec
    #: Guest port -> 127.0.0.1 host port, of the switch's forwards.
    ports: PortMap
    kubeconfig: Path
    #: The file (0600) with the debug token: the state file is not private, the token file is.
    debug_token_path: Path | None = None
    #: Console log of each node, by VM name.
    consoles: dict[str, Path] = field(default_factory=dict)
    #: Per node index: what a reboot from another process needs.
    addresses: list[str] = field(default_factory=list)
    qmp_sockets: list[Path] = field(default_factory=list)
    switch_qmp_socket: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)
    #: How it came up: "booted", "restored from ...".
    how: str = "booted"

    @classmethod
    def of_cluster(cls, cluster: Any, pid: int) -> KeptState:
        """The state of ``cluster`` (a :class:`~pytest_smalltown.cluster.Cluster`) kept by process ``pid``."""
        return cls(
            owner=Owner(pid, process_identity(pid)),
            spec=cluster.spec,
            ports=PortMap(dict(cluster.ports.items())),
            kubeconfig=Path(cluster.kubeconfig_path),
            debug_token_path=cluster.debug_token_path,
            consoles={node.name: Path(node.console_log) for node in cluster.nodes},
            addresses=[node.address for node in cluster.nodes],
            qmp_sockets=[Path(node.qmp_socket) for node in cluster.nodes],
            switch_qmp_socket=cluster.switch_qmp_socket,
            phases=dict(cluster.phase_seconds),
            how=cluster.how,
        )

    def to_json(self) -> dict[str, Any]:
        """The state file's object, in the format every smalltown version reads."""
        return {
            "pid": self.owner.pid,
            "owner": self.owner.identity,
            "nodes": self.spec.nodes,
            "preload": list(self.spec.preload),
            "ports": {str(guest): host for guest, host in self.ports.items()},
            "kubeconfig": str(self.kubeconfig),
            "debug_token": str(self.debug_token_path) if self.debug_token_path is not None else None,
            "consoles": {name: str(path) for name, path in self.consoles.items()},
            "addresses": list(self.addresses),
            "qmp_sockets": [str(path) for path in self.qmp_sockets],
            "switch_qmp_socket": str(self.switch_qmp_socket) if self.switch_qmp_socket is not None else None,
            "phases": dict(self.phases),
            "how": self.how,
        }

    @classmethod
    def from_json(cls, data: object, path: Path) -> KeptState:
        """The state in ``data`` (read from ``path``); raises :class:`KeptClusterError` if it is not a state file."""
        not_ours = KeptClusterError(
            f"the cluster state file {path} is not one that 'smalltown up' wrote; remove it and "
            "start again with: smalltown up"
        )
        # A pid of 0 or below would name a process group, or every process there is, to a signal.
        if not isinstance(data, dict) or type(data.get("pid")) is not int or data["pid"] <= 0 or not isinstance(
            data.get("owner", ""), (str, type(None))
        ):
            raise not_ours
        try:
            return cls(
                owner=Owner(data["pid"], data.get("owner")),
                spec=ClusterSpec(int(data["nodes"]), tuple(data.get("preload", ()))),
                ports=PortMap({int(guest): int(host) for guest, host in data.get("ports", {}).items()}),
                kubeconfig=Path(data["kubeconfig"]),
                debug_token_path=Path(data["debug_token"]) if data.get("debug_token") else None,
                consoles={name: Path(console) for name, console in data.get("consoles", {}).items()},
                addresses=list(data.get("addresses", [])),
                qmp_sockets=[Path(socket) for socket in data.get("qmp_sockets", [])],
                switch_qmp_socket=Path(data["switch_qmp_socket"]) if data.get("switch_qmp_socket") else None,
                phases=dict(data.get("phases", {})),
                how=str(data.get("how", "booted")),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise not_ours from None

    @classmethod
    def read(cls) -> KeptState:
        """The recorded cluster, checked to be one whose owning process is still alive."""
        path = state_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeptClusterError("no cluster is running (start one with: smalltown up)") from None
        except (OSError, ValueError) as error:  # unreadable, or not JSON (a crash mid-write, an edit)
            raise KeptClusterError(
                f"the cluster state file {path} is unreadable ({error}); if a cluster is still running, stop its "
                f"'smalltown up' process, then remove the file and start again with: smalltown up"
            ) from None
        state = cls.from_json(data, path)
        if not state.owner.running():
            path.unlink(missing_ok=True)
            raise KeptClusterError("the recorded cluster is gone (its process exited); start one with: smalltown up")
        return state

    @classmethod
    def running(cls) -> KeptState | None:
        """The kept cluster, if one runs (a record whose process is gone, or that cannot be read, counts as none)."""
        if not state_path().exists():
            return None
        try:
            return cls.read()
        except KeptClusterError:
            return None

    def write(self) -> None:
        """Record this state, atomically (a reader sees the old file or the new one, never half of one)."""
        path = state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, path)

    @staticmethod
    def forget(pid: int) -> None:
        """Remove the state file, if it is the one process ``pid`` recorded."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(state_path().read_text()).get("pid") == pid:
                state_path().unlink()

    def debug_token(self) -> str | None:
        """The kept cluster's debug token, read from the file the state names (None if it names none).

        Reading it needs the rights of the user who kept the cluster: another
        local user gets a clear error here, and UNAUTHENTICATED from the nodes
        if they try without it.
        """
        from pytest_smalltown.debug import read_debug_token

        if self.debug_token_path is None:
            return None
        try:
            return read_debug_token(self.debug_token_path)
        except PermissionError:
            raise KeptClusterError(f"the kept cluster's debug token {self.debug_token_path} is not yours to read: "
                                   "another user kept this cluster, and only they (or root) can call its debug "
                                   "services") from None
        except OSError as error:
            raise KeptClusterError(f"the kept cluster's debug token is unreadable ({error}); if it is still running, "
                                   "stop it and start again: smalltown down && smalltown up") from None

    def node_debug_port(self, index: int) -> int:
        """Host port of node ``index``'s debug service.

        A per-node debug port is guest port ``node_debug_guest_port(i)``. A
        state file from before those forwards existed has only node 0's
        debug service (the 7837 forward).
        """
        from pytest_smalltown.contract import node_debug_guest_port
        from pytest_smalltown.launch.switch import DEBUG_SERVICE_PORT

        if not 0 <= index < self.spec.nodes:
            raise KeptClusterError(f"--node {index}: the running cluster has nodes 0..{self.spec.nodes - 1}")
        port = self.ports.get(node_debug_guest_port(index))
        if port is None and index == 0:
            port = self.ports[DEBUG_SERVICE_PORT]
        if port is None:
            raise KeptClusterError(
                f"the running cluster forwards no debug port for node {index} (an older smalltown started it); "
                "use --node 0, or restart it: smalltown down && smalltown up"
            )
        return port


#: Seconds ``smalltown down`` gives the kept cluster's process to close it before killing it.
DOWN_TIMEOUT = 60.0


def stop_kept(timeout: float = DOWN_TIMEOUT) -> bool:
    """``smalltown down``: stop the process that keeps the cluster (it closes the cluster), and only that process.

    True if it stopped by itself within ``timeout`` s; False if it was killed
    (its state file is then removed here, as it could not remove it itself).
    """
    if KeptState.read().owner.stop(timeout):
        return True
    state_path().unlink(missing_ok=True)
    return False


def start_keeper(argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """``smalltown up``: start ``argv``, a process that launches a cluster and :func:`serve`s it; it and its log.

    The slot (:func:`claim`) is taken here and handed to that process, which
    holds it for as long as it keeps the cluster; raises
    :class:`KeptClusterError` if another process holds it.
    """
    slot = claim()
    if slot is None:
        raise KeptClusterError("another cluster is being started or kept right now (smalltown status shows it once it "
                               "is up); stop it with: smalltown down")
    log_path = state_path().parent / "up.log"
    with open(log_path, "wb") as log:
        keeper = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                  pass_fds=(slot,))  # fmt: skip
    os.close(slot)
    return keeper, log_path


def wait_recorded(keeper: subprocess.Popen[bytes], log_path: Path, echo: Callable[[str], object]) -> KeptState:
    """The state ``keeper`` (from :func:`start_keeper`) records once its cluster is up; its log is echoed meanwhile.

    No deadline of its own: the launch in the keeper has its boot timeout.
    Raises :class:`KeptClusterError`, with the log's tail, if it exits first.
    """
    offset = 0

    def recorded_or_exited() -> bool:
        nonlocal offset
        if state_path().exists() or keeper.poll() is not None:
            return True
        text = log_path.read_text(errors="replace")
        echo(text[offset:])
        offset = len(text)
        return False

    wait_for("the cluster's state file", recorded_or_exited, timeout=math.inf, interval=1.0)
    if not state_path().exists():
        raise KeptClusterError(f"{log_path.read_text()[-4000:]}\nthe cluster failed to start (exit "
                               f"{keeper.returncode}); full log: {log_path}")
    return KeptState.read()


def wait_while_kept(clusters: Iterable[ClusterHandle], say: Callable[[str], None],
                    stop: threading.Event | None = None) -> None:
    """Keep ``clusters`` up until ``stop`` is set, Ctrl-C (or SIGTERM turned into it), or one of them dies.

    The one wait of both keepers, ``smalltown up``'s server and a pytest
    session with ``--smalltown-keep-on-failure``: every second it asks each
    cluster's own ``check_alive``: a VM or the switch that exited ends the
    wait; a hung guest is said once and the cluster kept as it is.
    """
    clusters = list(clusters)
    hangs_told: set[str] = set()

    def stopped() -> bool:
        for cluster in clusters:
            try:
                cluster.check_alive()
            except GuestHungError as hung:
                # A kept cluster is there to be looked at: a hung guest is news, not a reason to destroy the
                # evidence. (Another process may also be rebooting that node, and resets a hung boot itself.)
                if hung.name not in hangs_told:
                    hangs_told.add(hung.name)
                    say(f"{hung.name}'s kernel reports a CPU stuck for {hung.seconds}s (soft lockup); the cluster "
                        "stays up as it is: its console log and `smalltown dbg` show what it does")
        return stop is not None and stop.is_set()

    try:
        # fatal=(Exception,): a death ends the wait at once, it is no "not yet".
        wait_for("smalltown down", stopped, timeout=math.inf, interval=1.0, fatal=(Exception,))
    except KeyboardInterrupt:
        say("stopping the kept clusters")
    except Exception as error:  # a kept VM died: nothing left to wait for
        say(f"a kept cluster died: {(str(error).splitlines() or [type(error).__name__])[0]}")


def serve(cluster: Any, stop: threading.Event, say: Callable[[str], None]) -> None:
    """``smalltown up``'s server: record ``cluster`` as kept by this process, keep it until ``stop`` or its death.

    The caller (which launched it) closes it afterwards.
    """
    pid = os.getpid()
    KeptState.of_cluster(cluster, pid).write()
    try:
        wait_while_kept([cluster], say, stop)
    finally:
        KeptState.forget(pid)
