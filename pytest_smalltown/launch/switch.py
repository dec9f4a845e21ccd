"""The Nanoswitch: the microVM that is a test cluster's only network.

Node VMs have no network but a socket NIC whose other end is a NIC of the
switch. The switch bridges them all as 10.1.0.1/24, hands node ``i`` the fixed
address ``10.1.0.(2+i)`` by DHCP (the launcher chooses each node's MAC, so
addresses are known before anything boots), masquerades the nodes out of its
QEMU user-mode uplink, and proxies the host's forwarded ports (127.0.0.1 only)
to node 0, plus one port per node to that node's debug service
(:meth:`Switch.node_debug_port`). The program inside is
``images/go/nanoswitch``; everything cluster-specific reaches it on the
kernel command line, built here.

Behaviour worth knowing when debugging a cluster (all on the switch's console,
``Switch.console_tail()`` or ``<workdir>/nanoswitch.console.log``):

* ``nanoswitch: lease 10.1.0.3 to 02:53:4d:01:00:03`` for every DHCP ACK. A
  MAC that is not in the lease table still gets an address, from a separate
  pool (10.1.0.200-254, logged with ``(pool)``), so an extra VM someone
  attaches works but can never take a planned node address.
* ``nanoswitch: proxying 27837->10.1.0.2:7837 27838->10.1.0.3:7837`` (the
  per-node debug ports), then
  ``nanoswitch: forwarding 7836,7837,6443 to 10.1.0.2 (up 1.9s)`` once the
  bridge, DHCP, NAT and the port listeners are up; ``nanoswitch: fatal: ...``
  (then power-off) if it cannot start. :meth:`Switch.wait_ready` waits for either.
* Forwarding is a userspace TCP proxy. QEMU accepts a host connection before
  the guest does, so while node 0 is not listening yet a client sees
  connect-then-EOF rather than "connection refused": clients must retry.

Typical use::

    with launch_switch(nodes=2) as switch:
        node0 = VMConfig(..., nics=(switch.node_nic(0),))
        ...
        grpc.insecure_channel(switch.ports.address(7837))   # node 0
        dial_grpc(switch.node_debug_port(1))                 # node 1's debug service
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING

from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.progress import Progress, stderr_progress
from pytest_smalltown.contract import (
    MAX_NODES,
    NODE_DEBUG_PORT_BASE,
    NODE_PORT_RANGE,
    SWITCH_FORWARDED_PORTS,
    UPLINK_MAC,
    NodePort,
    check_node_count,
    node_address,
    node_debug_guest_port,
    node_mac,
)
from pytest_smalltown.launch.accel import resolve_accel
from pytest_smalltown.launch.ports import PortMap, allocate_free_port
from pytest_smalltown.launch.qemu import QEMU_BINARY, Accel, DirectBoot, SocketNic, UserNic, VMConfig
from pytest_smalltown.launch.vm import (
    VM,
    ConsoleTimeoutError,
    VMExitedError,
    make_workdir,
    remove_workdir,
    start_vm_with_ports,
)

if TYPE_CHECKING:
    from pytest_smalltown.images.switch import SwitchImage
    from pytest_smalltown.launch.vmstate import Monitor

EXTERNAL_SERVICE_PORT = int(NodePort.EXTERNAL_SERVICE)  # 7836
DEBUG_SERVICE_PORT = int(NodePort.DEBUG_SERVICE)  # 7837
KUBERNETES_API_PORT = int(NodePort.KUBERNETES_API)  # 6443
#: Guest ports forwarded from 127.0.0.1 on the host to node 0 unless told otherwise.
DEFAULT_PORTS: tuple[int, ...] = tuple(int(p) for p in SWITCH_FORWARDED_PORTS)


#: Memory for the switch VM. The switch is one Go program; 128 MiB is plenty
#: and keeps the host free for the nodes.
SWITCH_MEMORY_MIB = 128
#: Default deadline for "forwarding". The switch gets there in a few seconds
#: under TCG on an idle host; the margin is for a host busy with node VMs.
READY_TIMEOUT = 120.0

#: The switch prints exactly one of these once it has started (or failed to).
READY_PATTERN = r"nanoswitch: (forwarding .*|fatal: .*)"


class SwitchError(SmalltownError, RuntimeError):
    """The switch failed to start, or was not ready before its deadline."""


#: Uplink ports the switch keeps for the per-node debug forwards, whatever the node count.
NODE_DEBUG_GUEST_PORTS = range(NODE_DEBUG_PORT_BASE, NODE_DEBUG_PORT_BASE + MAX_NODES)


def check_ports(ports: Iterable[int]) -> tuple[int, ...]:
    """Validate guest ports to forward to node 0: ints in 1..65535, no duplicates, none of
    the per-node debug ports, order kept."""
    result: list[int] = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= int(port) <= 65535:
            raise ValueError(f"not a TCP port: {port!r}")
        if int(port) in NODE_DEBUG_GUEST_PORTS:
            raise ValueError(
                f"port {int(port)} is reserved: the switch forwards {NODE_DEBUG_GUEST_PORTS.start}.."
                f"{NODE_DEBUG_GUEST_PORTS.stop - 1} to each node's debug service"
            )
        if int(port) in NODE_PORT_RANGE:
            raise ValueError(
                f"port {int(port)} is a NodePort ({NODE_PORT_RANGE.start}..{NODE_PORT_RANGE.stop - 1}); those "
                "are forwarded while a test runs: Cluster.forward_node_port"
            )
        if int(port) in result:
            raise ValueError(f"port {int(port)} given twice")
        result.append(int(port))
    return tuple(result)


def switch_cmdline(
    nodes: int,
    ports: Sequence[int] = DEFAULT_PORTS,
    target: int = 0,
    extra: Sequence[str] = (),
) -> str:
    """The switch's kernel command line: console plus the ``nanoswitch.*`` parameters.

    ``target`` is the index of the node that forwarded ports lead to (node 0 in
    a Smalltown cluster). Every node's debug service also gets an uplink port
    of its own (:func:`node_debug_guest_port`). Syntax, parsed by
    ``images/go/nanoswitch/config.go``::

        nanoswitch.nodes=N nanoswitch.forward=P,P nanoswitch.target=IP
        nanoswitch.lease=MAC=IP,MAC=IP
        nanoswitch.proxy=P=IP:Q,P=IP:Q      (uplink port P to port Q of a node)
        nanoswitch.dnat=LO-HI               (uplink ports LO..HI to node 0, NodePorts)
        nanoswitch.ports=MAC,MAC            (the switch's NIC on node i's cable, node order)
        nanoswitch.control=NAME             (the virtio-serial port of the fault channel)

    ``extra`` are further kernel parameters. (The TSC workaround every
    microVM needs under TCG is added by :func:`pytest_smalltown.launch.qemu.qemu_argv`.)
    """
    check_node_count(nodes)
    ports = check_ports(ports)
    if not 0 <= target < nodes:
        raise ValueError(f"forwarding target node {target} is not among the {nodes} nodes")
    leases = ",".join(f"{node_mac(i)}={node_address(i)}" for i in range(nodes))
    debug = ",".join(f"{node_debug_guest_port(i)}={node_address(i)}:{DEBUG_SERVICE_PORT}" for i in range(nodes))
    params = [
        # quiet: every console byte is a trapped I/O write under TCG.
        "console=ttyS0",
        "panic=-1",
        "quiet",
        f"nanoswitch.nodes={nodes}",
        f"nanoswitch.lease={leases}",
        f"nanoswitch.proxy={debug}",
        f"nanoswitch.ports={','.join(switch_port_mac(i) for i in range(nodes))}",
        f"nanoswitch.control={CONTROL_PORT_NAME}",
    ]
    params += [f"nanoswitch.target={node_address(target)}",
               f"nanoswitch.dnat={NODE_PORT_RANGE.start}-{NODE_PORT_RANGE.stop - 1}"]
    if ports:
        params.append(f"nanoswitch.forward={','.join(map(str, ports))}")
    return " ".join([*params, *extra])


#: QEMU's id of the switch's uplink (user-mode) netdev: NIC 0 (see :func:`switch_vm_config`).
UPLINK_NETDEV = "net0"
#: The virtio-serial port the switch reads fault requests from (:mod:`pytest_smalltown.network`).
CONTROL_PORT_NAME = "nanoswitch.control"


def switch_port_mac(i: int) -> str:
    """The MAC of the switch's own NIC on node ``i``'s cable: distinct, recognisable, and how faults find the port."""
    return "02:72:82:00:00:%02x" % i


def node_netdev(i: int) -> str:
    """QEMU's id of the switch's netdev on node ``i``'s cable (NIC ``i + 1``: the uplink is first)."""
    return f"net{i + 1}"


def control_socket_of(qmp_socket: Path) -> Path:
    """The host end of the fault channel of the switch whose QMP socket is ``qmp_socket`` (beside it)."""
    return qmp_socket.with_suffix(".control")
#: Attempts at a free host port for a NodePort forward (another process may take the one picked).
FORWARD_ATTEMPTS = 5


def forward_node_port(monitor: Monitor, node_port: int) -> int:
    """Forward a new 127.0.0.1 host port to NodePort ``node_port`` (through the switch to node 0); return it.

    The forward is added to the running switch VM (QEMU's ``hostfwd_add``)
    and lasts as long as that QEMU process: nothing listens for NodePorts
    until a test asks. Only the host's loopback is bound.
    """
    if isinstance(node_port, bool) or not isinstance(node_port, int) or node_port not in NODE_PORT_RANGE:
        raise ValueError(f"{node_port!r} is not a NodePort ({NODE_PORT_RANGE.start}..{NODE_PORT_RANGE.stop - 1})")
    reply = ""
    for _ in range(FORWARD_ATTEMPTS):
        host_port = allocate_free_port()
        command = f"hostfwd_add {UPLINK_NETDEV} tcp:127.0.0.1:{host_port}-:{node_port}"
        reply = str(monitor.cmd("human-monitor-command", **{"command-line": command})).strip()
        if not reply:  # HMP answers nothing on success, a message on failure
            return host_port
    raise SwitchError(f"could not forward a host port to NodePort {node_port}: {reply}")


def switch_config(
    image: SwitchImage,
    nodes: int,
    ports: Iterable[int] = DEFAULT_PORTS,
    accel: Accel = "tcg",
    qemu: str = QEMU_BINARY,
    name: str = "nanoswitch",
    extra_kernel_args: Sequence[str] = (),
) -> VMConfig:
    """The switch's VM as a cluster plan holds it: everything but its cables and host ports.

    ``ports`` are the guest ports forwarded to node 0 (the per-node debug
    ports come on top, always). :func:`cabled` adds what only exists once
    the switch starts: the socket ends of its node cables and the host port map.
    """
    check_node_count(nodes)
    cmdline = switch_cmdline(nodes, check_ports(ports), extra=extra_kernel_args)
    return VMConfig(
        name=name,
        boot=DirectBoot(image.kernel, image.initramfs, cmdline),
        qemu=qemu,
        machine="microvm",
        accel=accel,
        memory_mib=SWITCH_MEMORY_MIB,
        cpus=1,
        rng=False,  # the switch needs no entropy beyond what the kernel has
    )


def cabled(
    config: VMConfig,
    switch_fds: Sequence[int],
    port_map: PortMap,
    qmp_socket: Path | None = None,
    incoming: str | None = None,
) -> VMConfig:
    """The switch ``config`` with its NICs: uplink first, forwarding ``port_map``, then one socket NIC per node end.

    Every port of ``port_map`` is forwarded from the host; the per-node debug
    ports among them lead to their node, the others to node 0.
    The switch's own NIC MACs tell it which port is whose (:func:`switch_port_mac`).
    ``incoming`` restores a saved switch (paused until resumed over QMP).
    With a QMP socket comes the fault channel, beside it (:func:`control_socket_of`).
    """
    nics: list[SocketNic | UserNic] = [UserNic(UPLINK_MAC, port_map)]
    nics += [SocketNic(fd, switch_port_mac(i)) for i, fd in enumerate(switch_fds)]
    ports = () if qmp_socket is None else ((CONTROL_PORT_NAME, control_socket_of(qmp_socket)),)
    return replace(config, nics=tuple(nics), qmp_socket=qmp_socket, virtio_ports=ports, incoming=incoming,
                   paused=incoming is not None)  # fmt: skip


def switch_vm_config(
    image: SwitchImage,
    nodes: int,
    switch_fds: Sequence[int],
    port_map: PortMap,
    accel: Accel = "tcg",
    name: str = "nanoswitch",
    extra_kernel_args: Sequence[str] = (),
    qmp_socket: Path | None = None,
    incoming: str | None = None,
) -> VMConfig:
    """The switch's whole VM in one call (:func:`switch_config`, then :func:`cabled`), for tests and tools."""
    check_node_count(nodes)
    if len(switch_fds) != nodes:
        raise ValueError(f"{nodes} nodes need {nodes} switch ends, got {len(switch_fds)}")
    node0_ports = tuple(p for p in port_map if p not in NODE_DEBUG_GUEST_PORTS)
    config = switch_config(image, nodes, node0_ports, accel, name=name, extra_kernel_args=extra_kernel_args)
    return cabled(config, switch_fds, port_map, qmp_socket, incoming)


class Switch:
    """A running (or starting) Nanoswitch and the node ends of its NICs.

    Create it with :func:`launch_switch`. It owns the switch VM, every
    socketpair and (when it made it) its work directory; :meth:`close` frees
    all of them and is safe to call twice.
    """

    def __init__(
        self,
        nodes: int,
        vm: VM,
        node_ends: list[socket.socket],
        ports: PortMap,
        workdir: Path,
        owns_workdir: bool,
        started: float,
    ) -> None:
        self.nodes = nodes
        self.vm = vm
        self.ports = ports
        self.workdir = workdir
        self.started = started
        #: Seconds from starting QEMU to the "forwarding" line (None until ready).
        self.ready_after: float | None = None
        #: The switch's "nanoswitch: forwarding ..." console line.
        self.ready_line: str | None = None
        self._node_ends = node_ends
        self._owns_workdir = owns_workdir
        self._closed = False

    def node_fd(self, i: int) -> int:
        """The file descriptor a node VM's ``-netdev socket,fd=`` must inherit for node ``i``."""
        self._check_node(i)
        return self._node_ends[i].fileno()

    def node_nic(self, i: int) -> SocketNic:
        """Node ``i``'s NIC: the switch's socket end and the MAC its fixed lease is for."""
        return SocketNic(fd=self.node_fd(i), mac=node_mac(i))

    def node_address(self, i: int) -> str:
        """The address node ``i`` will get (10.1.0.(2+i))."""
        self._check_node(i)
        return node_address(i)

    def node_debug_port(self, i: int) -> int:
        """The host port (on 127.0.0.1) of node ``i``'s debug service.

        Always the per-node forward (guest port :func:`node_debug_guest_port`),
        node 0 included, so that callers need no special case; node 0's is also
        reachable through the 7837 forward, ``ports[7837]``, as before.
        """
        self._check_node(i)
        return self.ports[node_debug_guest_port(i)]

    def forward_node_port(self, node_port: int) -> int:
        """A host port on 127.0.0.1 that reaches NodePort ``node_port`` of the cluster (see :func:`forward_node_port`)."""
        from pytest_smalltown.launch.vmstate import Monitor

        if self._closed:
            raise SwitchError("the switch is closed")
        monitor = Monitor(self.vm)
        try:
            return forward_node_port(monitor, node_port)
        finally:
            monitor.close()

    def _check_node(self, i: int) -> None:
        if self._closed:
            raise SwitchError("the switch is closed")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.nodes:
            raise ValueError(f"this switch has nodes 0..{self.nodes - 1}, not {i!r}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> str:
        """Block until the switch says it is forwarding; return that console line.

        Raises :class:`SwitchError` with the console tail when the switch
        reports a fatal error, exits, or says nothing within ``timeout``.
        """
        if self.ready_line is not None:
            return self.ready_line
        try:
            line = self.vm.wait_for_console(READY_PATTERN, timeout, what="'nanoswitch: forwarding'").group(0)
        except VMExitedError as exc:
            raise SwitchError(f"the switch VM exited before it was ready: {exc}") from exc
        except ConsoleTimeoutError as exc:
            raise SwitchError(
                f"the switch did not report 'nanoswitch: forwarding' within {timeout:.0f}s\n"
                f"--- console tail ---\n{self.console_tail()}"
            ) from exc
        if "nanoswitch: fatal:" in line:
            raise SwitchError(f"the switch failed to start: {line.strip()}\n--- console tail ---\n{self.console_tail()}")
        self.ready_after = time.monotonic() - self.started
        self.ready_line = line.strip()
        return self.ready_line

    def console_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the switch's serial console (for error messages)."""
        return "\n".join(self.vm.console_tail(n))

    def close(self) -> None:
        """Stop the VM, close every socket end and remove the work directory if we made it."""
        if self._closed:
            return
        self._closed = True
        try:
            self.vm.stop()
        finally:
            for end in self._node_ends:
                end.close()
            if self._owns_workdir:
                remove_workdir(self.workdir)

    def __enter__(self) -> Switch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("ready" if self.ready_line else "starting")
        return f"<Switch nodes={self.nodes} {state} {self.ports!r}>"


def launch_switch(
    nodes: int,
    ports: Iterable[int] = DEFAULT_PORTS,
    workdir: Path | None = None,
    accel: str = "auto",
    image: SwitchImage | None = None,
    ready_timeout: float | None = READY_TIMEOUT,
    progress: Progress = stderr_progress,
    qemu: str = QEMU_BINARY,
) -> Switch:
    """Start a Nanoswitch for ``nodes`` nodes forwarding ``ports`` to node 0 (a switch on its own, for tests and tools).

    The per-node debug ports are forwarded in addition, always
    (:meth:`Switch.node_debug_port`). Arguments are validated before
    anything is built or started; ``accel`` may be ``auto`` (resolved with
    ``qemu``, see :func:`~pytest_smalltown.launch.accel.resolve_accel`).
    A cluster starts its switch from its plan instead (:func:`start_switch`).
    """
    check_node_count(nodes)
    port_tuple = check_ports(ports)
    if image is None:
        from pytest_smalltown.images.switch import build_switch_image

        image = build_switch_image(progress)
    config = switch_config(image, nodes, port_tuple, resolve_accel(accel, qemu).accel, qemu)
    return start_switch(config, nodes, port_tuple, workdir, ready_timeout)


def start_switch(
    config: VMConfig,
    nodes: int,
    ports: Iterable[int] = DEFAULT_PORTS,
    workdir: Path | None = None,
    ready_timeout: float | None = READY_TIMEOUT,
    restore: tuple[str, Sequence[str]] | None = None,
) -> Switch:
    """Start the switch ``config`` (from :func:`switch_config`) with fresh cables and host ports.

    ``ports`` are the guest ports it forwards to node 0, as in its
    configuration. Unless ``ready_timeout`` is None, this waits for the
    switch's "forwarding" line, so the returned switch is ready for nodes
    (nodes may also be started before it is ready: their DHCP client
    retries). On any failure everything started so far is torn down before
    the error propagates.

    ``restore`` is (incoming migration URI, console history) of a saved
    switch: it starts paused, with fresh cables and host ports, and is not
    waited for (it said "forwarding" before it was saved); the caller resumes
    it over QMP (the VM's socket is ``<workdir>/<name>.qmp``).
    """
    check_node_count(nodes)
    port_tuple = check_ports(ports) + tuple(node_debug_guest_port(i) for i in range(nodes))
    owns_workdir = workdir is None
    # make_workdir: a short path under /tmp that the reaper removes even if we are killed.
    work = make_workdir("st-sw-") if workdir is None else Path(workdir)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(nodes)]
        switch_fds = [a.fileno() for a, _ in pairs]

        def make_config(port_map: PortMap) -> VMConfig:
            return cabled(config, switch_fds, port_map, qmp_socket=work / f"{config.name}.qmp",
                          incoming=restore[0] if restore else None)  # fmt: skip

        started = time.monotonic()
        # Retries with a fresh port map if another process grabs a chosen host port first.
        vm, port_map = start_vm_with_ports(make_config, port_tuple, work, history=restore[1] if restore else ())
    except BaseException:
        for a, b in pairs:
            a.close()
            b.close()
        if owns_workdir:
            remove_workdir(work)
        raise
    # QEMU holds its own copies of the switch ends now.
    for a, _ in pairs:
        a.close()
    switch = Switch(nodes, vm, [b for _, b in pairs], port_map, work, owns_workdir, started)
    if ready_timeout is not None and restore is None:
        try:
            switch.wait_ready(ready_timeout)
        except BaseException:
            switch.close()
            raise
    return switch
