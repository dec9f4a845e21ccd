"""Unit tests of the reference node agent (pytest_smalltown/node): no VM, no Kubernetes.

The gRPC tests run the real NodeDebugService on an ephemeral port with a real
cluster CA, so error codes, kubeconfig signatures and ticket contents are
checked the way a harness sees them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pytest_smalltown import contract
from pytest_smalltown.api import debug_pb2, debug_pb2_grpc, enrolment_pb2
from pytest_smalltown.debug import DebugClient, ImageLoadError
from pytest_smalltown.node import components, identity, network, pki, system
from pytest_smalltown.node.agent import Agent
from pytest_smalltown.node.config import AgentConfig
from pytest_smalltown.node.console import Console
from pytest_smalltown.node.debug_service import Conditions
from pytest_smalltown.node.enrolment import (
    ConsensusSeat,
    InvalidTicketRequest,
    check_ticket,
    issue_golden_ticket,
    joins_consensus,
)
from pytest_smalltown.node.logbuffer import LogBuffer
from pytest_smalltown.node.reconciler import BUILTIN_LABEL, builtin_objects
from pytest_smalltown.node.supervisor import ComponentSpec, Supervisor, next_backoff

# --------------------------------------------------------------- log buffer


def test_ring_buffer_keeps_the_last_5000_lines() -> None:
    buf = LogBuffer("x")
    for i in range(6000):
        buf.write(f"line {i}\n")
    lines = buf.lines()
    assert len(lines) == 5000
    assert lines[0] == "line 1000" and lines[-1] == "line 5999"
    assert buf.lines(3) == ["line 5997", "line 5998", "line 5999"]


def test_long_lines_are_truncated_and_remember_their_length() -> None:
    buf = LogBuffer("x", max_line_length=10)
    short = buf.write("0123456789")
    long = buf.write("x" * 25)
    assert short.original_length == 0 and not short.truncated
    assert long.line == "x" * 10 and long.original_length == 25 and long.truncated


def test_undecodable_output_is_kept_with_replacement_characters() -> None:
    buf = LogBuffer("x")
    buf.write_bytes(b"ok \xff\xfe end\n")
    assert buf.lines() == ["ok \ufffd\ufffd end"]


def test_follow_delivers_new_lines_in_order_without_gaps() -> None:
    buf = LogBuffer("x")
    buf.write("before")
    backlog, position = buf.snapshot_and_position()
    assert [e.line for e in backlog] == ["before"]
    got: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for batch in buf.follow(position, lambda: len(got) < 50, poll=0.05):
            got.extend(e.line for e in batch)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    for i in range(50):
        buf.write(f"n{i}")
    assert done.wait(5)
    assert got == [f"n{i}" for i in range(50)]


def test_follower_that_falls_behind_gets_what_is_still_buffered() -> None:
    buf = LogBuffer("x", capacity=10)
    _, position = buf.snapshot_and_position()
    for i in range(25):
        buf.write(str(i))
    batch, new_position = buf.wait_newer(position, 0.01)
    assert [e.line for e in batch] == [str(i) for i in range(15, 25)]
    assert new_position == 25


# --------------------------------------------------------------- supervisor


def test_backoff_doubles_up_to_a_cap_and_resets_after_a_healthy_run() -> None:
    assert next_backoff(0.5, 1.0) == 1.0
    assert next_backoff(16.0, 1.0) == 30.0
    assert next_backoff(30.0, 1.0) == 30.0
    assert next_backoff(30.0, 120.0) == 0.5


def test_supervisor_captures_output_and_restarts_a_crashing_component(tmp_path: Path) -> None:
    from pytest_smalltown.node.logbuffer import LogRegistry

    logs = LogRegistry()
    console_lines: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            console_lines.append(s)

        def flush(self) -> None:
            pass

    sup = Supervisor(logs, Console(stream=Sink(), use_kernel_uptime=False))  # type: ignore[arg-type]
    counter = tmp_path / "runs"
    script = f"import sys; open({str(counter)!r}, 'a').write('x'); print('hello out'); " \
             f"print('hello err', file=sys.stderr); sys.exit(3)"
    comp = sup.start(ComponentSpec("crashy", [sys.executable, "-c", script]))
    try:
        deadline = time.monotonic() + 10
        while (not counter.exists() or len(counter.read_text()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(counter.read_text()) >= 2, "component was not restarted"
        lines = logs.get("crashy").lines()  # type: ignore[union-attr]
        assert "hello out" in lines and "hello err" in lines
        assert "[supervisor] exited with code 3" in lines
        assert comp.last_exit == 3 and comp.restarts >= 1
        assert any("crashy: exited with code 3" in line for line in console_lines)
    finally:
        sup.shutdown()


def test_supervisor_stop_terminates_the_process(tmp_path: Path) -> None:
    from pytest_smalltown.node.logbuffer import LogRegistry

    sup = Supervisor(LogRegistry(), Console(stream=open("/dev/null", "w"), use_kernel_uptime=False))
    comp = sup.start(ComponentSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]))
    assert comp.started.wait(5)
    proc = comp.process
    sup.stop("sleeper", timeout=5)
    assert proc is not None and proc.poll() is not None


# ---------------------------------------------------------------------- PKI


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {str(i) for i in ext.get_values_for_type(x509.IPAddress)}


def test_apiserver_certificate_covers_every_name_a_client_uses(tmp_path: Path) -> None:
    ca = pki.ClusterCA(tmp_path)
    ca.ensure()
    dns, ips = pki.apiserver_sans("smalltown-abc", "10.1.0.2", contract.KUBERNETES_SERVICE_IP, "cluster.local")
    pair = ca.ensure_pair("apiserver", "kube-apiserver", dns_names=dns, ips=ips, server=True)
    cert = pki.load_cert(pair.cert)
    names, addrs = _sans(cert)
    assert {"localhost", "kubernetes", "kubernetes.default.svc.cluster.local", "smalltown-abc"} <= names
    assert {"127.0.0.1", "10.96.0.1", "10.1.0.2"} <= addrs
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    ca.cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert isinstance(pki.load_key(pair.key), ec.EllipticCurvePrivateKey)


def test_ca_is_created_once_and_reloaded(tmp_path: Path) -> None:
    first = pki.ClusterCA(tmp_path)
    first.ensure()
    second = pki.ClusterCA(tmp_path)
    second.ensure()
    assert first.cert_pem == second.cert_pem
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


# ----------------------------------------------------------------- identity


def test_node_name_and_machine_id_derive_from_the_public_key(tmp_path: Path) -> None:
    ident = identity.load_or_create(tmp_path / "node.key")
    raw = identity.public_bytes(ident.key).hex()
    assert ident.name == "smalltown-" + raw[:16]
    assert ident.machine_id == raw[:32] and len(ident.machine_id) == 32
    # A valid DNS label (Kubernetes node name, Linux hostname).
    assert len(ident.name) <= 63 and ident.name.replace("-", "").isalnum() and ident.name.islower()
    again = identity.load_or_create(tmp_path / "node.key")
    assert again.name == ident.name


def test_identity_files(tmp_path: Path) -> None:
    ident = identity.load_or_create(tmp_path / "node.key")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "os-release").symlink_to("../usr/lib/os-release")  # Debian's layout
    identity.write_identity_files(etc, ident, "9.9", "10.1.0.2")
    osr = (etc / "os-release").read_text()
    assert not (etc / "os-release").is_symlink()
    assert "ID=smalltown" in osr and 'NAME="Smalltown"' in osr and "VERSION_ID=9.9" in osr
    assert (etc / "machine-id").read_text().strip() == ident.machine_id
    assert f"10.1.0.2\t{ident.name}" in (etc / "hosts").read_text()


# --------------------------------------------------------- config rendering


def _cfg(tmp_path: Path) -> AgentConfig:
    return AgentConfig(root=tmp_path, init=False, static_ip="10.1.0.2")


def test_kubelet_configuration(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    facts = components.NodeFacts("smalltown-x", "10.1.0.2", "https://127.0.0.1:6443")
    conf = components.kubelet_config(cfg, facts)
    assert conf["kind"] == "KubeletConfiguration" and conf["cgroupDriver"] == "cgroupfs"
    assert conf["clusterDNS"] == [contract.CLUSTER_DNS_IP]
    assert conf["clusterDomain"] == contract.CLUSTER_DOMAIN
    assert conf["failSwapOn"] is False
    assert conf["containerRuntimeEndpoint"] == f"unix://{tmp_path}/run/containerd/containerd.sock"
    assert conf["authorization"] == {"mode": "Webhook"}
    assert conf["authentication"]["x509"]["clientCAFile"].endswith("/pki/ca.crt")  # type: ignore[index]
    assert conf["imageGCHighThresholdPercent"] == 100
    argv = components.kubelet_argv(cfg, facts)
    assert "--node-ip=10.1.0.2" in argv and "--hostname-override=smalltown-x" in argv


def test_control_plane_flags(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    facts = components.NodeFacts("smalltown-x", "10.1.0.2", "https://127.0.0.1:6443")
    api = components.apiserver_argv(cfg, facts)
    assert f"--service-cluster-ip-range={contract.SERVICE_NETWORK}" in api
    assert "--authorization-mode=Node,RBAC" in api and "--advertise-address=10.1.0.2" in api
    cm = components.controller_manager_argv(cfg)
    assert {"--leader-elect=false", "--allocate-node-cidrs=true",
            f"--cluster-cidr={contract.POD_NETWORK}", "--node-cidr-mask-size=24"} <= set(cm)
    assert "--leader-elect=false" in components.scheduler_argv(cfg)
    # Several control-plane nodes: leader election, with deadlines for loaded emulated nodes.
    for argv in (components.controller_manager_argv(cfg, leader_elect=True),
                 components.scheduler_argv(cfg, leader_elect=True)):
        assert "--leader-elect=true" in argv and "--leader-elect-renew-deadline=45s" in argv
    etcd = components.etcd_argv(cfg, "n0", "10.1.0.2")
    assert "--unsafe-no-fsync=true" in etcd and f"--data-dir={cfg.etcd_data}" in etcd
    # Raft timing for loaded emulated members: slower than etcd's LAN default (100 ms
    # heartbeats), and by etcd's own rule an election timeout of at least 10 heartbeats.
    flags = dict(a.split("=", 1) for a in etcd[1:] if "=" in a)
    heartbeat, election = int(flags["--heartbeat-interval"]), int(flags["--election-timeout"])
    assert heartbeat > 100 and election >= 10 * heartbeat
    peer = f"https://10.1.0.2:{cfg.ports.etcd_peer}"
    assert {f"--listen-peer-urls={peer}", f"--initial-cluster=n0={peer}", "--initial-cluster-state=new",
            f"--listen-client-urls=https://127.0.0.1:{cfg.ports.etcd_client}"} <= set(etcd)
    joiner = components.etcd_argv(cfg, "n1", "10.1.0.3", join=f"n0={peer},n1=https://10.1.0.3:7834")
    assert {f"--initial-cluster=n0={peer},n1=https://10.1.0.3:7834", "--initial-cluster-state=existing",
            "--listen-peer-urls=https://10.1.0.3:7834"} <= set(joiner)


def test_containerd_config(tmp_path: Path) -> None:
    import tomllib

    conf = tomllib.loads(components.containerd_config(_cfg(tmp_path)))
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == contract.PAUSE_IMAGE
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["bin_dir"].endswith("/usr/lib/cni")
    assert cri["cni"]["conf_dir"].endswith("/etc/cni/net.d")


def test_kube_proxy_config_and_corefile(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    facts = components.NodeFacts("smalltown-x", "10.1.0.2", "https://127.0.0.1:6443")
    kp = components.kube_proxy_config(cfg, facts)
    assert kp["mode"] == "iptables" and kp["clusterCIDR"] == contract.POD_NETWORK
    corefile = components.corefile(cfg, ("10.0.2.3",))
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert "forward . 10.0.2.3" in corefile and "kubeconfig " in corefile
    fenced = components.corefile(cfg, ())  # no upstream (the fenced switch names none): no forward plugin
    assert "forward" not in fenced and "kubernetes cluster.local" in fenced


def test_cni_conflist(tmp_path: Path) -> None:
    assert network.write_cni_config(tmp_path, "10.244.1.0/24")
    assert not network.write_cni_config(tmp_path, "10.244.1.0/24")  # unchanged: not rewritten
    conf = json.loads((tmp_path / network.CNI_CONFIG_FILE).read_text())
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["isGateway"] is True
    assert bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]


def test_pod_routes_go_via_other_nodes_internal_ips() -> None:
    nodes = [
        {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.0.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.2"}]}},
        {"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.1.0/24"},
         "status": {"addresses": [{"type": "Hostname", "address": "b"},
                                  {"type": "InternalIP", "address": "10.1.0.3"}]}},
        {"metadata": {"name": "c"}, "spec": {}, "status": {}},
    ]
    assert network.desired_pod_routes(nodes, "a") == {"10.244.1.0/24": "10.1.0.3"}


def test_dhcp_lease_parsing() -> None:
    lease = network.parse_lease("interface=eth0\nip=10.0.2.15\nmask=24\nrouter=10.0.2.2\ndns=10.0.2.3 1.1.1.1\n")
    assert lease == network.Lease("eth0", "10.0.2.15", 24, "10.0.2.2", ("10.0.2.3", "1.1.1.1"))
    assert network.parse_lease("ip=\n") is None
    assert network.parse_lease("ip=bogus\n") is None


def test_builtin_objects_are_labelled() -> None:
    objs = builtin_objects("10.1.0.2")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("RuntimeClass", "runc") in kinds and ("Service", "kube-dns") in kinds
    assert ("ServiceAccount", "default") in kinds
    assert ("ClusterRoleBinding", "smalltown:apiserver-kubelet-client") in kinds
    assert all(o["metadata"]["labels"][BUILTIN_LABEL] == "true" for o in objs)
    svc = next(o for o in objs if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == contract.CLUSTER_DNS_IP and "selector" not in svc["spec"]
    eps = next(o for o in objs if o["kind"] == "EndpointSlice")
    assert eps["endpoints"][0]["addresses"] == ["10.1.0.2"]


def test_builtin_storage_class_and_provisioner_rbac() -> None:
    from pytest_smalltown.node.kubeapi import object_path
    from pytest_smalltown.node.volumes import PROVISIONER_GROUP

    objs = builtin_objects("10.1.0.2")
    for obj in objs:
        object_path(obj)  # the reconciler's client can apply every kind
    sc = next(o for o in objs if o["kind"] == "StorageClass")
    assert sc["metadata"]["name"] == contract.STORAGE_CLASS == "local"
    assert sc["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert sc["provisioner"] == contract.PROVISIONER
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer" and sc["reclaimPolicy"] == "Delete"
    role = next(o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "smalltown:provisioner")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert {("", "persistentvolumes", v) for v in ("get", "list", "watch", "create", "delete")} <= granted
    assert {("", "persistentvolumeclaims", v) for v in ("get", "list", "watch", "update", "patch")} <= granted
    assert {("storage.k8s.io", "storageclasses", v) for v in ("get", "list", "watch")} <= granted
    assert {("", "events", "create"), ("", "events", "patch")} <= granted
    binding = next(o for o in objs if o["kind"] == "ClusterRoleBinding"
                   and o["metadata"]["name"] == "smalltown:provisioner")
    assert binding["roleRef"]["name"] == "smalltown:provisioner"
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": PROVISIONER_GROUP}]


# ------------------------------------------------------------ gRPC service


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """An Agent as node 0 with its CA made and its debug service on an ephemeral port."""
    cfg = AgentConfig(root=tmp_path, init=False, static_ip="10.1.0.2", components=())
    cfg.ports.debug = 0
    cfg.debug_listen = "127.0.0.1"
    a = Agent(cfg)
    a.console.stream = open("/dev/null", "w")
    a.start_debug_service()
    yield a
    a.debug_server.stop(0)  # type: ignore[union-attr]


def _ready_node0(a: Agent) -> None:
    from pytest_smalltown.node.agent import Role

    a.node.role = Role(bootstrap=True)
    a.credentials.ca.ensure()
    a.credentials.ca_ready.set()
    a.node.name = "smalltown-0000000000000000"
    a.node.ip = "10.1.0.2"


@pytest.fixture
def stub(agent: Agent) -> Iterator[debug_pb2_grpc.NodeDebugServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{agent.debug_port}") as ch:
        yield debug_pb2_grpc.NodeDebugServiceStub(ch)


def _code(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=10)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    return info.value.code()  # type: ignore[no-any-return]


def test_debug_ready_line_printed(tmp_path: Path) -> None:
    cfg = AgentConfig(root=tmp_path, init=False, static_ip="10.1.0.2")
    cfg.ports.debug = 0
    cfg.debug_listen = "127.0.0.1"
    a = Agent(cfg)
    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            lines.extend(s.splitlines())

        def flush(self) -> None:
            pass

    a.console.stream = Sink()  # type: ignore[assignment]
    a.start_debug_service()
    try:
        assert contract.DEBUG_SERVICE_READY_LINE in lines
    finally:
        a.debug_server.stop(0)  # type: ignore[union-attr]


def test_kubeconfig_unavailable_before_the_ca(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    req = debug_pb2.GetDebugKubeconfigRequest(id="debug-user", groups=["system:masters"])
    assert _code(stub.GetDebugKubeconfig, req) == grpc.StatusCode.UNAVAILABLE


def test_kubeconfig_rejected_on_a_worker(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    from pytest_smalltown.node.agent import Role

    agent.node.role = Role(bootstrap=False, ticket=enrolment_pb2.GoldenTicket())
    req = debug_pb2.GetDebugKubeconfigRequest(id="debug-user")
    assert _code(stub.GetDebugKubeconfig, req) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(stub.GetGoldenTicket, debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.4")) \
        == grpc.StatusCode.FAILED_PRECONDITION


def test_kubeconfig_certificate_has_cn_o_and_ca_signature(
    agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub
) -> None:
    _ready_node0(agent)
    resp = stub.GetDebugKubeconfig(
        debug_pb2.GetDebugKubeconfigRequest(id="debug-user", groups=["system:masters", "extra"]), timeout=10)
    kc = json.loads(resp.debug_kubeconfig)
    assert kc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    ca = x509.load_pem_x509_certificate(base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]))
    assert ca == agent.credentials.ca.cert
    cert = x509.load_pem_x509_certificate(base64.b64decode(kc["users"][0]["user"]["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "debug-user"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == \
        ["system:masters", "extra"]
    cert.verify_directly_issued_by(ca)
    key = pki.load_key(base64.b64decode(kc["users"][0]["user"]["client-key-data"]))
    assert key.public_key() == cert.public_key()
    assert _code(stub.GetDebugKubeconfig, debug_pb2.GetDebugKubeconfigRequest(id="")) \
        == grpc.StatusCode.INVALID_ARGUMENT


def test_component_logs(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    buf = agent.logs.get("kube.kubelet")
    assert buf is not None
    for i in range(10):
        buf.write(f"kubelet {i}")
    all_lines = stub.GetComponentLogs(debug_pb2.GetComponentLogsRequest(component_path=["kube.kubelet"]))
    assert list(all_lines.line) == [f"kubelet {i}" for i in range(10)]
    tail = stub.GetComponentLogs(debug_pb2.GetComponentLogsRequest(component_path=["kube", "kubelet"],
                                                                   tail_lines=2))
    assert list(tail.line) == ["kubelet 8", "kubelet 9"]
    for name in contract.COMPONENTS:
        stub.GetComponentLogs(debug_pb2.GetComponentLogsRequest(component_path=[name]))
    assert _code(stub.GetComponentLogs, debug_pb2.GetComponentLogsRequest(component_path=["nope"])) \
        == grpc.StatusCode.NOT_FOUND


def test_conditions(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    for name in contract.CONDITIONS:
        assert stub.GetCondition(debug_pb2.GetConditionRequest(name=name)).ok is False
    agent.conditions.set("IPAssigned")
    assert stub.GetCondition(debug_pb2.GetConditionRequest(name="IPAssigned")).ok is True
    assert _code(stub.GetCondition, debug_pb2.GetConditionRequest(name="Bogus")) == grpc.StatusCode.NOT_FOUND


def test_conditions_reject_unknown_names() -> None:
    c = Conditions(["A"])
    with pytest.raises(KeyError):
        c.set("B")


@pytest.mark.parametrize("bad", ["", "banana", "10.1.0", "10.1.0.300", "::1", "fe80::1", "0.0.0.0", "10.1.0.3/24"])
def test_golden_ticket_rejects_malformed_ips(
    agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub, bad: str
) -> None:
    _ready_node0(agent)
    assert _code(stub.GetGoldenTicket, debug_pb2.GetGoldenTicketRequest(external_ip=bad)) \
        == grpc.StatusCode.INVALID_ARGUMENT


def test_golden_ticket_unavailable_before_the_ca(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    assert _code(stub.GetGoldenTicket, debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.3")) \
        == grpc.StatusCode.UNAVAILABLE


def test_golden_ticket_contents(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    _ready_node0(agent)
    t = stub.GetGoldenTicket(debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.3"), timeout=10).ticket
    key = identity.load_node_key(t.node_key)
    assert t.node_id == identity.node_name(key) == t.this.name
    assert t.this.address == "10.1.0.3"
    assert [(p.name, p.address) for p in t.peers] == [(agent.node.name, "10.1.0.2")]
    assert t.apiserver_address == "10.1.0.2:6443"
    ca = x509.load_pem_x509_certificate(t.kubernetes_ca_cert)
    assert ca == agent.credentials.ca.cert
    node_cert = x509.load_pem_x509_certificate(t.node_cert)
    node_cert.verify_directly_issued_by(ca)
    assert isinstance(node_cert.public_key(), ed25519.Ed25519PublicKey)
    assert node_cert.public_key() == key.public_key()
    client = x509.load_pem_x509_certificate(t.kubelet_client_cert)
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{t.node_id}"
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    server = x509.load_pem_x509_certificate(t.kubelet_server_cert)
    names, ips = _sans(server)
    assert names == {t.node_id} and ips == {"10.1.0.3"}
    proxy = x509.load_pem_x509_certificate(t.kube_proxy_client_cert)
    assert proxy.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-proxy"
    assert pki.load_key(t.kube_proxy_client_key).public_key() == proxy.public_key()
    provisioner = x509.load_pem_x509_certificate(t.provisioner_client_cert)
    provisioner.verify_directly_issued_by(ca)
    assert provisioner.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        f"smalltown:provisioner:{t.node_id}"
    assert provisioner.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "smalltown:provisioners"
    assert pki.load_key(t.provisioner_client_key).public_key() == provisioner.public_key()
    assert check_ticket(t) == []
    # Two tickets are two different nodes.
    t2 = stub.GetGoldenTicket(debug_pb2.GetGoldenTicketRequest(external_ip="10.1.0.4"), timeout=10).ticket
    assert t2.node_id != t.node_id


def test_node0_issues_its_own_provisioner_identity(agent: Agent) -> None:
    _ready_node0(agent)
    agent.credentials.issue_ip_certs()
    files = agent.credentials.files
    cert = x509.load_pem_x509_certificate(files.crt("provisioner").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        f"smalltown:provisioner:{agent.node.name}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "smalltown:provisioners"
    assert pki.load_key(files.key("provisioner").read_bytes()).public_key() == cert.public_key()
    assert files.key("provisioner").stat().st_mode & 0o777 == 0o600


def test_check_ticket_names_what_a_ticket_lacks(tmp_path: Path) -> None:
    ca = pki.ClusterCA(tmp_path)
    ca.ensure()
    t = issue_golden_ticket(ca, "10.1.0.3", "10.1.0.2:6443", "n0", "10.1.0.2")
    assert check_ticket(t) == []
    t.ClearField("provisioner_client_key")
    t.ClearField("kube_proxy_client_cert")
    assert check_ticket(t) == ["kube_proxy_client_cert", "provisioner_client_key"]
    assert "provisioner_client_cert" in check_ticket(enrolment_pb2.GoldenTicket())


def test_a_consensus_ticket_carries_real_etcd_and_control_plane_material(tmp_path: Path) -> None:
    ca = pki.ClusterCA(tmp_path)
    ca.ensure()
    worker = issue_golden_ticket(ca, "10.1.0.3", "10.1.0.2:6443", "n0", "10.1.0.2")
    assert not joins_consensus(worker)
    assert not (worker.etcd_client_cert or worker.kubernetes_ca_key or worker.service_account_key)

    sa_key = pki.key_pem(pki.new_key())
    seat = ConsensusSeat(peers=(("n0", "10.1.0.2"), ("n1", "10.1.0.3")), service_account_key=sa_key)
    t = issue_golden_ticket(ca, "10.1.0.4", "10.1.0.2:6443", "n0", "10.1.0.2", seat)
    assert joins_consensus(t) and check_ticket(t) == []
    assert [(p.name, p.address) for p in t.peers] == [("n0", "10.1.0.2"), ("n1", "10.1.0.3")]
    assert (t.this.name, t.this.address) == (t.node_id, "10.1.0.4")
    member = x509.load_pem_x509_certificate(t.etcd_client_cert)
    sans = member.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"10.1.0.4", "127.0.0.1"}
    usages = member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    member.verify_directly_issued_by(ca.cert)
    assert pki.load_key(t.etcd_client_key).public_key() == member.public_key()
    assert pki.load_key(t.kubernetes_ca_key).public_key() == ca.cert.public_key()
    assert t.service_account_key == sa_key


def test_issue_golden_ticket_validates_directly(tmp_path: Path) -> None:
    ca = pki.ClusterCA(tmp_path)
    ca.ensure()
    with pytest.raises(InvalidTicketRequest):
        issue_golden_ticket(ca, "not-an-ip", "10.1.0.2:6443", "n0", "10.1.0.2")
    t = issue_golden_ticket(ca, " 10.1.0.9 ", "10.1.0.2:6443", "n0", "10.1.0.2")
    assert ipaddress.ip_address(t.this.address) == ipaddress.ip_address("10.1.0.9")


def _logs_req(**kw: object) -> debug_pb2.GetLogsRequest:
    return debug_pb2.GetLogsRequest(**kw)  # type: ignore[arg-type]


def test_get_logs_backlog_modes_and_filters(agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub) -> None:
    buf = agent.logs.get("containerd")
    assert buf is not None
    for i in range(1200):
        buf.write(f"{'even' if i % 2 == 0 else 'odd'} {i}")
    buf.write("y" * 5000)

    def collect(req: debug_pb2.GetLogsRequest) -> list[debug_pb2.LogEntry]:
        out = []
        for resp in stub.GetLogs(req, timeout=10):
            assert not resp.stream_entries
            out.extend(resp.backlog_entries)
        return out

    everything = collect(_logs_req(dn="containerd", backlog_mode=debug_pb2.BACKLOG_ALL,
                                   stream_mode=debug_pb2.STREAM_DISABLE))
    assert len(everything) == 1201 and everything[0].line == "even 0" and everything[0].dn == "containerd"
    assert everything[-1].original_length == 5000 and len(everything[-1].line) < 5000
    assert everything[0].original_length == 0 and everything[0].timestamp_unix_nanos > 0
    last3 = collect(_logs_req(dn="containerd", backlog_mode=debug_pb2.BACKLOG_COUNT, backlog_count=3,
                              stream_mode=debug_pb2.STREAM_DISABLE))
    assert [e.line for e in last3][:2] == ["even 1198", "odd 1199"]
    odd2 = collect(_logs_req(dn="containerd", backlog_mode=debug_pb2.BACKLOG_COUNT, backlog_count=2,
                             filters=[debug_pb2.LogFilter(contains="odd")], stream_mode=debug_pb2.STREAM_DISABLE))
    assert [e.line for e in odd2] == ["odd 1197", "odd 1199"]
    assert collect(_logs_req(dn="containerd", backlog_mode=debug_pb2.BACKLOG_DISABLE,
                             stream_mode=debug_pb2.STREAM_DISABLE)) == []


@pytest.mark.parametrize("req, code", [
    (dict(dn="containerd", backlog_mode=0, stream_mode=debug_pb2.STREAM_DISABLE), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(dn="containerd", backlog_mode=debug_pb2.BACKLOG_ALL, stream_mode=0), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(dn="containerd", backlog_mode=debug_pb2.BACKLOG_COUNT, backlog_count=0,
          stream_mode=debug_pb2.STREAM_DISABLE), grpc.StatusCode.INVALID_ARGUMENT),
    (dict(dn="no.such", backlog_mode=debug_pb2.BACKLOG_ALL, stream_mode=debug_pb2.STREAM_DISABLE),
     grpc.StatusCode.NOT_FOUND),
])
def test_get_logs_errors(stub: debug_pb2_grpc.NodeDebugServiceStub, req: dict[str, object],
                         code: grpc.StatusCode) -> None:
    assert _code(stub.GetLogs, _logs_req(**req)) == code


def test_get_logs_follow_streams_new_matching_entries(
    agent: Agent, stub: debug_pb2_grpc.NodeDebugServiceStub
) -> None:
    buf = agent.logs.get("kube.apiserver")
    assert buf is not None
    buf.write("old match")
    call = stub.GetLogs(_logs_req(dn="kube.apiserver", backlog_mode=debug_pb2.BACKLOG_ALL,
                                  stream_mode=debug_pb2.STREAM_UNBUFFERED,
                                  filters=[debug_pb2.LogFilter(contains="match")]), timeout=20)
    first = next(call)
    assert [e.line for e in first.backlog_entries] == ["old match"]

    def writer() -> None:
        time.sleep(0.3)
        buf.write("noise")
        buf.write("new match 1")
        buf.write("new match 2")

    threading.Thread(target=writer, daemon=True).start()
    streamed: list[str] = []
    for resp in call:
        assert not resp.backlog_entries
        streamed.extend(e.line for e in resp.stream_entries)
        if len(streamed) >= 2:
            break
    call.cancel()
    assert streamed == ["new match 1", "new match 2"]


def test_pod_cidr_assignment_fills_gaps_and_skips_assigned_nodes() -> None:
    nodes = [
        {"metadata": {"name": "b"}, "spec": {}},
        {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.0.0/24"}},
        {"metadata": {"name": "c"}, "spec": {"podCIDR": "10.244.2.0/24"}},
        {"metadata": {"name": "d"}, "spec": {}},
    ]
    assert network.pod_cidr_assignments(nodes, "10.244.0.0/16") == {"b": "10.244.1.0/24", "d": "10.244.3.0/24"}
    assert network.pod_cidr_assignments(nodes[1:2], "10.244.0.0/16") == {}


def test_worker_boot_adopts_the_ticket_identity_and_material(tmp_path: Path) -> None:
    """A joining node (host mode, no components) takes its key, name and certificates from the ticket."""
    ca = pki.ClusterCA(tmp_path / "node0")
    ca.ensure()
    ticket = issue_golden_ticket(ca, "10.1.0.3", "10.1.0.2:6443", "smalltown-node0", "10.1.0.2")
    enrolment = tmp_path / "enrolment.pb"
    enrolment.write_bytes(enrolment_pb2.EnrolmentConfig(golden_ticket=ticket, node_id=ticket.node_id)
                          .SerializeToString())
    cfg = AgentConfig(root=tmp_path / "worker", init=False, static_ip="10.1.0.3", components=(),
                      enrolment_path=enrolment)
    cfg.ports.debug = 0
    cfg.debug_listen = "127.0.0.1"
    a = Agent(cfg)
    a.console.stream = open("/dev/null", "w")
    a.start_debug_service()
    threading.Thread(target=a._boot_guarded, daemon=True).start()
    try:
        assert a.conditions.wait("IPAssigned", 20)
        deadline = time.monotonic() + 20
        kubelet_kc = cfg.kube_dir / "kubelet.kubeconfig"
        while not kubelet_kc.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.node.name == ticket.node_id
        assert identity.load_node_key((cfg.data / "node.key").read_bytes()).public_key() == \
            identity.load_node_key(ticket.node_key).public_key()
        kc = json.loads(kubelet_kc.read_text())
        assert kc["clusters"][0]["cluster"]["server"] == "https://10.1.0.2:6443"
        cert = x509.load_pem_x509_certificate(base64.b64decode(kc["users"][0]["user"]["client-certificate-data"]))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{ticket.node_id}"
        assert (cfg.pki / "ca.crt").read_bytes() == ca.cert_pem
        assert (cfg.pki / "provisioner.crt").read_bytes() == ticket.provisioner_client_cert
        assert (cfg.pki / "provisioner.key").read_bytes() == ticket.provisioner_client_key
        assert (cfg.pki / "provisioner.key").stat().st_mode & 0o777 == 0o600
        assert not (cfg.pki / "ca.key").exists()  # workers never hold the CA key
        with grpc.insecure_channel(f"127.0.0.1:{a.debug_port}") as ch:
            stub = debug_pb2_grpc.NodeDebugServiceStub(ch)
            assert _code(stub.GetDebugKubeconfig, debug_pb2.GetDebugKubeconfigRequest(id="x")) \
                == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        a.node.stop.set()
        a.debug_server.stop(0)  # type: ignore[union-attr]


def test_supervisor_keeps_huge_lines_bounded_with_their_length() -> None:
    from pytest_smalltown.node.logbuffer import LogRegistry

    logs = LogRegistry(max_line_length=100)
    sup = Supervisor(logs, Console(stream=open("/dev/null", "w"), use_kernel_uptime=False))
    script = "import sys; sys.stdout.write('a' * 300000 + '\\nshort\\n' + 'b' * 150)"
    comp = sup.start(ComponentSpec("huge", [sys.executable, "-c", script], restart=False))
    try:
        deadline = time.monotonic() + 10
        while len(comp.buffer) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        entries = comp.buffer.tail()
        assert [e.line[:3] for e in entries[:3]] == ["aaa", "sho", "bbb"]
        assert entries[0].original_length == 300000 and len(entries[0].line) == 100
        assert entries[1].original_length == 0 and entries[1].line == "short"
        assert entries[2].original_length == 150
    finally:
        sup.shutdown()


def test_pod_cidr_follows_the_node_index_on_the_switch_network() -> None:
    def node(name: str, ip: str, cidr: str | None = None) -> dict[str, object]:
        return {"metadata": {"name": name}, "spec": {"podCIDR": cidr} if cidr else {},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}

    # Node 1 (10.1.0.3) registers before node 0 (10.1.0.2): each still gets its own index.
    got = network.pod_cidr_assignments([node("z-node1", "10.1.0.3"), node("a-node0", "10.1.0.2")],
                                       "10.244.0.0/16", "10.1.0.0/24")
    assert got == {"a-node0": "10.244.0.0/24", "z-node1": "10.244.1.0/24"}
    # Off the switch network (user-mode networking): lowest free subnet.
    assert network.pod_cidr_assignments([node("solo", "10.0.2.15")], "10.244.0.0/16", "10.1.0.0/24") \
        == {"solo": "10.244.0.0/24"}
    # Preferred subnet taken: fall back to the lowest free one.
    got = network.pod_cidr_assignments([node("x", "10.1.0.2", "10.244.1.0/24"), node("y", "10.1.0.3")],
                                       "10.244.0.0/16", "10.1.0.0/24")
    assert got == {"y": "10.244.0.0/24"}


def test_image_set_disks_are_found_by_their_virtio_serial(tmp_path: Path) -> None:
    sys_block = tmp_path / "sys/block"
    for name, serial in (("vda", None), ("vdb", "preload-conformance\n"), ("vdc", "other")):
        (sys_block / name).mkdir(parents=True)
        if serial is not None:
            (sys_block / name / "serial").write_text(serial)
    (sys_block / "loop0").mkdir()
    found = system.disks_by_serial(contract.PRELOAD_DISK_SERIAL_PREFIX, sys_block, Path("/dev"))
    assert found == {"preload-conformance": Path("/dev/vdb")}


def test_load_image_imports_through_the_agents_ctr_and_spools_on_its_disk(
    containerd_agent: Agent, client: DebugClient, tmp_path: Path
) -> None:
    archive = tmp_path / "app.tar"
    archive.write_text("GOOD smalltown.local/app:1 smalltown.local/sidecar:1")
    client.load_image(archive)
    assert containerd_agent.runtime.image_names() == \
        {contract.PAUSE_IMAGE, "smalltown.local/app:1", "smalltown.local/sidecar:1"}
    assert list(containerd_agent.runtime.image_spool_dir.iterdir()) == []
    assert containerd_agent.runtime.image_spool_dir.is_relative_to(containerd_agent.cfg.data)
    size = archive.stat().st_size
    assert any(f"LoadImage: {size} byte archive imported" in line for line in containerd_agent.logs.get("agent").lines(0))


def test_a_failed_import_removes_the_images_it_created(
    containerd_agent: Agent, client: DebugClient, tmp_path: Path
) -> None:
    archive = tmp_path / "broken.tar"
    archive.write_text("BROKEN smalltown.local/broken:1")
    with pytest.raises(ImageLoadError) as info:
        client.load_image(archive)
    message = str(info.value)
    assert "INVALID_ARGUMENT" in message and str(archive) in message
    assert "ctr: failed to extract layer sha256:1: invalid tar header" in message
    assert "apply failure" not in message, "containerd's log lines echoed by ctr are left out"
    assert containerd_agent.runtime.image_names() == {contract.PAUSE_IMAGE}, "the node is as it was"
    assert list(containerd_agent.runtime.image_spool_dir.iterdir()) == []


def test_load_image_waits_for_containerd(containerd_agent: Agent, client: DebugClient, tmp_path: Path) -> None:
    containerd_agent.conditions.set("ContainerdReady", False)
    archive = tmp_path / "app.tar"
    archive.write_text("GOOD smalltown.local/app:1")
    with pytest.raises(ImageLoadError, match="UNAVAILABLE: containerd is not ready yet"):
        client.load_image(archive, retry_for=0.3)
    threading.Timer(0.3, containerd_agent.conditions.set, ("ContainerdReady",)).start()
    client.load_image(archive, retry_for=20)
    assert "smalltown.local/app:1" in containerd_agent.runtime.image_names()


def test_boot_removes_uploads_an_earlier_boot_left_behind(
    containerd_agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_smalltown.node.debug_service import SPOOL_PREFIX

    spool = containerd_agent.runtime.image_spool_dir
    spool.mkdir(parents=True)
    (spool / f"{SPOOL_PREFIX}abc.tar").write_bytes(b"half an upload")
    monkeypatch.setattr(containerd_agent.supervisor, "start", lambda spec: None)
    monkeypatch.setattr(threading, "Thread", lambda **kw: type("T", (), {"start": lambda self: None})())
    containerd_agent.runtime.start_containerd()
    assert list(spool.iterdir()) == []

# ------------------------------------------------------------ LoadImage on the agent

#: A stand-in for ctr: the image store is a JSON list next to it. "import -" reads
#: stdin: "GOOD name..." imports the names, "BROKEN name" records the image and
#: then fails the way an unpack failure does; anything else is not an image.
FAKE_CTR = r'''
import json, sys
from pathlib import Path
store = Path(__file__).with_name("images.json")
images = json.loads(store.read_text()) if store.exists() else []
args = sys.argv[sys.argv.index("-n") + 2:]
if args[:2] == ["images", "ls"]:
    print("\n".join(images))
elif args[:3] == ["images", "import", "-"]:
    data = sys.stdin.buffer.read().decode(errors="replace").split()
    if data[:1] == ["GOOD"]:
        images += data[1:]
    elif data[:1] == ["BROKEN"]:
        images += data[1:]
        store.write_text(json.dumps(images))
        sys.exit('time="..." level=info msg="apply failure"\nctr: failed to extract layer sha256:1: invalid tar header')
    else:
        sys.exit("ctr: unrecognized image format")
elif args[:2] == ["images", "rm"]:
    images = [i for i in images if i not in args[2:]]
store.write_text(json.dumps(images))
'''


@pytest.fixture
def containerd_agent(tmp_path: Path) -> Iterator[Agent]:
    """An Agent whose containerd is ready and whose ctr is :data:`FAKE_CTR`."""
    ctr = tmp_path / "bin" / "ctr"
    ctr.parent.mkdir()
    ctr.write_text(f"#!{sys.executable}\n{FAKE_CTR}")
    ctr.chmod(0o755)
    (ctr.parent / "images.json").write_text(json.dumps([contract.PAUSE_IMAGE]))
    cfg = AgentConfig(root=tmp_path / "root", init=False, static_ip="10.1.0.2", components=("containerd",))
    cfg.ports.debug = 0
    cfg.debug_listen = "127.0.0.1"
    cfg.bins.ctr = str(ctr)
    a = Agent(cfg)
    a.console.stream = open("/dev/null", "w")
    a.conditions.set("ContainerdReady")
    a.start_debug_service()
    yield a
    a.debug_server.stop(0)  # type: ignore[union-attr]


@pytest.fixture
def client(containerd_agent: Agent) -> Iterator[DebugClient]:
    debug = DebugClient(grpc.insecure_channel(f"127.0.0.1:{containerd_agent.debug_port}"))
    yield debug
    debug.close()
