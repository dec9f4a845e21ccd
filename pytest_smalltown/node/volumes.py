"""A dynamic provisioner of ``local`` PersistentVolumes, run by every node's agent.

Tests run StatefulSets whose volumeClaimTemplates name no class, so the
cluster needs a default StorageClass whose claims get bound. A CSI driver or
an off-the-shelf hostPath provisioner would mean container images to build
and preload on every node; the agent already runs on every node and holds an
API client, so it speaks the external-provisioner protocol itself:

1. The StorageClass ``local`` (see :mod:`reconciler`) names
   :data:`contract.PROVISIONER` and binds on the first consumer.
2. Once a pod using a claim is scheduled, the scheduler annotates the claim
   with the chosen node (:data:`SELECTED_NODE`), and the PV controller in
   kube-controller-manager annotates it with the provisioner it waits for
   (:data:`PROVISIONER_ANNOTATIONS`).
3. The agent of that node makes a directory under its volumes directory and
   a PersistentVolume pre-bound to the claim (``claimRef`` with the claim's
   uid); the PV controller completes the binding, and the kubelet
   bind-mounts the directory into the pod. The volume's node affinity keeps
   later pods of the claim on this node.
4. A deleted claim leaves its volume ``Released``. The PV controller leaves
   the reclaim of a volume it did not make to the provisioner named in
   :data:`PROVISIONED_BY`, so the agent removes the directory and the volume.

Each agent handles only the claims scheduled to its own node and the volumes
labelled with its name (:data:`NODE_LABEL`): no leader election, and a
directory is only ever removed by the agent of the disk it lives on.

Polling (one list of claims and one of this node's volumes per pass) rather
than watching: the agent's client has no watch, a claim waits at most one
interval, and a missed event cannot strand a claim. Capacity is recorded but
not enforced: a directory has no size, as with every hostPath-style provisioner.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from pytest_smalltown import contract
from pytest_smalltown.node.kubeapi import ApiError
from pytest_smalltown.node.pki import ClusterCA, KeyPair

#: Set by the scheduler on a claim of a WaitForFirstConsumer class: the node the pod went to.
SELECTED_NODE = "volume.kubernetes.io/selected-node"
#: Set by the PV controller on a claim it leaves to an external provisioner
#: (the GA name, and the beta one older controllers write).
PROVISIONER_ANNOTATIONS = ("volume.kubernetes.io/storage-provisioner",
                           "volume.beta.kubernetes.io/storage-provisioner")
#: A claim's class before ``spec.storageClassName`` existed; the PV controller still honours it first.
LEGACY_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"
#: On a volume: who deletes it once it is released.
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
#: On a volume: the node whose disk holds it (lets each agent list only its own volumes).
NODE_LABEL = "smalltown.dev/node"
#: The RBAC group of every node's provisioner identity (see :func:`issue_identity`).
PROVISIONER_GROUP = "smalltown:provisioners"

CLAIMS = "/api/v1/persistentvolumeclaims"
VOLUMES = "/api/v1/persistentvolumes"


class Api(Protocol):
    """The part of :class:`kubeapi.KubeClient` the provisioner uses (a fake in unit tests)."""

    def post(self, path: str, obj: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, path: str) -> None: ...

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]: ...


class RefusedPath(Exception):
    """A released volume's path is not a directory this provisioner made; it is left alone."""


def provisioner_user(node_name: str) -> str:
    """The user name of ``node_name``'s provisioner: one identity per node, so audit logs say which."""
    return f"smalltown:provisioner:{node_name}"


def issue_identity(ca: ClusterCA, node_name: str) -> KeyPair:
    """A client certificate for ``node_name``'s provisioner (node 0 for itself, or for a golden ticket)."""
    return ca.issue(provisioner_user(node_name), orgs=[PROVISIONER_GROUP], client=True)


def volume_name(claim: dict[str, Any]) -> str:
    """``pvc-<claim uid>``, the external-provisioner convention: unique, and stable across retries."""
    return f"pvc-{claim['metadata']['uid']}"


def claim_class(claim: dict[str, Any]) -> str | None:
    """The claim's StorageClass, resolved the way the PV controller does (legacy annotation first)."""
    annotations = claim["metadata"].get("annotations") or {}
    if LEGACY_CLASS_ANNOTATION in annotations:
        return str(annotations[LEGACY_CLASS_ANNOTATION])
    name = (claim.get("spec") or {}).get("storageClassName")
    return str(name) if name is not None else None


def wants_volume(claim: dict[str, Any], node_name: str) -> bool:
    """An unbound, live claim of our class, scheduled to ``node_name``, that the PV controller left to us."""
    meta = claim["metadata"]
    annotations = meta.get("annotations") or {}
    return (
        not (claim.get("spec") or {}).get("volumeName")
        and not meta.get("deletionTimestamp")
        and claim_class(claim) == contract.STORAGE_CLASS
        and annotations.get(SELECTED_NODE) == node_name
        and any(annotations.get(a) == contract.PROVISIONER for a in PROVISIONER_ANNOTATIONS)
    )


def volume_for(claim: dict[str, Any], node_name: str, path: Path) -> dict[str, Any]:
    """The PersistentVolume for ``claim``: directory ``path`` on ``node_name``, pre-bound to the claim."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        raise ValueError(f"volumeMode {spec['volumeMode']} is not supported (directories only)")
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if not size:
        raise ValueError("the claim requests no storage size")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(claim),
            "labels": {NODE_LABEL: node_name},
            "annotations": {PROVISIONED_BY: contract.PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": contract.STORAGE_CLASS,
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]},
            ]}]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def releasable(volume: dict[str, Any]) -> bool:
    """A volume we made whose claim is gone and whose policy says to delete it."""
    annotations = volume["metadata"].get("annotations") or {}
    return (
        annotations.get(PROVISIONED_BY) == contract.PROVISIONER
        and (volume.get("status") or {}).get("phase") == "Released"
        and (volume.get("spec") or {}).get("persistentVolumeReclaimPolicy") == "Delete"
    )


class LocalProvisioner:
    """Provisions and deletes this node's ``local`` volumes, one :meth:`sync_once` pass at a time."""

    def __init__(self, api: Api, node_name: str, root: Path, log: Callable[[str], None]) -> None:
        self.api = api
        self.node_name = node_name
        self.root = root
        self.log = log
        #: Failures already logged, by object (or "pass"): a claim that cannot be
        #: served is retried every pass but logged once, not every two seconds.
        self._reported: dict[str, str] = {}

    def run(self, stop: threading.Event, every: float) -> None:
        """Pass after pass until ``stop`` is set; a failed pass is logged and retried, never fatal."""
        while not stop.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # noqa: BLE001 - an unreachable apiserver is routine during boot
                self._report("pass", f"pass failed: {exc!r}")
            else:
                self._reported.pop("pass", None)
            stop.wait(every)

    def sync_once(self) -> None:
        """Provision volumes for claims waiting on this node; delete this node's released volumes.

        Raises only when listing fails; a failure on one claim or volume is
        logged and does not stop the others.
        """
        volumes = self.api.list(VOLUMES, f"{NODE_LABEL}={self.node_name}")
        claims = self.api.list(CLAIMS)
        existing = {v["metadata"]["name"] for v in volumes}
        attempted = {"pass"}
        for claim in claims:
            if wants_volume(claim, self.node_name) and volume_name(claim) not in existing:
                attempted.add(key := f"claim {claim['metadata']['namespace']}/{claim['metadata']['name']}")
                self._attempt(key, self.provision, claim)
        for volume in volumes:
            if releasable(volume):
                attempted.add(key := f"volume {volume['metadata']['name']}")
                self._attempt(key, self.reclaim, volume)
        self._reported = {k: v for k, v in self._reported.items() if k in attempted}

    def provision(self, claim: dict[str, Any]) -> None:
        """Make the claim's directory and its PersistentVolume (an existing one is left as it is)."""
        name = volume_name(claim)
        path = self.root / name
        body = volume_for(claim, self.node_name, path)  # refuses what it cannot serve before any mkdir
        path.mkdir(parents=True, exist_ok=True)
        # World-writable, like a fresh emptyDir: the pod's user is unknown
        # here, many images run as non-root, and the kubelet changes a local
        # volume's ownership only for pods that set an fsGroup. The directory
        # is only reachable through the pods bound to the claim (and root).
        path.chmod(0o777)
        try:
            self.api.post(VOLUMES, body)
        except ApiError as exc:
            if exc.status == 409:  # made by an earlier pass the listing did not show yet
                return
            raise
        meta = claim["metadata"]
        self.log(f"provisioned {name} ({body['spec']['capacity']['storage']}) at {path} "
                 f"for claim {meta['namespace']}/{meta['name']}")

    def reclaim(self, volume: dict[str, Any]) -> None:
        """Remove a released volume's directory, then the volume; refuse a path outside our directory."""
        name = volume["metadata"]["name"]
        path_text = ((volume.get("spec") or {}).get("local") or {}).get("path") or ""
        directory = self.owned_directory(path_text)
        if directory is None:
            raise RefusedPath(f"not deleted: its path {path_text!r} is not a directory in {self.root}")
        if directory.exists():
            shutil.rmtree(directory)
        try:
            self.api.delete(f"{VOLUMES}/{quote(name, safe='')}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        claim = (volume.get("spec") or {}).get("claimRef") or {}
        self.log(f"deleted {name} and {directory} (claim {claim.get('namespace')}/{claim.get('name')} released)")

    def owned_directory(self, path_text: str) -> Path | None:
        """``path_text`` resolved, if it is a direct child of the volumes directory; else None.

        Resolved (symlinks and ``..``) before the check: a volume object can
        be edited by anyone allowed to, and ``rmtree`` runs as root.
        """
        if not path_text or not os.path.isabs(path_text):
            return None
        resolved = Path(os.path.realpath(path_text))
        return resolved if resolved.parent == Path(os.path.realpath(self.root)) else None

    def _attempt(self, key: str, action: Callable[[dict[str, Any]], None], obj: dict[str, Any]) -> None:
        try:
            action(obj)
        except Exception as exc:  # noqa: BLE001 - one bad object must not block the others
            self._report(key, f"{key}: {exc}")
        else:
            self._reported.pop(key, None)

    def _report(self, key: str, message: str) -> None:
        if self._reported.get(key) != message:
            self._reported[key] = message
            self.log(message)
