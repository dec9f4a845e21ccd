"""Failure evidence: what a developer needs to see when an e2e test fails.

A short version goes into the pytest report (recent console lines, the tail
of the components that usually explain a pod problem on every node, the
namespace's events); the full version (whole console logs, every component's
buffer on every node, events) is written to an artifacts directory for later
reading. Every node, not only node 0: the node a test rebooted or scheduled
on is often the one whose kubelet explains the failure.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from pytest_smalltown.contract import COMPONENTS
from pytest_smalltown.debug import DebugClient
from pytest_smalltown.kube import namespace_events
from pytest_smalltown.pool import EvidenceSource

#: Components whose tail goes into a failure report (the usual suspects for pod trouble).
REPORT_COMPONENTS = ("kube.kubelet", "containerd")
REPORT_LINES = 25
#: Evidence is best effort: a wedged node must not add minutes of retries to a failure.
EVIDENCE_RETRY_SECONDS = 3.0


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "test"


def artifact_dir(directory: Path, test_id: str) -> Path:
    """Where the artifacts of test ``test_id`` go under a run's ``directory``: its dump, its saved cluster."""
    return directory / _safe(test_id)


def _node_debug_clients(cluster: EvidenceSource) -> Iterator[tuple[str, DebugClient | Exception]]:
    """(node name, debug client or the error that prevented one) for every node; closes what it opened."""
    yield "node0", cluster.debug
    for index in range(1, cluster.spec.nodes):
        try:
            client = cluster.node_debug(index)
        except Exception as error:  # noqa: BLE001
            yield f"node{index}", error
            continue
        try:
            yield f"node{index}", client
        finally:
            client.close()


def report_sections(
    cluster: EvidenceSource, namespace: str | None, window: tuple[float, float] | None = None
) -> list[tuple[str, str]]:
    """(title, text) pairs for a failed test's report; never raises (evidence must not mask the failure).

    ``window`` (start, stop: ``time.time()``) is when the failed phase ran:
    the faults that were on during it come first, as the likeliest cause.
    """
    sections: list[tuple[str, str]] = []
    fault_log = getattr(cluster, "faults", None)  # stand-ins and older clusters have none
    if window is not None and fault_log is not None:
        during = fault_log.during(*window)
        if during:
            sections.append(("smalltown faults", "\n".join(str(record) for record in during)))
    for name, lines in cluster.consoles(REPORT_LINES).items():
        sections.append((f"smalltown console {name}", "\n".join(lines)))
    for node, client in _node_debug_clients(cluster):
        for component in REPORT_COMPONENTS:
            title = f"smalltown {component} ({node}, last {REPORT_LINES})"
            if isinstance(client, Exception):
                sections.append((title, f"(could not read: {client})"))
                continue
            try:
                lines = client.component_logs(component, REPORT_LINES, retry_for=EVIDENCE_RETRY_SECONDS)
                sections.append((title, "\n".join(lines)))
            except Exception as error:  # noqa: BLE001
                sections.append((title, f"(could not read: {error})"))
    if namespace:
        try:
            sections.append((f"smalltown events in {namespace}", "\n".join(namespace_events(cluster.kube, namespace))))
        except Exception as error:  # noqa: BLE001
            sections.append((f"smalltown events in {namespace}", f"(could not read: {error})"))
    return sections


def write_artifacts(cluster: EvidenceSource, directory: Path, test_id: str, namespace: str | None,
                    window: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """Dump everything for one failed test under ``directory/<test id>/``; returns that directory.

    Component logs go to ``components/<node>/<component>.log``; a node that
    cannot be read (stopped, wedged) gets a ``components/<node>/unreadable.txt`` saying why.
    The packet captures of the network faults that were on during ``window``
    (default: any) go to ``captures/fault-<n>/node<i>.pcap``.
    """
    target = artifact_dir(directory, test_id)
    target.mkdir(parents=True, exist_ok=True)
    cluster.dump(target / "consoles")
    for node, client in _node_debug_clients(cluster):
        components = target / "components" / node
        components.mkdir(parents=True, exist_ok=True)
        if isinstance(client, Exception):
            (components / "unreadable.txt").write_text(f"{client}\n")
            continue
        for component in (*COMPONENTS, "etcd", "kube.proxy", "coredns", "agent"):
            with contextlib.suppress(Exception):
                lines = client.component_logs(component, 0, retry_for=EVIDENCE_RETRY_SECONDS)
                (components / f"{component}.log").write_text("\n".join(lines) + "\n")
    fault_log = getattr(cluster, "faults", None)  # stand-ins and older clusters have none
    faults = [] if fault_log is None else fault_log.during(*window) if window else list(fault_log.records)
    for capture in (capture for record in faults for capture in record.captures):
        with contextlib.suppress(OSError):  # a capture the cluster's own cleanup already took
            destination = target / "captures" / capture.parent.name / capture.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(capture, destination)
    if namespace:
        with contextlib.suppress(Exception):
            (target / f"events-{namespace}.txt").write_text("\n".join(namespace_events(cluster.kube, namespace)) + "\n")
    return target
