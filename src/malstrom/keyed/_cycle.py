"""One rescale cycle of a distributor: the data it works on, and the messages peers exchange.

A cycle moves a key region from the old worker set to the new one. Where it is, is its
``machine``'s phase (:class:`~malstrom.engine.rescale_cycle.RescaleCycle` run by
:data:`~malstrom.engine.rescale_cycle.DISTRIBUTOR_CYCLE`: which peers' markers and last
transfers arrived, too); :class:`Cycle` holds the data the phases work on: the old and new
placements, the records held, the region's keys being sorted, the Handover travelling. See
:mod:`malstrom.keyed.distributor` for the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from malstrom.engine.batch import Batch
from malstrom.engine.epochs import merge_epochs
from malstrom.engine.messages import IDLE, Handover, Interrogate, Token
from malstrom.engine.rescale_cycle import DISTRIBUTOR_CYCLE, Phase, RescaleCycle
from malstrom.errors import OperatorError
from malstrom.keyed._placement import KeyPlacement

__all__ = ["Cycle", "RescaleMarker", "Transfer", "agreed_epoch", "split_transfers"]

TRANSFER_KEYS = 1000
"""Keys per transfer message: large state moves in many bounded frames, not one huge one."""
COLLECT_KEYS = 1024
"""Keys collected per worker loop turn: the worker's other keys keep flowing meanwhile."""


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

    def __init__(self, version: int, old: KeyPlacement, new: tuple[int, ...]) -> None:
        if not new:
            raise OperatorError(old.operator, "cannot rescale to zero workers")
        me = old.me
        self.version = version
        self.old_placement = old  # the distributor's own: its cache serves the cycle too
        self.new_placement = KeyPlacement(old.partitioner, new, me, old.operator)
        self.old = old.workers
        self.new = self.new_placement.workers
        self.me = me
        self.peers = tuple(sorted((set(self.old) | set(self.new)) - {me}))
        self.operator = old.operator
        # The key's worker in the new configuration (bound once: sorting calls it per key).
        self.owner = self.new_placement.owner
        self.machine = RescaleCycle(DISTRIBUTOR_CYCLE, self.operator, version, self.peers)
        self.my_frontier: Any = None  # our local epoch when our marker went out
        self.collect: Handover | None = None  # the Handover travelling through the region now
        self.chunks: list[set[Any] | None] | None = None  # Collects to come (None: the rest)
        self.held: list[Batch] = []  # records of keys whose state is still on its way here
        self.keys = KeySorter(self.owner, me)

    @property
    def local(self) -> bool:
        """Our own Rescale arrived: our local records follow the new configuration."""
        return self.machine.reached(Phase.AWAITING_MARKERS)

    def moving(self, key: Any) -> bool:
        """Whether ``key``'s state leaves this worker."""
        return self.owner(key) != self.me

    def next_collect(self) -> Handover | None:
        """The next Handover to send into the region (None once all were sent)."""
        if self.chunks is None:
            keys = list(self.keys.leaving)
            self.chunks = [
                set(keys[i : i + COLLECT_KEYS]) for i in range(0, len(keys), COLLECT_KEYS)
            ]
            self.chunks.append(None)
            self.chunks.reverse()
        if not self.chunks:
            return None
        only = self.chunks.pop()
        if only is not None:
            return Handover(Token(1), self.moving, only=only)
        # The rest: keys that appeared after the region was interrogated.
        return Handover(Token(1), self.moving, self.keys.staying, self.keys.leaving)


class KeySorter:
    """The keys the region holds state for, sorted into staying and leaving, a budget of keys
    a worker loop turn.

    Collecting asks every stateful operator which of its keys leave. With the owners of the
    keys the region reported (:class:`Interrogate`, in :attr:`ask`) worked out beforehand, a
    few thousand per loop turn while the peers' markers come in, the keys known to stay are
    skipped at C speed (:attr:`staying`), so the worker's other keys keep flowing instead of
    stalling behind one long walk over every key."""

    __slots__ = ("ask", "leaving", "leaving_to", "me", "owner", "staying", "todo")

    def __init__(self, owner: Callable[[Any], int], me: int) -> None:
        self.owner = owner  # a key's worker in the new configuration
        self.me = me
        self.ask: Interrogate | None = None  # asks the region which keys it holds
        self.todo: list[Any] | None = None  # held keys whose new owner is still unknown
        self.staying: set[Any] = set()  # held keys known to stay ours
        self.leaving: set[Any] = set()  # held keys known to leave
        self.leaving_to: dict[int, set[Any]] = {}  # the same, by new owner

    def sort(self, budget: int) -> bool:
        """Work out the new owners of up to ``budget`` more held keys; True once done (False
        while the region has not answered :attr:`ask`)."""
        if self.todo is None:
            ask = self.ask
            if ask is None or ask.token.pending:
                return False
            self.todo = list(ask.keys)
            self.ask = None
        todo = self.todo
        if not todo:
            return True
        if budget <= 0:
            return False
        owner, me, staying, leaving = self.owner, self.me, self.staying, self.leaving
        to = self.leaving_to
        for k in todo[-budget:]:
            w = owner(k)
            if w == me:
                staying.add(k)
            else:
                leaving.add(k)
                dest = to.get(w)
                if dest is None:
                    to[w] = {k}
                else:
                    dest.add(k)
        del todo[-budget:]
        return not todo


def agreed_epoch(cycle: Cycle, operator: str) -> Any:
    """The epoch every worker can reach before keys move: the least local frontier the old
    workers announced in their markers (None if one had none)."""
    frontiers = cycle.machine.markers.arrived
    vals = [frontiers[w] for w in cycle.old if w != cycle.me]
    if cycle.me in cycle.old:
        vals.append(cycle.my_frontier)
    merged = merge_epochs(vals, operator)
    return None if merged is IDLE else merged


def split_transfers(
    cycle: Cycle, collection: dict[str, dict[Any, Any]], last: bool
) -> Iterator[tuple[int, Transfer]]:
    """The transfers carrying ``collection`` to the keys' new owners (at most
    :data:`TRANSFER_KEYS` keys each); with ``last``, then a last one to every peer."""
    owner = cycle.owner
    for op, states in collection.items():
        groups: dict[int, list[Any]] = {}
        rest = set(states)
        for w, known in cycle.keys.leaving_to.items():  # grouped while sorting: set operations
            mine = rest & known
            if mine:
                rest -= mine
                groups[w] = list(mine)
        for k in rest:  # keys that appeared after the region was interrogated
            groups.setdefault(owner(k), []).append(k)
        for w, keys in groups.items():
            for i in range(0, len(keys), TRANSFER_KEYS):
                chunk = {k: states[k] for k in keys[i : i + TRANSFER_KEYS]}
                yield w, Transfer(cycle.version, {op: chunk}, False)
    if last:
        for w in cycle.peers:
            yield w, Transfer(cycle.version, {}, True)
