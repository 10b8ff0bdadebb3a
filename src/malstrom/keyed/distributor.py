"""key_distribute: re-key records and move each to the worker that owns its key.

Each worker runs one distributor per ``key_distribute``. Ownership is
``partitioner(key, workers)``, looked up per batch through the worker set's
:class:`~malstrom.keyed._placement.KeyPlacement` (a cache: the partitioner runs once per
distinct key, not once per record). With a single worker every record is local and the
operator only re-keys.

Across workers (through the worker's ``exchange``, FIFO per (peer, operator)):

- records for another worker are sent there and delivered downstream on arrival;
- epochs are broadcast to every peer; downstream sees the minimum over the local input and
  every peer, emitted only when it rises (so MAX passes once every worker has ended);
- barriers align (ABS): on the local barrier the distributor sends a marker to every peer and
  stops reading its local input; it stops reading a peer once that peer's marker arrives; when
  the local barrier is held and every peer is marked, the barrier goes downstream and reading
  resumes. Data from a peer before its marker belongs to the snapshot, data after it does not.

Rescaling (zero downtime; one cycle per configuration change: its data in
:mod:`malstrom.keyed._cycle`, its phases and transitions in
:mod:`malstrom.engine.rescale_cycle`, named here in capitals):

1. When the worker's ``Rescale`` reaches the distributor, it asks its region which keys it
   holds (``Interrogate``), sends a :class:`RescaleMarker` (new worker set, its local
   frontier) to every old and new peer and from then on routes its local input by the new
   worker set (AWAITING_MARKERS). A peer learns of the rescale from the first marker it gets,
   so records of a newer configuration are never taken for old ones (AWAITING_RESCALE until
   its own Rescale arrives).
2. Records reaching the new owner of a key whose state is still elsewhere are **held** (only
   those keys); every other key keeps flowing.
3. Once its own Rescale and every peer's marker arrived (all old-configuration records are
   in) and the region's keys are sorted into staying and leaving (AWAITING_KEYS; sorting
   works a budget of keys a loop turn from the cycle's start), the distributor advances its
   region to the agreed epoch (the minimum frontier the old workers announced in their
   markers) and sends a ``Handover`` into its region: every keyed operator hands over the
   state of the keys leaving this worker, one chunk a turn (HANDING_OVER). The collected
   state goes to the new owners as :class:`Transfer` messages, then a last (empty) transfer
   to every peer (AWAITING_TRANSFERS). A distributor with distributors upstream on its
   worker sends its last transfer only once their ``Released`` passed its input: until then
   one of them may still emit records its peers sent under the old configuration, which
   this one routes by the new configuration, and a peer that has this worker's last
   transfer reads no more from it (a leaving worker's records would be lost).
4. Transfers arriving are installed downstream (``Acquire``). Once every peer's last
   transfer is in (RELEASING, until the messages at hand are handled), ``Installed`` goes
   downstream, the held records follow it, then ``Released``, and the distributor switches
   to the new placement (DONE). Merged epochs stay frozen during the cycle, so no epoch ever
   overtakes a held or moved record; epoch generators downstream freeze too, from the
   cycle's ``Interrogate`` to ``Released``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from malstrom._repr import short_repr
from malstrom.engine.batch import Batch
from malstrom.engine.context import BuildContext
from malstrom.engine.epochs import merge_epochs
from malstrom.engine.messages import (
    IDLE,
    Acquire,
    Barrier,
    Control,
    Epoch,
    Handover,
    Installed,
    Interrogate,
    Released,
    Rescale,
    Token,
)
from malstrom.engine.operator import Operator
from malstrom.engine.rescale_cycle import Action, Event, Phase
from malstrom.engine.user_code import map_values, user_error
from malstrom.errors import BuildError, OperatorError
from malstrom.keyed._cycle import Cycle, RescaleMarker, Transfer, agreed_epoch, split_transfers
from malstrom.keyed._placement import KeyPlacement
from malstrom.types import Partitioner

__all__ = ["BARRIER_MARKER", "DistributorOp"]

SORT_KEYS = 1024
"""Keys whose new owner a rescale works out per loop turn before collecting."""


class _BarrierMarker:
    """Sent to every peer when the local barrier reaches a distributor."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "BARRIER_MARKER"

    def __repr__(self) -> str:
        return "BARRIER_MARKER"


BARRIER_MARKER = _BarrierMarker()


class DistributorOp(Operator):
    """Routes records by key; with ``key_fn`` None, by the sink part ``part_of(key)``, without
    re-keying."""

    peer_intake = True
    routes_by_key = True

    def __init__(
        self,
        name: str,
        key_fn: Callable[[Any], Any] | None,
        partitioner: Partitioner,
        ctx: BuildContext,
        part_of: Callable[[Any], Any] | None = None,
        max_epoch_lead: float | None = None,
    ) -> None:
        super().__init__(name)
        #: Epoch alignment (seconds), or None: see :meth:`ahead`.
        self.max_epoch_lead = max_epoch_lead
        # (monotonic time, local frontier) whenever the local frontier rose, oldest first.
        self._lead_history: deque[tuple[float, Any]] = deque()
        self.key_fn = key_fn
        self.part_of = part_of
        self.me = ctx.worker_id
        # Where keys live in the current configuration (a rescale's new one once it ended).
        self.placement = KeyPlacement(partitioner, ctx.worker_set, self.me, name)
        self.exchange: Any = ctx.exchange
        if self.placement.remotes and self.exchange is None:
            raise BuildError(
                f"operator {name!r}: {len(self.placement.workers)} workers but this runtime "
                "has no worker-to-worker exchange"
            )
        self.wants_schedule = self.exchange is not None
        self._local_frontier: Any = None
        self._remote_frontier: dict[int, Any] = dict.fromkeys(self.placement.remotes)
        self._out_frontier: Any = None
        self._idle_out = False
        self._local_barrier: Barrier | None = None
        self._marked: set[int] = set()
        self._cycle: Cycle | None = None
        self._done_version = -1
        # Rescale version -> the upstream distributors whose Released passed this input.
        self._released_up: dict[int, frozenset[str]] = {}

    # ----- routing -----------------------------------------------------------------------
    def on_batch(self, batch: Batch, port: int) -> None:
        if self.key_fn is not None:
            keys = map_values(self.name, self.key_fn, batch)
            batch = Batch(keys, batch.values, batch.timestamps)
        cycle = self._cycle
        if cycle is not None and cycle.local:
            self._route_new(batch, cycle)
            return
        placement = self.placement
        if not placement.remotes:
            self.emit(batch)
            return
        if not len(batch):
            self.emit(batch)
            return
        parts = placement.split(self._route_keys(batch), batch.keys, batch.values, batch.timestamps)
        me = self.me
        if type(parts) is int:  # every record to one worker: the batch as it is, no copy
            if parts == me:
                self.emit(batch)
            else:
                self.exchange.send(parts, self.name, batch)
            return
        for w, keys, values, stamps in parts:  # type: ignore[union-attr]
            part = Batch(keys, values, stamps)
            if w == me:
                self.emit(part)
            else:
                self.exchange.send(w, self.name, part)

    # ----- epochs ------------------------------------------------------------------------
    def _epoch_in(self, idx: int, ts: Any) -> None:
        # Not the engine's merge: this one spans the peers' local frontiers too.
        if self.exchange is None:
            super()._epoch_in(idx, ts)
            return
        self._local_frontier = ts
        if self.max_epoch_lead is not None and ts is not IDLE:
            self._lead_history.append((monotonic(), ts))
        e = Epoch(ts)
        cycle = self._cycle
        for w in cycle.peers if cycle is not None and cycle.local else self.placement.remotes:
            self.exchange.send(w, self.name, e)
        self._emit_merged()

    def ahead(self, now: float) -> bool:
        """True while a peer's frontier is still below what this worker's own frontier was
        ``max_epoch_lead`` seconds ago: this worker's inputs run ahead of the job in event
        time, and the worker holds the sources that feed this distributor until the peers
        catch up (epoch alignment; never during a rescale).

        Why: the merged epoch is the slowest worker's, so every record of a worker that runs
        ahead waits in keyed state (open windows, pending joins) for the others; the state,
        and whatever scans it per epoch, grows with the lead. Measured in processing time so
        that it needs no arithmetic on timestamps.
        """
        history = self._lead_history
        lead = self.max_epoch_lead
        if lead is None or not history or self._cycle is not None:
            return False
        horizon = now - lead
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()
        then, frontier = history[0]
        if then > horizon:
            return False
        for remote in self._remote_frontier.values():
            if remote is None or remote is IDLE:
                continue
            try:
                if remote < frontier:
                    return True
            except TypeError:
                return False  # incomparable epochs fail in the merge, with a clear error
        return False

    def _emit_merged(self) -> None:
        if self._cycle is not None:
            return  # frozen while keys move: no epoch may overtake a held or moved record
        vals = [self._local_frontier, *self._remote_frontier.values()]
        merged = merge_epochs(vals, self.name)
        if merged is None:
            return
        if merged is IDLE:
            if not self._idle_out:
                self._idle_out = True
                self.emit_epoch(IDLE)
            return
        try:
            rising = self._out_frontier is None or merged > self._out_frontier
        except TypeError as e:
            raise OperatorError(
                self.name, f"cannot merge epochs of incomparable timestamps {short_repr(vals)}"
            ) from e
        if rising:
            self._idle_out = False
            self._out_frontier = merged
            self.emit_epoch(merged)
        elif self._idle_out:
            self._idle_out = False
            self.emit_epoch(self._out_frontier)

    # ----- barriers ----------------------------------------------------------------------
    def on_barrier(self, barrier: Barrier) -> None:
        if self._cycle is not None:
            raise OperatorError(self.name, "a snapshot barrier arrived during a rescale")
        remotes = self.placement.remotes
        if not remotes:
            self.forward(barrier)
            return
        self._local_barrier = barrier
        for w in remotes:
            self.exchange.send(w, self.name, BARRIER_MARKER)
        self._try_release()

    def _try_release(self) -> None:
        b = self._local_barrier
        if b is not None and len(self._marked) == len(self.placement.remotes):
            self._local_barrier = None
            self._marked.clear()
            self.forward(b)

    # ----- driving -------------------------------------------------------------------------
    def drain(self) -> bool:
        if not self.placement.remotes and self._cycle is None:
            return super().drain()
        # While the local barrier waits for the peers' markers, local input stays queued.
        ch = self.inputs[0]
        worked = False
        while ch and self._local_barrier is None:
            self.dispatch(ch.popleft(), 0)
            worked = True
        return worked

    def wake_at(self, now: float) -> float | None:
        # Peers' messages wake the worker by themselves; a rescale cycle works a budget of
        # keys per turn, so it keeps the worker turning.
        return now if self._cycle is not None else None

    def schedule(self) -> None:
        """Take in what the peers sent (all of it, except past a peer's barrier marker)."""
        if self._cycle is not None:
            self._schedule_cycle(self._cycle)
            return
        recv = self.exchange.recv
        name = self.name
        for w in self.placement.remotes:
            if w in self._marked:
                continue
            while (msg := recv(w, name)) is not None:
                t = type(msg)
                if t is Batch:
                    self.emit(msg)
                elif t is Epoch:
                    self._remote_frontier[w] = msg.ts
                    self._emit_merged()
                elif msg is BARRIER_MARKER:
                    self._marked.add(w)
                    break
                elif t is RescaleMarker:
                    # A peer is ahead of us in a rescale: everything after this is new.
                    cycle = self._begin_cycle(msg.version, msg.workers)
                    self._on_marker(cycle, w, msg)
                    self._schedule_cycle(cycle)
                    return
                else:
                    raise OperatorError(name, f"unexpected message from worker {w}: {msg!r}")
        self._try_release()

    # ----- rescale ---------------------------------------------------------------------------
    def on_control(self, msg: Control) -> None:
        t = type(msg)
        if t is Rescale:
            assert isinstance(msg, Rescale)
            self._on_local_rescale(msg)
            self.forward(msg)
        elif t is Released:
            assert isinstance(msg, Released)
            msg.token.pending -= 1  # the upstream key region ends here
            v = msg.version
            self._released_up[v] = self._released_up.get(v, frozenset()) | msg.origins
        elif t is Handover or t is Acquire or t is Installed or t is Interrogate:
            msg.token.pending -= 1
        else:
            self.forward(msg)

    def rescale_done(self, version: int) -> bool:
        return self._done_version >= version

    def _begin_cycle(self, version: int, workers: tuple[int, ...]) -> Cycle:
        if self._cycle is None:
            if self.exchange is None:
                raise OperatorError(self.name, "cannot rescale: this runtime has no exchange")
            self._cycle = Cycle(version, self.placement, tuple(workers))
        elif self._cycle.version != version:
            raise OperatorError(
                self.name,
                f"rescale to configuration {version} while {self._cycle.version} is running",
            )
        return self._cycle

    def _on_local_rescale(self, msg: Rescale) -> None:
        if msg.version <= self._done_version:
            return
        cycle = self._begin_cycle(msg.version, msg.workers)
        cycle.my_frontier = self._local_frontier
        self._act(cycle, cycle.machine.fire(Event.RESCALE))
        self._advance(cycle)

    def _on_marker(self, cycle: Cycle, peer: int, msg: RescaleMarker) -> None:
        self._remote_frontier[peer] = msg.frontier
        self._act(cycle, cycle.machine.fire(Event.MARKER, peer, msg.frontier))
        self._advance(cycle)

    def _schedule_cycle(self, cycle: Cycle) -> None:
        recv = self.exchange.recv
        name = self.name
        machine = cycle.machine
        for w in cycle.peers:
            while self._cycle is cycle and (msg := recv(w, name)) is not None:
                t = type(msg)
                if t is Batch:
                    if w in machine.markers:
                        self._deliver_new(msg, cycle)
                    else:
                        self.emit(msg)  # sent under the old configuration: a key we own
                elif t is Epoch:
                    self._remote_frontier[w] = msg.ts
                elif t is RescaleMarker:
                    if msg.version != cycle.version:
                        raise OperatorError(
                            name, f"worker {w} rescales to {msg.version}, not {cycle.version}"
                        )
                    self._on_marker(cycle, w, msg)
                elif t is Transfer:
                    if msg.states:
                        self._act(cycle, machine.fire(Event.TRANSFER, w), msg)
                    if msg.last:
                        self._act(cycle, machine.fire(Event.LAST_TRANSFER, w))
                else:
                    raise OperatorError(name, f"unexpected message from worker {w}: {msg!r}")
        if self._cycle is cycle:
            self._advance(cycle, SORT_KEYS)  # once per loop turn

    def _advance(self, cycle: Cycle, budget: int = 0) -> None:
        """Fire the events the messages at hand brought about, after sorting up to ``budget``
        of the region's keys: the keys sorted, a Handover back, the end of those messages."""
        machine = cycle.machine
        # Sorting runs from the cycle's start (while the markers come in) to the hand-over.
        sorting = not machine.reached(Phase.HANDING_OVER)
        if sorting and cycle.keys.sort(budget) and machine.phase is Phase.AWAITING_KEYS:
            self._act(cycle, machine.fire(Event.KEYS_SORTED))
        collect = cycle.collect
        if (
            machine.phase is Phase.HANDING_OVER
            and collect is not None
            and not collect.token.pending
        ):
            # That chunk is out of the region (one a turn: its token went through it).
            if cycle.chunks:
                self._act(cycle, machine.fire(Event.COLLECTED))
            elif self._upstream_released(cycle.version):
                self._act(cycle, machine.fire(Event.LAST_COLLECTED))
        if machine.phase is Phase.RELEASING:
            self._act(cycle, machine.fire(Event.SETTLE))

    def _upstream_released(self, version: int) -> bool:
        """Whether every distributor upstream on this worker ended rescale ``version`` here:
        until then one may still emit records its peers sent under the old configuration,
        and this distributor, routing by the new one, would send them to a worker that has
        every last transfer of this one and reads its pipe no more (a leaving worker's)."""
        return self.upstream_routers <= self._released_up.get(version, frozenset())

    def _act(self, cycle: Cycle, actions: tuple[Action, ...], transfer: Any = None) -> None:
        """Carry out a transition's ``actions`` (``transfer``: the Transfer that arrived)."""
        for action in actions:
            if action is Action.INTERROGATE:
                ask = cycle.keys.ask = Interrogate(Token(1), cycle.version)
                self.forward(ask)
            elif action is Action.SEND_MARKERS:
                marker = RescaleMarker(cycle.version, cycle.new, cycle.my_frontier)
                for w in cycle.peers:
                    self.exchange.send(w, self.name, marker)
                    self._remote_frontier.setdefault(w, None)
            elif action is Action.EMIT_AGREED_EPOCH:
                g = agreed_epoch(cycle, self.name)
                if g is not None and (self._out_frontier is None or g > self._out_frontier):
                    self._out_frontier = g
                    self._idle_out = False
                    self.emit_epoch(g)
            elif action is Action.HAND_OVER:
                collect = cycle.collect = cycle.next_collect()
                assert collect is not None
                self.forward(collect)
            elif action is Action.SHIP or action is Action.SHIP_LAST:
                collect = cycle.collect
                assert collect is not None
                last = action is Action.SHIP_LAST
                for w, msg in split_transfers(cycle, collect.collection, last=last):
                    self.exchange.send(w, self.name, msg)
                collect.collection = {}
                cycle.collect = None
            elif action is Action.ACQUIRE:
                self.forward(Acquire(Token(1), transfer.states))
            elif action is Action.RELEASE:
                self._finish_cycle(cycle)
            else:
                raise OperatorError(self.name, f"rescale: no such distributor action {action}")

    def _finish_cycle(self, cycle: Cycle) -> None:
        self.forward(Installed(Token(1), cycle.version))
        for b in cycle.held:
            self.emit(b)
        cycle.held.clear()
        self.forward(Released(Token(1), cycle.version, self.name))
        for v in [v for v in self._released_up if v <= cycle.version]:
            del self._released_up[v]
        self.placement = cycle.new_placement
        self._remote_frontier = {w: self._remote_frontier.get(w) for w in self.placement.remotes}
        self._done_version = cycle.version
        self._cycle = None
        self._emit_merged()

    def _route_new(self, batch: Batch, cycle: Cycle) -> None:
        """Local records after our Rescale: routed by the new worker set."""
        route = self._route_keys(batch)
        old = cycle.old_placement.owners(route)
        new = cycle.new_placement.owners(route)
        me = self.me
        mine: list[int] = []
        held: list[int] = []
        others: dict[int, list[int]] = {}
        for i, (o, n) in enumerate(zip(old, new)):
            if n == me:
                (mine if o == me else held).append(i)
            else:
                lst = others.get(n)
                if lst is None:
                    others[n] = [i]
                else:
                    lst.append(i)
        n_all = len(batch)
        if mine:
            self.emit(batch if len(mine) == n_all else batch.take(mine))
        if held:
            cycle.held.append(batch.take(held))
        for w, idx in others.items():
            self.exchange.send(w, self.name, batch if len(idx) == n_all else batch.take(idx))

    def _deliver_new(self, batch: Batch, cycle: Cycle) -> None:
        """A peer's record of the new configuration: ours, but held while its state moves."""
        old = cycle.old_placement.owners(self._route_keys(batch))
        me = self.me
        if all(o == me for o in old):
            self.emit(batch)
            return
        keep = [o == me for o in old]
        if any(keep):
            self.emit(batch.select(keep))
        cycle.held.append(batch.select([not k for k in keep]))

    def _route_keys(self, batch: Batch) -> Sequence[Any]:
        if self.part_of is None:
            return batch.keys
        try:
            return list(map(self.part_of, batch.keys))
        except Exception as e:
            raise user_error(self.name, e) from e
