"""The rescale cycle as an explicit state machine: named phases, one transition per event.

An operator that moves state in a rescale (a distributor its keys, a source its parts) runs
one :class:`RescaleCycle` per configuration change. The cycle is in exactly one
:class:`Phase`; :meth:`RescaleCycle.fire` takes an :class:`Event`, looks the (phase, event)
pair up in the operator's transition table and returns the :class:`Action` s the operator
carries out. A pair missing from the table is a protocol violation and raises
:class:`CycleError` naming the operator, the rescale, the phase and the event. The machine
does no I/O, so the tables are tested on their own, without a cluster.

Two pieces of bookkeeping make up the rest of the cycle's state, each a
:class:`PeerTracker` over the cycle's peers (every old and new worker but this one): whose
*marker* arrived, and whose *last message* arrived. A :class:`Step` names the tracker an
event counts in and the phase the cycle goes to once that tracker is complete.

:data:`DISTRIBUTOR_CYCLE` (protocol in :mod:`malstrom.keyed.distributor`)::

    NEW --RESCALE--> AWAITING_MARKERS    (INTERROGATE, SEND_MARKERS)
    NEW --MARKER--> AWAITING_RESCALE     (INTERROGATE)      a peer rescaled before us
    AWAITING_RESCALE --MARKER--> AWAITING_RESCALE
    AWAITING_RESCALE --RESCALE--> AWAITING_MARKERS (SEND_MARKERS)
    AWAITING_MARKERS --MARKER--> AWAITING_MARKERS
        (either of the last two: once every peer's marker is in --> AWAITING_KEYS)
    AWAITING_KEYS --KEYS_SORTED--> HANDING_OVER (EMIT_AGREED_EPOCH, HAND_OVER)
    HANDING_OVER --COLLECTED--> HANDING_OVER    (SHIP, HAND_OVER)   one chunk a turn
    HANDING_OVER --LAST_COLLECTED--> AWAITING_TRANSFERS (SHIP_LAST)
        (fired once the distributors upstream on the worker released this rescale)
    AWAITING_TRANSFERS --LAST_TRANSFER--> AWAITING_TRANSFERS
        (either of the last two: once every peer's last transfer is in --> RELEASING)
    RELEASING --SETTLE--> DONE (RELEASE)
    from AWAITING_MARKERS to AWAITING_TRANSFERS: TRANSFER (ACQUIRE), LAST_TRANSFER (counted)

:data:`SOURCE_CYCLE` (protocol in :mod:`malstrom.operators.io`) is the tail of the same
cycle::

    NEW --RESCALE--> AWAITING_TRANSFERS (SHIP_LAST)
    AWAITING_TRANSFERS --TRANSFER--> AWAITING_TRANSFERS (ACQUIRE)
    AWAITING_TRANSFERS --LAST_TRANSFER--> AWAITING_TRANSFERS
        (either: once every peer's last message is in --> RELEASING)
    RELEASING --SETTLE--> DONE (RELEASE)

A source skips the markers and the key region: it is a root, so no record of the old
configuration is in flight towards it (nothing to align), and it collects its leaving parts
at once when its Rescale arrives (nothing to hand over a chunk at a time). What a peer sends
a source before the source's own Rescale (its moved parts, its last message) waits in the
source and is fired into the cycle after ``RESCALE``; a distributor instead starts its cycle
on a peer's first marker, because that peer's next records already follow the new
configuration and must be routed (and held) as such.

Both wait for the end of the messages at hand before they release (``RELEASING`` then
``SETTLE``): the last peer's last message may come in the middle of a turn's intake from
the peers, and what follows it in that intake is still taken in by the cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

from malstrom.errors import OperatorError

__all__ = [
    "DISTRIBUTOR_CYCLE",
    "SOURCE_CYCLE",
    "Action",
    "CycleError",
    "Event",
    "PeerTracker",
    "Peers",
    "Phase",
    "RescaleCycle",
    "Step",
    "Table",
]


class Phase(Enum):
    """Where a rescale cycle is; in the order a cycle goes through them."""

    NEW = 0
    """Created; nothing has happened yet."""
    AWAITING_RESCALE = 1
    """A peer's marker arrived before this worker's own Rescale."""
    AWAITING_MARKERS = 2
    """Own Rescale in (own marker sent); some peers' markers are not."""
    AWAITING_KEYS = 3
    """Every record of the old configuration is in; the region's keys are still being
    sorted into staying and leaving."""
    HANDING_OVER = 4
    """Handovers travel the key region, one chunk a loop turn; collected state is shipped."""
    AWAITING_TRANSFERS = 5
    """Everything leaving was shipped with a last message; some peers' last ones are not in."""
    RELEASING = 6
    """Everything moved; the release follows at the end of the messages at hand."""
    DONE = 7
    """Released: the operator runs in the new configuration."""


class Event(Enum):
    """What can happen to a rescale cycle."""

    RESCALE = "own Rescale"
    MARKER = "a peer's marker"
    KEYS_SORTED = "the region's keys sorted"
    COLLECTED = "a Handover collected (more to come)"
    LAST_COLLECTED = "the last Handover collected"
    TRANSFER = "a peer's moved state"
    LAST_TRANSFER = "a peer's last message"
    SETTLE = "the messages at hand are handled"


class Action(Enum):
    """What the operator does on a transition (in the order a step lists them)."""

    INTERROGATE = "send Interrogate into the key region"
    SEND_MARKERS = "send a marker to every peer"
    EMIT_AGREED_EPOCH = "emit the epoch every worker reached before keys move"
    HAND_OVER = "send the next Handover into the key region"
    SHIP = "ship the collected state to its new owners"
    SHIP_LAST = "ship what leaves, then a last message to every peer"
    ACQUIRE = "install the moved state that arrived"
    RELEASE = "release what was held and switch to the new configuration"


class Peers(Enum):
    """The two per-peer trackers of a cycle."""

    MARKERS = "marker"
    LASTS = "last message"


@dataclass(frozen=True)
class Step:
    """One transition: go to ``to`` doing ``actions``; the event's peer counts in
    ``record``; once the tracker ``once[0]`` is complete, go to ``once[1]`` instead."""

    to: Phase
    actions: tuple[Action, ...] = ()
    record: Peers | None = None
    once: tuple[Peers, Phase] | None = None


Table = Mapping[tuple[Phase, Event], Step]
"""A protocol: the step for every (phase, event) pair it allows."""


class CycleError(OperatorError):
    """An event arrived that the operator's rescale protocol does not allow in its phase."""


class PeerTracker:
    """Which peers sent one kind of message in a cycle (and what it carried): complete once
    every peer did. A peer sending it twice, or a worker that is no peer, is an error."""

    __slots__ = ("arrived", "kind", "peers")

    def __init__(self, kind: Peers, peers: Iterable[int]) -> None:
        self.kind = kind
        self.peers = frozenset(peers)
        self.arrived: dict[int, Any] = {}

    def __contains__(self, peer: object) -> bool:
        return peer in self.arrived

    @property
    def complete(self) -> bool:
        """Every peer's message is in."""
        return len(self.arrived) == len(self.peers)

    def missing(self) -> list[int]:
        """The peers whose message is not in yet."""
        return sorted(self.peers - self.arrived.keys())


class RescaleCycle:
    """One operator's rescale ``version`` with ``peers``, run by the transitions of ``table``.

    ``phase`` changes only in :meth:`fire`."""

    __slots__ = ("lasts", "markers", "operator", "phase", "table", "version")

    def __init__(self, table: Table, operator: str, version: int, peers: Iterable[int]) -> None:
        peers = tuple(peers)
        self.table = table
        self.operator = operator
        self.version = version
        self.phase = Phase.NEW
        self.markers = PeerTracker(Peers.MARKERS, peers)
        self.lasts = PeerTracker(Peers.LASTS, peers)

    def reached(self, phase: Phase) -> bool:
        """Whether the cycle is in ``phase`` or a later one."""
        return self.phase.value >= phase.value

    def fire(
        self, event: Event, peer: int | None = None, payload: Any = None
    ) -> tuple[Action, ...]:
        """Take ``event`` (from ``peer``, carrying ``payload``): move to the next phase and
        return the actions to carry out, in order.

        Raises :class:`CycleError` if the phase does not allow the event, or the peer is none
        of the cycle's or sent that message before."""
        step = self.table.get((self.phase, event))
        if step is None:
            allowed = ", ".join(e.name for (p, e) in self.table if p is self.phase) or "none"
            self._fail(
                event, peer, f"is not allowed in phase {self.phase.name} (allowed: {allowed})"
            )
        if step.record is not None:
            tracker = self._tracker(step.record)
            if peer not in tracker.peers:
                self._fail(
                    event, peer, f"comes from no peer of this rescale {sorted(tracker.peers)}"
                )
            if peer in tracker.arrived:
                self._fail(event, peer, f"arrived twice (phase {self.phase.name})")
            tracker.arrived[peer] = payload
        to = step.to
        if step.once is not None and self._tracker(step.once[0]).complete:
            to = step.once[1]
        self.phase = to
        return step.actions

    def _tracker(self, kind: Peers) -> PeerTracker:
        return self.markers if kind is Peers.MARKERS else self.lasts

    def _fail(self, event: Event, peer: int | None, why: str) -> NoReturn:
        source = f" from worker {peer}" if peer is not None else ""
        raise CycleError(self.operator, f"rescale {self.version}: event {event.name}{source} {why}")


P, E, A = Phase, Event, Action

_TRANSFERS = {
    # Moved state may arrive from a peer once it has our marker, up to its last message.
    (phase, event): step
    for phase in (P.AWAITING_MARKERS, P.AWAITING_KEYS, P.HANDING_OVER, P.AWAITING_TRANSFERS)
    for event, step in (
        (E.TRANSFER, Step(phase, (A.ACQUIRE,))),
        (
            E.LAST_TRANSFER,
            Step(
                phase,
                record=Peers.LASTS,
                once=(Peers.LASTS, P.RELEASING) if phase is P.AWAITING_TRANSFERS else None,
            ),
        ),
    )
}

DISTRIBUTOR_CYCLE: Table = {
    (P.NEW, E.RESCALE): Step(
        P.AWAITING_MARKERS,
        (A.INTERROGATE, A.SEND_MARKERS),
        once=(Peers.MARKERS, P.AWAITING_KEYS),
    ),
    (P.NEW, E.MARKER): Step(P.AWAITING_RESCALE, (A.INTERROGATE,), record=Peers.MARKERS),
    (P.AWAITING_RESCALE, E.MARKER): Step(P.AWAITING_RESCALE, record=Peers.MARKERS),
    (P.AWAITING_RESCALE, E.RESCALE): Step(
        P.AWAITING_MARKERS, (A.SEND_MARKERS,), once=(Peers.MARKERS, P.AWAITING_KEYS)
    ),
    (P.AWAITING_MARKERS, E.MARKER): Step(
        P.AWAITING_MARKERS, record=Peers.MARKERS, once=(Peers.MARKERS, P.AWAITING_KEYS)
    ),
    (P.AWAITING_KEYS, E.KEYS_SORTED): Step(P.HANDING_OVER, (A.EMIT_AGREED_EPOCH, A.HAND_OVER)),
    (P.HANDING_OVER, E.COLLECTED): Step(P.HANDING_OVER, (A.SHIP, A.HAND_OVER)),
    (P.HANDING_OVER, E.LAST_COLLECTED): Step(
        P.AWAITING_TRANSFERS, (A.SHIP_LAST,), once=(Peers.LASTS, P.RELEASING)
    ),
    **_TRANSFERS,
    (P.RELEASING, E.SETTLE): Step(P.DONE, (A.RELEASE,)),
}
"""A distributor's rescale: markers, the key region's hand-over, transfers, release."""

SOURCE_CYCLE: Table = {
    (P.NEW, E.RESCALE): Step(P.AWAITING_TRANSFERS, (A.SHIP_LAST,), once=(Peers.LASTS, P.RELEASING)),
    (P.AWAITING_TRANSFERS, E.TRANSFER): Step(P.AWAITING_TRANSFERS, (A.ACQUIRE,)),
    (P.AWAITING_TRANSFERS, E.LAST_TRANSFER): Step(
        P.AWAITING_TRANSFERS, record=Peers.LASTS, once=(Peers.LASTS, P.RELEASING)
    ),
    (P.RELEASING, E.SETTLE): Step(P.DONE, (A.RELEASE,)),
}
"""A source's rescale: its parts move at once, then every peer's last message is awaited."""
