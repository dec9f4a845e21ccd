"""A cluster kept running between sessions, and how a session attaches to it.

``smalltown up`` (and a pytest session run with ``--smalltown-keep-on-failure``
whose tests failed) records the running cluster in one state file: the
process that owns the VMs, the forwarded ports, the kubeconfig and the
console logs. The CLI's ``status``/``dbg``/``down`` read it, and
``pytest --smalltown-attach`` runs a session against that cluster instead of
booting one: fresh namespaces per test as always, nothing torn down at the
end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import select
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_smalltown.contract import NodePort
from pytest_smalltown.images.cache import cache_root
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.vm import check_console_not_hung
from pytest_smalltown.settings import DEFAULT_BOOT_TIMEOUT
from pytest_smalltown.spec import ClusterSpec


class KeptClusterError(RuntimeError):
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

    @classmethod
    def of(cls, state: dict[str, Any]) -> Owner:
        return cls(state["pid"], state.get("owner"))

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


def read_state() -> dict[str, Any]:
    """The recorded cluster, checked to be one whose owning process is still alive."""
    path = state_path()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeptClusterError("no cluster is running (start one with: smalltown up)") from None
    except (OSError, ValueError) as error:  # unreadable, or not JSON (a crash mid-write, an edit)
        raise KeptClusterError(
            f"the cluster state file {path} is unreadable ({error}); if a cluster is still running, stop its "
            f"'smalltown up' process, then remove the file and start again with: smalltown up"
        ) from None
    # A pid of 0 or below would name a process group, or every process there is, to a signal.
    if not isinstance(state, dict) or type(state.get("pid")) is not int or state["pid"] <= 0 or not isinstance(
        state.get("owner", ""), str
    ):
        raise KeptClusterError(
            f"the cluster state file {path} is not one that 'smalltown up' wrote; remove it and "
            "start again with: smalltown up"
        )
    if not Owner.of(state).running():
        path.unlink(missing_ok=True)
        raise KeptClusterError(
            "the recorded cluster is gone (its process exited); start one with: smalltown up"
        ) from None
    return state


def write_state(cluster: Any, pid: int) -> None:
    """Record ``cluster`` (a :class:`~pytest_smalltown.cluster.Cluster`) as kept by process ``pid``."""
    state = {
        "pid": pid,
        "owner": process_identity(pid),
        "nodes": cluster.spec.nodes,
        "preload": list(cluster.spec.preload),
        "ports": {str(guest): host for guest, host in cluster.ports.items()},
        "kubeconfig": str(cluster.kubeconfig_path),
        # The file, not the token: the state file is not private, the token file (0600) is.
        "debug_token": str(cluster.debug_token_path),
        "consoles": {node.name: str(node.console_log) for node in cluster.nodes},
        # Per node index: what a reboot from another process needs.
        "addresses": [node.address for node in cluster.nodes],
        "qmp_sockets": [str(node.qmp_socket) for node in cluster.nodes],
        "switch_qmp_socket": str(cluster.switch_qmp_socket),
        "phases": cluster.phase_seconds,
        "how": cluster.how,
    }
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def debug_token(state: dict[str, Any]) -> str | None:
    """The kept cluster's debug token, read from the file its state names (None if it names none).

    Reading it needs the rights of the user who kept the cluster: another
    local user gets a clear error here, and UNAUTHENTICATED from the nodes
    if they try without it.
    """
    from pytest_smalltown.debug import read_debug_token

    if not state.get("debug_token"):
        return None
    path = Path(state["debug_token"])
    try:
        return read_debug_token(path)
    except PermissionError:
        raise KeptClusterError(f"the kept cluster's debug token {path} is not yours to read: another user kept "
                               "this cluster, and only they (or root) can call its debug services") from None
    except OSError as error:
        raise KeptClusterError(f"the kept cluster's debug token is unreadable ({error}); if it is still running, "
                               "stop it and start again: smalltown down && smalltown up") from None


def remove_state(pid: int) -> None:
    """Forget the kept cluster, if it is the one process ``pid`` recorded."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(state_path().read_text()).get("pid") == pid:
            state_path().unlink()


@dataclass
class AttachedCluster:
    """The kept cluster as a session sees it: the same clients as a launched one; closing leaves it running."""

    spec: ClusterSpec
    debug: Any  # DebugClient
    kube: Any  # kubernetes.client.ApiClient
    kubeconfig_path: Path
    ports: PortMap
    owner_pid: int
    console_paths: dict[str, Path]
    #: :func:`process_identity` of the owner (None: an older smalltown kept it and recorded none).
    owner_identity: str | None = None
    #: The cluster's debug token and its file (None: an older smalltown kept it, whose nodes check none).
    debug_token: str | None = None
    debug_token_path: Path | None = None
    addresses: list[str] = field(default_factory=list)
    qmp_sockets: list[Path] = field(default_factory=list)
    switch_qmp_socket: Path | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def load_image(self, archive: Path, nodes: Iterable[int] | None = None) -> None:
        """As :meth:`pytest_smalltown.cluster.Cluster.load_image`, into the kept cluster's nodes."""
        from pytest_smalltown.debug import load_image_into_nodes

        load_image_into_nodes(self.ports, self.debug_token, archive, range(self.spec.nodes) if nodes is None else nodes)

    def forward_node_port(self, node_port: int) -> int:
        """As :meth:`pytest_smalltown.cluster.Cluster.forward_node_port`; the forward lasts as long as the kept cluster."""
        from pytest_smalltown.launch.switch import forward_node_port
        from pytest_smalltown.launch.vmstate import Monitor

        if self.switch_qmp_socket is None:
            raise KeptClusterError("an older smalltown started the kept cluster (no switch QMP socket recorded); "
                                   "restart it: smalltown down && smalltown up")
        monitor = Monitor.at(self.switch_qmp_socket, "nanoswitch")
        try:
            return forward_node_port(monitor, node_port)
        finally:
            monitor.close()

    def node_debug(self, index: int) -> Any:
        """As :meth:`pytest_smalltown.cluster.Cluster.node_debug`: a new debug client for node ``index``."""
        from pytest_smalltown.debug import node_debug_client

        return node_debug_client(self.ports, index, self.debug_token)

    def stop_node(self, index: int) -> None:
        """As :meth:`pytest_smalltown.cluster.Cluster.stop_node`: node ``index`` stops, unwarned, and stays stopped.

        Its vCPUs are stopped for good (QMP ``stop``) rather than its QEMU
        ended: the VMs belong to the process that keeps the cluster, which
        cannot tell an exit asked for here from a crash and would close the
        whole cluster. To the other nodes and the API it is a power cut (no
        answer, no goodbye); its QEMU and RAM go with the rest at ``smalltown down``.
        """
        from pytest_smalltown.launch.vmstate import Monitor, pause

        monitor = Monitor.at(self._qmp_socket(index), f"node{index}")
        try:
            pause(monitor)
        finally:
            monitor.close()

    def _qmp_socket(self, index: int) -> Path:
        if not 0 <= index < len(self.qmp_sockets):
            raise KeptClusterError(
                f"node {index}: the kept cluster has nodes 0..{self.spec.nodes - 1}"
                + ("" if self.qmp_sockets else " but an older smalltown started it (no QMP sockets recorded); "
                   "restart it: smalltown down && smalltown up")
            )
        return self.qmp_sockets[index]

    def reboot_node(self, index: int, hard: bool = False, timeout: float | None = None) -> Any:
        """As :meth:`pytest_smalltown.cluster.Cluster.reboot_node`, on the kept cluster's node ``index``."""
        from pytest_smalltown.debug import node_debug_client
        from pytest_smalltown.launch.vmstate import Monitor
        from pytest_smalltown.lifecycle import reboot_node

        name = f"node{index}"
        monitor = Monitor.at(self._qmp_socket(index), name)
        debug = node_debug_client(self.ports, index, self.debug_token)
        try:
            return reboot_node(monitor, debug, self.kube, self.addresses[index], hard=hard,
                               timeout=DEFAULT_BOOT_TIMEOUT if timeout is None else timeout,
                               guest=ConsoleLogFile(name, self.console_paths.get(name)))
        finally:
            debug.close()
            monitor.close()

    def check_alive(self) -> None:
        if not Owner(self.owner_pid, self.owner_identity).running():
            raise KeptClusterError(
                f"the kept cluster's process (pid {self.owner_pid}) exited; start one again with: smalltown up"
            )

    def consoles(self, lines: int = 40) -> dict[str, list[str]]:
        """The last ``lines`` lines of each node's console log."""
        tails = {}
        for name, path in self.console_paths.items():
            with contextlib.suppress(OSError):
                tails[name] = path.read_text(errors="replace").splitlines()[-lines:]
        return tails

    def dump(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        copied = []
        for path in self.console_paths.values():
            with contextlib.suppress(OSError):
                copied.append(Path(shutil.copy(path, directory / path.name)))
        return copied

    def close(self) -> None:
        """Close this session's clients; the cluster itself stays up for the next session."""
        with contextlib.suppress(Exception):
            self.kube.close()
        with contextlib.suppress(Exception):
            self.debug.close()


class ConsoleLogFile:
    """A kept node's console as a reboot reads it: from its log file, since the VM is the keeping process's."""

    def __init__(self, name: str, path: Path | None) -> None:
        self.name = name
        self.path = path
        self._reset_at = 0

    def _read(self, start: int = 0) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as log:
                log.seek(start)
                return log.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def note_reset(self) -> None:
        """Health checks read what the log gains from now on."""
        try:
            self._reset_at = self.path.stat().st_size if self.path is not None else 0
        except OSError:
            self._reset_at = 0

    def check_not_hung(self) -> None:
        """As :meth:`pytest_smalltown.launch.vm.VM.check_not_hung`, on the log since :meth:`note_reset`."""
        check_console_not_hung(self.name, self._read(self._reset_at), self.console_tail)

    def console_tail(self, lines: int = 50) -> list[str]:
        """The log's last ``lines`` lines."""
        return self._read()[-lines:]


def attach(spec: ClusterSpec) -> AttachedCluster:
    """Clients for the kept cluster, which must be of ``spec``."""
    from pytest_smalltown.debug import DebugClient
    from pytest_smalltown.kube import api_client

    state = read_state()
    kept = ClusterSpec(int(state["nodes"]), tuple(state.get("preload", ())))
    if kept != spec:
        raise KeptClusterError(
            f"--smalltown-attach: the kept cluster is {kept}, but these tests need {spec}; run them without "
            f"--smalltown-attach, or keep a matching one: smalltown down && smalltown up --nodes {spec.nodes}"
            + "".join(f" --preload {name}" for name in spec.preload)
        )
    ports = PortMap({int(guest): int(host) for guest, host in state["ports"].items()})
    kubeconfig = Path(state["kubeconfig"])
    token = debug_token(state)
    return AttachedCluster(
        spec=spec,
        debug=DebugClient(ports.dial_grpc(NodePort.DEBUG_SERVICE), token=token),
        debug_token=token,
        debug_token_path=Path(state["debug_token"]) if token else None,
        kube=api_client(kubeconfig),
        kubeconfig_path=kubeconfig,
        ports=ports,
        owner_pid=int(state["pid"]),
        owner_identity=state.get("owner"),
        console_paths={name: Path(path) for name, path in state.get("consoles", {}).items()},
        addresses=list(state.get("addresses", [])),
        qmp_sockets=[Path(path) for path in state.get("qmp_sockets", [])],
        switch_qmp_socket=Path(state["switch_qmp_socket"]) if state.get("switch_qmp_socket") else None,
    )
