"""etcd membership: how a further node joins the cluster's consensus, as the original Smalltown's did.

Node 0 bootstraps a one-member etcd. A node that is to join the consensus
gets a golden ticket for which node 0 has already added it to etcd as a
*learner* (a member that replicates the log but does not vote, so an
unstarted or slow newcomer cannot cost the cluster its quorum). The ticket
carries what the newcomer needs to start its member: an etcd certificate
for its address, the CA, and every member's name and address, which become
its ``--initial-cluster`` (with ``--initial-cluster-state=existing``). Node
0 then promotes each learner to a voter as soon as etcd accepts that (once
the learner has caught up with the leader); the newcomer waits for that
before it starts its own apiserver on its own member. Newcomers are added
one at a time (the next once the previous one's member has started), so
that the member list in each ticket is the cluster's when its node starts.

Membership is read and changed through etcd's JSON gateway (``/v3/...`` on
the client port, the same TLS client certificate as every etcd client): the
agent needs three calls and no etcd client library in the image.

How many nodes join is the launcher's choice (``GetGoldenTicketRequest.join_consensus``,
see :attr:`pytest_smalltown.spec.ClusterSpec.control_plane_nodes`): a
two-member etcd halts when either member does, which is worse than one.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pytest_smalltown.node.kubeapi import Credentials


class EtcdError(Exception):
    """The etcd gateway refused a request; the message is etcd's."""


class JoinInProgress(EtcdError):
    """Another new member has not started yet; ask again once it has."""


@dataclass(frozen=True)
class Member:
    """One etcd member as the cluster sees it."""

    id: str  # uint64, as the JSON gateway renders it
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    learner: bool

    @property
    def address(self) -> str:
        """The host of the member's first peer URL (its node's address)."""
        if not self.peer_urls:
            return ""
        return urlsplit(self.peer_urls[0]).hostname or ""


def peer_url(address: str, port: int) -> str:
    """The URL an etcd member at ``address`` is reached at by its peers."""
    return f"https://{address}:{port}"


def initial_cluster(members: list[tuple[str, str]]) -> str:
    """``--initial-cluster`` for (name, peer URL) pairs: ``a=https://...,b=https://...``."""
    return ",".join(f"{name}={url}" for name, url in members)


class EtcdMembership:
    """Membership calls on one etcd member's client port."""

    def __init__(self, port: int, creds: Credentials, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cafile=str(creds.ca))
        self._ctx.load_cert_chain(str(creds.cert), str(creds.key))

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ctx, timeout=self.timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        try:
            answer: dict[str, Any] = json.loads(text) if text else {}
        except ValueError:
            answer = {"message": text}
        if resp.status != 200:
            raise EtcdError(str(answer.get("message") or answer.get("error") or text)[:500])
        return answer

    def members(self) -> list[Member]:
        """Every member, learners included (asked of a voter: a learner refuses this)."""
        return [_member(m) for m in self._call("/v3/cluster/member/list", {}).get("members", [])]

    def add_learner(self, url: str) -> Member:
        """Add a non-voting member that will be reached at peer URL ``url``; an existing one with that URL is kept.

        Raises :class:`JoinInProgress` while another added member has not
        started yet: a newcomer's ``--initial-cluster`` must list exactly
        the members there are when it starts, so a member added after a
        ticket was issued would make that ticket's node refuse to start.
        One at a time, each newcomer's list stays true.
        """
        members = self.members()
        for member in members:
            if url in member.peer_urls:
                return member
        waiting = [m for m in members if not m.name]
        if waiting:
            raise JoinInProgress(f"etcd member {', '.join(waiting[0].peer_urls)} was added but has not started yet; "
                                 "members join one at a time")
        answer = self._call("/v3/cluster/member/add", {"peerURLs": [url], "isLearner": True})
        return _member(answer["member"])

    def is_learner(self) -> bool:
        """Whether this member is (still) a learner: a learner answers only this kind of question, not member lists."""
        return bool(self._call("/v3/maintenance/status", {}).get("isLearner", False))

    def promote(self, member_id: str) -> None:
        """Make a learner a voter; etcd refuses until the learner has caught up with the leader."""
        self._call("/v3/cluster/member/promote", {"ID": member_id})

    def promote_learners(self) -> tuple[list[Member], dict[str, str]]:
        """Try to promote every learner; returns those promoted and, by member id, why the others were not."""
        promoted, waiting = [], {}
        for member in self.members():
            if not member.learner:
                continue
            try:
                self.promote(member.id)
            except (EtcdError, OSError, http.client.HTTPException) as exc:
                waiting[member.id] = str(exc)
                continue
            promoted.append(member)
        return promoted, waiting


def _member(raw: dict[str, Any]) -> Member:
    return Member(
        id=str(raw.get("ID", "")),
        name=str(raw.get("name", "")),
        peer_urls=tuple(raw.get("peerURLs") or ()),
        learner=bool(raw.get("isLearner", False)),
    )
