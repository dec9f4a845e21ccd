"""Network faults on demand: partition the nodes, degrade one node's link, capture what crosses the switch.

Every frame between two nodes crosses the Nanoswitch, so that is where the
faults live (``images/go/nanoswitch/faults.go``): a partition drops frames
the switch's bridge would forward between nodes of different groups, a
degraded link is a netem qdisc on the switch's port towards that node. The
host sends them over a virtio-serial port whose host end is a UNIX socket in
the cluster's private work directory (:func:`~pytest_smalltown.launch.switch.control_socket_of`):
no guest has a device on it and no address leads to it.

The host keeps seeing every node throughout a partition: frames to and from
the switch itself (the host's forwarded ports, DHCP) are never dropped, so a
test observes it from outside, as an operator would. A degraded link slows
everything sent to its node, the host's requests included: that is what a
slow link does.

Each fault is a context manager that undoes itself on exit, also when the
test fails inside it, and is written into the cluster's
:class:`~pytest_smalltown.faults.FaultLog` while on::

    with cluster.network.isolate(1):      # or .partition([0], [1, 2])
        wait_for("node 1 NotReady", lambda: not node_ready(core.read_node(name)), 200)
    with cluster.network.degrade(1, delay_ms=200, loss_percent=5):
        ...

docs/faults.md says what each does at the packet level and what it does not model.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.faults import FaultLog, FaultRecord

#: How long a request may take: the switch polls its channel every 0.1 s and
#: runs under TCG beside busy nodes, where one nftables transaction took 1-2 s.
REQUEST_TIMEOUT = 30.0


class NetworkFaultError(SmalltownError, RuntimeError):
    """The switch refused or could not apply a network fault; the message says why."""


@dataclass(frozen=True)
class LinkProfile:
    """How a degraded link treats the frames sent to its node; at least one of delay, loss and rate."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    #: Pace the link to this many kilobits per second (0: unpaced).
    rate_kbit: int = 0

    def __post_init__(self) -> None:
        if min(self.delay_ms, self.jitter_ms, self.loss_percent, self.rate_kbit) < 0:
            raise ValueError(f"{self}: a link profile has no negative values")
        if self.loss_percent > 100:
            raise ValueError(f"loss {self.loss_percent:g}% is more than 100%")
        if self.jitter_ms and not self.delay_ms:
            raise ValueError("jitter needs a delay to vary around")
        if not (self.delay_ms or self.loss_percent or self.rate_kbit):
            raise ValueError("a degraded link needs a delay, loss or rate")

    def to_switch(self) -> dict[str, Any]:
        """The profile as the switch's request spells it (microseconds, bytes per second)."""
        return {
            "delay_us": round(self.delay_ms * 1000),
            "jitter_us": round(self.jitter_ms * 1000),
            "loss_percent": self.loss_percent,
            "rate_bytes_per_s": self.rate_kbit * 1000 // 8,
        }

    @classmethod
    def from_switch(cls, data: dict[str, Any]) -> LinkProfile:
        """The profile from the switch's status."""
        return cls(
            delay_ms=data.get("delay_us", 0) / 1000,
            jitter_ms=data.get("jitter_us", 0) / 1000,
            loss_percent=data.get("loss_percent", 0.0),
            rate_kbit=data.get("rate_bytes_per_s", 0) * 8 // 1000,
        )

    def __str__(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f" ±{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        if self.loss_percent:
            parts.append(f"loss {self.loss_percent:g}%")
        if self.rate_kbit:
            parts.append(f"rate {self.rate_kbit}kbit")
        return ", ".join(parts)


@dataclass(frozen=True)
class NetworkStatus:
    """The network faults on now: the partition's groups (empty: none) and each degraded node's link."""

    partition: tuple[tuple[int, ...], ...]
    degraded: dict[int, LinkProfile]

    def __str__(self) -> str:
        lines = ["partition: " + (" | ".join(f"[{','.join(map(str, g))}]" for g in self.partition) or "none")]
        lines += [f"node {node}'s link: {profile}" for node, profile in sorted(self.degraded.items())]
        if not self.degraded:
            lines.append("links: all ordinary")
        return "\n".join(lines)


def request(control_socket: Path, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> NetworkStatus:
    """Send one request to the switch's fault channel; its status afterwards, or :class:`NetworkFaultError`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
            channel.settimeout(timeout)
            channel.connect(str(control_socket))
            channel.sendall(json.dumps(body).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = channel.recv(65536)
                if not chunk:
                    raise NetworkFaultError(f"the switch closed its fault channel ({control_socket}) without an answer")
                reply += chunk
    except FileNotFoundError:
        raise NetworkFaultError(
            f"no fault channel at {control_socket}: the cluster is gone, or an older smalltown started its switch "
            "(restart it: smalltown down && smalltown up)"
        ) from None
    except (TimeoutError, socket.timeout):
        raise NetworkFaultError(f"the switch did not answer {body['op']} within {timeout:g}s ({control_socket})") from None
    except OSError as error:
        raise NetworkFaultError(f"the switch's fault channel ({control_socket}): {error}") from None
    answer = json.loads(reply)
    if not answer.get("ok"):
        raise NetworkFaultError(f"the switch refused {body['op']}: {answer.get('error')}")
    status = answer["status"]
    return NetworkStatus(
        partition=tuple(tuple(group) for group in status.get("partition") or ()),
        degraded={int(node): LinkProfile.from_switch(p) for node, p in (status.get("degraded") or {}).items()},
    )


class Network:
    """A cluster's network as a test provokes it: ``cluster.network``.

    Made from the switch's QMP socket (its fault channel lies beside it), so
    the cluster's own session and an attached one (``smalltown net``) drive
    the same switch the same way.
    """

    def __init__(self, switch_qmp_socket: Path, nodes: int, log: FaultLog, captures: Path | None = None) -> None:
        from pytest_smalltown.launch.switch import control_socket_of

        self.switch_qmp_socket = switch_qmp_socket
        self.control_socket = control_socket_of(switch_qmp_socket)
        self.nodes = nodes
        self.log = log
        #: Where each fault's packet capture goes (None: no capture): a failed test's artifacts get them.
        self.captures = captures

    @contextlib.contextmanager
    def _on(self, description: str) -> Iterator[FaultRecord]:
        """Log the fault for the with block, and capture every node's cable meanwhile when :attr:`captures` is set."""
        with self.log.on(description) as record:
            if self.captures is None:
                yield record
                return
            directory = self.captures / f"fault-{len(list(self.captures.glob('fault-*'))) + 1:03d}"
            with self.capture(directory) as files:
                record.captures = tuple(files)
                yield record

    def check_node(self, node: int) -> int:
        """``node``, if the cluster has it; LookupError otherwise."""
        if not 0 <= node < self.nodes:
            raise LookupError(f"node {node}: the cluster has nodes 0..{self.nodes - 1}")
        return node

    def status(self) -> NetworkStatus:
        """What is on now, as the switch reports it."""
        return request(self.control_socket, {"op": "status"})

    @contextlib.contextmanager
    def partition(self, *groups: Iterable[int]) -> Iterator[FaultRecord]:
        """Cut the groups of nodes off from each other for the with block: ``partition([0], [1, 2])``.

        A node in no group keeps reaching every node. One partition at a
        time; the host reaches every node throughout.
        """
        as_lists = [sorted({self.check_node(node) for node in group}) for group in groups]
        request(self.control_socket, {"op": "partition", "groups": as_lists})
        try:
            with self._on("network partitioned " + " | ".join(f"[{','.join(map(str, g))}]" for g in as_lists)) as record:
                yield record
        finally:
            request(self.control_socket, {"op": "heal_partition"})

    def isolate(self, node: int) -> contextlib.AbstractContextManager[FaultRecord]:
        """Cut node ``node`` off from every other node for the with block."""
        others = [other for other in range(self.nodes) if other != self.check_node(node)]
        return self.partition([node], others)

    @contextlib.contextmanager
    def degrade(self, node: int, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_percent: float = 0.0,
                rate_kbit: int = 0) -> Iterator[FaultRecord]:  # fmt: skip
        """Degrade the link to node ``node`` for the with block: every frame sent to it is delayed, dropped or paced.

        Frames the node sends are not, so a round trip through the link pays
        ``delay_ms`` once.
        """
        profile = LinkProfile(delay_ms, jitter_ms, loss_percent, rate_kbit)
        request(self.control_socket, {"op": "degrade", "node": self.check_node(node), "link": profile.to_switch()})
        try:
            with self._on(f"node {node}'s link degraded: {profile}") as record:
                yield record
        finally:
            request(self.control_socket, {"op": "restore", "node": node})

    def heal(self) -> NetworkStatus:
        """End every network fault (for a kept cluster's ``smalltown net heal``; tests use the with blocks)."""
        return request(self.control_socket, {"op": "heal"})

    @contextlib.contextmanager
    def capture(self, directory: Path, nodes: Sequence[int] | None = None) -> Iterator[list[Path]]:
        """Capture every frame on the cables of ``nodes`` (default: all) into ``directory/node<i>.pcap``.

        Each file holds both directions of one node's cable as the switch
        sees them (before a degraded link's qdisc delays or drops a frame to
        the node); Wireshark or ``tcpdump -r`` read them.
        """
        from pytest_smalltown.launch.switch import node_netdev
        from pytest_smalltown.launch.vmstate import Monitor, dump_frames

        directory.mkdir(parents=True, exist_ok=True)
        chosen = list(range(self.nodes)) if nodes is None else [self.check_node(node) for node in nodes]
        files = [directory / f"node{node}.pcap" for node in chosen]
        capture_id = secrets.token_hex(4)  # QEMU object ids are unique per VM: captures may overlap
        with contextlib.ExitStack() as stack:
            for node, path in zip(chosen, files):
                stack.enter_context(dump_frames(lambda: Monitor.at(self.switch_qmp_socket, "nanoswitch"),
                                                node_netdev(node), path, f"capture-{capture_id}-node{node}"))  # fmt: skip
            yield files


#: "200ms", "0.5s", "200" (milliseconds), "5%", "1mbit", "500kbit".
_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>us|ms|s)?$")
_RATE = re.compile(r"^(?P<value>\d+)(?P<unit>kbit|mbit|gbit)$")


def parse_duration_ms(text: str) -> float:
    """A tc-style duration (``200ms``, ``0.5s``, ``300us``; no unit: ms) in milliseconds."""
    found = _DURATION.match(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a duration such as 200ms or 0.5s")
    return float(found["value"]) * {"us": 0.001, "ms": 1, "s": 1000, None: 1}[found["unit"]]


def parse_percent(text: str) -> float:
    """``5%`` or ``5`` as 5.0."""
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage such as 5%") from None


def parse_rate_kbit(text: str) -> int:
    """A tc-style rate (``500kbit``, ``10mbit``, ``1gbit``) in kilobits per second."""
    found = _RATE.match(text.strip().lower())
    if not found:
        raise ValueError(f"{text!r} is not a rate such as 500kbit or 10mbit")
    return int(found["value"]) * {"kbit": 1, "mbit": 1000, "gbit": 1000_000}[found["unit"]]


def parse_groups(texts: Sequence[str]) -> list[list[int]]:
    """``["0", "1,2"]`` as ``[[0], [1, 2]]``: the CLI's groups of nodes."""
    try:
        return [[int(item) for item in text.split(",")] for text in texts]
    except ValueError:
        raise ValueError(f"{' '.join(texts)!r}: give each group as node numbers joined by commas, e.g. 0 1,2") from None
