"""Built-in Kubernetes objects the cluster needs, kept present like the original's reconciler.

The original Smalltown reconciled a fixed set of objects (a PSP and basic RBAC)
on a timer, so that a user deleting one by accident gets it back. Ours:

* RBAC: the apiserver's kubelet client (``smalltown:apiserver-kubelet-client``)
  may use the kubelet API (logs, exec, port-forward need this);
  CoreDNS (``smalltown:coredns``) may read what the kubernetes plugin watches.
* RuntimeClass ``runc`` (handler ``runc``), as Smalltown ships.
* The default StorageClass ``local`` (:data:`contract.STORAGE_CLASS`), bound
  on the first consumer and served by the provisioner in every node's agent
  (:mod:`volumes`), and RBAC for those provisioners (group
  ``smalltown:provisioners``): volumes, claims, classes and events.
* Cluster DNS: a selectorless Service ``kube-system/kube-dns`` at the
  contract's DNS IP, and an EndpointSlice pointing at CoreDNS, which runs as a
  supervised host process on node 0 (no image to pull, starts before any pod
  networking exists, its logs sit in the agent's buffers like every other
  component's). kube-proxy only reads EndpointSlices, so no Endpoints object.

* The ``default`` ServiceAccount of the ``default`` namespace. The
  controller-manager creates it too, but only once its serviceaccount
  controller runs, which under emulation is seconds after the node is Ready;
  a test creating its first pod in that window would be refused. The
  controller leaves an existing account alone, so applying it is harmless.

Every object carries ``smalltown.dev/builtin=true``.
"""

from __future__ import annotations

from typing import Any

from pytest_smalltown import contract
from pytest_smalltown.node.volumes import PROVISIONER_GROUP

BUILTIN_LABEL = "smalltown.dev/builtin"
APISERVER_KUBELET_CLIENT = "smalltown:apiserver-kubelet-client"
COREDNS_USER = "smalltown:coredns"


def _meta(name: str, namespace: str | None = None, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {BUILTIN_LABEL: "true", **(extra_labels or {})}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return meta


RBAC_API = "rbac.authorization.k8s.io"


def _cluster_role(name: str, rules: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {"apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRole", "metadata": _meta(name), "rules": rules}


def _cluster_role_binding(name: str, role: str, subject_kind: str, subject: str) -> dict[str, Any]:
    """Grant ClusterRole ``role`` to one User or Group, as a builtin object called ``name``."""
    return {
        "apiVersion": f"{RBAC_API}/v1", "kind": "ClusterRoleBinding",
        "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_API, "kind": subject_kind, "name": subject}],
    }


def builtin_objects(dns_ip: str, dns_port: int = 53) -> list[dict[str, Any]]:
    """Everything the reconciler applies; ``dns_ip`` is where CoreDNS listens (node 0)."""
    return [
        _cluster_role_binding("smalltown:apiserver-kubelet-client", "system:kubelet-api-admin",
                              "User", APISERVER_KUBELET_CLIENT),
        _cluster_role("smalltown:coredns", [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ]),
        _cluster_role_binding("smalltown:coredns", "smalltown:coredns", "User", COREDNS_USER),
        {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta("default", "default"),
        },
        {
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": _meta("runc"),
            "handler": "runc",
        },
        {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {**_meta(contract.STORAGE_CLASS),
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": contract.PROVISIONER,
            # The volume is a directory on one node's disk: the pod must be
            # placed first, so the claim is provisioned where it runs.
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
        _cluster_role("smalltown:provisioner", [
            {"apiGroups": [""], "resources": ["persistentvolumes"],
             "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"],
             "verbs": ["get", "list", "watch", "update", "patch"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]),
        _cluster_role_binding("smalltown:provisioner", "smalltown:provisioner", "Group", PROVISIONER_GROUP),
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": _meta("kube-dns", "kube-system", {"k8s-app": "kube-dns",
                                                         "kubernetes.io/name": "CoreDNS"}),
            "spec": {
                "clusterIP": contract.CLUSTER_DNS_IP,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": dns_port, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": dns_port, "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta("kube-dns-smalltown", "kube-system", {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "node-agent.smalltown.dev",
            }),
            "addressType": "IPv4",
            "endpoints": [{"addresses": [dns_ip], "conditions": {"ready": True}}],
            "ports": [
                {"name": "dns", "port": dns_port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": dns_port, "protocol": "TCP"},
            ],
        },
    ]
