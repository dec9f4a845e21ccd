"""The Smalltown node contract, shared by the launcher, the reference image and the tests.

Everything a harness may rely on about a node lives here: ports, fw_cfg names,
RPC-visible component and condition names, and the reference image's
preloaded container images. Values follow DESIGN section 3 (facts from the
original Smalltown); reference-only additions are marked as such.
"""

from __future__ import annotations

from enum import IntEnum


class NodePort(IntEnum):
    """TCP/UDP ports a Smalltown node listens on."""

    MASTER_SERVICE = 7833
    CONSENSUS = 7834
    NODE_SERVICE = 7835
    EXTERNAL_SERVICE = 7836
    DEBUG_SERVICE = 7837
    WIREGUARD = 7838
    KUBERNETES_API = 6443
    DEBUGGER = 2345


#: Ports the Nanoswitch forwards from the host to node 0 by default.
SWITCH_FORWARDED_PORTS: tuple[NodePort, ...] = (
    NodePort.EXTERNAL_SERVICE,
    NodePort.DEBUG_SERVICE,
    NodePort.KUBERNETES_API,
)

#: Harness addition: the Nanoswitch also forwards guest port
#: ``NODE_DEBUG_PORT_BASE + i`` to node ``i``'s debug service (port 7837), so
#: the host reaches every node's NodeDebugService, not only node 0's. The
#: switch reserves ports BASE .. BASE + MAX_NODES - 1 for this
#: (:func:`node_debug_guest_port`).
NODE_DEBUG_PORT_BASE = 27837

#: Most nodes a cluster has, everywhere (markers, settings, the CLI, the
#: switch: all ask :func:`check_node_count`). The binding limit is the host:
#: eight 2 GiB node VMs fill a 24 GiB CI machine with room for the switch and
#: the tests. The switch itself could serve 16 (microvm's 24 virtio-mmio
#: slots; ~27 bytes of its kernel command line per lease).
MAX_NODES = 8


def check_node_count(nodes: object, what: str = "node count") -> int:
    """Return ``nodes`` if it is a node count a cluster can have (an int in 1..MAX_NODES), else raise ValueError.

    The one check of the limit. ``what`` names the value in the message
    where the caller got it (``smalltown(nodes=9)``, ``--nodes``).
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        raise ValueError(f"{what} must be an integer, got {nodes!r} ({type(nodes).__name__})")
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"{what} is out of range: a cluster has 1 to {MAX_NODES} nodes, got {nodes}")
    return nodes


# --- Node addresses (the switch's fixed DHCP leases) -------------------------

#: MAC of the switch's uplink NIC; the switch tells its uplink from node NICs by it.
UPLINK_MAC = "02:72:82:bf:c3:56"
#: Address of the switch on the node network (nodes' router).
SWITCH_ADDRESS = "10.1.0.1"


def _check_node_index(i: int) -> None:
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < MAX_NODES:
        raise ValueError(f"node index must be an int in 0..{MAX_NODES - 1}, got {i!r}")


def node_mac(i: int) -> str:
    """The MAC the launcher gives node ``i``; the switch's fixed lease is keyed by it."""
    _check_node_index(i)
    return "02:53:4d:01:00:%02x" % (2 + i)


def node_address(i: int) -> str:
    """The address node ``i`` gets by DHCP from the switch: 10.1.0.(2+i), in :data:`NODE_NETWORK`."""
    _check_node_index(i)
    return "10.1.0.%d" % (2 + i)


def node_debug_guest_port(i: int) -> int:
    """The switch's uplink port that leads to node ``i``'s debug service (NODE_DEBUG_PORT_BASE + i)."""
    _check_node_index(i)
    return NODE_DEBUG_PORT_BASE + i

#: etcd members (and control-plane nodes) of a cluster large enough to have
#: several: three survive the loss of any one.
CONSENSUS_SIZE = 3

#: NodePort Services' ports: Kubernetes' default range (the apiserver keeps
#: it). The switch DNATs these uplink ports to node 0, so a host forward
#: added while a test runs reaches a NodePort (``Switch.forward_node_port``).
NODE_PORT_RANGE = range(30000, 32768)

#: fw_cfg entry carrying a binary EnrolmentConfig; absent means "bootstrap".
ENROLMENT_FW_CFG_NAME = "com.nexantic.smalltown/enrolment.pb"
ENROLMENT_SYSFS_PATH = f"/sys/firmware/qemu_fw_cfg/by_name/{ENROLMENT_FW_CFG_NAME}/raw"

#: Reference-image addition: fw_cfg entry carrying the cluster's debug-service
#: token (ASCII hex), which the launcher makes per cluster. A node that has one
#: answers only calls whose metadata carries it (``DEBUG_TOKEN_METADATA_KEY:
#: "Bearer <token>"``) and UNAUTHENTICATED to the rest; a node without the
#: entry, or an image that knows nothing of it, serves as before, and our
#: clients' extra metadata costs it nothing.
DEBUG_TOKEN_FW_CFG_NAME = "opt/smalltown/debug-token"
DEBUG_TOKEN_SYSFS_PATH = f"/sys/firmware/qemu_fw_cfg/by_name/{DEBUG_TOKEN_FW_CFG_NAME}/raw"
DEBUG_TOKEN_METADATA_KEY = "authorization"

#: Identity the tests use for debug credentials.
DEBUG_USER = "debug-user"
DEBUG_GROUPS: tuple[str, ...] = ("system:masters",)

#: Component log paths every node serves through GetComponentLogs/GetLogs.
COMPONENTS: tuple[str, ...] = (
    "containerd",
    "kube.apiserver",
    "kube.controller-manager",
    "kube.scheduler",
    "kube.kubelet",
)

#: Conditions every node answers through GetCondition.
CONDITIONS: tuple[str, ...] = ("IPAssigned", "DataAvailable", "KubernetesReady")

# --- Reference image only -------------------------------------------------

#: Where the reference image keeps kube (and its kubelet, kubectl... links), etcd and
#: CoreDNS: ``images/node.py`` puts them there, the agent (``node/config.py``) runs them from there.
IMAGE_BIN_DIR = "/usr/local/bin"
#: Where the reference image keeps its preloaded image archives (``docker save``, ``*.tar``)
#: and their index ``images.json``, which the agent imports into containerd at boot.
IMAGE_ARCHIVE_DIR = "/opt/smalltown/images"

#: Container images preloaded into containerd's k8s.io namespace at boot.
#: Tags are not "latest", so the default pull policy IfNotPresent never pulls.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TEST_IMAGE = "smalltown.local/busybox:1.37"  # the tag is the busybox version it carries (images/busybox.py)

#: How long importing an image archive may take per MiB of archive, under
#: emulation: the 108 MiB conformance image set took about 6 minutes to import
#: (unpacked) on a booting TCG node, ~3.3 s/MiB. Both the node's import timeout
#: and ``DebugClient.load_image``'s deadline grow with it.
IMAGE_IMPORT_SECONDS_PER_MIB = 4.0

#: Serial prefix of a read-only virtio disk that carries a preloaded image set
#: (a ``docker save`` archive written raw onto the disk); the agent imports
#: every such disk before the kubelet starts. See ``images/preload.py``.
PRELOAD_DISK_SERIAL_PREFIX = "preload-"

#: Networks inside a reference cluster.
NODE_NETWORK = "10.1.0.0/24"
POD_NETWORK = "10.244.0.0/16"  # node i gets 10.244.i.0/24
SERVICE_NETWORK = "10.96.0.0/12"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"

#: The default StorageClass: a claim of this class gets a ``local``
#: PersistentVolume (a directory on the disk of the node its pod is scheduled
#: to), made by the provisioner in every node's agent (``node/volumes.py``).
#: Binding waits for the first consumer, so volume and pod share a node.
STORAGE_CLASS = "local"
#: The provisioner name the StorageClass and its volumes carry.
PROVISIONER = "smalltown.dev/local"

#: Serial console line the reference node agent prints once its debug service listens.
DEBUG_SERVICE_READY_LINE = "smalltown: debug service listening"
#: Console line the reference node agent prints right before a graceful reboot restarts the machine.
REBOOT_LINE = "smalltown: components stopped, disks flushed, rebooting"
