from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("from_worker", "seq", "payload", "more", "credits")
    FROM_WORKER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    from_worker: int
    seq: int
    payload: bytes
    more: bool
    credits: _containers.RepeatedCompositeFieldContainer[Credit]
    def __init__(self, from_worker: _Optional[int] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., more: _Optional[bool] = ..., credits: _Optional[_Iterable[_Union[Credit, _Mapping]]] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("operator", "consumed")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    operator: str
    consumed: int
    def __init__(self, operator: _Optional[str] = ..., consumed: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: int
    def __init__(self, frames: _Optional[int] = ...) -> None: ...

class ControlFrame(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class AdminRequest(_message.Message):
    __slots__ = ("command", "payload")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    command: str
    payload: bytes
    def __init__(self, command: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class AdminReply(_message.Message):
    __slots__ = ("ok", "error", "payload")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    payload: bytes
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...
