"""Network faults from the switch: a node cut off from the others, a slow link, and what crossed the cable.

The faults live in the Nanoswitch (:mod:`pytest_smalltown.network`): a
partition drops what the switch would carry between nodes of different
groups, a degraded link delays the frames the switch sends to one node.
Node 1 is the one cut off or slowed (node 0 carries the control plane that
has to notice). The host sees both nodes throughout, which is how these
tests watch. Fresh clusters: the tests that share one need not wait for a
partitioned node to come back.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import node_address
from pytest_smalltown.faults import NODE_MONITOR_GRACE_SECONDS
from pytest_smalltown.kube import exec_in_pod, node_ready, service_endpoint_ready
from pytest_smalltown.lifecycle import find_node

pytestmark = pytest.mark.smalltown(nodes=2, fresh=True)

CUT_OFF = 1
#: Beyond the grace period: the controller checks every 5 s, and the emulated control plane is slow.
NOT_READY_TIMEOUT = NODE_MONITOR_GRACE_SECONDS + 150
#: A healed node's kubelet posts its status within its next heartbeat (10 s), emulation permitting.
READY_AGAIN_TIMEOUT = 180
DELAY_MS = 200
#: busybox ping's summary line.
ROUND_TRIP = re.compile(r"round-trip min/avg/max = [\d.]+/(?P<avg>[\d.]+)/[\d.]+ ms")


def test_a_node_cut_off_from_the_others_is_not_ready_its_endpoint_leaves_and_both_return_after_heal(
    smalltown_cluster: Any, smalltown_kube: Any, core: k8s.CoreV1Api, smalltown_namespace: str,
    run_pod: Callable[..., Any], smalltown_progress: Callable[[str], None],
) -> None:  # fmt: skip
    node_name = find_node(smalltown_kube, node_address(CUT_OFF)).metadata.name
    run_pod("cut-off", ["sh", "-c", "exec sleep 100000"], node_name=node_name)
    core.create_namespaced_service(smalltown_namespace, k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="cut-off"),
        spec=k8s.V1ServiceSpec(selector={"app": "cut-off"}, ports=[k8s.V1ServicePort(port=80)])))  # fmt: skip
    wait_for("the pod's endpoint to be ready",
             lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "cut-off"), timeout=120)  # fmt: skip

    def node_is_ready() -> bool:
        return node_ready(core.read_node(node_name))

    network = smalltown_cluster.network
    applied = time.monotonic()
    with network.isolate(CUT_OFF) as fault:
        apply_seconds = time.monotonic() - applied
        assert network.status().partition == ((CUT_OFF,), tuple(n for n in range(2) if n != CUT_OFF))
        wait_for(f"node {CUT_OFF} to turn NotReady while cut off", lambda: not node_is_ready(), NOT_READY_TIMEOUT)
        not_ready_after = time.time() - fault.started
        wait_for("the cut-off node's pod endpoint to turn not ready",
                 lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "cut-off") is False, timeout=60)  # fmt: skip
        # The host is outside the partition: the cut-off node itself answers it all along.
        debug = smalltown_cluster.node_debug(CUT_OFF)
        try:
            assert debug.component_logs("kube.kubelet", tail=5), "the cut-off node's debug service answered nothing"
        finally:
            debug.close()
        healing = time.monotonic()
    heal_seconds = time.monotonic() - healing
    assert network.status().partition == ()
    healed = time.monotonic()
    wait_for(f"node {CUT_OFF} to be Ready again after the heal", node_is_ready, READY_AGAIN_TIMEOUT)
    ready_after = time.monotonic() - healed
    wait_for("the pod's endpoint to be ready again",
             lambda: service_endpoint_ready(smalltown_kube, smalltown_namespace, "cut-off"), timeout=120)  # fmt: skip
    smalltown_progress(f"node {CUT_OFF} cut off (applied in {apply_seconds:.2f}s, healed in {heal_seconds:.2f}s): "
                       f"NotReady after {not_ready_after:.0f}s (grace period {NODE_MONITOR_GRACE_SECONDS}s), "
                       f"Ready {ready_after:.0f}s after the heal")


def echo_requests_to(capture: Path, address: str) -> int:
    """ICMP echo requests to ``address`` in the pcap file ``capture`` (Ethernet frames, IPv4)."""
    data = capture.read_bytes()
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), f"{capture} is not a pcap file"
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    wanted = bytes(int(octet) for octet in address.split("."))
    count, offset = 0, 24
    while offset + 16 <= len(data):
        length = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 1 or frame[30:34] != wanted:
            continue
        header = (frame[14] & 0x0F) * 4
        if len(frame) > 14 + header and frame[14 + header] == 8:
            count += 1
    return count


def test_a_degraded_link_slows_every_round_trip_to_its_node_and_is_ordinary_again_after(
    smalltown_cluster: Any, smalltown_kube: Any, smalltown_namespace: str, run_pod: Callable[..., Any],
    smalltown_progress: Callable[[str], None], tmp_path: Path,
) -> None:  # fmt: skip
    nodes = [find_node(smalltown_kube, node_address(i)).metadata.name for i in range(2)]
    target = run_pod("target", ["sh", "-c", "exec sleep 100000"], node_name=nodes[CUT_OFF])
    run_pod("prober", ["sh", "-c", "exec sleep 100000"], node_name=nodes[1 - CUT_OFF])
    address = target.status.pod_ip

    def round_trip_ms() -> float:
        result = exec_in_pod(smalltown_kube, smalltown_namespace, "prober", ["ping", "-c", "5", "-q", address])
        found = ROUND_TRIP.search(result.stdout)
        assert result.exit_code == 0 and found, f"ping {address}: {result}"
        return float(found["avg"])

    baseline = round_trip_ms()
    network = smalltown_cluster.network
    with network.degrade(CUT_OFF, delay_ms=DELAY_MS), network.capture(tmp_path, nodes=[CUT_OFF]) as captures:
        assert network.status().degraded[CUT_OFF].delay_ms == DELAY_MS
        degraded = round_trip_ms()
    after = round_trip_ms()
    assert network.status().degraded == {}
    requests = echo_requests_to(captures[0], address)
    smalltown_progress(f"pod-to-pod round trip to node {CUT_OFF}: {baseline:.1f} ms, {degraded:.1f} ms with "
                       f"{DELAY_MS} ms of delay, {after:.1f} ms after; {requests} echo requests captured")
    assert degraded >= DELAY_MS, "each round trip crosses the degraded link once"
    assert after < DELAY_MS, f"the delay outlived the fault ({after:.1f} ms, {baseline:.1f} ms before it)"
    assert requests >= 5, f"the capture of node {CUT_OFF}'s cable missed the pings ({captures[0]})"
