"""In-process transport: a pair of FIFO queues per coordinator <-> worker link."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

__all__ = ["Endpoint", "LocalEndpoint", "local_pair"]


class Endpoint(Protocol):
    """One side of a control link. ``recv`` never blocks."""

    def send(self, msg: Any) -> None: ...

    def recv(self) -> Any | None: ...


class LocalEndpoint:
    """An endpoint backed by two deques shared with its peer (single thread only)."""

    __slots__ = ("_inbox", "_outbox")

    def __init__(self, inbox: deque[Any], outbox: deque[Any]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    def send(self, msg: Any) -> None:
        self._outbox.append(msg)

    def recv(self) -> Any | None:
        return self._inbox.popleft() if self._inbox else None


def local_pair() -> tuple[LocalEndpoint, LocalEndpoint]:
    """Two connected endpoints: what one sends, the other receives, in order."""
    a: deque[Any] = deque()
    b: deque[Any] = deque()
    return LocalEndpoint(a, b), LocalEndpoint(b, a)
