"""The reference node image booted alone (user networking, forwarded ports), tested from outside.

One VM per session: it bootstraps a one-node cluster, and every test talks to
it the way a harness does, through NodeDebugService on the forwarded 7837 and
the apiserver on the forwarded 6443, with a kubeconfig from
GetDebugKubeconfig. The VM is started with ``launch.qemu.qemu_argv`` and a
plain ``subprocess.Popen`` (the launcher's VM supervision was not available
when this was written); the serial console is kept in a file for post-mortems.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pytest_smalltown import contract
from pytest_smalltown.api import debug_pb2, debug_pb2_grpc

pytestmark = pytest.mark.integration

BOOT_TO_DEBUG_TIMEOUT = 180.0
READY_TIMEOUT = 600.0


@dataclass
class BootedNode:
    process: subprocess.Popen[bytes]
    serial_log: Path
    serial: list[str]
    debug_port: int
    api_port: int
    started: float
    debug_up_after: float
    stub: debug_pb2_grpc.NodeDebugServiceStub

    def serial_tail(self, n: int = 40) -> str:
        return "\n".join(self.serial[-n:])


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedNode]:
    from pytest_smalltown.images.node import build_node_image
    from pytest_smalltown.launch.ports import conflict_free_port_map
    from pytest_smalltown.launch.qemu import DirectBoot, Disk, UserNic, VMConfig, qemu_argv, random_mac

    image = build_node_image()
    ports = conflict_free_port_map([int(contract.NodePort.DEBUG_SERVICE), int(contract.NodePort.KUBERNETES_API)])
    config = VMConfig(
        name="smalltown-node-it",
        boot=DirectBoot(image.kernel, image.initramfs, image.cmdline),
        memory_mib=2048,
        cpus=2,
        nics=(UserNic(mac=random_mac(), forwards=ports),),
        disks=(Disk(image.disk),),
    )
    log_dir = tmp_path_factory.mktemp("node")
    serial_log = log_dir / "serial.log"
    started = time.monotonic()
    proc = subprocess.Popen(qemu_argv(config), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    serial: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with serial_log.open("w") as f:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                serial.append(line)
                f.write(line + "\n")
                f.flush()
                if contract.DEBUG_SERVICE_READY_LINE in line:
                    ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + BOOT_TO_DEBUG_TIMEOUT
        while not ready.wait(0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("node did not print the debug-service line; serial tail:\n"
                            + "\n".join(serial[-60:]))
        debug_up_after = time.monotonic() - started
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[int(contract.NodePort.DEBUG_SERVICE)]}")
        stub = debug_pb2_grpc.NodeDebugServiceStub(channel)
        yield BootedNode(proc, serial_log, serial, ports[int(contract.NodePort.DEBUG_SERVICE)],
                         ports[int(contract.NodePort.KUBERNETES_API)], started, debug_up_after, stub)
        channel.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


@pytest.fixture(scope="session")
def kube_client(node: BootedNode, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from kubernetes import client, config

    resp = node.stub.GetDebugKubeconfig(
        debug_pb2.GetDebugKubeconfigRequest(id=contract.DEBUG_USER, groups=list(contract.DEBUG_GROUPS)),
        timeout=30, wait_for_ready=True)
    text = resp.debug_kubeconfig.replace(
        f"https://127.0.0.1:{int(contract.NodePort.KUBERNETES_API)}", f"https://127.0.0.1:{node.api_port}")
    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(text)
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


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """Nanoswitch + node 0 (bootstrap) + node 1 joined with node 0's golden ticket over fw_cfg.

    Started with ``launch.switch.switch_vm_config`` and ``qemu_argv`` plus raw
    ``Popen`` (passing the socketpair ends), since the launcher's VM supervision
    was not there yet. Yields the host kubeconfig path and the serial logs.
    """
    import socket

    from pytest_smalltown.api import enrolment_pb2
    from pytest_smalltown.images.node import build_node_image
    from pytest_smalltown.images.switch import build_switch_image
    from pytest_smalltown.launch.ports import conflict_free_port_map
    from pytest_smalltown.launch.qemu import DirectBoot, Disk, SocketNic, VMConfig, qemu_argv
    from pytest_smalltown.launch.switch import node_mac, switch_vm_config, tcg_kernel_args

    image, switch_image = build_node_image(), build_switch_image()
    work = Path(tempfile.mkdtemp(prefix="st2-", dir="/tmp"))
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    ports = conflict_free_port_map([int(p) for p in contract.SWITCH_FORWARDED_PORTS])
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: work / f"{name}.log" for name in ("switch", "node0", "node1")}

    def start(argv: list[str], name: str, fd: list[int]) -> None:
        with logs[name].open("wb") as out:
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          pass_fds=fd))

    def wait_for(name: str, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in logs[name].read_text(errors="replace"):
            if time.monotonic() > deadline:
                tail = "\n".join(logs[name].read_text(errors="replace").splitlines()[-40:])
                pytest.fail(f"{name}: no {text!r} within {timeout:.0f}s; tail:\n{tail}")
            time.sleep(0.5)

    def node_config(i: int, fw_cfg: tuple[tuple[str, Path], ...] = ()) -> VMConfig:
        return VMConfig(name=f"st-node{i}", boot=DirectBoot(image.kernel, image.initramfs, image.cmdline),
                        memory_mib=2048, cpus=2, nics=(SocketNic(pairs[i][1].fileno(), node_mac(i)),),
                        disks=(Disk(image.disk),), fw_cfg=fw_cfg)

    try:
        switch_fds = [a.fileno() for a, _ in pairs]
        start(qemu_argv(switch_vm_config(switch_image, 2, switch_fds, ports, extra_kernel_args=tcg_kernel_args())),
              "switch", switch_fds)
        wait_for("switch", "nanoswitch: forwarding", 180)
        start(qemu_argv(node_config(0)), "node0", [pairs[0][1].fileno()])
        with grpc.insecure_channel(f"127.0.0.1:{ports[int(contract.NodePort.DEBUG_SERVICE)]}") as channel:
            stub = debug_pb2_grpc.NodeDebugServiceStub(channel)
            deadline = time.monotonic() + 300
            while True:
                try:
                    ticket = stub.GetGoldenTicket(
                        debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.3"), timeout=10).ticket
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            kubeconfig = stub.GetDebugKubeconfig(debug_pb2.GetDebugKubeconfigRequest(
                id=contract.DEBUG_USER, groups=list(contract.DEBUG_GROUPS)), timeout=30).debug_kubeconfig
        assert ticket.apiserver_address == "10.1.0.2:6443"
        enrolment = work / "enrolment.pb"
        enrolment.write_bytes(enrolment_pb2.EnrolmentConfig(golden_ticket=ticket, node_id=ticket.node_id)
                              .SerializeToString())
        start(qemu_argv(node_config(1, ((contract.ENROLMENT_FW_CFG_NAME, enrolment),))), "node1",
              [pairs[1][1].fileno()])
        kc_path = work / "kubeconfig"
        kc_path.write_text(kubeconfig.replace(
            "https://127.0.0.1:6443", f"https://127.0.0.1:{ports[int(contract.NodePort.KUBERNETES_API)]}"))
        wait_for("node1", f"joining via 10.1.0.2:6443 as {ticket.node_id}", 180)
        for name in ("node0", "node1"):
            wait_for(name, "node Ready", READY_TIMEOUT)
        yield kc_path, logs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for a, b in pairs:
            a.close()
            b.close()


def test_two_nodes_pod_to_pod_service_and_dns_across_nodes(two_nodes) -> None:  # type: ignore[no-untyped-def]
    """A worker joined by golden ticket: host-gw routes, kube-proxy and CoreDNS work across nodes."""
    from kubernetes import client, config
    from kubernetes.stream import stream

    kc_path, _ = two_nodes
    api = config.new_client_from_config(config_file=str(kc_path))
    core = client.CoreV1Api(api)
    nodes = {n.status.addresses[0].address: n for n in core.list_node().items}
    assert set(nodes) == {"10.1.0.2", "10.1.0.3"}
    assert all({c.type: c.status for c in n.status.conditions}["Ready"] == "True" for n in nodes.values())
    assert {n.spec.pod_cidr for n in nodes.values()} == {"10.244.0.0/24", "10.244.1.0/24"}

    def pod(name: str, node: str, command: list[str], labels: dict[str, str] | None = None) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(
                name="c", image=contract.TEST_IMAGE, image_pull_policy="IfNotPresent", command=command)]))

    web_cmd = ["sh", "-c", "echo hello-from-node0 > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
    core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    deadline = time.monotonic() + 120
    while True:  # the default ServiceAccount appears shortly after the controller-manager starts
        try:
            core.create_namespaced_pod("default", pod("web", nodes["10.1.0.2"].metadata.name, web_cmd, {"app": "web"}))
            break
        except client.ApiException as exc:
            if time.monotonic() > deadline or "serviceaccount" not in str(exc.body).lower():
                raise
            time.sleep(2)
    core.create_namespaced_pod("default", pod("client", nodes["10.1.0.3"].metadata.name, ["sleep", "3600"]))
    deadline = time.monotonic() + 300
    while True:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod("default").items}
        if all(p.status.phase == "Running" for p in pods.values()) and len(pods) == 2:
            break
        assert time.monotonic() < deadline, {n: p.status.phase for n, p in pods.items()}
        time.sleep(1)
    web_ip = pods["web"].status.pod_ip
    script = (f"wget -q -O- http://{web_ip}:8080/index.html; "
              "wget -q -O- http://web.default.svc.cluster.local/index.html")
    out = stream(core.connect_get_namespaced_pod_exec, "client", "default", command=["sh", "-c", script],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out.count("hello-from-node0") == 2, out
    api.close()
