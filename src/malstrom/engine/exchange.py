"""What the engine needs from the network: :class:`Exchange`, one worker's side of every
worker-to-worker pipe. :mod:`malstrom.transport` implements it (in-process and gRPC)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any, Protocol

__all__ = ["Exchange"]


class Exchange(Protocol):
    """One worker's side of every worker-to-worker pipe."""

    def send(self, peer: int, operator: str, msg: Any) -> None:
        """Queue ``msg`` for ``operator`` on ``peer``. Never blocks."""
        ...

    def recv(self, peer: int, operator: str) -> Any | None:
        """The next message ``peer`` sent to ``operator`` here, or None. Never blocks."""
        ...

    def flush(self) -> None:
        """Hand what has credit to the wire, send due credit reports. Raises TransportError
        if a peer is lost."""
        ...

    def set_attempt(self, attempt: int) -> None:
        """The job attempt this worker runs: network transports refuse peers of another one."""
        ...

    def saturated(self) -> AbstractSet[str]:
        """Operators with a pipe whose queue (messages without credit) exceeds its bound, as
        of the last flush."""
        ...

    def hold(self, operators: AbstractSet[str]) -> None:
        """Until the next call, ``recv`` returns None on these operators' pipes."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
