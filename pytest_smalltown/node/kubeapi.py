"""A deliberately tiny Kubernetes API client (stdlib http.client + ssl).

The node image carries only grpcio, protobuf and cryptography for the agent,
so the ``kubernetes`` package is not available; the agent needs a handful of
verbs: GET an object, LIST a collection, server-side APPLY an object, a merge
PATCH, a readiness probe, and for the volume provisioner (:mod:`volumes`)
CREATE and DELETE. Server-side apply (PATCH with
``application/apply-patch+yaml``, a JSON body being valid YAML) makes the
reconciler idempotent without any get-compare-update logic of its own.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

FIELD_MANAGER = "smalltown-node-agent"


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path


class KubeClient:
    """Talks to one apiserver with a client certificate."""

    def __init__(self, server: str, creds: Credentials, timeout: float = 15.0) -> None:
        parts = urlsplit(server)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cafile=str(creds.ca))
        self._ctx.load_cert_chain(str(creds.cert), str(creds.key))

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, str]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ctx, timeout=self.timeout)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def get(self, path: str) -> dict[str, Any]:
        status, text = self.request("GET", path)
        if status != 200:
            raise ApiError(status, text)
        result: dict[str, Any] = json.loads(text)
        return result

    def ready(self) -> bool:
        """``/readyz`` answers 200 (etcd reachable, post-start hooks done)."""
        try:
            status, _ = self.request("GET", "/readyz")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (force: the agent owns built-in objects)."""
        path = object_path(obj)
        query = urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
        status, text = self.request("PATCH", f"{path}?{query}", obj, "application/apply-patch+yaml")
        if status not in (200, 201):
            raise ApiError(status, text)
        result: dict[str, Any] = json.loads(text)
        return result

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, text = self.request("PATCH", path, patch, "application/merge-patch+json")
        if status != 200:
            raise ApiError(status, text)
        result: dict[str, Any] = json.loads(text)
        return result

    def post(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` in the collection at ``path``; an existing object is ApiError 409.

        A plain create rather than :meth:`apply`: the provisioner must not
        overwrite a volume that already exists under the same name.
        """
        status, text = self.request("POST", path, obj)
        if status not in (200, 201, 202):
            raise ApiError(status, text)
        result: dict[str, Any] = json.loads(text)
        return result

    def delete(self, path: str) -> None:
        """Delete the object at ``path``; a missing object is ApiError 404."""
        status, text = self.request("DELETE", path)
        if status not in (200, 202):
            raise ApiError(status, text)

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """The items of the collection at ``path``, optionally filtered by a label selector."""
        if label_selector:
            path = f"{path}?{urlencode({'labelSelector': label_selector})}"
        items: list[dict[str, Any]] = self.get(path).get("items") or []
        return items


#: apiVersion/kind -> (URL prefix, plural, namespaced)
_RESOURCES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Endpoints"): ("/api/v1", "endpoints", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("node.k8s.io/v1", "RuntimeClass"): ("/apis/node.k8s.io/v1", "runtimeclasses", False),
    ("storage.k8s.io/v1", "StorageClass"): ("/apis/storage.k8s.io/v1", "storageclasses", False),
    ("v1", "PersistentVolume"): ("/api/v1", "persistentvolumes", False),
}


def object_path(obj: dict[str, Any]) -> str:
    key = (obj["apiVersion"], obj["kind"])
    if key not in _RESOURCES:
        raise KeyError(f"kubeapi does not know {key}")
    prefix, plural, namespaced = _RESOURCES[key]
    meta = obj["metadata"]
    name = quote(meta["name"], safe="")
    if namespaced:
        return f"{prefix}/namespaces/{quote(meta.get('namespace', 'default'), safe='')}/{plural}/{name}"
    return f"{prefix}/{plural}/{name}"


def node_ready(node: dict[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False
