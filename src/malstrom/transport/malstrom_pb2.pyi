from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("from_worker", "seq", "payload", "more")
    FROM_WORKER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    from_worker: int
    seq: int
    payload: bytes
    more: bool
    def __init__(self, from_worker: _Optional[int] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., more: _Optional[bool] = ...) -> None: ...

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
