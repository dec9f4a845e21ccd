"""The smoke subset: a few upstream specs that prove each node path, for ``--smoke`` and ``e2e/test_conformance.py``."""

from __future__ import annotations

from collections.abc import Iterable

from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.plan import exact_focus

#: Full spec names (as ``e2e.test --list-tests`` prints them) of the smoke
#: subset that ``--smoke`` (and ``e2e/test_conformance.py``) runs. At least one
#: spec per SIG and per image the conformance specs use, chosen for the node
#: paths they prove: the apiserver reaching Services (webhook, aggregator),
#: DNS, NodePort, hostPort, exec, volumes, scheduling, kubectl on the host.
#: Where two specs prove the same path, the faster one is here (timings of a
#: 27-spec run in docs/conformance.md): the subset runs in every CI job.
SMOKE_TESTS: tuple[str, ...] = (
    # api-machinery: apiserver -> webhook Service (agnhost). The Aggregator spec (sample-apiserver,
    # etcd) is not here: under emulation its readiness probes time out and the aggregated API
    # answers 503 (docs/conformance.md); a smoke subset that fails by load would only teach CI to ignore it.
    "[sig-api-machinery] AdmissionWebhook [Privileged:ClusterAdmin] should be able to deny pod and configmap "
    "creation [Conformance]",
    # apps: httpd, agnhost serve-hostname through the apiserver's pod proxy
    "[sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new ones [Conformance]",
    "[sig-apps] ReplicationController should serve a basic image on each replica with a public image [Conformance]",
    # architecture: two schedulable nodes
    "[sig-architecture] Conformance Tests should have at least two untainted nodes [Conformance]",
    # auth: service-account issuer discovery from a pod, projected tokens
    "[sig-auth] ServiceAccounts ServiceAccountIssuerDiscovery should support OIDC discovery of service account "
    "issuer [Conformance]",
    "[sig-auth] ServiceAccounts should mount an API token into pods [Conformance]",
    # cli: kubectl on the host; httpd, nautilus
    "[sig-cli] Kubectl client Kubectl run pod should create a pod from an image when restart is Never [Conformance]",
    "[sig-cli] Kubectl client Update Demo should create and stop a replication controller [Conformance]",
    # instrumentation
    "[sig-instrumentation] Events should manage the lifecycle of an event [Conformance]",
    # network: DNS (jessie-dnsutils), NodePort Services, hostPort (portmap), EndpointSlices (nginx)
    "[sig-network] DNS should provide DNS for the cluster [Conformance]",
    "[sig-network] EndpointSlice should create Endpoints and EndpointSlices for Pods matching a Service "
    "[Conformance]",
    "[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different "
    "hostIP and protocol [LinuxOnly] [Conformance]",
    "[sig-network] Services should be able to create a functioning NodePort service [Conformance]",
    # node: lifecycle hooks, logs, exec over websockets, no_new_privs (nonewprivs), variable expansion
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart http hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs "
    "[NodeConformance] [Conformance]",
    "[sig-node] Pods should support remote command execution over websockets [NodeConformance] [Conformance]",
    "[sig-node] Security Context when creating containers with AllowPrivilegeEscalation should not allow "
    "privilege escalation when false [LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-node] Variable Expansion should allow substituting values in a container's args [NodeConformance] "
    "[Conformance]",
    # scheduling (pause)
    "[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching "
    "[Conformance]",
    # storage: emptyDir on tmpfs, projected secrets (agnhost mounttest)
    "[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-storage] Projected secret should be consumable from pods in volume [NodeConformance] [Conformance]",
)


def smoke_focus(tests: Iterable[str] | None = None) -> str:
    """A focus regexp matching exactly the specs in ``tests`` (default :data:`SMOKE_TESTS`)."""
    names = tuple(SMOKE_TESTS if tests is None else tests)
    if not names:
        raise ConformanceError(
            "the smoke subset is empty: fill in pytest_smalltown.conformance.smoke.SMOKE_TESTS with full spec "
            "names (e2e.test --list-tests prints them), or run with --focus instead"
        )
    return exact_focus(names)
