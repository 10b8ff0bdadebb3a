"""The operators that drive sources and sinks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from time import monotonic
from typing import Any

from malstrom.engine.batch import Batch, make_record
from malstrom.engine.context import BuildContext
from malstrom.engine.messages import IDLE, Barrier, Control, Rescale, Select
from malstrom.engine.operator import Operator
from malstrom.engine.rescale_cycle import SOURCE_CYCLE, Action, Event, Phase, RescaleCycle
from malstrom.engine.user_code import user_error
from malstrom.errors import AttemptFenced, OperatorError
from malstrom.keyed._parts import part_owners
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators._part_reader import BATCH_SIZE, PartReader
from malstrom.sinks._protocols import RecordBatch, StatelessSinkImpl
from malstrom.sources._protocols import StatefulSource, StatelessSource
from malstrom.types import MAX, MIN

SOURCE_BATCH = 4 * BATCH_SIZE
"""A source's turn emits the records its parts gave as soon as they are this many (and the
rest at the end of the turn): one batch for many small part reads, bounded so that a batch's
columns stay cache-sized."""

__all__ = [
    "BATCH_SIZE",
    "SOURCE_BATCH",
    "EmptyRootOp",
    "PartDone",
    "PartMove",
    "PartsMoved",
    "SourceOp",
    "StatefulSinkOp",
    "StatelessSinkOp",
]


class EmptyRootOp(Operator):
    """The root of a stream that has no source: it ends at once."""

    is_source = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__("::empty")

    def poll(self, deadline: float) -> bool:
        if not self.ended:
            self.emit_epoch(MAX)
            return True
        return False


class PartDone:
    """To every peer: a source part finished (every worker ends when all parts have)."""

    __slots__ = ("part",)

    def __init__(self, part: Any) -> None:
        self.part = part

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartDone, (self.part,))


class PartMove:
    """A source part moving to the receiver (rescale), with its collected state and what its
    reader learnt about its speed (``PartReader.speed``)."""

    __slots__ = ("part", "speed", "state", "version")

    def __init__(self, version: int, part: Any, state: Any, speed: Any = None) -> None:
        self.version = version
        self.part = part
        self.state = state
        self.speed = speed

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartMove, (self.version, self.part, self.state, self.speed))


class PartsMoved:
    """To every old and new peer: all my parts that move have been sent; ``finished`` lists the
    parts I know to have finished (a new worker learns them here)."""

    __slots__ = ("finished", "version")

    def __init__(self, version: int, finished: frozenset[Any]) -> None:
        self.version = version
        self.finished = finished

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartsMoved, (self.version, self.finished))


@dataclass
class _PartsCycle:
    """A source's rescale: its :data:`~malstrom.engine.rescale_cycle.SOURCE_CYCLE` machine
    (which peers' PartsMoved arrived), the new worker set and the peers it exchanges with."""

    workers: tuple[int, ...]  # the new worker set
    peers: tuple[int, ...]  # every old and new worker but this one, in sending order
    machine: RescaleCycle


class SourceOp(Operator):
    """Builds the parts this worker owns and polls them.

    Parts are dealt out evenly: every worker reads ``n // w`` of the ``n`` parts or one more
    (:func:`~malstrom.keyed._parts.part_owners`; every worker lists the same parts).
    A worker with no unfinished part emits ``Epoch(IDLE)`` (it holds back no merged epoch);
    every worker emits ``Epoch(MAX)`` once every part of the source, on any worker, finished.
    On a rescale, parts whose owner changes are collected and rebuilt on their new worker: the
    source runs the tail of the distributors' rescale cycle (``SOURCE_CYCLE`` in
    :mod:`malstrom.engine.rescale_cycle`, which says why it needs no markers). Its parts move
    as :class:`PartMove` (TRANSFER), then :class:`PartsMoved` is its last message to every
    peer (LAST_TRANSFER).

    A source whose impl has ``relist_interval`` (seconds) grows while it runs: every worker
    calls ``list_parts()`` again at that interval and builds the new parts it owns (by
    rendezvous per part: workers learn new parts at different moments), with
    ``impl.new_part_state(part)`` as their state when the impl has it.
    Parts never shrink. A part built on no worker yet is built by its owner once a rescale
    completes, so a part listed during a rescale is not lost.
    """

    is_source = True

    def __init__(self, name: str, source: StatefulSource | StatelessSource, ctx: BuildContext):
        super().__init__(name)
        self.impl = source.impl
        self.stateful = source.stateful
        try:
            parts = list(self.impl.list_parts())
        except Exception as e:
            raise user_error(name, e) from e
        if len(set(parts)) != len(parts):
            raise OperatorError(name, f"list_parts() returned duplicate parts: {parts!r}")
        self.all_parts = parts
        self._known = set(parts)
        interval = getattr(self.impl, "relist_interval", None)
        self._relist_every: float | None = None if interval is None else float(interval)
        self._next_relist = time.monotonic() + (self._relist_every or 0.0)
        self.me = me = ctx.worker_id
        self.workers = tuple(ctx.worker_set)
        self.exchange: Any = ctx.exchange
        self.remotes = [w for w in self.workers if w != me]
        self.wants_schedule = self.exchange is not None or self._relist_every is not None
        self.finished: set[Any] = set()
        self._idle = False
        self._cycle: _PartsCycle | None = None
        self._done_version = -1
        # What peers sent before our own Rescale (they are ahead of us): it waits for it.
        self._early: list[tuple[int, PartMove | PartsMoved]] = []
        self._owners: dict[tuple[int, ...], dict[Any, int]] = {}
        mine = [p for p in parts if self._owner(p, self.workers) == me]
        restored = dict(ctx.restore_keyed(name, self._owner)) if self.stateful else {}
        self.parts: list[PartReader] = []
        restoring = ctx.restore is not None
        for p in mine:
            state = restored.get(p)
            if state is None and restoring:
                state = self._new_state(p)  # listed now, absent from the snapshot: new since
            self._add_part(p, state)

    def _owner(self, part: Any, workers: Sequence[int]) -> int:
        """The worker among ``workers`` that reads ``part``: dealt out evenly when the parts
        are fixed (:func:`~malstrom.keyed._parts.part_owners`), rendezvous per part when the
        source grows while it runs (or the part is not listed now)."""
        if self._relist_every is None:
            key = tuple(workers)
            table = self._owners.get(key)
            if table is None:
                table = self._owners[key] = part_owners(self.all_parts, key)
            w = table.get(part)
            if w is not None:
                return w
        return rendezvous_select(part, workers)

    def _new_state(self, part: Any) -> Any:
        """The state of a part that appeared after the job started (None: a fresh part)."""
        fn = getattr(self.impl, "new_part_state", None) if self.stateful else None
        if fn is None:
            return None
        try:
            return fn(part)
        except Exception as e:
            raise user_error(self.name, e) from e

    def _learn(self, part: Any) -> None:
        """A part another worker listed (or finished) before this one did."""
        if part not in self._known:
            self._known.add(part)
            self.all_parts.append(part)

    def _relist(self) -> None:
        """List the parts again; build the new ones this worker owns."""
        try:
            parts = list(self.impl.list_parts())
        except Exception as e:
            raise user_error(self.name, e) from e
        for p in parts:
            if p in self._known:
                continue
            self._learn(p)
            if self._owner(p, self.workers) == self.me:
                self._add_part(p, self._new_state(p))

    def _build_orphans(self) -> None:
        """After a rescale: build the listed parts this worker owns that no worker built
        (listed by some workers but not yet by their owner when ownership changed)."""
        held = {p.key for p in self.parts}
        for p in list(self.all_parts):
            mine = self._owner(p, self.workers) == self.me
            if mine and p not in held and p not in self.finished:
                self._add_part(p, self._new_state(p))

    def _add_part(self, key: Any, state: Any, speed: Any = None) -> None:
        if self._idle and not self.ended:
            # This worker told the job it was idle (no part): it says first that it no longer
            # is. Merged epochs leave an idle worker out, so without it peers could pass
            # epochs (or end the stream: a peer that has not listed this part yet) ahead of
            # the records this part brings. ``Epoch(MIN)`` promises nothing; it only brings
            # this worker back into the merges.
            self._idle = False
            self.emit_epoch(MIN)
        try:
            impl: Any = self.impl
            built = impl.build_part(key, state) if self.stateful else impl.build_part(key)
        except Exception as e:
            raise user_error(self.name, e) from e
        self.parts.append(PartReader(key, built, speed))

    def _add_moved(self, move: PartMove) -> None:
        """Start a part moved here by a rescale (an idle worker wakes first: see
        :meth:`_add_part`; every worker learns that a part finished straight from its reader,
        so peers would otherwise end the stream while this part's last records are still on
        their way, held in a queue behind a barrier, say)."""
        self._add_part(move.part, move.state, move.speed)

    def poll(self, deadline: float) -> bool:
        """Read every part once before ``deadline`` (``time.monotonic()``): all are asked for
        the same number of records, what fits each one's share of the time left (see
        ``PartReader``), so the parts advance alike and none runs ahead in event time."""
        if self.ended:
            return False
        parts = self.parts
        live = (
            [p for p in parts if not p.finished] if len(parts) != 1 or parts[0].finished else parts
        )
        count = active = len(live)
        produced = False
        # The parts' records of this turn leave together, in batches of SOURCE_BATCH records
        # or more: with many parts, a batch per part is a few dozen records, and every
        # operator downstream (and every pipe to a peer, once a distributor splits it) pays
        # its per-batch cost per part.
        reads: list[tuple[Any, Any, Any]] = []
        pending = 0
        if count:
            now = monotonic()
            share = (deadline - now) / count
            n = BATCH_SIZE
            for p in live:
                want = p.want(share)
                if want < n:
                    n = want
            for i, p in enumerate(live):
                if i:
                    now = monotonic()
                try:
                    values, stamps = p.read(n, now + (deadline - now) / (count - i))
                    finished = p.part.is_finished()
                except Exception as e:
                    raise OperatorError(
                        self.name, f"source part {p.key!r} failed: {type(e).__name__}: {e}"
                    ) from e
                if values:
                    produced = True
                    reads.append((p.key, values, stamps))
                    pending += len(values)
                    if pending >= SOURCE_BATCH:
                        self.emit(_one_batch(reads))
                        reads = []
                        pending = 0
                if finished:
                    p.finished = True
                    active -= 1
                    self._part_done(p.key)
        if reads:
            self.emit(_one_batch(reads))
        if self._all_done():
            self.emit_epoch(MAX)
            return True
        if not active and not self._idle:
            self._idle = True
            self.emit_epoch(IDLE)
            return True
        return produced

    def _all_done(self) -> bool:
        """Whether every part of the source, on every worker, finished."""
        return len(self.finished) >= len(self.all_parts) and self.finished >= self._known

    def _part_done(self, key: Any) -> None:
        if key in self.finished:
            return
        self.finished.add(key)
        for w in self._peers():
            self.exchange.send(w, self.name, PartDone(key))

    def _peers(self) -> Sequence[int]:
        return self._cycle.peers if self._cycle is not None else self.remotes

    def wake_at(self, now: float) -> float | None:
        if self.ended:
            return None
        if self._cycle is not None or self._all_done():
            # All done: the last part to finish was a peer's, learnt by schedule() after this
            # turn's poll(); the next poll ends the stream (a sleeping worker would end it a
            # heartbeat later, and with it the job).
            return now
        # Parts are polled: only they know when they may have records. A part may say
        # (``wake_in()``: seconds, None: unknown), else the worker keeps polling it.
        wake = self._next_relist if self._relist_every is not None else None
        for p in self.parts:
            if p.finished:
                continue
            hint = getattr(p.part, "wake_in", None)
            try:
                t = None if hint is None else hint()
            except Exception as e:
                raise user_error(self.name, e) from e
            if t is None:
                return now
            if wake is None or now + t < wake:
                wake = now + t
        return wake  # None: peers' messages (a part done or moved) wake the worker

    def schedule(self) -> None:
        every = self._relist_every
        if every is not None and self._cycle is None and not self.ended:
            now = time.monotonic()
            if now >= self._next_relist:
                self._next_relist = now + every
                self._relist()
        if self.exchange is None:
            return
        recv = self.exchange.recv
        name = self.name
        for w in self._peers():
            while (msg := recv(w, name)) is not None:
                t = type(msg)
                if t is PartDone:
                    self._learn(msg.part)
                    self.finished.add(msg.part)
                elif t is PartMove:
                    self._learn(msg.part)
                    self._from_peer(w, msg)
                elif t is PartsMoved:
                    for part in msg.finished:
                        self._learn(part)
                    self.finished |= msg.finished
                    self._from_peer(w, msg)
                else:
                    raise OperatorError(name, f"unexpected message from worker {w}: {msg!r}")
        cycle = self._cycle
        if cycle is not None and cycle.machine.phase is Phase.RELEASING:
            self._act(cycle, cycle.machine.fire(Event.SETTLE))

    def _from_peer(self, peer: int, msg: PartMove | PartsMoved) -> None:
        """A peer's moved part or last message of a rescale."""
        cycle = self._cycle
        if cycle is None:
            if msg.version <= self._done_version:
                raise OperatorError(
                    self.name, f"worker {peer} moved its parts for an unknown rescale"
                )
            # Before our own Rescale: a moved part's records must follow the new
            # configuration downstream, so the part starts once that passed.
            self._early.append((peer, msg))
            return
        if msg.version != cycle.machine.version:
            raise OperatorError(
                self.name,
                f"worker {peer} moved its parts for rescale {msg.version} "
                f"during rescale {cycle.machine.version}",
            )
        event = Event.TRANSFER if type(msg) is PartMove else Event.LAST_TRANSFER
        self._act(cycle, cycle.machine.fire(event, peer), msg)

    def on_control(self, msg: Control) -> None:
        if type(msg) is Rescale:
            assert isinstance(msg, Rescale)
            self._on_rescale(msg)
        self.forward(msg)

    def _on_rescale(self, msg: Rescale) -> None:
        if self.exchange is None:
            raise OperatorError(self.name, "cannot rescale: this runtime has no exchange")
        if self._cycle is not None:
            raise OperatorError(
                self.name,
                f"rescale to configuration {msg.version} "
                f"while {self._cycle.machine.version} is running",
            )
        me, new = self.me, tuple(msg.workers)
        peers = tuple(sorted((set(self.workers) | set(new)) - {me}))
        machine = RescaleCycle(SOURCE_CYCLE, self.name, msg.version, peers)
        cycle = self._cycle = _PartsCycle(new, peers, machine)
        self._act(cycle, machine.fire(Event.RESCALE))
        early, self._early = self._early, []
        for w, m in early:  # in the order they came
            self._from_peer(w, m)

    def _act(self, cycle: _PartsCycle, actions: tuple[Action, ...], msg: Any = None) -> None:
        """Carry out a transition's ``actions`` (``msg``: the peer's message that fired it)."""
        for action in actions:
            if action is Action.SHIP_LAST:
                self._ship(cycle)
            elif action is Action.ACQUIRE:
                self._add_moved(msg)
            elif action is Action.RELEASE:
                self.workers = cycle.workers
                self.remotes = [w for w in cycle.workers if w != self.me]
                self._done_version = cycle.machine.version
                self._cycle = None
                if self._relist_every is not None:
                    self._build_orphans()
            else:
                raise OperatorError(self.name, f"rescale: no such source action {action}")

    def _ship(self, cycle: _PartsCycle) -> None:
        """Collect the parts whose owner changes and send them to it; then PartsMoved (the
        last message of the rescale) to every peer."""
        me, new, version = self.me, cycle.workers, cycle.machine.version
        staying: list[PartReader] = []
        for p in self.parts:
            dest = self._owner(p.key, new)
            if dest == me:
                staying.append(p)
                continue
            state = None
            if self.stateful:
                fn = getattr(p.part, "collect", None) or p.part.snapshot
                try:
                    state = fn()
                except Exception as e:
                    raise user_error(self.name, e) from e
            self.exchange.send(dest, self.name, PartMove(version, p.key, state, p.speed()))
        self.parts = staying
        done = PartsMoved(version, frozenset(self.finished))
        for w in cycle.peers:
            self.exchange.send(w, self.name, done)

    def rescale_done(self, version: int) -> bool:
        return self._done_version >= version

    def snapshot(self, writer: Any) -> None:
        if self.stateful:
            states = {}
            for p in self.parts:
                try:
                    states[p.key] = p.part.snapshot()
                except Exception as e:
                    raise user_error(self.name, e) from e
            writer.put_keyed(self.name, states)


class StatelessSinkOp(Operator):
    def __init__(self, name: str, impl: StatelessSinkImpl, ctx: BuildContext) -> None:
        super().__init__(name)
        self.impl = impl
        self.batch_fn = getattr(impl, "sink_batch", None)
        self._fence = ctx.fence

    def on_batch(self, batch: Batch, port: int) -> None:
        self._fence()  # nothing of an attempt that is over reaches the sink
        rec = None
        try:
            if self.batch_fn is not None:
                self.batch_fn(RecordBatch(batch.keys, batch.values, batch.timestamps))
            else:
                sink = self.impl.sink
                for rec in batch.iter_records():
                    sink(rec)
        except Exception as e:
            raise user_error(self.name, e, rec) from e

    def on_epoch(self, ts: Any) -> None:
        if ts is MAX:
            self.ended = True


class StatefulSinkOp(Operator):
    """Routes each record to its part (``assign_part(key)``); parts snapshot and restore.

    A part's records of one batch go to its ``sink_batch(records)`` when it has one (a
    :class:`RecordBatch`), else to ``sink(record)`` one by one.
    """

    def __init__(self, name: str, impl: Any, ctx: BuildContext) -> None:
        super().__init__(name)
        self.impl = impl
        self.parts: dict[Any, Any] = {}
        self._assigned: dict[Any, Any] = {}
        self.migrates = True
        self._fence = ctx.fence
        for hook, arg in (("bind_operator", name), ("begin_attempt", ctx.attempt)):
            # bind_operator: a base for stable external ids (Kafka transactional ids);
            # begin_attempt: lets a sink fence writers of older attempts.
            fn = getattr(impl, hook, None)
            if fn is None:
                continue
            try:
                fn(arg)
            except Exception as e:
                raise user_error(name, e) from e
        # Restore eagerly, so a part can roll back output written after its snapshot even if
        # no record for it ever arrives again.
        for part, state in ctx.restore_keyed(name, rendezvous_select):
            self.parts[part] = self._build(part, state)

    def _build(self, part: Any, state: Any) -> Any:
        try:
            return self.impl.build_part(part, state)
        except Exception as e:
            raise OperatorError(
                self.name, f"building sink part {part!r} failed: {type(e).__name__}: {e}"
            ) from e

    def on_batch(self, batch: Batch, port: int) -> None:
        self._fence()  # nothing of an attempt that is over reaches the sink
        keys = batch.keys
        assigned = self._assigned
        owners = list(map(assigned.get, keys))
        if None in owners:
            assign = self.impl.assign_part
            k = None
            try:
                for i, k in enumerate(keys):
                    if owners[i] is None:
                        part = assigned.get(k)
                        if part is None:
                            part = assigned[k] = assign(k)
                        owners[i] = part
            except Exception as e:
                raise user_error(self.name, e, batch.record(keys.index(k))) from e
        first = owners[0]
        if owners.count(first) == len(owners):  # one part takes the whole batch (common)
            self._write(first, batch.keys, batch.values, batch.timestamps)
        else:
            groups: dict[Any, list[int]] = {}
            for i, part in enumerate(owners):
                g = groups.get(part)
                if g is None:
                    groups[part] = [i]
                else:
                    g.append(i)
            for part, idx in groups.items():
                b = batch.take(idx)
                self._write(part, b.keys, b.values, b.timestamps)
        if len(assigned) > 100_000:
            assigned.clear()

    def _write(self, part: Any, keys: Any, values: Any, stamps: Any) -> None:
        """Hand one part its records: ``sink_batch`` when the part has it, else one by one."""
        p = self.parts.get(part)
        if p is None:
            p = self.parts[part] = self._build(part, None)
        sink_batch = getattr(p, "sink_batch", None)
        if sink_batch is not None:
            try:
                sink_batch(RecordBatch(keys, values, stamps))
            except (OperatorError, AttemptFenced):
                raise
            except Exception as e:
                raise user_error(self.name, e) from e
            return
        sink = p.sink
        rec = None
        try:
            for rec in map(make_record, zip(keys, values, stamps)):
                sink(rec)
        except (OperatorError, AttemptFenced):
            raise
        except Exception as e:
            raise user_error(self.name, e, rec) from e

    def on_epoch(self, ts: Any) -> None:
        if ts is MAX:
            self.ended = True

    def held_keys(self, into: set[Any]) -> None:
        into.update(self.parts)

    def extract(self, select: Select) -> dict[Any, Any]:
        self._fence()
        out = {}
        for part in select(self.parts.keys()):
            p = self.parts.pop(part)
            fn = getattr(p, "collect", None) or p.snapshot
            try:
                out[part] = fn()
            except AttemptFenced:
                raise
            except Exception as e:
                raise user_error(self.name, e) from e
        return out

    def install(self, states: dict[Any, Any]) -> None:
        for part, state in states.items():
            self.parts[part] = self._build(part, state)

    def on_barrier(self, barrier: Barrier) -> None:
        self._fence()  # parts flush at snapshots
        states = {}
        for key, p in self.parts.items():
            try:
                states[key] = p.snapshot()
            except AttemptFenced:
                raise
            except Exception as e:
                raise user_error(self.name, e) from e
        barrier.writer.put_keyed(self.name, states)
        self.forward(barrier)

    def on_committed(self, version: int) -> None:
        for p in self.parts.values():
            commit = getattr(p, "commit", None)
            if commit is not None:
                try:
                    commit(version)
                except Exception as e:
                    raise user_error(self.name, e) from e

    def discard(self) -> None:
        parts, self.parts = self.parts, {}
        for p in parts.values():
            abort = getattr(p, "abort", None)
            if abort is not None:
                abort()


def _one_batch(reads: list[tuple[Any, Any, Any]]) -> Batch:
    """One batch of the records read from several parts, part after part (each record keyed
    by its part)."""
    if len(reads) == 1:
        key, vals, ts = reads[0]
        return Batch(list(repeat(key, len(vals))), vals, ts)
    keys: list[Any] = []
    values: list[Any] = []
    stamps: list[Any] = []
    for key, vals, ts in reads:
        keys.extend(repeat(key, len(vals)))
        values.extend(vals)
        stamps.extend(ts)
    return Batch(keys, values, stamps)
