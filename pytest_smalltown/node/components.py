"""Command lines and configuration files of every Kubernetes-side component.

Pure functions from (config, node facts) to argv lists and file contents, so
that they are unit-testable and the agent's boot sequence stays readable.

Tuning for emulation (everything runs ~10x slower under TCG than on metal):
no leader election while a cluster has one control-plane node,
etcd without fsync (the disk is a throw-away snapshot anyway), API priority
and fairness off (a single client population), no profiling endpoints, and
generous kubelet image-GC thresholds so that preloaded images, which cannot be
pulled again without network, are never garbage-collected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown import contract
from pytest_smalltown.node.config import AgentConfig
from pytest_smalltown.node.consensus import peer_url
from pytest_smalltown.template import render


#: Common name of the aggregator's client certificate (front proxy).
FRONT_PROXY_CLIENT = "smalltown:front-proxy-client"


@dataclass(frozen=True)
class NodeFacts:
    """What is known about this node once identity and network are settled."""

    name: str
    ip: str
    apiserver_url: str  # as seen from this node's components
    upstream_dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Files:
    """Where the PKI material and kubeconfigs of one node live."""

    cfg: AgentConfig

    def p(self, name: str) -> Path:
        return self.cfg.pki / name

    @property
    def ca(self) -> Path:
        return self.p("ca.crt")

    def crt(self, name: str) -> Path:
        return self.p(f"{name}.crt")

    def key(self, name: str) -> Path:
        return self.p(f"{name}.key")

    def kubeconfig(self, name: str) -> Path:
        return self.cfg.kube_dir / f"{name}.kubeconfig"

    @property
    def sa_key(self) -> Path:
        return self.p("service-account.key")

    @property
    def sa_pub(self) -> Path:
        return self.p("service-account.pub")


#: etcd's Raft heartbeat and election timeout in ms (see etcd_argv).
ETCD_HEARTBEAT_MS = 500
ETCD_ELECTION_TIMEOUT_MS = 5000


def etcd_argv(cfg: AgentConfig, name: str, ip: str, join: str | None = None) -> list[str]:
    """etcd: clients on loopback only (each control-plane node's apiserver uses its own member), peers on the node's address.

    ``join`` is the ``--initial-cluster`` of the cluster this member joins
    (every member, itself included; see :mod:`consensus`); without it the
    member bootstraps a cluster of one. Either is ignored once the data
    directory exists (a reboot): the member then knows its cluster.
    One certificate (``etcd-member``, naming the node's address) serves
    both ports and is the member's client identity towards its peers.
    """
    f = Files(cfg)
    client = f"https://127.0.0.1:{cfg.ports.etcd_client}"
    peer = peer_url(ip, cfg.ports.etcd_peer)
    return [
        cfg.bins.resolve("etcd"),
        f"--name={name}",
        f"--data-dir={cfg.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={join or f'{name}={peer}'}",
        f"--initial-cluster-state={'existing' if join else 'new'}",
        "--initial-cluster-token=smalltown",
        f"--cert-file={f.crt('etcd-member')}",
        f"--key-file={f.key('etcd-member')}",
        f"--trusted-ca-file={f.ca}",
        "--client-cert-auth=true",
        f"--peer-cert-file={f.crt('etcd-member')}",
        f"--peer-key-file={f.key('etcd-member')}",
        f"--peer-trusted-ca-file={f.ca}",
        "--peer-client-cert-auth=true",
        "--unsafe-no-fsync=true",
        # Raft timing for emulated nodes: etcd's defaults (heartbeat 100 ms,
        # election after 1 s of silence) assume a LAN. Under TCG several node
        # VMs share the host's cores, a member is often descheduled for longer
        # than a second, and its peers then start elections that stall every
        # write. etcd's tuning guide: heartbeat about the round trip, election
        # timeout at least ten times that.
        f"--heartbeat-interval={ETCD_HEARTBEAT_MS}",
        f"--election-timeout={ETCD_ELECTION_TIMEOUT_MS}",
        "--listen-metrics-urls=",
        "--quota-backend-bytes=1073741824",
        "--snapshot-count=10000",
        # Every further member of the consensus joins as a learner; etcd's
        # default of one learner at a time would make them join one by one.
        f"--max-learners={contract.CONSENSUS_SIZE - 1}",
        "--log-level=warn",
    ]


def apiserver_argv(cfg: AgentConfig, node: NodeFacts) -> list[str]:
    f = Files(cfg)
    return [
        cfg.bins.resolve("kube"), "apiserver",
        f"--etcd-servers=https://127.0.0.1:{cfg.ports.etcd_client}",
        f"--etcd-cafile={f.ca}",
        f"--etcd-certfile={f.crt('apiserver-etcd-client')}",
        f"--etcd-keyfile={f.key('apiserver-etcd-client')}",
        "--bind-address=0.0.0.0",
        f"--secure-port={cfg.ports.apiserver}",
        f"--advertise-address={node.ip}",
        f"--tls-cert-file={f.crt('apiserver')}",
        f"--tls-private-key-file={f.key('apiserver')}",
        f"--client-ca-file={f.ca}",
        f"--kubelet-client-certificate={f.crt('apiserver-kubelet-client')}",
        f"--kubelet-client-key={f.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={f.ca}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--service-cluster-ip-range={contract.SERVICE_NETWORK}",
        f"--service-account-issuer=https://kubernetes.default.svc.{contract.CLUSTER_DOMAIN}",
        f"--service-account-key-file={f.sa_pub}",
        f"--service-account-signing-key-file={f.sa_key}",
        # Delegated authentication in the controller-manager and scheduler reads
        # the request-header CA; without one they log errors every few seconds.
        f"--requestheader-client-ca-file={f.ca}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        # The aggregator proxies requests for extension API groups (the
        # conformance suite's sample-apiserver) with this client identity.
        f"--proxy-client-cert-file={f.crt('front-proxy-client')}",
        f"--proxy-client-key-file={f.key('front-proxy-client')}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        "--anonymous-auth=false",
        "--profiling=false",
        "--enable-priority-and-fairness=false",
        "--event-ttl=1h",
        "--v=1",
    ]


def leader_election_flags(elect: bool) -> list[str]:
    """Leader election for a controller that may run on several control-plane nodes.

    Off while the cluster has one control-plane node (nothing to elect, and
    a renewal missed on a loaded emulated node would restart the controller
    for nothing); on, with deadlines far beyond the defaults for the same
    reason, once it has more (see :mod:`consensus`).
    """
    if not elect:
        return ["--leader-elect=false"]
    return ["--leader-elect=true", "--leader-elect-lease-duration=60s", "--leader-elect-renew-deadline=45s",
            "--leader-elect-retry-period=5s"]


def _controller_flags(cfg: AgentConfig, name: str, secure_port: int, leader_elect: bool) -> list[str]:
    """What the controller-manager and the scheduler share: their kubeconfig for everything, leader
    election, and a loopback-only secure port without profiling."""
    kc = Files(cfg).kubeconfig(name)
    return [
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        *leader_election_flags(leader_elect),
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(cfg: AgentConfig, leader_elect: bool = False) -> list[str]:
    f = Files(cfg)
    return [
        cfg.bins.resolve("kube"), "controller-manager",
        *_controller_flags(cfg, "controller-manager", cfg.ports.controller_manager, leader_elect),
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={contract.POD_NETWORK}",
        "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={contract.SERVICE_NETWORK}",
        f"--service-account-private-key-file={f.sa_key}",
        f"--root-ca-file={f.ca}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={f.ca}",
        f"--cluster-signing-key-file={f.key('ca')}",
    ]


def scheduler_argv(cfg: AgentConfig, leader_elect: bool = False) -> list[str]:
    return [
        cfg.bins.resolve("kube"), "scheduler",
        *_controller_flags(cfg, "scheduler", cfg.ports.scheduler, leader_elect),
    ]


CONTAINERD_CONFIG = Path(__file__).parent / "files" / "containerd.toml"


def containerd_config(cfg: AgentConfig) -> str:
    return render(
        CONTAINERD_CONFIG,
        ROOT=str(cfg.containerd_root),
        STATE=str(cfg.containerd_state),
        SOCKET=str(cfg.containerd_socket),
        PAUSE=contract.PAUSE_IMAGE,
        CNI_BIN=str(cfg.cni_bin_dir),
        CNI_CONF=str(cfg.cni_conf_dir),
    )


def containerd_argv(cfg: AgentConfig) -> list[str]:
    return [cfg.bins.resolve("containerd"), "--config", str(cfg.kube_dir / "containerd.toml")]


def kubelet_config(cfg: AgentConfig, node: NodeFacts) -> dict[str, object]:
    """The KubeletConfiguration (JSON; kubelet accepts JSON as YAML)."""
    f = Files(cfg)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{cfg.containerd_socket}",
        "clusterDNS": [contract.CLUSTER_DNS_IP],
        "clusterDomain": contract.CLUSTER_DOMAIN,
        "failSwapOn": False,
        "resolvConf": str(cfg.etc / "resolv.conf"),
        "tlsCertFile": str(f.crt("kubelet-server")),
        "tlsPrivateKeyFile": str(f.key("kubelet-server")),
        "port": cfg.ports.kubelet,
        "address": "0.0.0.0",
        "authentication": {
            "x509": {"clientCAFile": str(f.ca)},
            "webhook": {"enabled": True},
            "anonymous": {"enabled": False},
        },
        "authorization": {"mode": "Webhook"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "hairpinMode": "hairpin-veth",
        "serializeImagePulls": False,
        # Preloaded images cannot be re-pulled offline: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "evictionPressureTransitionPeriod": "10s",
        # Status and sync cadence: faster feedback for tests on a tiny cluster.
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "maxPods": 110,
        "staticPodPath": "",
        "volumePluginDir": str(cfg.kubelet_root / "volume-plugins"),
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": True,
        "localStorageCapacityIsolation": True,
        "runtimeRequestTimeout": "5m",
        "shutdownGracePeriod": "0s",
    }


def kubelet_argv(cfg: AgentConfig, node: NodeFacts) -> list[str]:
    f = Files(cfg)
    return [
        cfg.bins.resolve("kube"), "kubelet",
        f"--config={cfg.kube_dir / 'kubelet.json'}",
        f"--kubeconfig={f.kubeconfig('kubelet')}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        f"--root-dir={cfg.kubelet_root}",
        f"--cert-dir={cfg.kubelet_root / 'pki'}",
        "--v=1",
    ]


def kube_proxy_config(cfg: AgentConfig, node: NodeFacts) -> dict[str, object]:
    f = Files(cfg)
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": contract.POD_NETWORK,
        "hostnameOverride": node.name,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": f"127.0.0.1:{cfg.ports.kube_proxy_health}",
        "metricsBindAddress": f"127.0.0.1:{cfg.ports.kube_proxy_metrics}",
        "clientConnection": {"kubeconfig": str(f.kubeconfig("kube-proxy"))},
        # Do not touch conntrack sysctls: the guest kernel's defaults are fine and
        # writing nf_conntrack_max needs a writable /sys that a container runtime may hide.
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"},
        "detectLocalMode": "ClusterCIDR",
    }


def kube_proxy_argv(cfg: AgentConfig) -> list[str]:
    return [cfg.bins.resolve("kube"), "proxy", f"--config={cfg.kube_dir / 'kube-proxy.json'}", "--v=1"]


def corefile(cfg: AgentConfig, upstream: tuple[str, ...]) -> str:
    """CoreDNS serving the cluster domain from the API, forwarding the rest upstream if there is one.

    Behind the Nanoswitch there is none (its uplink is fenced, so its DHCP
    names no DNS server): names outside the cluster are then refused at once
    rather than timing out, and CoreDNS does not refuse to start, as its
    forward plugin does when it has no nameserver.
    """
    f = Files(cfg)
    forward = f"\n    forward . {' '.join(upstream)}" if upstream else ""
    return f""".:{cfg.ports.dns} {{
    errors
    health 127.0.0.1:{cfg.ports.coredns_health}
    kubernetes {contract.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {f.kubeconfig('coredns')}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}{forward}
    cache 30
    loadbalance
}}
"""


def coredns_argv(cfg: AgentConfig) -> list[str]:
    return [cfg.bins.resolve("coredns"), "-conf", str(cfg.kube_dir / "Corefile")]


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=2) + "\n"
