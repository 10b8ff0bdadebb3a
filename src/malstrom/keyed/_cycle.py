"""One rescale cycle of a distributor: what it waits for, and the messages peers exchange.

A cycle moves a key region from the old worker set to the new one. Its progress is explicit:
``local`` (our own Rescale arrived), ``marks`` (which peers sent their marker), ``collect``
(our Collect, with its token), ``sent`` (our keys went out), ``received`` (which peers sent
their last transfer). See :mod:`malstrom.keyed.distributor` for the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from malstrom._errors import OperatorError, short_repr
from malstrom.runtime._engine import IDLE, Batch, Collect

__all__ = ["Cycle", "RescaleMarker", "Transfer", "agreed_epoch", "split_transfers"]

TRANSFER_KEYS = 1000
"""Keys per transfer message: large state moves in many bounded frames, not one huge one."""


class RescaleMarker:
    """To every old and new peer: from here on, my records follow the new configuration.

    ``frontier`` is my local epoch when I sent it (None: none yet)."""

    __slots__ = ("frontier", "version", "workers")

    def __init__(self, version: int, workers: tuple[int, ...], frontier: Any) -> None:
        self.version = version
        self.workers = workers
        self.frontier = frontier

    def __reduce__(self) -> tuple[Any, ...]:
        return (RescaleMarker, (self.version, self.workers, self.frontier))

    def __repr__(self) -> str:
        return f"RescaleMarker({self.version}, {self.workers}, {self.frontier!r})"


class Transfer:
    """State of keys moving to the receiver: ``{operator: {key: state}}``. ``last``: nothing
    more comes from the sender in this cycle."""

    __slots__ = ("last", "states", "version")

    def __init__(self, version: int, states: dict[str, dict[Any, Any]], last: bool) -> None:
        self.version = version
        self.states = states
        self.last = last

    def __reduce__(self) -> tuple[Any, ...]:
        return (Transfer, (self.version, self.states, self.last))

    def __repr__(self) -> str:
        n = sum(map(len, self.states.values()))
        return f"Transfer({self.version}, {n} key states, last={self.last})"


class Cycle:
    """A distributor's progress through one rescale."""

    def __init__(
        self,
        version: int,
        old: tuple[int, ...],
        new: tuple[int, ...],
        me: int,
        partitioner: Callable[[Any, Sequence[int]], int],
        operator: str,
    ) -> None:
        if not new:
            raise OperatorError(operator, "cannot rescale to zero workers")
        self.version = version
        self.old = tuple(old)
        self.new = tuple(new)
        self.me = me
        self.peers = tuple(sorted((set(old) | set(new)) - {me}))
        self.partitioner = partitioner
        self.operator = operator
        self.cache: dict[Any, int] = {}
        self.local = False
        self.my_frontier: Any = None
        self.marks: dict[int, Any] = {}
        self.collect: Collect | None = None
        self.sent = False
        self.received: set[int] = set()
        self.held: list[Batch] = []

    def owner(self, key: Any) -> int:
        """The key's worker in the new configuration."""
        w = self.cache.get(key)
        if w is None:
            try:
                w = self.partitioner(key, self.new)
            except Exception as e:
                raise OperatorError(
                    self.operator, f"partitioner failed for key {short_repr(key)}: {e}"
                ) from e
            if w not in self.new:
                raise OperatorError(
                    self.operator,
                    f"partitioner returned worker {w!r} for key {short_repr(key)}, "
                    f"which is not one of the workers {list(self.new)}",
                )
            self.cache[key] = w
        return w

    def owners(self, keys: Sequence[Any]) -> list[int]:
        owner = self.owner
        return [owner(k) for k in keys]

    def moving(self, key: Any) -> bool:
        """Whether ``key``'s state leaves this worker."""
        return self.owner(key) != self.me

    def aligned(self) -> bool:
        """Every record of the old configuration has reached us (ours and every peer's)."""
        return self.local and len(self.marks) == len(self.peers)


def agreed_epoch(cycle: Cycle) -> Any:
    """The epoch every worker can reach before keys move: the least local frontier the old
    workers announced in their markers (None if one had none)."""
    vals = [cycle.marks[w] for w in cycle.old if w != cycle.me]
    if cycle.me in cycle.old:
        vals.append(cycle.my_frontier)
    if any(v is None for v in vals):
        return None
    live = [v for v in vals if v is not IDLE]
    return min(live) if live else None


def split_transfers(
    cycle: Cycle, collection: dict[str, dict[Any, Any]]
) -> Iterator[tuple[int, Transfer]]:
    """The transfers carrying ``collection`` to the keys' new owners, then a last one to every
    peer."""
    per_peer: dict[int, dict[str, dict[Any, Any]]] = {}
    for op, states in collection.items():
        for k, st in states.items():
            w = cycle.owner(k)
            per_peer.setdefault(w, {}).setdefault(op, {})[k] = st
    for w, ops in per_peer.items():
        chunk: dict[str, dict[Any, Any]] = {}
        n = 0
        for op, states in ops.items():
            for k, st in states.items():
                chunk.setdefault(op, {})[k] = st
                n += 1
                if n >= TRANSFER_KEYS:
                    yield w, Transfer(cycle.version, chunk, False)
                    chunk, n = {}, 0
        if chunk:
            yield w, Transfer(cycle.version, chunk, False)
    for w in cycle.peers:
        yield w, Transfer(cycle.version, {}, True)
