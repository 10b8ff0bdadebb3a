"""Worker-to-worker pipes: the interface every transport implements, and the in-process one.

A worker's :class:`Exchange` carries messages to and from its peers, FIFO per
(peer, operator) pipe (DESIGN invariant 1). Operators call :meth:`Exchange.send` and
:meth:`Exchange.recv` from the worker loop only; the worker calls :meth:`Exchange.flush`
once per loop turn so a transport can batch many small messages into one frame.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

__all__ = ["Exchange", "LocalExchangeHub", "TransportError"]


class TransportError(RuntimeError):
    """A peer cannot be reached (after retries), or refused us; the job must restart."""


class Exchange(Protocol):
    """One worker's side of every worker-to-worker pipe."""

    def send(self, peer: int, operator: str, msg: Any) -> None:
        """Queue ``msg`` for ``operator`` on ``peer``. Never blocks."""
        ...

    def recv(self, peer: int, operator: str) -> Any | None:
        """The next message ``peer`` sent to ``operator`` here, or None. Never blocks."""
        ...

    def flush(self) -> None:
        """Hand queued messages to the wire. Raises TransportError if a peer is lost."""
        ...

    def set_attempt(self, attempt: int) -> None:
        """The job attempt this worker runs: network transports refuse peers of another one."""
        ...

    def backlogged(self) -> bool:
        """True while outbound buffers exceed their bound: sources should stop producing."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class LocalExchangeHub:
    """All pipes of workers living in one thread (tests, in-process clusters)."""

    def __init__(self) -> None:
        self._pipes: dict[tuple[int, int, str], deque[Any]] = {}

    def pipe(self, src: int, dst: int, operator: str) -> deque[Any]:
        key = (src, dst, operator)
        q = self._pipes.get(key)
        if q is None:
            q = self._pipes[key] = deque()
        return q

    def endpoint(self, worker_id: int) -> _LocalExchange:
        return _LocalExchange(self, worker_id)


class _LocalExchange:
    def __init__(self, hub: LocalExchangeHub, me: int) -> None:
        self._hub = hub
        self._me = me

    def send(self, peer: int, operator: str, msg: Any) -> None:
        self._hub.pipe(self._me, peer, operator).append(msg)

    def recv(self, peer: int, operator: str) -> Any | None:
        q = self._hub.pipe(peer, self._me, operator)
        return q.popleft() if q else None

    def flush(self) -> None:
        pass

    def set_attempt(self, attempt: int) -> None:
        pass  # one process, one attempt: nothing stale can reach these pipes

    def backlogged(self) -> bool:
        return False

    def close(self) -> None:
        pass
