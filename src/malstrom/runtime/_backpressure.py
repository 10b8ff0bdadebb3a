"""Backpressure: which operators stop taking in records while an exchange pipe is saturated.

The exchange bounds every pipe between workers with credits (:mod:`malstrom.transport._exchange`):
a receiver holds at most a window of what it has not consumed, and what has no credit waits
in its sender's queue. That queue stays bounded because the worker stops *feeding* it: while
an operator has a saturated pipe, every **intake** upstream of that operator in the dataflow
graph stops:

- sources are not polled;
- distributors read nothing from their peers (``Exchange.hold``): those messages wait within
  their pipes' windows, and their senders get no more credit, so backpressure travels on to
  the workers that feed them, hop by hop, up to the sources;
- user ``on_schedule`` hooks are not run (they may emit records);
- and while a worker holds any intake, idle detection (``idle_timeout``) does not count the
  time: a held input is not an idle one, and taking it for one would let other workers'
  epochs close windows that the held records belong to.

What is already inside the worker (records in local channels) is still processed to the end
of the turn, because operators never block. So a queue passes its bound by at most one
turn's intake, and each intake is bounded per turn: a source poll by its batch size, a
distributor by its pipes' windows. Sources' own messages (finished and moving parts) are
never held. An intake is held only for a saturated operator strictly *downstream* of it: a
distributor's own pipes never hold its own peer intake (what it receives from peers never
goes back out on its own pipes), only its local input's sources.

Why this cannot deadlock
------------------------
Number the distributors in a topological order of the graph (every worker runs the same
graph). Call a pipe *stuck* if it holds a message that will never be consumed, and suppose
some pipe ``(A -> B, X)`` is. The protocols send on a pipe only what its receiver will read
(to its current peers, and during a rescale to the old and the new ones), so B stops
reading it for one of two reasons only:

(h) B holds X's intake because B has a saturated pipe ``(B -> C, Y)`` with Y strictly
    downstream of X. Everything upstream of Y on B is held, so nothing refills that queue;
    it can stay saturated only if it never drains, so ``(B -> C, Y)`` is stuck as well.
(a) X on B has read A's barrier marker and waits for the barrier to align. Messages follow
    A's marker only once A's X has aligned the same barrier, so every worker's barrier has
    reached X and every worker has sent its marker to B too. B's X waits for one of them,
    in a pipe ``(K -> B, X)`` that must then be stuck, and B has not read K's marker: that
    pipe is stuck for reason (h).

From a stuck pipe, (h) leads to a stuck pipe of a strictly later distributor, and (a) to one
of the same distributor that is stuck for reason (h). Along any chain of reasons the
distributor's number rises at least every second step; there are finitely many, so the chain
must end, yet every stuck pipe has a reason: no pipe is stuck. Two workers sending to each
other, both slow, are no exception: the chain follows the dataflow graph, which has no
cycles, not the workers, which do. Relays (one distributor feeding another, so a worker
forwards what its peers sent) are the (h) steps.

The other protocols only wait for messages that are sent without reading a held pipe: a
rescale marker leaves when the Rescale command reaches the distributor; state transfers
leave once its key region has handed its keys over (the region's operators never block);
finished and moved source parts travel on the sources' pipes, never held. Those messages
sit in pipes that drain, by the argument above. Epochs and barriers wait in their pipes
behind the records sent before them, as FIFO order requires: under backpressure a snapshot
takes as long as the data in front of its barriers needs to be consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from malstrom.engine.operator import Operator
from malstrom.transport._exchange import NOTHING

__all__ = ["IntakeGate"]


class IntakeGate:
    """Works out which intakes a worker holds, given the operators with a saturated pipe."""

    def __init__(self, ops: Sequence[Operator]) -> None:
        """``ops`` in topological order (as the worker builds them)."""
        owner = {id(ch): op for op in ops for ch in op.inputs}
        below: dict[str, frozenset[str]] = {}
        for op in reversed(ops):
            names: set[str] = set()
            for port in op.outs:
                for ch in port:
                    child = owner[id(ch)]
                    names.add(child.name)
                    names |= below[child.name]
            below[op.name] = frozenset(names)
        #: Per intake operator, every operator downstream of it.
        self.below = {
            op.name: below[op.name]
            for op in ops
            if op.is_source or op.peer_intake or op.wants_schedule
        }
        self._sources = frozenset(op.name for op in ops if op.is_source)
        self._key: AbstractSet[str] = NOTHING
        self._held: frozenset[str] = NOTHING

    def held(self, saturated: AbstractSet[str]) -> frozenset[str]:
        """The intakes with a saturated operator downstream (cached: ``saturated`` rarely
        changes from one loop turn to the next)."""
        if not saturated:
            return NOTHING
        if saturated != self._key:
            self._key = saturated
            self._held = frozenset(
                name for name, below in self.below.items() if not below.isdisjoint(saturated)
            )
        return self._held

    def sources_feeding(self, ops: AbstractSet[str]) -> frozenset[str]:
        """The sources with any of ``ops`` downstream (epoch alignment holds them)."""
        return frozenset(name for name in self._sources if not self.below[name].isdisjoint(ops))
