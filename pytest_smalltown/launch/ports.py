"""Port maps: which host port on 127.0.0.1 reaches which guest port.

Tests run many clusters side by side (parallel CI jobs, a developer's own
cluster), so the harness never assumes fixed host ports: every forwarded
guest port gets an ephemeral host port (:func:`conflict_free_port_map`).
Developers poking at a single cluster by hand may prefer
:func:`identity_port_map`.

Forwarding rules always bind 127.0.0.1, never all interfaces: a test cluster's
debug service hands out cluster-admin credentials to whoever asks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Mapping

from pytest_smalltown.base.rpc import grpc  # before anything imports grpc: it sets its environment

from pytest_smalltown.base.errors import SmalltownError

LOOPBACK = "127.0.0.1"

#: gRPC channel options for a node that is still booting. By default a channel
#: backs off exponentially to minutes between connection attempts; while a
#: node boots every early attempt fails (the switch accepts, then closes), so
#: by the time the debug service listens the channel could be asleep for
#: 10+ seconds. Retrying every 100 ms, at most 1 s apart, costs nothing on
#: loopback.
BOOTING_NODE_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class PortNotForwardedError(SmalltownError, KeyError):
    """A guest port was asked for that this port map does not forward."""

    def __init__(self, port: int, forwarded: Iterable[int]) -> None:
        self.port = port
        self.forwarded = sorted(forwarded)
        super().__init__(
            f"guest port {port} is not forwarded; forwarded ports are {self.forwarded}. "
            "Ask the launcher to forward it (ports=...)."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PortMap(Mapping[int, int]):
    """An immutable mapping guest port -> host port (on 127.0.0.1)."""

    def __init__(self, mapping: Mapping[int, int]) -> None:
        self._map = {int(guest): int(host) for guest, host in mapping.items()}

    def __getitem__(self, guest_port: int) -> int:
        try:
            return self._map[int(guest_port)]
        except KeyError:
            raise PortNotForwardedError(int(guest_port), self._map) from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        pairs = ", ".join(f"{g}->{LOOPBACK}:{h}" for g, h in sorted(self._map.items()))
        return f"PortMap({pairs})"

    def address(self, guest_port: int) -> str:
        """``127.0.0.1:HOSTPORT`` for a guest port."""
        return f"{LOOPBACK}:{self[guest_port]}"

    def hostfwd_rules(self) -> list[str]:
        """QEMU user-networking rules, bound to 127.0.0.1 only."""
        return [f"hostfwd=tcp:{LOOPBACK}:{host}-:{guest}" for guest, host in sorted(self._map.items())]

    def dial_grpc(self, guest_port: int, options: list[tuple[str, int | str]] | None = None) -> grpc.Channel:
        """An insecure gRPC channel to the forwarded guest port (the debug service is plaintext)."""
        return grpc.insecure_channel(self.address(guest_port), options=BOOTING_NODE_CHANNEL_OPTIONS + (options or []))


def identity_port_map(ports: Iterable[int]) -> PortMap:
    """Each guest port on the same host port: handy by hand, collides in parallel runs."""
    return PortMap({int(p): int(p) for p in ports})


def allocate_free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago.

    The socket is closed before QEMU binds the port, so another process may take
    it in between; launchers detect that and retry with a new map
    (see :func:`pytest_smalltown.launch.vm.start_vm_with_ports`).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def conflict_free_port_map(ports: Iterable[int]) -> PortMap:
    """Each guest port on its own ephemeral host port on 127.0.0.1."""
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for guest in ports:
        host = allocate_free_port()
        while host in taken:  # the kernel may hand the same port out twice once closed
            host = allocate_free_port()
        taken.add(host)
        mapping[int(guest)] = host
    return PortMap(mapping)


def dial_grpc(port: int, host: str = LOOPBACK) -> grpc.Channel:
    """An insecure gRPC channel to ``host:port`` on the host side of a port map."""
    return grpc.insecure_channel(f"{host}:{port}", options=BOOTING_NODE_CHANNEL_OPTIONS)
