"""A NodeDebugService client for tests and the CLI.

Under emulation a node's debug service comes up seconds after boot and some
answers (credentials, golden tickets) only once the node has made its PKI,
so transient failures are part of normal life: every unary call here retries
UNAVAILABLE, the service's "not yet", with exponential backoff from 100 ms,
bounded by a deadline; any other status is raised at once, because it will
not get better by asking again: NOT_FOUND, INVALID_ARGUMENT, and
FAILED_PRECONDITION, the service's "never on this node" (a worker asked for a
golden ticket or the CA's kubeconfig, a node without containerd for LoadImage).
``load_image`` streams a file and retries only UNAVAILABLE (the node is
still starting containerd, or the connection broke), starting over.

Every call carries the cluster's debug token (see :func:`new_debug_token`)
when the client is given one; nodes of the reference image refuse calls
without it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pytest_smalltown.base.rpc import grpc  # before anything imports grpc: it sets its environment
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from pytest_smalltown.api import debug_pb2, debug_pb2_grpc, enrolment_pb2
from pytest_smalltown.base.errors import SmalltownError
from pytest_smalltown.base.waits import wait_for
from pytest_smalltown.contract import (
    DEBUG_GROUPS,
    DEBUG_TOKEN_METADATA_KEY,
    DEBUG_USER,
    IMAGE_IMPORT_SECONDS_PER_MIB,
    node_debug_guest_port,
)
from pytest_smalltown.launch.ports import PortMap
from pytest_smalltown.secretfile import write_private

T = TypeVar("T")
#: The codes that mean "not yet" (``node/debug_service.py``: ``Unavailable``, and gRPC's own for a
#: node that cannot be reached), the only ones a call retries.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

#: Bytes per LoadImage message: far below gRPC's 4 MiB message limit, large
#: enough that per-message overhead does not matter.
IMAGE_CHUNK = 1 << 20
#: LoadImage deadline for an empty archive; it grows by
#: ``contract.IMAGE_IMPORT_SECONDS_PER_MIB`` per MiB (see :func:`load_image_timeout`).
LOAD_IMAGE_BASE_TIMEOUT = 300.0


def load_image_timeout(size: int) -> float:
    """The default LoadImage deadline for an archive of ``size`` bytes (generous: TCG unpacks slowly)."""
    return LOAD_IMAGE_BASE_TIMEOUT + size / (1 << 20) * IMAGE_IMPORT_SECONDS_PER_MIB


class ImageLoadError(SmalltownError, RuntimeError):
    """A node did not import an image archive; names the file and the node's reason."""

    def __init__(self, path: Path, code: grpc.StatusCode, details: str) -> None:
        self.path = path
        self.code = code
        self.details = details
        super().__init__(f"the node did not load image archive {path}: {code.name}: {details}")


def _archive_parts(path: Path) -> Iterator[debug_pb2.ImagePart]:
    """The file in IMAGE_CHUNK pieces, read as gRPC sends them (never all of it in memory)."""
    with path.open("rb") as archive:
        while chunk := archive.read(IMAGE_CHUNK):
            yield debug_pb2.ImagePart(data_part=chunk)


class LogTimeoutError(SmalltownError, TimeoutError):
    """A log line that a test waited for did not appear."""


@dataclass(frozen=True)
class LogLine:
    component: str
    text: str
    original_length: int


#: File name of the cluster's debug token, in the cluster's work directory and in its snapshot.
DEBUG_TOKEN_FILE = "debug-token"


def new_debug_token() -> str:
    """A new cluster debug-service token: 256 random bits, hex (see :func:`write_debug_token`)."""
    return secrets.token_hex(32)


def write_debug_token(token: str, path: Path) -> Path:
    """Keep ``token`` at ``path``, readable by its owner only.

    The launcher hands the file to every node through fw_cfg and every
    client of this module reads it, so only the user who launched the
    cluster (and root) can call its debug services.
    """
    return write_private(path, token.encode())


def read_debug_token(path: Path) -> str:
    """The token in ``path``, as :func:`new_debug_token` wrote it."""
    return path.read_text().strip()


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _WithToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel, whatever its shape."""

    def __init__(self, token: str) -> None:
        self._metadata = ((DEBUG_TOKEN_METADATA_KEY, f"Bearer {token}"),)

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *self._metadata),
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class DebugClient:
    """NodeDebugService of one node, reached through a forwarded port.

    ``token`` is the cluster's debug token (:func:`read_debug_token`); without
    it, a node that checks tokens answers every call UNAUTHENTICATED.
    """

    def __init__(self, channel: grpc.Channel, retry_for: float = 60.0, token: str | None = None) -> None:
        self.channel = channel
        calls = grpc.intercept_channel(channel, _WithToken(token)) if token else channel
        self.stub = debug_pb2_grpc.NodeDebugServiceStub(calls)
        self.retry_for = retry_for

    def call(
        self, fn: Callable[[], T], retry_for: float | None = None, retry_on: Collection[grpc.StatusCode] = RETRYABLE
    ) -> T:
        """Run one RPC, retrying the ``retry_on`` codes for up to ``retry_for`` seconds."""

        def give_up(state: RetryCallState) -> T:
            assert state.outcome is not None
            raise state.outcome.exception()  # type: ignore[misc]

        def retryable(error: BaseException) -> bool:
            return isinstance(error, grpc.RpcError) and error.code() in retry_on

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            wait=wait_exponential(multiplier=0.1, min=0.1, max=5),
            stop=stop_after_delay(self.retry_for if retry_for is None else retry_for),
            retry_error_callback=give_up,
        )
        return retrying(fn)

    def debug_kubeconfig(
        self, user: str = DEBUG_USER, groups: tuple[str, ...] = DEBUG_GROUPS, retry_for: float | None = None
    ) -> str:
        """A kubeconfig for ``user``/``groups`` signed by the cluster CA (server 127.0.0.1:6443)."""
        request = debug_pb2.GetDebugKubeconfigRequest(id=user, groups=list(groups))
        reply: debug_pb2.GetDebugKubeconfigResponse = self.call(
            lambda: self.stub.GetDebugKubeconfig(request, timeout=30), retry_for)
        return reply.debug_kubeconfig

    def component_logs(self, component: str, tail: int = 0, retry_for: float | None = None) -> list[str]:
        """The buffered lines of ``component`` (all of them for ``tail=0``)."""
        request = debug_pb2.GetComponentLogsRequest(component_path=[component], tail_lines=tail)
        return list(self.call(lambda: self.stub.GetComponentLogs(request, timeout=30), retry_for).line)

    def condition(self, name: str) -> bool:
        """Whether condition ``name`` holds right now."""
        request = debug_pb2.GetConditionRequest(name=name)
        reply: debug_pb2.GetConditionResponse = self.call(lambda: self.stub.GetCondition(request, timeout=10))
        return reply.ok

    def wait_condition(self, name: str, timeout: float, interval: float = 0.5) -> None:
        """Poll until ``name`` holds; :class:`~pytest_smalltown.base.waits.WaitTimeoutError` naming the condition otherwise.

        A node that cannot be reached counts as "not yet", like a false answer;
        any other error (an unknown condition: NOT_FOUND) is raised at once.
        """
        request = debug_pb2.GetConditionRequest(name=name)

        def holds() -> bool:
            try:
                return bool(self.stub.GetCondition(request, timeout=10).ok)
            except grpc.RpcError as error:
                if error.code() in RETRYABLE:
                    return False
                raise

        wait_for(f"node condition {name}", holds, timeout, interval, fatal=(grpc.RpcError,))

    def golden_ticket(
        self, external_ip: str, join_consensus: bool = False, retry_for: float | None = None
    ) -> enrolment_pb2.GoldenTicket:
        """Credentials for a new node that will have ``external_ip`` (an etcd member too with ``join_consensus``)."""
        request = debug_pb2.GetGoldenTicketRequest(external_ip=external_ip, join_consensus=join_consensus)
        reply: debug_pb2.GetGoldenTicketResponse = self.call(
            lambda: self.stub.GetGoldenTicket(request, timeout=30), retry_for)
        return reply.ticket

    def reboot(self) -> None:
        """Ask the node to reboot gracefully; returns once it has accepted (it goes down a moment later).

        Retried while the node cannot be reached (a fresh connection through
        the switch may need a second try); a node already going down ignores
        a second request. The VM must let a guest reboot reset it (see
        :func:`pytest_smalltown.lifecycle.reboot_node`).
        """
        self.call(lambda: self.stub.Reboot(debug_pb2.RebootRequest(), timeout=30), retry_for=60,
                  retry_on={grpc.StatusCode.UNAVAILABLE})

    def set_clock_offset(self, seconds: float) -> float:
        """Keep this node's wall clock ``seconds`` off its hardware clock (0: back on it); how far it was stepped.

        The reference node's extension (``SetClockOffset``); a node without
        it answers UNIMPLEMENTED. Retried while the node cannot be reached.
        """
        response = self.call(
            lambda: self.stub.SetClockOffset(debug_pb2.SetClockOffsetRequest(offset_seconds=seconds), timeout=30),
            retry_for=60, retry_on={grpc.StatusCode.UNAVAILABLE},
        )  # fmt: skip
        return float(response.stepped_seconds)

    def load_image(self, path: Path, timeout: float | None = None, retry_for: float | None = None) -> None:
        """Import the image archive at ``path`` into this node's containerd (namespace k8s.io).

        ``path`` is a docker-archive or OCI tarball (``docker save``, ``ctr
        export``, ``images/oci.py``). Its images are then on this node only,
        for pods with ``imagePullPolicy: Never`` or ``IfNotPresent`` (a tag
        other than ``latest``) scheduled there; load it into every node a
        pod may land on. Returns once the node has imported it. The file is
        streamed in 1 MiB messages, so its size is bounded by the node's disk,
        not by memory. ``timeout`` (default: :func:`load_image_timeout`,
        scaled with the size because a node under emulation unpacks slowly)
        bounds each attempt; UNAVAILABLE is retried for ``retry_for`` seconds.

        Raises :class:`ImageLoadError` naming the file when the node refuses
        it (INVALID_ARGUMENT with the importer's error for an archive that is
        empty, corrupt or not an image; RESOURCE_EXHAUSTED when the node's
        disk is too full), ``FileNotFoundError`` when there is no such file.
        """
        path = Path(path)
        deadline = load_image_timeout(path.stat().st_size) if timeout is None else timeout
        try:
            self.call(lambda: self.stub.LoadImage(_archive_parts(path), timeout=deadline), retry_for,
                      retry_on={grpc.StatusCode.UNAVAILABLE})  # fmt: skip
        except grpc.RpcError as error:
            raise ImageLoadError(path, error.code(), error.details() or "") from error

    def logs(
        self,
        component: str,
        backlog: int | None = None,
        follow: bool = False,
        contains: str = "",
        timeout: float | None = None,
    ) -> Generator[LogLine, None, None]:
        """Stream a component's log: ``backlog`` old lines (None: all, 0: none), then new ones if ``follow``.

        The iterator ends when the backlog is sent unless ``follow`` is set; a
        follow stream ends with DEADLINE_EXCEEDED after ``timeout`` seconds, or
        when the iterator is closed.
        """
        if backlog is None:
            mode, count = debug_pb2.BACKLOG_ALL, 0
        elif backlog == 0:
            mode, count = debug_pb2.BACKLOG_DISABLE, 0
        else:
            mode, count = debug_pb2.BACKLOG_COUNT, backlog
        request = debug_pb2.GetLogsRequest(
            dn=component,
            backlog_mode=mode,
            backlog_count=count,
            stream_mode=debug_pb2.STREAM_UNBUFFERED if follow else debug_pb2.STREAM_DISABLE,
            filters=[debug_pb2.LogFilter(contains=contains)] if contains else [],
        )
        responses = self.stub.GetLogs(request, timeout=timeout)
        try:
            for response in responses:
                for entry in (*response.backlog_entries, *response.stream_entries):
                    yield LogLine(entry.dn or component, entry.line, entry.original_length or len(entry.line))
        finally:
            responses.cancel()

    def wait_for_log(self, component: str, pattern: str, timeout: float) -> LogLine:
        """Block until a line of ``component`` (old or new) matches ``pattern``; no polling."""
        regex = re.compile(pattern)
        stream = self.logs(component, backlog=None, follow=True, timeout=timeout)
        try:
            for line in stream:
                if regex.search(line.text):
                    return line
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            stream.close()
        raise LogTimeoutError(f"no line of {component} matched /{pattern}/ within {timeout:.0f}s")

    def close(self) -> None:
        self.channel.close()


def node_debug_client(ports: PortMap, index: int, token: str | None) -> DebugClient:
    """A client for node ``index``'s debug service, through the switch's forward for that node."""
    return DebugClient(ports.dial_grpc(node_debug_guest_port(index)), token=token)


def load_image_into_nodes(ports: PortMap, token: str | None, archive: Path, nodes: Iterable[int]) -> None:
    """Import ``archive`` (``docker save`` or OCI tarball) into containerd on each of ``nodes``, in turn.

    What :meth:`Cluster.load_image <pytest_smalltown.cluster.Cluster.load_image>`
    and a kept cluster's do; raises :class:`ImageLoadError` at the first node that refuses it.
    """
    for index in nodes:
        client = node_debug_client(ports, index, token)
        try:
            client.load_image(archive)
        finally:
            client.close()
