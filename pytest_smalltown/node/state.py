"""What every part of the node agent shares: the node's :class:`Role` and one :class:`NodeState`.

The boot thread, the debug service's handlers and the background threads
(image import, consensus, volumes, the node watch) all hold the same
:class:`NodeState`: the config, the log buffers, the conditions, the
supervisor and the stop event, and what the boot learns as it goes (role,
name, address). Its fields are set once by the boot, in order, and only read
elsewhere, so they need no lock.

It also says which apiserver a client talks to (:func:`apiserver_url`), the
one place that URL is built.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import components as comp
from pytest_smalltown.node import network
from pytest_smalltown.node.config import AgentConfig
from pytest_smalltown.node.console import Console
from pytest_smalltown.node.debug_service import Conditions
from pytest_smalltown.node.enrolment import joins_consensus
from pytest_smalltown.node.logbuffer import LogRegistry
from pytest_smalltown.node.supervisor import Supervisor


@dataclass
class Role:
    bootstrap: bool
    ticket: enrolment_pb2.GoldenTicket | None = None

    @property
    def control_plane(self) -> bool:
        """Runs etcd, apiserver, controller-manager and scheduler: node 0, and nodes that joined the consensus."""
        return self.bootstrap or (self.ticket is not None and joins_consensus(self.ticket))


def apiserver_address(cfg: AgentConfig, host: str = "127.0.0.1") -> str:
    """``host:port`` of the apiserver on ``host``; by default this node's own, on loopback."""
    return f"{host}:{cfg.ports.apiserver}"


def apiserver_url(cfg: AgentConfig, address: str | None = None) -> str:
    """The apiserver at ``address`` (``host:port``) as a URL; without one, this node's own on loopback.

    Control-plane components, the admin client and debug kubeconfigs always
    use their own node's apiserver; what the kubelet, kube-proxy, the
    provisioner and the node watch use is :attr:`NodeState.apiserver_url`.
    """
    return f"https://{apiserver_address(cfg) if address is None else address}"


class NodeState:
    """The one object every part and thread of the agent reads the node from (see the module docstring)."""

    def __init__(self, cfg: AgentConfig, logs: LogRegistry, console: Console, conditions: Conditions,
                 supervisor: Supervisor) -> None:
        self.cfg = cfg
        self.logs = logs
        self.console = console
        self.conditions = conditions
        self.supervisor = supervisor
        #: Set when the agent stops; every loop and wait of every thread ends on it.
        self.stop = threading.Event()
        self.role: Role | None = None
        self.name: str | None = None
        self.ip: str | None = None
        self.lease: network.Lease | None = None

    def log(self, message: str) -> None:
        """One line on the serial console (and in the ``agent`` buffer)."""
        self.console.log(message)

    @property
    def bootstrap(self) -> bool:
        """This node bootstrapped the cluster (node 0); False until the boot has read the enrolment file."""
        return bool(self.role and self.role.bootstrap)

    @property
    def apiserver_url(self) -> str:
        """The apiserver this node's kubelet, kube-proxy, provisioner and node watch use.

        A node that joined (worker or consensus member) uses the address its
        ticket named; node 0 its own on loopback.
        """
        ticket = self.role.ticket if self.role is not None else None
        return apiserver_url(self.cfg, ticket.apiserver_address if ticket is not None else None)

    def node_facts(self) -> comp.NodeFacts:
        """Name, address, apiserver and upstream DNS servers, as the component configs need them."""
        assert self.name and self.ip
        upstream = self.lease.dns if self.lease else tuple(
            network.read_resolv_nameservers(self.cfg.etc / "resolv.conf"))
        return comp.NodeFacts(self.name, self.ip, self.apiserver_url, upstream)

    def guarded(self, fn: Callable[[], object]) -> None:
        """Run ``fn``, logging its traceback instead of raising: the target of the agent's background threads."""
        try:
            fn()
        except Exception:  # noqa: BLE001
            for line in traceback.format_exc().splitlines():
                self.log(f"FAILED: {line}")
