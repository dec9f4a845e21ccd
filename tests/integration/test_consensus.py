"""A learner joins and is promoted: the agent's etcd membership calls against two real etcd processes.

The node image's own etcd binary runs on the host, on loopback ports, with
certificates from the agent's CA code and the command lines the agent uses
(``components.etcd_argv``): node 0's member bootstraps, the second joins as
the golden ticket has it (``--initial-cluster-state=existing`` after
``add_learner``), and ``promote_learners`` makes it a voter once etcd
accepts. The VM-level proof is e2e/test_consensus.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_smalltown.images.gobuild import build_program
from pytest_smalltown.launch.ports import allocate_free_port
from pytest_smalltown.node import components as comp
from pytest_smalltown.node.config import AgentConfig, Binaries, Ports
from pytest_smalltown.node.consensus import EtcdError, EtcdMembership, JoinInProgress, initial_cluster, peer_url
from pytest_smalltown.node.kubeapi import Credentials
from pytest_smalltown.node.pki import ClusterCA, write_private, write_public


def member_config(root: Path, etcd: Path, ca: ClusterCA) -> AgentConfig:
    """A host-mode agent config of its own (data and pki under ``root``) with the shared CA and fresh ports."""
    cfg = AgentConfig(root=root, init=False, bins=Binaries(etcd=str(etcd)),
                      ports=Ports(etcd_client=allocate_free_port(), etcd_peer=allocate_free_port()))  # fmt: skip
    files = comp.Files(cfg)
    write_public(files.ca, ca.cert_pem)
    for name, cn, server in (("etcd-member", "member", True), ("client", "client", False)):
        pair = ca.issue(cn, dns_names=["localhost"], ips=["127.0.0.1"], server=server, client=True)
        write_public(files.crt(name), pair.cert)
        write_private(files.key(name), pair.key)
    cfg.etcd_data.mkdir(parents=True, mode=0o700)
    return cfg


def membership(cfg: AgentConfig) -> EtcdMembership:
    files = comp.Files(cfg)
    return EtcdMembership(cfg.ports.etcd_client, Credentials(files.ca, files.crt("client"), files.key("client")))


def wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (EtcdError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_a_learner_joins_and_is_promoted(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    etcd = build_program("etcd")
    ca = ClusterCA(tmp_path / "ca")
    ca.ensure()
    first = member_config(tmp_path / "n0", etcd, ca)
    second = member_config(tmp_path / "n1", etcd, ca)

    processes.append(subprocess.Popen(comp.etcd_argv(first, "n0", "127.0.0.1"), stderr=subprocess.DEVNULL))
    leader = membership(first)
    wait("the first member to serve", lambda: len(leader.members()) == 1)

    url = peer_url("127.0.0.1", second.ports.etcd_peer)
    learner = leader.add_learner(url)
    assert learner.learner and learner.peer_urls == (url,)
    assert leader.add_learner(url).id == learner.id, "adding the same peer URL again keeps the member"
    promoted, waiting = leader.promote_learners()
    assert promoted == [] and learner.id in waiting, "a learner that has not started cannot be promoted"
    third_url = peer_url("127.0.0.1", allocate_free_port())
    with pytest.raises(JoinInProgress, match="has not started yet"):
        leader.add_learner(third_url)

    join = initial_cluster([("n0", peer_url("127.0.0.1", first.ports.etcd_peer)), ("n1", url)])
    processes.append(subprocess.Popen(comp.etcd_argv(second, "n1", "127.0.0.1", join), stderr=subprocess.DEVNULL))
    newcomer = membership(second)
    wait("the new member to answer as a learner", newcomer.is_learner)
    # Started, still a learner: the next member can be added (two learners at once: --max-learners).
    third = leader.add_learner(third_url)
    assert third.learner and third.id != learner.id

    def promote() -> bool:
        return [m.id for m in leader.promote_learners()[0]] == [learner.id]

    wait("the learner to be promoted", promote)
    assert not newcomer.is_learner()
    members = {m.name: m for m in leader.members() if m.id != third.id}
    assert sorted(members) == ["n0", "n1"] and not any(m.learner for m in members.values())
    assert members["n1"].address == "127.0.0.1"
