"""NodeDebugService: the node's API for test and debug tooling (port 7837).

The service is started before anything else that can fail, so a harness can
always ask for logs and conditions, even from a node whose Kubernetes never
came up. RPCs that need cluster material (kubeconfigs, tickets) answer
UNAVAILABLE until it exists (clients retry) and FAILED_PRECONDITION on a node
that will never have it (a worker holds no CA key).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc

from pytest_smalltown.api import debug_pb2, debug_pb2_grpc, enrolment_pb2
from pytest_smalltown.node.enrolment import InvalidTicketRequest
from pytest_smalltown.node.logbuffer import Entry, LogRegistry

#: Entries per GetLogs response message: keeps a 5000-line backlog of long
#: lines well below gRPC's 4 MiB default message limit.
BACKLOG_CHUNK = 500


class Unavailable(Exception):
    """Not yet: the client should retry (UNAVAILABLE)."""


class FailedPrecondition(Exception):
    """Never on this node (FAILED_PRECONDITION)."""


class Conditions:
    """Named boolean conditions; names are fixed up front so unknown ones are NOT_FOUND."""

    def __init__(self, names: Sequence[str]) -> None:
        self._values = {n: False for n in names}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def set(self, name: str, value: bool = True) -> None:
        with self._lock:
            if name not in self._values:
                raise KeyError(name)
            self._values[name] = value
            self._changed.notify_all()

    def get(self, name: str) -> bool:
        with self._lock:
            return self._values[name]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._values)

    def snapshot(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._values)

    def wait(self, name: str, timeout: float | None = None) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: self._values[name], timeout)


KubeconfigIssuer = Callable[[str, Sequence[str]], str]
TicketIssuer = Callable[[str], enrolment_pb2.GoldenTicket]


def component_path(parts: Sequence[str]) -> str:
    """Accept both ``["kube.kubelet"]`` and ``["kube", "kubelet"]`` (path elements)."""
    return ".".join(p for p in parts if p)


class DebugServicer(debug_pb2_grpc.NodeDebugServiceServicer):
    def __init__(
        self,
        logs: LogRegistry,
        conditions: Conditions,
        kubeconfig: KubeconfigIssuer,
        ticket: TicketIssuer,
        follow_poll: float = 0.5,
    ) -> None:
        self.logs = logs
        self.conditions = conditions
        self.kubeconfig = kubeconfig
        self.ticket = ticket
        self.follow_poll = follow_poll

    def GetDebugKubeconfig(self, request, context):  # type: ignore[no-untyped-def]
        if not request.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id (the client certificate CN) is required")
        try:
            text = self.kubeconfig(request.id, list(request.groups))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return debug_pb2.GetDebugKubeconfigResponse(debug_kubeconfig=text)

    def GetComponentLogs(self, request, context):  # type: ignore[no-untyped-def]
        path = component_path(request.component_path)
        if not path:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "component_path is empty")
        buf = self.logs.get(path)
        if buf is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no component {path!r}; known: {', '.join(self.logs.names())}")
        return debug_pb2.GetComponentLogsResponse(line=buf.lines(int(request.tail_lines)))

    def GetCondition(self, request, context):  # type: ignore[no-untyped-def]
        try:
            ok = self.conditions.get(request.name)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no condition {request.name!r}; known: {', '.join(self.conditions.names())}")
        return debug_pb2.GetConditionResponse(ok=ok)

    def GetGoldenTicket(self, request, context):  # type: ignore[no-untyped-def]
        try:
            ticket = self.ticket(request.external_ip)
        except InvalidTicketRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return debug_pb2.GetGoldenTicketResponse(ticket=ticket)

    def GetLogs(self, request, context) -> Iterator[debug_pb2.GetLogsResponse]:  # type: ignore[no-untyped-def]
        backlog = request.backlog_mode
        stream = request.stream_mode
        if backlog not in (debug_pb2.BACKLOG_DISABLE, debug_pb2.BACKLOG_ALL, debug_pb2.BACKLOG_COUNT):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "backlog_mode must be DISABLE, ALL or COUNT")
        if stream not in (debug_pb2.STREAM_DISABLE, debug_pb2.STREAM_UNBUFFERED):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stream_mode must be DISABLE or UNBUFFERED")
        if backlog == debug_pb2.BACKLOG_COUNT and request.backlog_count <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "backlog_count must be positive with BACKLOG_COUNT")
        if not request.dn:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "dn (the component path) is required")
        buf = self.logs.get(request.dn)
        if buf is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no component {request.dn!r}; known: {', '.join(self.logs.names())}")
            return  # abort raises; this tells type checkers so
        needles = [f.contains for f in request.filters if f.contains]

        def keep(e: Entry) -> bool:
            return all(n in e.line for n in needles)

        def to_proto(e: Entry) -> debug_pb2.LogEntry:
            return debug_pb2.LogEntry(dn=request.dn, line=e.line, original_length=e.original_length,
                                      timestamp_unix_nanos=e.timestamp_ns)

        count = int(request.backlog_count) if backlog == debug_pb2.BACKLOG_COUNT else 0
        entries, position = buf.snapshot_and_position()
        if backlog != debug_pb2.BACKLOG_DISABLE:
            # COUNT counts matching entries: "the last 10 lines containing X".
            selected = [e for e in entries if keep(e)]
            if count:
                selected = selected[-count:]
            for i in range(0, len(selected), BACKLOG_CHUNK):
                yield debug_pb2.GetLogsResponse(
                    backlog_entries=[to_proto(e) for e in selected[i:i + BACKLOG_CHUNK]])
        if stream != debug_pb2.STREAM_UNBUFFERED:
            return
        for batch in buf.follow(position, context.is_active, self.follow_poll):
            matching = [to_proto(e) for e in batch if keep(e)]
            if matching:
                yield debug_pb2.GetLogsResponse(stream_entries=matching)


def serve(servicer: DebugServicer, address: str, max_workers: int = 32) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``address`` (``host:port``, port 0 = any); returns it and the port.

    Each follow-mode GetLogs stream occupies a worker thread for its lifetime,
    hence the generous pool.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="debug"))
    debug_pb2_grpc.add_NodeDebugServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
