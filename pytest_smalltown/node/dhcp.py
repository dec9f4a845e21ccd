"""The node's address (step 7): a static one, or a DHCP lease; then the iptables rules that need it.

With ``static_ip`` in the config (host mode) that is the address. Otherwise
busybox udhcpc runs on the first NIC under the supervisor (``network.dhcp``);
its event script writes the lease (:mod:`network`), and the boot waits for
it. Either way ``IPAssigned`` is set and the address is in
:attr:`NodeState.ip` (and the lease, if any, in :attr:`NodeState.lease`).

As the VM's init, the boot then adds the pod egress masquerade rule and, if
the lease named a router, fences the debug port to loopback and that router
(:func:`apply_firewall`).
"""

from __future__ import annotations

import subprocess
import time

from pytest_smalltown import contract
from pytest_smalltown.node import network, system
from pytest_smalltown.node.state import NodeState
from pytest_smalltown.node.supervisor import ComponentSpec


def bring_up_network(node: NodeState, hostname: str) -> None:
    """Set :attr:`NodeState.ip` (and ``lease``) and ``IPAssigned``; waits as long as DHCP takes."""
    cfg = node.cfg
    if cfg.static_ip:
        node.ip = cfg.static_ip
        node.conditions.set("IPAssigned")
        node.log(f"using static address {node.ip}")
        return
    nic = system.first_nic()
    if nic is None:
        raise RuntimeError("no network interface found")
    script = cfg.run / "udhcpc.sh"
    lease_file = cfg.run / "dhcp.lease"
    network.write_udhcpc_script(script, lease_file, cfg.etc / "resolv.conf")
    system.link_up(cfg.bins.resolve("ip"), nic)
    node.supervisor.start(ComponentSpec(
        "network.dhcp", network.udhcpc_argv(cfg.bins.resolve("busybox"), nic, script, hostname)))
    node.log(f"DHCP on {nic}")
    waited = 0
    while True:
        if lease_file.exists():
            lease = network.parse_lease(lease_file.read_text())
            if lease is not None:
                break
        time.sleep(0.1)
        waited += 1
        if waited % 100 == 0:
            node.log(f"still no DHCP lease after {waited // 10} s")
    node.lease = lease
    node.ip = lease.ip
    node.conditions.set("IPAssigned")
    node.log(f"address {lease.ip}/{lease.prefix} on {nic}, router {lease.router}, dns {' '.join(lease.dns)}")


def apply_firewall(node: NodeState) -> None:
    """Pod egress masquerade, and the debug port fenced to loopback and the lease's router; failures are logged."""
    cfg = node.cfg
    try:
        network.ensure_masquerade(cfg.bins.resolve("iptables"), contract.POD_NETWORK)
    except (OSError, subprocess.CalledProcessError) as exc:
        node.log(f"pod egress masquerade rule failed: {exc}")
    if node.lease is not None and node.lease.router:
        try:
            network.fence_port(cfg.bins.resolve("iptables"), cfg.ports.debug, node.lease.router)
            node.log(f"debug service :{cfg.ports.debug} accepts only loopback and {node.lease.router}")
        except (OSError, subprocess.CalledProcessError) as exc:
            node.log(f"debug service fence failed: {exc}")
