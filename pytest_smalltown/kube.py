"""Kubernetes helpers for tests: credentials, waits, logs and exec.

Clients are always built from the cluster's own debug kubeconfig, with the
server rewritten to the forwarded port; the user's ``~/.kube/config`` and the
``kubernetes`` package's global default configuration are never read or
changed, so a test can never talk to the wrong cluster.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.stream import stream

from pytest_smalltown.base.waits import HopelessWaitError, WaitTimeoutError, wait_for
from pytest_smalltown.launch.ports import LOOPBACK
from pytest_smalltown.secretfile import write_private


class PodEndedError(HopelessWaitError, AssertionError):
    """A pod reached a terminal phase other than the one awaited: waiting longer cannot help (ends a wait_for)."""


def write_kubeconfig(kubeconfig_yaml: str, api_port: int, path: Path) -> Path:
    """Write the debug kubeconfig with its server pointed at 127.0.0.1:``api_port``, mode 0600.

    The node issues kubeconfigs for https://127.0.0.1:6443 (its own view); the
    apiserver certificate covers 127.0.0.1, so only the port needs changing.
    """
    document = yaml.safe_load(kubeconfig_yaml)
    for cluster in document.get("clusters", []):
        cluster["cluster"]["server"] = f"https://{LOOPBACK}:{api_port}"
    return write_private(path, yaml.safe_dump(document).encode())


def api_client(kubeconfig_path: Path) -> k8s.ApiClient:
    """An ApiClient for exactly this kubeconfig (no global configuration involved)."""
    client: k8s.ApiClient = k8s_config.new_client_from_config(config_file=str(kubeconfig_path))
    return client


def node_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def node_addresses(node: Any) -> dict[str, str]:
    return {a.type: a.address for a in (node.status.addresses or [])}


def node_ready_since(node: Any) -> float | None:
    """When the node's Ready condition last changed (cluster time, seconds since the epoch)."""
    for condition in node.status.conditions or []:
        if condition.type == "Ready" and condition.last_transition_time is not None:
            return float(condition.last_transition_time.timestamp())
    return None


def serving_certificate_not_after(port: int, host: str = LOOPBACK) -> float:
    """When the certificate the API server presents on ``host:port`` expires (seconds since the epoch)."""
    pem = ssl.get_server_certificate((host, port), timeout=30)
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return certificate.not_valid_after_utc.timestamp()


def server_time(api: k8s.ApiClient) -> float:
    """The API server's clock (its HTTP ``Date`` header, whole seconds since the epoch).

    The cluster's notion of now, which is not the host's after a restore
    from a snapshot: guest clocks continue from the instant of the save.
    """
    _, _, headers = k8s.VersionApi(api).get_code_with_http_info(_request_timeout=10)
    return email.utils.parsedate_to_datetime(headers["Date"]).timestamp()


def wait_nodes_ready(
    api: k8s.ApiClient, count: int, timeout: float, still_alive: Callable[[], None] = lambda: None
) -> list[Any]:
    """Wait until ``count`` nodes are registered and Ready; returns them.

    ``still_alive`` is called on every poll and may raise to end the wait
    early (the cluster launcher passes a check that its VMs still run).
    """
    core = k8s.CoreV1Api(api)

    def check() -> list[Any] | None:
        still_alive()
        nodes = core.list_node(_request_timeout=10).items
        return nodes if len(nodes) >= count and all(node_ready(n) for n in nodes) else None

    def describe() -> str:
        nodes: list[Any] = core.list_node(_request_timeout=10).items
        return ", ".join(f"{n.metadata.name}: {'Ready' if node_ready(n) else 'NotReady'}" for n in nodes) or "no nodes"

    from pytest_smalltown.launch.vm import LaunchError

    return wait_for(f"{count} Ready node(s)", check, timeout, interval=1.0, describe=describe, fatal=(LaunchError,))


def wait_pod_phase(api: k8s.ApiClient, namespace: str, name: str, phases: tuple[str, ...], timeout: float) -> Any:
    """Wait until pod ``name`` is in one of ``phases``; a pod that ends in another terminal phase fails at once."""
    core = k8s.CoreV1Api(api)
    terminal = {"Succeeded", "Failed"}

    def check() -> Any:
        pod: Any = core.read_namespaced_pod(name, namespace, _request_timeout=10)
        if pod.status.phase in phases:
            return pod
        if pod.status.phase in terminal:
            raise PodEndedError(
                f"pod {namespace}/{name} ended {pod.status.phase}, wanted {'/'.join(phases)}: {describe_pod(pod)}"
            )
        return None

    return wait_for(
        f"pod {namespace}/{name} to be {'/'.join(phases)}",
        check,
        timeout,
        describe=lambda: describe_pod(core.read_namespaced_pod(name, namespace, _request_timeout=10)),
    )


def wait_pod_ready(api: k8s.ApiClient, namespace: str, name: str, timeout: float) -> Any:
    """Wait until pod ``name`` has condition Ready=True."""
    core = k8s.CoreV1Api(api)

    def check() -> Any:
        pod: Any = core.read_namespaced_pod(name, namespace, _request_timeout=10)
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        return pod if ready else None

    return wait_for(
        f"pod {namespace}/{name} to be Ready",
        check,
        timeout,
        describe=lambda: describe_pod(core.read_namespaced_pod(name, namespace, _request_timeout=10)),
    )


def describe_pod(pod: Any) -> str:
    """One line: phase, node, and why each container is not running."""
    parts = [f"phase={pod.status.phase}", f"node={pod.spec.node_name}"]
    for status in pod.status.container_statuses or []:
        state = status.state
        if state.waiting:
            parts.append(f"{status.name}: waiting {state.waiting.reason} {state.waiting.message or ''}".strip())
        elif state.terminated:
            parts.append(f"{status.name}: terminated {state.terminated.reason} exit={state.terminated.exit_code}")
        else:
            parts.append(f"{status.name}: running ready={status.ready}")
    for condition in pod.status.conditions or []:
        if condition.status != "True" and condition.message:
            parts.append(f"{condition.type}: {condition.message}")
    return "; ".join(parts)


def pod_logs(api: k8s.ApiClient, namespace: str, name: str, container: str | None = None) -> str:
    """The pod's container log through the API (kubelet -> containerd)."""
    core = k8s.CoreV1Api(api)
    return core.read_namespaced_pod_log(name, namespace, container=container, _request_timeout=30)


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int


def exec_in_pod(
    api: k8s.ApiClient, namespace: str, name: str, command: list[str], container: str | None = None, timeout: float = 60
) -> ExecResult:
    """Run ``command`` in a pod through the API's exec subresource; returns its output and exit code."""
    core = k8s.CoreV1Api(api)
    kwargs = {"container": container} if container else {}
    response = stream(
        core.connect_get_namespaced_pod_exec,
        name,
        namespace,
        command=command,
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
        **kwargs,
    )
    stdout: list[str] = []
    stderr: list[str] = []
    deadline = time.monotonic() + timeout
    while response.is_open():
        response.update(timeout=1)
        if response.peek_stdout():
            stdout.append(response.read_stdout())
        if response.peek_stderr():
            stderr.append(response.read_stderr())
        if time.monotonic() > deadline:
            response.close()
            raise WaitTimeoutError(f"exec {command} in {namespace}/{name} did not finish within {timeout:.0f}s")
    response.close()
    code = response.returncode
    return ExecResult("".join(stdout), "".join(stderr), int(code) if code is not None else -1)


def namespace_events(api: k8s.ApiClient, namespace: str) -> list[str]:
    """The namespace's events, oldest first, one line each (failure evidence)."""
    core = k8s.CoreV1Api(api)
    events = core.list_namespaced_event(namespace, _request_timeout=10).items
    events.sort(key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp or 0).__str__())
    return [
        f"{e.type} {e.reason} {e.involved_object.kind}/{e.involved_object.name}: {(e.message or '').strip()}"
        for e in events
    ]


def service_endpoint_ready(api: k8s.ApiClient, namespace: str, service: str) -> bool | None:
    """Whether the Service's one endpoint is ready (None: it has none, or several).

    For tests of one pod behind a Service, whose node a fault takes away:
    the endpoint stays in its EndpointSlice and turns not ready.
    """
    slices = k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}", _request_timeout=30).items  # fmt: skip
    endpoints = [endpoint for piece in slices for endpoint in piece.endpoints or ()]
    if len(endpoints) != 1:
        return None
    return bool(endpoints[0].conditions is not None and endpoints[0].conditions.ready)


def create_namespace(api: k8s.ApiClient, hint: str, timeout: float = 180) -> str:
    """Create a uniquely named namespace derived from ``hint`` (e.g. the test name); returns its name.

    Returns only once the namespace's ``default`` ServiceAccount exists: the
    controller-manager creates it asynchronously, and until then every pod
    creation in the namespace is refused (Kubernetes' own e2e framework waits
    for it the same way). The default allowance is generous because right
    after a 2-node cluster turns Ready under emulation, its apiserver and
    controller-manager can lag for minutes (a CI run saw 60 s run out while
    the kubelets' status updates were timing out).
    """
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
    name = f"{base}-{secrets.token_hex(3)}"
    body = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels={"smalltown.dev/test": "true"}))
    core = k8s.CoreV1Api(api)
    core.create_namespace(body, _request_timeout=30)
    wait_for(
        f"ServiceAccount {name}/default",
        lambda: core.read_namespaced_service_account("default", name, _request_timeout=10),
        timeout,
    )
    return name


def delete_namespace(api: k8s.ApiClient, name: str) -> None:
    """Delete a namespace without waiting for its finalisation (the cluster does that in the background)."""
    from kubernetes.client.exceptions import ApiException

    try:
        k8s.CoreV1Api(api).delete_namespace(name, _request_timeout=30)
    except ApiException as error:
        if error.status != 404:
            raise


def busybox_pod(
    name: str,
    command: list[str],
    node_name: str | None = None,
    restart_policy: str = "Never",
    runtime_class: str | None = None,
    image: str | None = None,
) -> k8s.V1Pod:
    """A one-container pod of the preloaded test image (busybox) running ``command``.

    The image is preloaded on every reference node and its tag is not
    ``latest``, so the default pull policy (IfNotPresent) never pulls.
    """
    from pytest_smalltown.contract import TEST_IMAGE

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={"app": name}),
        spec=k8s.V1PodSpec(
            restart_policy=restart_policy,
            node_name=node_name,
            runtime_class_name=runtime_class,
            termination_grace_period_seconds=1,
            containers=[k8s.V1Container(name="main", image=image or TEST_IMAGE, command=command)],
        ),
    )
