"""Where the agent keeps things and which ports it uses, injectable for host testing.

Inside the VM everything hangs off ``/`` with the contract's ports. On a
developer's host the same agent runs with ``root`` set to a temporary
directory, ``init=False`` (no mounts, hostname or DHCP; the IP is given) and
shifted ports, which is how the control-plane bootstrap is iterated on in
seconds instead of a VM boot.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pytest_smalltown import contract

#: Components that run on node 0 only.
CONTROL_PLANE = ("etcd", "kube.apiserver", "kube.controller-manager", "kube.scheduler", "coredns")
#: Components every node runs.
WORKER = ("containerd", "kube.kubelet", "kube.proxy")
ALL_COMPONENTS = CONTROL_PLANE + WORKER


@dataclass
class Ports:
    debug: int = int(contract.NodePort.DEBUG_SERVICE)
    apiserver: int = int(contract.NodePort.KUBERNETES_API)
    etcd_client: int = 2379
    etcd_peer: int = int(contract.NodePort.CONSENSUS)
    controller_manager: int = 10257
    scheduler: int = 10259
    kubelet: int = 10250
    kube_proxy_health: int = 10256
    kube_proxy_metrics: int = 10249
    dns: int = 53
    coredns_health: int = 8080


@dataclass
class Binaries:
    kube: str = f"{contract.IMAGE_BIN_DIR}/kube"
    etcd: str = f"{contract.IMAGE_BIN_DIR}/etcd"
    coredns: str = f"{contract.IMAGE_BIN_DIR}/coredns"
    containerd: str = "containerd"
    ctr: str = "ctr"
    busybox: str = "busybox"
    ip: str = "ip"
    iptables: str = "iptables"

    def resolve(self, name: str) -> str:
        """Absolute path of a tool (or the name itself when not found, for a clear exec error)."""
        value: str = getattr(self, name)
        return value if value.startswith("/") else (shutil.which(value) or value)


@dataclass
class AgentConfig:
    root: Path = Path("/")
    #: True when the agent is the VM's init (child of tini): do mounts, hostname, DHCP.
    init: bool = True
    #: Fixed node IP (host mode); None means "ask DHCP".
    static_ip: str | None = None
    ports: Ports = field(default_factory=Ports)
    bins: Binaries = field(default_factory=Binaries)
    #: Components to run; others are skipped (host mode runs the control plane only).
    components: tuple[str, ...] = ALL_COMPONENTS
    enrolment_path: Path = Path(contract.ENROLMENT_SYSFS_PATH)
    #: The cluster's debug-service token (fw_cfg); absent: the service answers everyone who reaches it.
    debug_token_path: Path = Path(contract.DEBUG_TOKEN_SYSFS_PATH)
    debug_listen: str = "0.0.0.0"

    # Derived paths. Functions rather than fields so that changing root is enough.
    @property
    def data(self) -> Path:
        return self.root / "var/lib/smalltown"

    @property
    def pki(self) -> Path:
        return self.data / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.data / "etcd"

    @property
    def kube_dir(self) -> Path:
        return self.data / "kubernetes"

    @property
    def volumes_dir(self) -> Path:
        """Where the local provisioner makes PersistentVolume directories (on the node's disk, like etcd's)."""
        return self.data / "volumes"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def run(self) -> Path:
        return self.root / "run/smalltown"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "etc/cni/net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.root / "usr/lib/cni"

    @property
    def images_dir(self) -> Path:
        return self.root / contract.IMAGE_ARCHIVE_DIR.lstrip("/")

    @property
    def containerd_root(self) -> Path:
        return self.root / "var/lib/containerd"

    @property
    def containerd_state(self) -> Path:
        return self.root / "run/containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "var/lib/kubelet"

    def runs(self, component: str) -> bool:
        return component in self.components
