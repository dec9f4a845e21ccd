"""The kept cluster as another process sees it: ``pytest --smalltown-attach`` and ``smalltown reboot``.

The VMs belong to the process that keeps the cluster (:mod:`pytest_smalltown.kept`);
an attached session reaches them through what the :class:`~pytest_smalltown.kept.KeptState`
records: forwarded ports, the debug token's file, QMP sockets and console logs.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pytest_smalltown import faults
from pytest_smalltown.contract import NodePort
from pytest_smalltown.kept import KeptClusterError, KeptState
from pytest_smalltown.launch.console import ConsoleLog
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.launch.vm import check_console_not_hung
from pytest_smalltown.settings import DEFAULT_BOOT_TIMEOUT
from pytest_smalltown.spec import ClusterSpec


class AttachedCluster:
    """The kept cluster as a session sees it: the same clients as a launched one; closing leaves it running."""

    def __init__(self, state: KeptState, debug: Any, kube: Any, debug_token: str | None = None) -> None:
        self.state = state
        self.debug = debug  # DebugClient
        self.kube = kube  # kubernetes.client.ApiClient
        #: The cluster's debug token (None: an older smalltown kept it, whose nodes check none).
        self.debug_token = debug_token
        #: The faults this session switched on (:mod:`pytest_smalltown.faults`).
        self.faults = faults.FaultLog()

    @property
    def spec(self) -> ClusterSpec:
        return self.state.spec

    @property
    def kubeconfig_path(self) -> Path:
        return self.state.kubeconfig

    @property
    def ports(self) -> PortMap:
        return self.state.ports

    @property
    def debug_token_path(self) -> Path | None:
        return self.state.debug_token_path if self.debug_token else None

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Empty: this session did not launch it (the pool's summary shows only its attach)."""
        return {}

    def load_image(self, archive: Path, nodes: Iterable[int] | None = None) -> None:
        """As :meth:`pytest_smalltown.cluster.Cluster.load_image`, into the kept cluster's nodes."""
        from pytest_smalltown.debug import load_image_into_nodes

        load_image_into_nodes(self.ports, self.debug_token, archive, range(self.spec.nodes) if nodes is None else nodes)

    def forward_node_port(self, node_port: int) -> int:
        """As :meth:`pytest_smalltown.cluster.Cluster.forward_node_port`; the forward lasts as long as the kept cluster."""
        from pytest_smalltown.launch.switch import forward_node_port
        from pytest_smalltown.launch.vmstate import Monitor

        if self.state.switch_qmp_socket is None:
            raise KeptClusterError("an older smalltown started the kept cluster (no switch QMP socket recorded); "
                                   "restart it: smalltown down && smalltown up")
        monitor = Monitor.at(self.state.switch_qmp_socket, "nanoswitch")
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

    @contextlib.contextmanager
    def frozen(self, index: int) -> Iterator[faults.FaultRecord]:
        """As :meth:`pytest_smalltown.cluster.Cluster.frozen`, on the kept cluster's node ``index``."""
        from pytest_smalltown.launch.vmstate import Monitor

        monitor = Monitor.at(self._qmp_socket(index), f"node{index}")
        try:
            with faults.frozen(monitor, self.faults, f"node{index}") as record:
                yield record
        finally:
            monitor.close()

    @contextlib.contextmanager
    def clock_stepped(self, index: int, seconds: float) -> Iterator[faults.FaultRecord]:
        """As :meth:`pytest_smalltown.cluster.Cluster.clock_stepped`, on the kept cluster's node ``index``."""
        debug = self.node_debug(index)
        try:
            with faults.clock_stepped(debug, self.faults, f"node{index}", seconds) as record:
                yield record
        finally:
            debug.close()

    @property
    def network(self) -> Any:
        """As :attr:`pytest_smalltown.cluster.Cluster.network`: the kept cluster's network (a :class:`~pytest_smalltown.network.Network`)."""
        from pytest_smalltown.network import Network

        if self.state.switch_qmp_socket is None:
            raise KeptClusterError("an older smalltown started the kept cluster (no switch QMP socket recorded); "
                                   "restart it: smalltown down && smalltown up")
        return Network(self.state.switch_qmp_socket, self.spec.nodes, self.faults)

    def _qmp_socket(self, index: int) -> Path:
        sockets = self.state.qmp_sockets
        if not 0 <= index < len(sockets):
            raise KeptClusterError(
                f"node {index}: the kept cluster has nodes 0..{self.spec.nodes - 1}"
                + ("" if sockets else " but an older smalltown started it (no QMP sockets recorded); "
                   "restart it: smalltown down && smalltown up")
            )
        return sockets[index]

    def reboot_node(self, index: int, hard: bool = False, timeout: float | None = None) -> Any:
        """As :meth:`pytest_smalltown.cluster.Cluster.reboot_node`, on the kept cluster's node ``index``."""
        from pytest_smalltown.debug import node_debug_client
        from pytest_smalltown.launch.vmstate import Monitor
        from pytest_smalltown.lifecycle import reboot_node

        name = f"node{index}"
        monitor = Monitor.at(self._qmp_socket(index), name)
        debug = node_debug_client(self.ports, index, self.debug_token)
        try:
            return reboot_node(monitor, debug, self.kube, self.state.addresses[index], hard=hard,
                               timeout=DEFAULT_BOOT_TIMEOUT if timeout is None else timeout,
                               guest=KeptNodeConsole(name, self.state.consoles.get(name)))
        finally:
            debug.close()
            monitor.close()

    def check_alive(self) -> None:
        if not self.state.owner.running():
            raise KeptClusterError(
                f"the kept cluster's process (pid {self.state.owner.pid}) exited; start one again with: smalltown up"
            )

    def consoles(self, lines: int = 40) -> dict[str, list[str]]:
        """The last ``lines`` lines of each node's console log (a log that cannot be read is left out)."""
        return {name: ConsoleLog(name, path).console_tail(lines)
                for name, path in self.state.consoles.items() if path.is_file()}  # fmt: skip

    def dump(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        copied = []
        for path in self.state.consoles.values():
            with contextlib.suppress(OSError):
                copied.append(Path(shutil.copy(path, directory / path.name)))
        return copied

    def close(self) -> None:
        """Close this session's clients; the cluster itself stays up for the next session."""
        with contextlib.suppress(Exception):
            self.kube.close()
        with contextlib.suppress(Exception):
            self.debug.close()


class KeptNodeConsole(ConsoleLog):
    """A kept node's console as a reboot reads it: from its log file, since the VM is the keeping process's."""

    def check_not_hung(self) -> None:
        """As :meth:`pytest_smalltown.launch.vm.VM.check_not_hung`, on the log since :meth:`note_reset`."""
        check_console_not_hung(self)


def attach(spec: ClusterSpec) -> AttachedCluster:
    """Clients for the kept cluster, which must be of ``spec``."""
    from pytest_smalltown.debug import DebugClient
    from pytest_smalltown.kube import api_client

    state = KeptState.read()
    if state.spec != spec:
        raise KeptClusterError(
            f"--smalltown-attach: the kept cluster is {state.spec}, but these tests need {spec}; run them without "
            f"--smalltown-attach, or keep a matching one: smalltown down && smalltown up --nodes {spec.nodes}"
            + "".join(f" --preload {name}" for name in spec.preload)
        )
    token = state.debug_token()
    return AttachedCluster(
        state,
        debug=DebugClient(state.ports.dial_grpc(NodePort.DEBUG_SERVICE), token=token),
        kube=api_client(state.kubeconfig),
        debug_token=token,
    )
