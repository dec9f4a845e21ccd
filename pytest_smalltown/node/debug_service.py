"""NodeDebugService: the node's API for test and debug tooling (port 7837).

The service is started before anything else that can fail, so a harness can
always ask for logs and conditions, even from a node whose Kubernetes never
came up. RPCs that need cluster material (kubeconfigs, tickets) answer
UNAVAILABLE until it exists (clients retry) and FAILED_PRECONDITION on a node
that will never have it (a worker holds no CA key).

LoadImage spools the uploaded archive to a file on the node's disk (an image
can be larger than the VM's RAM, and ``/tmp`` is tmpfs), hands that file to
the node's importer, and removes it whatever happens.

Reboot answers before the node goes down: the agent's reboot runs in a
thread of its own that first lets the answer leave.

Every call must carry the cluster's token when the launcher gave the node one
(:class:`TokenCheck`): the service hands out the CA key and cluster-admin
credentials, and the port is reachable by anything that can reach the
switch's forward, such as another user of the host.
"""

from __future__ import annotations

import errno
import hmac
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc

from pytest_smalltown.api import debug_pb2, debug_pb2_grpc, enrolment_pb2
from pytest_smalltown.contract import DEBUG_TOKEN_METADATA_KEY
from pytest_smalltown.node.clock import ClockOffset
from pytest_smalltown.node.enrolment import InvalidTicketRequest
from pytest_smalltown.node.logbuffer import Entry, LogRegistry

#: Entries per GetLogs response message: keeps a 5000-line backlog of long
#: lines well below gRPC's 4 MiB default message limit.
BACKLOG_CHUNK = 500


class Unavailable(Exception):
    """Not yet: the client should retry (UNAVAILABLE)."""


class FailedPrecondition(Exception):
    """Never on this node (FAILED_PRECONDITION)."""


class ImageImportError(Exception):
    """The importer rejected an archive (INVALID_ARGUMENT); the message is its error output."""


#: Name prefix of LoadImage's spool files, so a boot can remove those a crash left behind.
SPOOL_PREFIX = "load-image-"
#: Free space LoadImage leaves on the spool file system for everything else the
#: node writes (etcd, logs, containers) while an archive arrives.
SPOOL_RESERVE_BYTES = 256 << 20
#: How often (bytes received) the free space is checked while spooling.
SPACE_CHECK_EVERY = 64 << 20
#: Space an import needs beyond the spooled archive, as a multiple of its size:
#: containerd copies the blobs into its content store and unpacks the layers
#: next to them (docker-save layers are uncompressed tars, so about the
#: archive's size again); the spool file goes only after the import. A check
#: up front turns a disk that fills mid-import into a clear error instead.
IMPORT_SPACE_FACTOR = 2
#: SetClockOffset takes up to a year either way: further, every certificate of the cluster is out of its validity.
MAX_CLOCK_OFFSET_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True)
class ImageLoader:
    """What LoadImage needs from the node: where to spool an upload and what imports it."""

    #: A directory on the node's disk (created on first use).
    spool_dir: Path
    #: Raises :class:`Unavailable` (containerd still starting) or
    #: :class:`FailedPrecondition`; called before any byte is read, so a
    #: refused upload costs the client one message, not the archive.
    check_ready: Callable[[], None]
    #: Imports the archive at the path; raises :class:`ImageImportError` when
    #: the archive is at fault, :class:`TimeoutError` when the import overran.
    import_archive: Callable[[Path], object]


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
#: (external_ip, join_consensus) -> ticket
TicketIssuer = Callable[[str, bool], enrolment_pb2.GoldenTicket]


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
        images: ImageLoader | None = None,
        reboot: Callable[[], None] | None = None,
        clock: ClockOffset | None = None,
    ) -> None:
        self.logs = logs
        self.conditions = conditions
        self.kubeconfig = kubeconfig
        self.ticket = ticket
        self.follow_poll = follow_poll
        self.images = images
        #: Starts a graceful reboot in the background (None: this node cannot reboot itself).
        self.reboot = reboot
        #: The wall clock's offset from the hardware clock (None: this agent does not keep the clock).
        self.clock = clock

    def GetDebugKubeconfig(self, request: debug_pb2.GetDebugKubeconfigRequest, context: grpc.ServicerContext) -> debug_pb2.GetDebugKubeconfigResponse:
        if not request.id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id (the client certificate CN) is required")
        try:
            text = self.kubeconfig(request.id, list(request.groups))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return debug_pb2.GetDebugKubeconfigResponse(debug_kubeconfig=text)

    def GetComponentLogs(self, request: debug_pb2.GetComponentLogsRequest, context: grpc.ServicerContext) -> debug_pb2.GetComponentLogsResponse:
        path = component_path(request.component_path)
        if not path:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "component_path is empty")
        buf = self.logs.get(path)
        if buf is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no component {path!r}; known: {', '.join(self.logs.names())}")
        return debug_pb2.GetComponentLogsResponse(line=buf.lines(int(request.tail_lines)))

    def GetCondition(self, request: debug_pb2.GetConditionRequest, context: grpc.ServicerContext) -> debug_pb2.GetConditionResponse:
        try:
            ok = self.conditions.get(request.name)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no condition {request.name!r}; known: {', '.join(self.conditions.names())}")
        return debug_pb2.GetConditionResponse(ok=ok)

    def GetGoldenTicket(self, request: debug_pb2.GetGoldenTicketRequest, context: grpc.ServicerContext) -> debug_pb2.GetGoldenTicketResponse:
        try:
            ticket = self.ticket(request.external_ip, request.join_consensus)
        except InvalidTicketRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return debug_pb2.GetGoldenTicketResponse(ticket=ticket)

    def GetLogs(
        self, request: debug_pb2.GetLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[debug_pb2.GetLogsResponse]:
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

    def LoadImage(
        self, request_iterator: Iterator[debug_pb2.ImagePart], context: grpc.ServicerContext
    ) -> debug_pb2.LoadImageResponse:
        loader = self.images
        if loader is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this node runs no container runtime to load images into")
            return None  # abort raises; this tells type checkers so
        try:
            loader.check_ready()
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FailedPrecondition as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        loader.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".tar", dir=loader.spool_dir)
        spooled = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                size = _spool(request_iterator, out, loader.spool_dir, context)
            remaining = context.time_remaining()
            if not context.is_active() or (remaining is not None and remaining <= 0):
                # The client gave up (cancelled, or its deadline passed) while it was
                # sending: the stream may have ended early, so what came is no archive
                # to import. Seen under load: the stream's end arrived after the deadline.
                context.abort(grpc.StatusCode.CANCELLED, "the client went away during the upload; nothing imported")
            if size == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty image archive: the stream carried no bytes")
            free = shutil.disk_usage(loader.spool_dir).free
            needed = IMPORT_SPACE_FACTOR * size + SPOOL_RESERVE_BYTES
            if free < needed:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the node's disk has {_mib(free)} free; importing this {_mib(size)} archive needs "
                              f"about {_mib(needed)} (its blobs plus unpacked layers, and a reserve)")
            try:
                loader.import_archive(spooled)
            except ImageImportError as exc:
                code = (grpc.StatusCode.RESOURCE_EXHAUSTED if os.strerror(errno.ENOSPC).lower() in str(exc).lower()
                        else grpc.StatusCode.INVALID_ARGUMENT)
                context.abort(code, f"image archive ({size} bytes) not imported: {exc}")
            except TimeoutError as exc:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"image archive ({size} bytes) not imported: {exc}")
        finally:
            spooled.unlink(missing_ok=True)
        return debug_pb2.LoadImageResponse()


    def Reboot(self, request: debug_pb2.RebootRequest, context: grpc.ServicerContext) -> debug_pb2.RebootResponse:
        if self.reboot is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this node agent is not the machine's init and cannot reboot it")
        self.reboot()
        return debug_pb2.RebootResponse()

    def SetClockOffset(
        self, request: debug_pb2.SetClockOffsetRequest, context: grpc.ServicerContext
    ) -> debug_pb2.SetClockOffsetResponse:
        if self.clock is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this node agent is not the machine's init and does not keep its clock")
            return None  # abort raises; this tells type checkers so
        offset = request.offset_seconds
        if not -MAX_CLOCK_OFFSET_SECONDS <= offset <= MAX_CLOCK_OFFSET_SECONDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"offset {offset:g}s is beyond a year; certificates would make no sense of it")
        try:
            stepped = self.clock.set(offset)
        except (RuntimeError, OSError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return debug_pb2.SetClockOffsetResponse(stepped_seconds=stepped)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _spool(parts: Iterable[debug_pb2.ImagePart], out: IO[bytes], directory: Path,
           context: grpc.ServicerContext) -> int:
    """Write every part's data to ``out``; return the byte count.

    Aborts with RESOURCE_EXHAUSTED before the upload would eat the reserve
    (or when the disk is full after all), so a too-large archive fails with
    a message instead of leaving the node's disk full.
    """
    size = 0
    next_check = 0
    try:
        for part in parts:
            if size >= next_check:
                free = shutil.disk_usage(directory).free
                if free < SPOOL_RESERVE_BYTES:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the node's disk is nearly full ({_mib(free)} free) after {_mib(size)} of the "
                                  "image archive; LoadImage keeps the archive on the node's disk while it imports it")
                next_check = size + SPACE_CHECK_EVERY
            out.write(part.data_part)
            size += len(part.data_part)
        out.flush()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"the node's disk filled up after {_mib(size)} of the image archive: {exc}")
    return size


def read_token(path: Path) -> str | None:
    """The cluster's debug-service token from ``path`` (fw_cfg), or None when the launcher gave none."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


class TokenCheck(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED, every call that does not carry ``Bearer <token>``.

    A bearer token in metadata rather than mutual TLS: the harness already
    reaches the service through plaintext forwards, a token needs no PKI of
    its own before the node has made one, and nodes of images that predate
    it simply ignore the metadata. Its secrecy rests on who can read it: the
    launcher's 0600 file on the host, fw_cfg in the guest (which containers
    do not see: ``/sys/firmware`` is masked). The comparison takes constant
    time, so the answer's timing tells nothing of how much of a guess was right.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == DEBUG_TOKEN_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None or self.authorized(details.invocation_metadata):
            return handler
        return _refusing(handler, f"{details.method}: this node's debug service takes only calls that carry "
                                  f"the cluster's token ('{DEBUG_TOKEN_METADATA_KEY}: Bearer <token>' metadata); "
                                  "pytest-smalltown's clients send it from the launcher's debug-token file")


def _refusing(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that aborts every call with UNAUTHENTICATED."""

    def refuse(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def refuse_stream(_request: object, context: grpc.ServicerContext) -> Iterator[object]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield from ()  # never reached: abort raises

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


def serve(servicer: DebugServicer, address: str, max_workers: int = 32,
          token: str | None = None) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``address`` (``host:port``, port 0 = any); returns it and the port.

    Each follow-mode GetLogs stream occupies a worker thread for its lifetime,
    hence the generous pool. With ``token``, calls without it are refused (:class:`TokenCheck`).
    """
    interceptors: list[grpc.ServerInterceptor] = [TokenCheck(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="debug"),
                         interceptors=interceptors)
    debug_pb2_grpc.add_NodeDebugServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
