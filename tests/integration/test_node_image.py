"""The reference node image booted alone (user networking, forwarded ports), tested from outside.

One VM per session: it bootstraps a one-node cluster, and every test talks to
it the way a harness does, through NodeDebugService on the forwarded 7837 and
the apiserver on the forwarded 6443, with a kubeconfig from
GetDebugKubeconfig. VMs are started with the launcher
(``launch.vm.start_vm_with_ports``, ``launch.switch.launch_switch``), so
QEMU is reaped even if pytest dies, and the serial console is kept in the
work directory for post-mortems. The golden-ticket join of a second node is
proven end to end by ``e2e/test_multinode.py`` through ``launch_cluster``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from pytest_smalltown import contract
from pytest_smalltown.api import debug_pb2, debug_pb2_grpc
from pytest_smalltown.kube import write_kubeconfig

pytestmark = pytest.mark.integration

BOOT_TO_DEBUG_TIMEOUT = 180.0
READY_TIMEOUT = 600.0


@dataclass
class BootedNode:
    vm: Any  # launch.vm.VM
    debug_port: int
    api_port: int
    started: float
    debug_up_after: float
    stub: debug_pb2_grpc.NodeDebugServiceStub

    def serial_tail(self, n: int = 40) -> str:
        return "\n".join(self.vm.console_tail(n))


# Module scope, not session: a Ready node under TCG keeps more than a core busy even when
# no test uses it, and as a session fixture it ran on through every later module, doubling
# the cold boots of test_snapshots.py beside it.
@pytest.fixture(scope="module")
def node() -> Iterator[BootedNode]:
    from pytest_smalltown.images.node import build_node_image
    from pytest_smalltown.launch.qemu import DirectBoot, Disk, UserNic, VMConfig, random_mac
    from pytest_smalltown.launch.vm import make_workdir, remove_workdir, start_vm_with_ports

    image = build_node_image()
    work = make_workdir("st-node-")
    guest_ports = [int(contract.NodePort.DEBUG_SERVICE), int(contract.NodePort.KUBERNETES_API)]

    def config(ports: Any) -> VMConfig:
        return VMConfig(
            name="node0",
            boot=DirectBoot(image.kernel, image.initramfs, image.cmdline),
            memory_mib=2048,
            cpus=2,
            nics=(UserNic(mac=random_mac(), forwards=ports),),
            disks=(Disk(image.disk),),
        )

    started = time.monotonic()
    vm, ports = start_vm_with_ports(config, guest_ports, work)
    try:
        vm.wait_for_console(re.escape(contract.DEBUG_SERVICE_READY_LINE), BOOT_TO_DEBUG_TIMEOUT,
                            "the debug-service line")
        debug_up_after = time.monotonic() - started
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[int(contract.NodePort.DEBUG_SERVICE)]}")
        stub = debug_pb2_grpc.NodeDebugServiceStub(channel)
        yield BootedNode(vm, ports[int(contract.NodePort.DEBUG_SERVICE)],
                         ports[int(contract.NodePort.KUBERNETES_API)], started, debug_up_after, stub)
        channel.close()
    finally:
        vm.stop()
        print("node console (last lines):\n" + "\n".join(vm.console_tail(30)))
        remove_workdir(work)


def wait_condition(node: BootedNode, name: str, timeout: float) -> float:
    """Poll GetCondition until it holds; returns seconds since the VM started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if node.stub.GetCondition(debug_pb2.GetConditionRequest(name=name), timeout=10).ok:
                return time.monotonic() - node.started
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        time.sleep(1)
    raise AssertionError(f"condition {name} not true after {timeout:.0f}s; serial tail:\n{node.serial_tail()}")


@pytest.fixture(scope="module")
def kube_client(node: BootedNode, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    resp = node.stub.GetDebugKubeconfig(
        debug_pb2.GetDebugKubeconfigRequest(id=contract.DEBUG_USER, groups=list(contract.DEBUG_GROUPS)),
        timeout=30, wait_for_ready=True)
    path = write_kubeconfig(resp.debug_kubeconfig, node.api_port, tmp_path_factory.mktemp("kube") / "kubeconfig")
    api = config.new_client_from_config(config_file=str(path))
    yield client.CoreV1Api(api), api
    api.close()


def test_debug_service_answers_early(node: BootedNode) -> None:
    print(f"boot to debug service: {node.debug_up_after:.1f}s")
    assert node.debug_up_after < BOOT_TO_DEBUG_TIMEOUT
    for name in contract.CONDITIONS:
        node.stub.GetCondition(debug_pb2.GetConditionRequest(name=name), timeout=10)


def test_unknown_condition_and_component_are_not_found(node: BootedNode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        node.stub.GetCondition(debug_pb2.GetConditionRequest(name="NoSuchCondition"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        node.stub.GetComponentLogs(debug_pb2.GetComponentLogsRequest(component_path=["no.such"]), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        list(node.stub.GetLogs(debug_pb2.GetLogsRequest(dn="kube.kubelet"), timeout=10))  # INVALID modes
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ip_and_data_conditions(node: BootedNode) -> None:
    wait_condition(node, "DataAvailable", 120)
    t = wait_condition(node, "IPAssigned", 120)
    print(f"boot to IPAssigned: {t:.1f}s")


def test_golden_ticket(node: BootedNode) -> None:
    wait_condition(node, "IPAssigned", 120)
    for bad in ("", "not-an-ip", "10.1.0.999", "::1"):
        with pytest.raises(grpc.RpcError) as info:
            node.stub.GetGoldenTicket(debug_pb2.GetGoldenTicketRequest(external_ip=bad), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    ticket = node.stub.GetGoldenTicket(debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.3"),
                                       timeout=30).ticket
    assert ticket.node_id.startswith("smalltown-") and ticket.this.address == "10.1.0.3"
    assert ticket.apiserver_address.endswith(":6443")
    assert b"BEGIN CERTIFICATE" in ticket.kubernetes_ca_cert
    assert b"BEGIN CERTIFICATE" in ticket.kubelet_client_cert


def test_node_ready_and_logs_follow(node: BootedNode) -> None:
    """Wait for Ready the way a test should: follow the agent's log, not poll."""
    call = node.stub.GetLogs(debug_pb2.GetLogsRequest(
        dn="agent", backlog_mode=debug_pb2.BACKLOG_ALL, stream_mode=debug_pb2.STREAM_UNBUFFERED,
        filters=[debug_pb2.LogFilter(contains="node Ready")]), timeout=READY_TIMEOUT)
    try:
        for resp in call:
            if list(resp.backlog_entries) + list(resp.stream_entries):
                break
    finally:
        call.cancel()
    t = wait_condition(node, "KubernetesReady", 30)
    print(f"boot to KubernetesReady: {t:.1f}s")
    for component in contract.COMPONENTS:
        lines = node.stub.GetComponentLogs(
            debug_pb2.GetComponentLogsRequest(component_path=[component], tail_lines=5), timeout=10).line
        assert lines, f"{component} has no output"


def test_kubernetes_client_sees_node_ready_and_runs_a_pod(node: BootedNode, kube_client) -> None:  # type: ignore[no-untyped-def]
    from kubernetes import client

    core, _ = kube_client
    wait_condition(node, "KubernetesReady", READY_TIMEOUT)
    nodes = core.list_node().items
    assert len(nodes) == 1
    ready = {c.type: c.status for c in nodes[0].status.conditions}
    assert ready["Ready"] == "True"
    assert nodes[0].metadata.name.startswith("smalltown-")
    assert nodes[0].status.node_info.os_image.startswith("Smalltown")

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="hello", namespace="default"),
        spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(
            name="hello", image=contract.TEST_IMAGE, image_pull_policy="IfNotPresent",
            command=["sh", "-c", "echo hello-from-smalltown; nslookup kubernetes.default.svc.cluster.local"],
        )]),
    )
    # The default ServiceAccount appears a moment after the namespace controller runs.
    deadline = time.monotonic() + 120
    while True:
        try:
            core.create_namespaced_pod("default", pod)
            break
        except client.ApiException as exc:
            if time.monotonic() > deadline or "serviceaccount" not in str(exc.body).lower():
                raise
            time.sleep(2)
    created = time.monotonic()
    phase = None
    while time.monotonic() - created < 300:
        phase = core.read_namespaced_pod("hello", "default").status.phase
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    logs = core.read_namespaced_pod_log("hello", "default")
    print(f"pod finished in {time.monotonic() - created:.1f}s with phase {phase}; logs:\n{logs}")
    assert "hello-from-smalltown" in logs  # logs go apiserver -> kubelet: the RBAC binding works
    assert phase == "Succeeded", logs  # nslookup succeeded: CNI, kube-proxy and CoreDNS work


def test_builtin_objects_present(node: BootedNode, kube_client) -> None:  # type: ignore[no-untyped-def]
    from kubernetes import client

    _, api = kube_client
    wait_condition(node, "APIServerReady", READY_TIMEOUT)
    rc = client.NodeV1Api(api).read_runtime_class("runc")
    assert rc.handler == "runc" and rc.metadata.labels["smalltown.dev/builtin"] == "true"
    crb = client.RbacAuthorizationV1Api(api).read_cluster_role_binding("smalltown:apiserver-kubelet-client")
    assert crb.role_ref.name == "system:kubelet-api-admin"
    svc = client.CoreV1Api(api).read_namespaced_service("kube-dns", "kube-system")
    assert svc.spec.cluster_ip == contract.CLUSTER_DNS_IP


# ------------------------------------------------------------- two nodes
