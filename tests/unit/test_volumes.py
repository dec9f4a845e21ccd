"""Unit tests of the agent's local volume provisioner (pytest_smalltown/node/volumes.py).

The provisioner runs against :class:`FakeApi`, an in-process stand-in for the
apiserver's claim and volume collections, and a temporary volumes directory:
no VM, no Kubernetes.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pytest_smalltown import contract
from pytest_smalltown.node import pki
from pytest_smalltown.node.kubeapi import ApiError, object_path
from pytest_smalltown.node.volumes import (
    NODE_LABEL,
    PROVISIONED_BY,
    PROVISIONER_GROUP,
    LocalProvisioner,
    issue_identity,
)

NODE = "smalltown-aaaa"
OTHER = "smalltown-bbbb"


class FakeApi:
    """Claims and volumes in dicts, answering the KubeClient calls the provisioner makes (list/post/delete)."""

    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        #: Volume names whose creation fails with HTTP 500.
        self.fail_create: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("LIST", path))
        if path == "/api/v1/persistentvolumeclaims":
            return copy.deepcopy(list(self.claims.values()))
        assert path == "/api/v1/persistentvolumes"
        items = list(self.volumes.values())
        if label_selector:
            key, value = label_selector.split("=")
            items = [v for v in items if (v["metadata"].get("labels") or {}).get(key) == value]
        return copy.deepcopy(items)

    def post(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path))
        assert path == "/api/v1/persistentvolumes" and obj["kind"] == "PersistentVolume"
        name = obj["metadata"]["name"]
        if name in self.fail_create:
            raise ApiError(500, "etcdserver: request timed out")
        if name in self.volumes:
            raise ApiError(409, f'persistentvolumes "{name}" already exists')
        self.volumes[name] = copy.deepcopy(obj)
        return obj

    def delete(self, path: str) -> None:
        self.calls.append(("DELETE", path))
        name = path.rsplit("/", 1)[-1]
        if self.volumes.pop(name, None) is None:
            raise ApiError(404, "not found")


def claim(name: str, uid: str, *, node: str | None = NODE, klass: str | None = contract.STORAGE_CLASS,
          provisioner: str | None = contract.PROVISIONER, beta: bool = False, bound: str = "",
          size: str = "1Gi", modes: tuple[str, ...] = ("ReadWriteOnce",)) -> dict[str, Any]:
    """A claim as the apiserver shows it once scheduler and PV controller annotated it."""
    annotations = {}
    if node:
        annotations["volume.kubernetes.io/selected-node"] = node
    if provisioner:
        annotations["volume.beta.kubernetes.io/storage-provisioner" if beta
                    else "volume.kubernetes.io/storage-provisioner"] = provisioner
    spec: dict[str, Any] = {"accessModes": list(modes), "resources": {"requests": {"storage": size}},
                            "volumeMode": "Filesystem"}
    if klass is not None:
        spec["storageClassName"] = klass
    if bound:
        spec["volumeName"] = bound
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "ns1", "uid": uid, "annotations": annotations},
            "spec": spec, "status": {"phase": "Bound" if bound else "Pending"}}


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def logged() -> list[str]:
    return []


@pytest.fixture
def prov(api: FakeApi, tmp_path: Path, logged: list[str]) -> LocalProvisioner:
    return LocalProvisioner(api, NODE, tmp_path / "volumes", logged.append)


def add(api: FakeApi, *claims: dict[str, Any]) -> None:
    for c in claims:
        api.claims[c["metadata"]["uid"]] = c


def release(api: FakeApi, name: str) -> None:
    """What the PV controller does once the volume's claim is deleted."""
    api.volumes[name]["status"] = {"phase": "Released"}


def test_provisions_only_claims_scheduled_here_and_left_to_us(api: FakeApi, prov: LocalProvisioner) -> None:
    add(api,
        claim("mine", "u1"),
        claim("mine-beta-annotation", "u2", beta=True),
        claim("other-node", "u3", node=OTHER),
        claim("not-scheduled-yet", "u4", node=None),
        claim("other-class", "u5", klass="fast", provisioner="example.com/fast"),
        claim("no-class", "u6", klass=None, provisioner=None),
        claim("not-handed-over-yet", "u7", provisioner=None),
        claim("already-bound", "u8", bound="pvc-elsewhere"))
    prov.sync_once()
    assert set(api.volumes) == {"pvc-u1", "pvc-u2"}
    assert sorted(p.name for p in prov.root.iterdir()) == ["pvc-u1", "pvc-u2"]


def test_volume_body(api: FakeApi, prov: LocalProvisioner, logged: list[str]) -> None:
    add(api, claim("data-web-0", "u1", size="3Gi", modes=("ReadWriteOnce", "ReadWriteOncePod")))
    prov.sync_once()
    pv = api.volumes["pvc-u1"]
    path = prov.root / "pvc-u1"
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o777
    object_path(pv)  # kubeapi knows the kind
    assert pv["metadata"]["labels"] == {NODE_LABEL: NODE}
    assert pv["metadata"]["annotations"] == {PROVISIONED_BY: contract.PROVISIONER}
    spec = pv["spec"]
    assert spec["local"] == {"path": str(path)}
    assert spec["capacity"] == {"storage": "3Gi"}
    assert spec["accessModes"] == ["ReadWriteOnce", "ReadWriteOncePod"]
    assert spec["volumeMode"] == "Filesystem" and spec["storageClassName"] == contract.STORAGE_CLASS
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"
    assert spec["nodeAffinity"]["required"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]
    assert spec["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "namespace": "ns1", "name": "data-web-0", "uid": "u1"}
    assert len(logged) == 1 and "pvc-u1" in logged[0] and "ns1/data-web-0" in logged[0]


def test_a_second_pass_changes_nothing_and_logs_nothing(
    api: FakeApi, prov: LocalProvisioner, logged: list[str]
) -> None:
    add(api, claim("a", "u1"))
    prov.sync_once()
    before = copy.deepcopy(api.volumes)
    (prov.root / "pvc-u1" / "data").write_text("kept")
    api.calls.clear()
    prov.sync_once()  # the claim is not bound yet: the PV controller has not caught up
    assert api.volumes == before
    assert [verb for verb, _ in api.calls] == ["LIST", "LIST"]
    assert (prov.root / "pvc-u1" / "data").read_text() == "kept"
    assert len(logged) == 1


def test_a_volume_made_by_a_pass_the_listing_missed_is_fine(
    api: FakeApi, prov: LocalProvisioner, logged: list[str]
) -> None:
    add(api, claim("a", "u1"))
    prov.provision(api.claims["u1"])
    prov.provision(api.claims["u1"])  # 409 Already exists
    assert list(api.volumes) == ["pvc-u1"] and len(logged) == 1


def test_a_released_volume_loses_its_directory_and_is_deleted(
    api: FakeApi, prov: LocalProvisioner, logged: list[str]
) -> None:
    add(api, claim("a", "u1"), claim("b", "u2"))
    prov.sync_once()
    (prov.root / "pvc-u1" / "sub").mkdir()
    (prov.root / "pvc-u1" / "sub" / "file").write_text("x")
    del api.claims["u1"]
    release(api, "pvc-u1")
    api.volumes["pvc-u2"]["status"] = {"phase": "Bound"}
    prov.sync_once()
    assert list(api.volumes) == ["pvc-u2"]
    assert not (prov.root / "pvc-u1").exists() and (prov.root / "pvc-u2").is_dir()
    assert any("deleted pvc-u1" in line for line in logged)


def test_released_volumes_that_are_not_ours_to_delete_stay(api: FakeApi, prov: LocalProvisioner) -> None:
    add(api, claim("a", "u1"), claim("b", "u2"))
    prov.sync_once()
    release(api, "pvc-u1")
    api.volumes["pvc-u1"]["spec"]["persistentVolumeReclaimPolicy"] = "Retain"
    release(api, "pvc-u2")
    api.volumes["pvc-u2"]["metadata"]["labels"][NODE_LABEL] = OTHER  # another node's disk
    prov.sync_once()
    assert set(api.volumes) == {"pvc-u1", "pvc-u2"}
    assert (prov.root / "pvc-u1").is_dir() and (prov.root / "pvc-u2").is_dir()


@pytest.mark.parametrize("path", ["/etc", "{root}", "{root}/pvc-u1/../../outside", "relative/pvc-u1", ""])
def test_a_path_outside_the_volumes_directory_is_refused(
    api: FakeApi, prov: LocalProvisioner, logged: list[str], tmp_path: Path, path: str
) -> None:
    add(api, claim("a", "u1"))
    prov.sync_once()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    api.volumes["pvc-u1"]["spec"]["local"]["path"] = path.format(root=prov.root)
    release(api, "pvc-u1")
    prov.sync_once()
    prov.sync_once()
    assert "pvc-u1" in api.volumes, "the volume is left for a person to look at"
    assert (outside / "precious").exists() and (prov.root / "pvc-u1").is_dir()
    refusals = [line for line in logged if line.startswith("volume pvc-u1: not deleted")]
    assert len(refusals) == 1, "refused once per volume, not once per pass"


def test_a_symlink_out_of_the_volumes_directory_is_refused(
    api: FakeApi, prov: LocalProvisioner, tmp_path: Path
) -> None:
    add(api, claim("a", "u1"))
    prov.sync_once()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    (prov.root / "pvc-u1").rmdir()
    (prov.root / "pvc-u1").symlink_to(outside)
    release(api, "pvc-u1")
    prov.sync_once()
    assert (outside / "precious").exists() and "pvc-u1" in api.volumes


def test_a_failure_on_one_claim_does_not_stop_the_others(
    api: FakeApi, prov: LocalProvisioner, logged: list[str]
) -> None:
    add(api, claim("a", "u1"), claim("b", "u2"), claim("block", "u3"), claim("c", "u4"))
    api.claims["u3"]["spec"]["volumeMode"] = "Block"
    api.fail_create.add("pvc-u2")
    prov.sync_once()
    prov.sync_once()
    assert set(api.volumes) == {"pvc-u1", "pvc-u4"}
    assert not (prov.root / "pvc-u3").exists(), "nothing made for a claim that cannot be served"
    assert len([line for line in logged if line.startswith("claim ns1/b: HTTP 500")]) == 1
    assert len([line for line in logged if line.startswith("claim ns1/block: volumeMode Block")]) == 1
    api.fail_create.clear()
    prov.sync_once()
    assert "pvc-u2" in api.volumes


def test_a_volume_whose_directory_is_already_gone_is_still_deleted(api: FakeApi, prov: LocalProvisioner) -> None:
    add(api, claim("a", "u1"))
    prov.sync_once()
    (prov.root / "pvc-u1").rmdir()
    release(api, "pvc-u1")
    prov.sync_once()
    assert api.volumes == {}


def test_run_survives_failing_passes_and_logs_the_failure_once(prov: LocalProvisioner, logged: list[str]) -> None:
    stop = threading.Event()
    passes: list[int] = []

    def failing_pass() -> None:
        passes.append(1)
        if len(passes) >= 4:
            stop.set()
        raise ConnectionRefusedError(111, "Connection refused")

    prov.sync_once = failing_pass  # type: ignore[method-assign]
    thread = threading.Thread(target=prov.run, args=(stop, 0.01), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and len(passes) == 4
    assert len(logged) == 1 and "Connection refused" in logged[0]


def test_kube_client_helpers_the_provisioner_uses() -> None:
    """KubeClient.list/post/delete: the selector in the query string, errors as ApiError with the status."""
    from pytest_smalltown.node.kubeapi import KubeClient

    seen: list[tuple[str, str]] = []
    answers: list[tuple[int, str]] = []

    class Recorder(KubeClient):
        def __init__(self) -> None:  # no TLS context needed to build requests
            pass

        def request(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/json") -> tuple[int, str]:
            seen.append((method, path))
            return answers.pop(0)

    client = Recorder()
    answers.append((200, '{"items": [{"metadata": {"name": "x"}}]}'))
    assert client.list("/api/v1/persistentvolumes", f"{NODE_LABEL}={NODE}") == [{"metadata": {"name": "x"}}]
    url = urlsplit(seen[-1][1])
    assert url.path == "/api/v1/persistentvolumes"
    assert parse_qs(url.query) == {"labelSelector": [f"{NODE_LABEL}={NODE}"]}
    answers.append((201, '{"metadata": {"name": "pv"}}'))
    assert client.post("/api/v1/persistentvolumes", {"kind": "PersistentVolume"}) == {"metadata": {"name": "pv"}}
    answers.append((409, "AlreadyExists"))
    with pytest.raises(ApiError) as info:
        client.post("/api/v1/persistentvolumes", {})
    assert info.value.status == 409
    answers.append((200, "{}"))
    client.delete("/api/v1/persistentvolumes/pv")
    answers.append((404, "NotFound"))
    with pytest.raises(ApiError) as info:
        client.delete("/api/v1/persistentvolumes/pv")
    assert info.value.status == 404
    assert [m for m, _ in seen] == ["GET", "POST", "POST", "DELETE", "DELETE"]


def test_provisioner_identity(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ca = pki.ClusterCA(tmp_path)
    ca.ensure()
    cert = x509.load_pem_x509_certificate(issue_identity(ca, NODE).cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"smalltown:provisioner:{NODE}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == PROVISIONER_GROUP
    cert.verify_directly_issued_by(ca.cert)
