from pytest_smalltown.api import enrolment_pb2 as _enrolment_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BacklogMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKLOG_INVALID: _ClassVar[BacklogMode]
    BACKLOG_DISABLE: _ClassVar[BacklogMode]
    BACKLOG_ALL: _ClassVar[BacklogMode]
    BACKLOG_COUNT: _ClassVar[BacklogMode]

class StreamMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_INVALID: _ClassVar[StreamMode]
    STREAM_DISABLE: _ClassVar[StreamMode]
    STREAM_UNBUFFERED: _ClassVar[StreamMode]
BACKLOG_INVALID: BacklogMode
BACKLOG_DISABLE: BacklogMode
BACKLOG_ALL: BacklogMode
BACKLOG_COUNT: BacklogMode
STREAM_INVALID: StreamMode
STREAM_DISABLE: StreamMode
STREAM_UNBUFFERED: StreamMode

class GetDebugKubeconfigRequest(_message.Message):
    __slots__ = ("id", "groups")
    ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDebugKubeconfigResponse(_message.Message):
    __slots__ = ("debug_kubeconfig",)
    DEBUG_KUBECONFIG_FIELD_NUMBER: _ClassVar[int]
    debug_kubeconfig: str
    def __init__(self, debug_kubeconfig: _Optional[str] = ...) -> None: ...

class GetComponentLogsRequest(_message.Message):
    __slots__ = ("component_path", "tail_lines")
    COMPONENT_PATH_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    component_path: _containers.RepeatedScalarFieldContainer[str]
    tail_lines: int
    def __init__(self, component_path: _Optional[_Iterable[str]] = ..., tail_lines: _Optional[int] = ...) -> None: ...

class GetComponentLogsResponse(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, line: _Optional[_Iterable[str]] = ...) -> None: ...

class GetConditionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetConditionResponse(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: bool = ...) -> None: ...

class GetGoldenTicketRequest(_message.Message):
    __slots__ = ("external_ip", "join_consensus")
    EXTERNAL_IP_FIELD_NUMBER: _ClassVar[int]
    JOIN_CONSENSUS_FIELD_NUMBER: _ClassVar[int]
    external_ip: str
    join_consensus: bool
    def __init__(self, external_ip: _Optional[str] = ..., join_consensus: bool = ...) -> None: ...

class GetGoldenTicketResponse(_message.Message):
    __slots__ = ("ticket",)
    TICKET_FIELD_NUMBER: _ClassVar[int]
    ticket: _enrolment_pb2.GoldenTicket
    def __init__(self, ticket: _Optional[_Union[_enrolment_pb2.GoldenTicket, _Mapping]] = ...) -> None: ...

class LogFilter(_message.Message):
    __slots__ = ("contains",)
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    contains: str
    def __init__(self, contains: _Optional[str] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("dn", "filters", "backlog_mode", "backlog_count", "stream_mode")
    DN_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_MODE_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_COUNT_FIELD_NUMBER: _ClassVar[int]
    STREAM_MODE_FIELD_NUMBER: _ClassVar[int]
    dn: str
    filters: _containers.RepeatedCompositeFieldContainer[LogFilter]
    backlog_mode: BacklogMode
    backlog_count: int
    stream_mode: StreamMode
    def __init__(self, dn: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[LogFilter, _Mapping]]] = ..., backlog_mode: _Optional[_Union[BacklogMode, str]] = ..., backlog_count: _Optional[int] = ..., stream_mode: _Optional[_Union[StreamMode, str]] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("dn", "line", "original_length", "timestamp_unix_nanos")
    DN_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    dn: str
    line: str
    original_length: int
    timestamp_unix_nanos: int
    def __init__(self, dn: _Optional[str] = ..., line: _Optional[str] = ..., original_length: _Optional[int] = ..., timestamp_unix_nanos: _Optional[int] = ...) -> None: ...

class GetLogsResponse(_message.Message):
    __slots__ = ("backlog_entries", "stream_entries")
    BACKLOG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    backlog_entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    stream_entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    def __init__(self, backlog_entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., stream_entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ...) -> None: ...

class ImagePart(_message.Message):
    __slots__ = ("data_part",)
    DATA_PART_FIELD_NUMBER: _ClassVar[int]
    data_part: bytes
    def __init__(self, data_part: _Optional[bytes] = ...) -> None: ...

class LoadImageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebootRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebootResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetClockOffsetRequest(_message.Message):
    __slots__ = ("offset_seconds",)
    OFFSET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    offset_seconds: float
    def __init__(self, offset_seconds: _Optional[float] = ...) -> None: ...

class SetClockOffsetResponse(_message.Message):
    __slots__ = ("stepped_seconds",)
    STEPPED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    stepped_seconds: float
    def __init__(self, stepped_seconds: _Optional[float] = ...) -> None: ...
