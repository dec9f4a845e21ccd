"""The control plane of a control-plane node (step 8): :class:`ControlPlane`.

Node 0 (bootstrap): IP-dependent certificates, etcd (a cluster of one) and
the apiserver; once ``/readyz`` answers, controller-manager, scheduler, the
built-in objects (:mod:`reconciler`) and CoreDNS. From etcd's start on, a
thread promotes etcd learners that have caught up (``consensus`` thread).

A consensus joiner (:mod:`consensus`): its etcd member joins as a learner
(``--initial-cluster`` from its ticket); once node 0 has promoted it, its own
apiserver, controller-manager and scheduler.

Controllers run without leader election while there is one control-plane
node, and with it from the moment a second one is coming
(:meth:`ControlPlane.elect_leaders`, when node 0 issues a consensus ticket).

Node 0 also answers GetGoldenTicket (:meth:`ControlPlane.golden_ticket`), and
its node watch uses :meth:`~ControlPlane.admin_client`,
:meth:`~ControlPlane.reconcile` and :meth:`~ControlPlane.controllers_serving`.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time

from pytest_smalltown.api import enrolment_pb2
from pytest_smalltown.node import components as comp
from pytest_smalltown.node.consensus import EtcdError, EtcdMembership, initial_cluster, peer_url
from pytest_smalltown.node.credentials import NodeCredentials
from pytest_smalltown.node.debug_service import Unavailable
from pytest_smalltown.node.enrolment import ConsensusSeat, validate_ipv4
from pytest_smalltown.node.kubeapi import KubeClient
from pytest_smalltown.node.pki import write_public
from pytest_smalltown.node.reconciler import builtin_objects
from pytest_smalltown.node.state import NodeState, apiserver_url
from pytest_smalltown.node.supervisor import ComponentSpec


def local_https_ok(port: int, path: str) -> bool:
    """GET https://127.0.0.1:port/path answers 200 (self-signed serving certs: no verification,
    these are the component's own unauthenticated health endpoints on loopback)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class ControlPlane:
    """etcd, apiserver, controller-manager, scheduler and CoreDNS of this node (see the module docstring)."""

    def __init__(self, node: NodeState, credentials: NodeCredentials) -> None:
        self.node = node
        self.credentials = credentials
        self._controllers_ok = False
        #: Whether controllers run with leader election (several control-plane nodes); see elect_leaders.
        self._leader_elect = False
        self._controllers_lock = threading.Lock()
        self._controllers_started = False

    # ------------------------------------------------- debug service

    def golden_ticket(self, external_ip: str, join_consensus: bool = False) -> enrolment_pb2.GoldenTicket:
        """A ticket for a node at ``external_ip``; with ``join_consensus`` it is first added to etcd as a learner."""
        ip = validate_ipv4(external_ip)  # bad requests fail the same way at any time
        self.credentials.check_ticket_issuer()
        seat = self.admit_learner(ip) if join_consensus else None
        return self.credentials.golden_ticket(ip, seat)

    def admit_learner(self, ip: str) -> ConsensusSeat:
        """Add the node at ``ip`` to etcd as a learner; its seat (peers, service-account key) goes in its ticket."""
        try:  # etcd not serving yet (node 0 still booting): the client retries
            membership = self.etcd_membership()
            learner = membership.add_learner(peer_url(ip, self.node.cfg.ports.etcd_peer))
            members = membership.members()
        except (EtcdError, OSError) as exc:
            raise Unavailable(f"etcd membership: {exc}") from exc
        self.node.log(f"consensus: {ip} added to etcd as learner {learner.id}")
        seat = ConsensusSeat(tuple((m.name, m.address) for m in members if m.name),
                             self.credentials.files.sa_key.read_bytes())
        self.elect_leaders()
        return seat

    # --------------------------------------------------------- clients

    def etcd_membership(self) -> EtcdMembership:
        """Membership calls on this node's own etcd member."""
        return EtcdMembership(self.node.cfg.ports.etcd_client, self.credentials.client("apiserver-etcd-client"))

    def admin_client(self) -> KubeClient:
        """``system:masters`` on this node's own apiserver."""
        return KubeClient(apiserver_url(self.node.cfg), self.credentials.client("admin"))

    # ------------------------------------------------------------ boot

    def start_control_plane(self) -> None:
        """IP-dependent certificates, kubeconfigs, etcd, and on node 0 the apiserver (no waiting).

        A consensus joiner's apiserver waits for :meth:`finish_control_plane`:
        its etcd member is a learner until node 0 promotes it, and a learner
        serves no reads or writes.
        """
        node = self.node
        cfg = node.cfg
        self.credentials.issue_ip_certs()
        local = apiserver_url(cfg)
        for name, cert in (("controller-manager", "controller-manager"), ("scheduler", "scheduler"),
                           ("admin", "admin"), ("coredns", "coredns")):
            self.credentials.write_kubeconfig(name, cert, local)
        if cfg.runs("etcd"):
            cfg.etcd_data.mkdir(parents=True, exist_ok=True)
            cfg.etcd_data.chmod(0o700)
            assert node.name and node.ip
            node.supervisor.start(ComponentSpec("etcd", comp.etcd_argv(cfg, node.name, node.ip, self.etcd_join())))
            if node.bootstrap:
                threading.Thread(target=node.guarded, args=(self.promote_learners,), name="consensus",
                                 daemon=True).start()
        if node.bootstrap and cfg.runs("kube.apiserver"):
            node.supervisor.start(ComponentSpec("kube.apiserver", comp.apiserver_argv(cfg, node.node_facts())))
        node.log("etcd and apiserver started" if node.bootstrap else "etcd started")

    def etcd_join(self) -> str | None:
        """A consensus joiner's ``--initial-cluster`` (from its ticket); None on node 0, which bootstraps."""
        ticket = self.node.role.ticket if self.node.role else None
        if ticket is None:
            return None
        port = self.node.cfg.ports.etcd_peer
        members = [(peer.name, peer_url(peer.address, port)) for peer in ticket.peers]
        return initial_cluster([*members, (ticket.this.name, peer_url(ticket.this.address, port))])

    def wait_until_voter(self) -> None:
        """A consensus joiner: wait until node 0 has promoted this node's etcd member (it says so itself)."""
        node = self.node
        membership = self.etcd_membership()
        started = time.monotonic()
        last_report = started
        while not node.stop.is_set():
            try:
                if not membership.is_learner():
                    break
                state = "a learner"
            except (EtcdError, OSError) as exc:
                state = f"not answering ({exc})"
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                node.log(f"consensus: etcd member still {state} after {time.monotonic() - started:.0f} s")
            node.stop.wait(1.0)
        node.log(f"consensus: etcd member is a voter ({time.monotonic() - started:.1f} s after it started)")

    def finish_control_plane(self) -> None:
        """Once etcd serves: (joiner) the apiserver; then controllers, and on node 0 built-in objects and CoreDNS."""
        node = self.node
        cfg = node.cfg
        facts = node.node_facts()
        bootstrap = node.bootstrap
        if not bootstrap:
            self.wait_until_voter()
            if cfg.runs("kube.apiserver"):
                node.supervisor.start(ComponentSpec("kube.apiserver", comp.apiserver_argv(cfg, facts)))
        admin = self.admin_client()
        while not admin.ready():
            if node.stop.wait(0.5):
                return
        node.conditions.set("APIServerReady")
        node.conditions.set("ConsensusVoter")
        node.log("apiserver ready")
        # Leader election once there is more than one control-plane node (see components.leader_election_flags).
        try:
            several = not bootstrap or len(self.etcd_membership().members()) > 1
        except (EtcdError, OSError) as exc:  # elect_leaders still turns election on when a member is added
            node.log(f"consensus: etcd membership not readable ({exc}); controllers start without leader election")
            several = False
        with self._controllers_lock:
            self._leader_elect = self._leader_elect or several
            self.start_controllers()
            self._controllers_started = True
        if bootstrap:
            self.reconcile()
            if cfg.runs("coredns"):
                write_public(cfg.kube_dir / "Corefile", comp.corefile(cfg, facts.upstream_dns).encode())
                node.supervisor.start(ComponentSpec("coredns", comp.coredns_argv(cfg)))
        node.log("controller-manager and scheduler started" + (", and CoreDNS" if bootstrap else "")
                 + (" (leader election on)" if self._leader_elect else ""))

    def start_controllers(self) -> None:
        """controller-manager and scheduler, with leader election as :attr:`_leader_elect` says."""
        cfg = self.node.cfg
        if cfg.runs("kube.controller-manager"):
            self.node.supervisor.start(ComponentSpec("kube.controller-manager",
                                                     comp.controller_manager_argv(cfg, self._leader_elect)))
        if cfg.runs("kube.scheduler"):
            self.node.supervisor.start(ComponentSpec("kube.scheduler", comp.scheduler_argv(cfg, self._leader_elect)))

    def elect_leaders(self) -> None:
        """Node 0, when a second control-plane node is coming: restart its controllers with leader election.

        Until then they run without (one instance each); two instances
        without election would both act. A restart costs seconds, once per
        cluster, during the boot of a cluster with several control-plane nodes.
        """
        with self._controllers_lock:
            if self._leader_elect:
                return
            self._leader_elect = True
            if not self._controllers_started:
                return  # finish_control_plane starts them with election
            for name in ("kube.scheduler", "kube.controller-manager"):
                self.node.supervisor.stop(name)
            self.start_controllers()
        self.node.log("consensus: controller-manager and scheduler restarted with leader election")

    # --------------------------------------------- node 0, afterwards

    def reconcile(self) -> None:
        """Apply the built-in objects; failures are logged and retried on the next round."""
        assert self.node.ip
        client = self.admin_client()
        errors = []
        for obj in builtin_objects(self.node.ip, self.node.cfg.ports.dns):
            try:
                client.apply(obj)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
        if errors:
            self.node.log("reconciler: " + "; ".join(errors))

    def promote_learners(self) -> None:
        """Node 0, from etcd's start on: every 2 s, make each etcd learner that has caught up a voter.

        A thread of its own rather than a step of the node loop: that loop
        starts once the node's own Kubernetes parts are up, and a joiner
        waiting for its promotion should not wait for those.
        """
        node = self.node
        membership: EtcdMembership | None = None
        reported: set[str] = set()
        while not node.stop.wait(2.0):
            try:
                membership = membership or self.etcd_membership()
                promoted, waiting = membership.promote_learners()
            except (EtcdError, OSError) as exc:
                if "membership" not in reported and node.conditions.get("ConsensusVoter"):
                    reported.add("membership")  # once: etcd restarts are logged by etcd
                    node.log(f"consensus: cannot read etcd membership: {exc}")
                continue
            for member in promoted:
                node.log(f"consensus: promoted etcd member {member.name or member.id} ({member.address}) to voter")
            for member_id, why in waiting.items():
                if member_id not in reported:
                    reported.add(member_id)
                    node.log(f"consensus: learner {member_id} not promoted yet: {why}")

    def controllers_serving(self) -> bool:
        """Node 0: the scheduler and controller-manager answer their health endpoints.

        KubernetesReady is what a harness waits for before creating pods. Under
        emulation the scheduler needs ~10 s after it starts to sync its caches;
        a Node that is Ready before then would take a pod and leave it Pending
        for that long. So on node 0 the condition also requires both
        controllers to be serving. Workers only need their Node Ready.
        """
        if not self.node.bootstrap:
            return True
        if self._controllers_ok:
            return True
        cfg = self.node.cfg
        checks = []
        if cfg.runs("kube.scheduler"):
            checks.append((cfg.ports.scheduler, "/readyz"))
        if cfg.runs("kube.controller-manager"):
            checks.append((cfg.ports.controller_manager, "/healthz"))
        ok = all(local_https_ok(port, path) for port, path in checks)
        self._controllers_ok = ok  # once up, a later crash shows in logs, not as flapping
        return ok
