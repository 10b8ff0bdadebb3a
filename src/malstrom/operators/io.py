"""The operators that drive sources and sinks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from time import monotonic
from typing import Any

from malstrom._errors import OperatorError
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators._util import user_error
from malstrom.runtime._engine import (
    IDLE,
    Barrier,
    Batch,
    BuildContext,
    Control,
    Operator,
    Rescale,
    Select,
    make_record,
)
from malstrom.sinks._protocols import RecordBatch, StatelessSinkImpl
from malstrom.sources._protocols import StatefulSource, StatelessSource
from malstrom.types import MAX

__all__ = [
    "BATCH_SIZE",
    "LONG_POLLS",
    "POLL_STRIDE",
    "EmptyRootOp",
    "PartDone",
    "PartMove",
    "PartsMoved",
    "SourceOp",
    "StatefulSinkOp",
    "StatelessSinkOp",
]

BATCH_SIZE = 2048
"""Records a source part may produce per turn: large enough to amortize per-batch costs."""

POLL_STRIDE = 64
"""Most ``poll()`` calls between two looks at the clock. Reading the clock costs about as much
as a fast ``poll()``, so a part whose polls are fast looks only every so many polls; a part
whose polls block (a run of polls took over :data:`LONG_POLLS` seconds) looks after every
poll, and its stride grows back (doubling per turn) once its polls are fast again."""

LONG_POLLS = 0.001
"""A run of polls taking longer than this (seconds) means the part blocks."""


class EmptyRootOp(Operator):
    """The root of a stream that has no source: it ends at once."""

    is_source = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__("::empty")

    def poll(self, deadline: float) -> bool:
        if not self.done:
            self.emit_epoch(MAX)
            return True
        return False


def _fit(n: int, cost: float, left: float) -> int:
    """How many of ``n`` polls to make when one takes ``cost`` s and ``left`` s remain."""
    if cost * n <= left:
        return n
    if left <= 0:
        return 1  # the first read of a part in a turn always runs (progress)
    return max(1, int(left / cost))


_TOP = BATCH_SIZE.bit_length() - 1  # uninterruptible reads ask for 2**b records, b <= _TOP
_INF = float("inf")


def _concat(values: Any, stamps: Any, more: Any, more_stamps: Any) -> tuple[Any, Any]:
    """Two column reads as one: lists joined, consecutive ranges (line numbers) merged."""
    if type(values) is not list:
        values = list(values)
    values.extend(more)
    if type(stamps) is range and type(more_stamps) is range and stamps.stop == more_stamps.start:
        return values, range(stamps.start, more_stamps.stop)
    stamps = list(stamps)
    stamps.extend(more_stamps)
    return values, stamps


class _ReadSizer:
    """How many records an uninterruptible read (``poll_batch(n)``, the built-ins' column
    reads) asks for, so that it ends about when the turn's time does.

    It remembers how long recent calls took per size (powers of two; the median of the last 3,
    so one call slowed by the machine changes nothing, but a call that overran by far counts at
    once) and asks for the largest size expected to fit the time left. A call that costs the
    same whatever it asks for (one request to a slow API) is allowed twice the time of the
    cheapest call seen: asking for fewer records would not make it shorter. Sizes above the
    current one are tried again once their memory has faded (2% per call), a size never tried
    only when the one below takes at most 3/4 of the time, so the size grows back one doubling
    per call once reads are fast; full batches that take under a quarter of the time left skip
    all this. A new part's first call asks for one record.
    """

    __slots__ = ("b", "est", "fastest", "seen")

    def __init__(self) -> None:
        self.b = 0
        self.est = [_INF] * (_TOP + 1)  # expected seconds of a call, per size
        self.fastest = [_INF] * (_TOP + 1)  # the fastest recent call, per size
        self.seen: list[list[float]] = [[] for _ in range(_TOP + 1)]

    def pick(self, left: float, first: bool) -> int:
        """The size (as ``b``: ``2**b`` records) to ask for when ``left`` seconds remain, or
        -1 if nothing is expected to fit and this is not the turn's ``first`` call."""
        est = self.est
        b = self.b
        allowed = left
        if first:
            floor = 2 * min(self.fastest)  # what any call costs, at least (inf: none yet)
            if floor != _INF and floor > allowed:
                allowed = floor
        while b and est[b] > allowed:
            b -= 1
        if not first and est[b] > allowed:
            return -1
        while b < _TOP:
            up = est[b + 1]
            if up == _INF:
                if est[b] <= 0.75 * allowed:
                    b += 1
                break
            if up > allowed:
                break
            b += 1
        for i in range(b + 1, _TOP + 1):
            if est[i] != _INF:
                est[i] *= 0.98
        self.b = b
        return b

    def learn(self, b: int, took: float, left: float) -> None:
        """A call of size ``b`` took ``took`` seconds when ``left`` remained."""
        seen = self.seen[b]
        seen.append(took)
        if len(seen) > 3:
            del seen[0]
        mid = sorted(seen)[len(seen) // 2]
        if took > 4 * max(left, mid):
            mid = took  # overran by far: no waiting for a second opinion
        self.est[b] = mid
        self.fastest[b] = min(seen)


class _Part:
    """A built partition and how to read it within a turn's deadline.

    Reads never look at the clock per record. ``poll_batch(n)`` is called once per turn, with
    ``n`` from a :class:`_ReadSizer` so that the call ends about when the turn's time does.
    The built-ins' column reads are called until the turn's time or :data:`BATCH_SIZE`
    records are used up (sized the same way), and what they return forms one batch.
    ``poll()`` parts are polled in strides with a look at the clock after each (see
    :data:`POLL_STRIDE`).
    """

    __slots__ = ("columns", "cost", "fetch", "finished", "key", "part", "poll", "sizer", "stride")

    def __init__(self, key: Any, part: Any) -> None:
        self.key = key
        self.part = part
        self.finished = False
        self.sizer = _ReadSizer()
        self.cost = _INF  # poll() parts: seconds per poll (unknown: one poll first)
        self.stride = POLL_STRIDE
        self.poll: Any = None
        self.columns = False
        cols = getattr(part, "_poll_columns", None)
        if cols is not None:
            self.fetch = cols
            self.columns = True
        elif hasattr(part, "poll_batch"):
            self.fetch = self._via_batch
        else:
            self.fetch = None
            self.poll = part.poll

    def read(self, deadline: float) -> tuple[Any, Any]:
        """``(values, timestamps)`` read before ``deadline``: at most :data:`BATCH_SIZE`
        records, from one call at least (even if the deadline has passed)."""
        fetch = self.fetch
        if fetch is None:
            return self._read_polls(deadline)
        sizer = self.sizer
        now = monotonic()
        left = deadline - now
        fast = sizer.est[_TOP] * 4 < left and sizer.b == _TOP
        if fast:  # full batches, far inside the budget: nothing to decide
            values, stamps = fetch(BATCH_SIZE)
            t = monotonic()
            if (t - now) * 4 < left:
                return values, stamps
            b, n = _TOP, BATCH_SIZE
        else:
            b = sizer.pick(left, True)
            n = 1 << b
            values, stamps = fetch(n)
            t = monotonic()
        sizer.learn(b, t - now, left)
        if not self.columns:
            return values, stamps
        got = len(values)
        # A short read means the part has nothing more now; a full one that came faster than
        # expected leaves time for more of the same batch.
        full = got == n
        while full and got < BATCH_SIZE and t < deadline:
            now = t
            left = deadline - now
            b = sizer.pick(left, False)
            if b < 0:
                break
            n = min(1 << b, BATCH_SIZE - got)
            more, more_stamps = fetch(n)
            t = monotonic()
            sizer.learn(b, t - now, left)
            k = len(more)
            if k:
                values, stamps = _concat(values, stamps, more, more_stamps)
                got += k
            full = k == n
        return values, stamps

    def _read_polls(self, deadline: float) -> tuple[list[Any], list[Any]]:
        poll = self.poll
        values: list[Any] = []
        stamps: list[Any] = []
        add_value = values.append
        add_stamp = stamps.append
        if self.stride < POLL_STRIDE:
            self.stride *= 2
        now = monotonic()
        while True:
            got = len(values)
            n = _fit(min(self.stride, BATCH_SIZE - got), self.cost, deadline - now)
            for _ in range(n):
                item = poll()
                if item is None:
                    break
                add_value(item[0])
                add_stamp(item[1])
            t = monotonic()
            k = len(values) - got
            self.cost = (t - now) / (k or 1)
            if t - now > LONG_POLLS:
                # Something blocked: a fast run can be followed by a poll that blocks, so
                # look at the clock after every poll for a while.
                self.stride = 1
            if k < n or got + k >= BATCH_SIZE or t >= deadline:
                return values, stamps
            now = t

    def _via_batch(self, n: int) -> tuple[Any, Any]:
        items = self.part.poll_batch(n)
        if not items:
            return (), ()
        return [i[0] for i in items], [i[1] for i in items]


class PartDone:
    """To every peer: a source part finished (every worker ends when all parts have)."""

    __slots__ = ("part",)

    def __init__(self, part: Any) -> None:
        self.part = part

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartDone, (self.part,))


class PartMove:
    """A source part moving to the receiver (rescale), with its collected state."""

    __slots__ = ("part", "state", "version")

    def __init__(self, version: int, part: Any, state: Any) -> None:
        self.version = version
        self.part = part
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartMove, (self.version, self.part, self.state))


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
    """A source's progress through one rescale: which peers have sent their moved parts."""

    version: int
    workers: tuple[int, ...]  # the new worker set
    peers: tuple[int, ...]  # every old and new worker but this one
    moved: set[int]  # peers whose PartsMoved arrived


class SourceOp(Operator):
    """Builds the parts this worker owns and polls them.

    A worker with no unfinished part emits ``Epoch(IDLE)`` (it holds back no merged epoch);
    every worker emits ``Epoch(MAX)`` once every part of the source, on any worker, finished.
    On a rescale, parts whose owner changes are collected and rebuilt on their new worker.
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
        self.me = me = ctx.worker_id
        self.workers = tuple(ctx.worker_set)
        self.exchange: Any = ctx.services.get("exchange")
        self.remotes = [w for w in self.workers if w != me]
        self.wants_schedule = self.exchange is not None
        self.finished: set[Any] = set()
        self._idle = False
        self._cycle: _PartsCycle | None = None
        self._done_version = -1
        self._early: set[tuple[int, int]] = set()
        self._first = 0  # the part read first in the next turn (the one time ran out at)
        mine = [p for p in parts if rendezvous_select(p, self.workers) == me]
        restored = dict(ctx.restore_keyed(name, rendezvous_select)) if self.stateful else {}
        self.parts: list[_Part] = []
        for p in mine:
            self._add_part(p, restored.get(p))

    def _add_part(self, key: Any, state: Any) -> None:
        try:
            impl: Any = self.impl
            built = impl.build_part(key, state) if self.stateful else impl.build_part(key)
        except Exception as e:
            raise user_error(self.name, e) from e
        self.parts.append(_Part(key, built))

    def poll(self, deadline: float) -> bool:
        """Read the parts in turn until ``deadline`` (``time.monotonic()``); a turn that runs
        out of time leaves the remaining parts for the next, which starts with them."""
        if self.done:
            return False
        produced = False
        active = 0
        parts = self.parts
        first = self._first
        if first >= len(parts):
            first = 0
        order = parts if not first else parts[first:] + parts[:first]
        out_of_time = False
        for i, p in enumerate(order):
            if p.finished:
                continue
            if out_of_time or monotonic() >= deadline:
                if not out_of_time:
                    out_of_time = True
                    self._first = (first + i) % len(parts)
                active += 1
                continue
            try:
                values, stamps = p.read(deadline)
                finished = p.part.is_finished()
            except Exception as e:
                raise OperatorError(
                    self.name, f"source part {p.key!r} failed: {type(e).__name__}: {e}"
                ) from e
            if values:
                produced = True
                self._idle = False
                self.emit(Batch(list(repeat(p.key, len(values))), values, stamps))
            if finished:
                p.finished = True
                self._part_done(p.key)
            else:
                active += 1
        if len(self.finished) == len(self.all_parts):
            self.emit_epoch(MAX)
            return True
        if not active and not self._idle:
            self._idle = True
            self.emit_epoch(IDLE)
            return True
        return produced or out_of_time  # parts left unread: not an idle turn

    def _part_done(self, key: Any) -> None:
        if key in self.finished:
            return
        self.finished.add(key)
        for w in self._peers():
            self.exchange.send(w, self.name, PartDone(key))

    def _peers(self) -> Sequence[int]:
        return self._cycle.peers if self._cycle is not None else self.remotes

    def schedule(self) -> None:
        recv = self.exchange.recv
        name = self.name
        for w in self._peers():
            while (msg := recv(w, name)) is not None:
                t = type(msg)
                if t is PartDone:
                    self.finished.add(msg.part)
                elif t is PartMove:
                    self._add_part(msg.part, msg.state)
                elif t is PartsMoved:
                    self.finished |= msg.finished
                    if self._cycle is not None and self._cycle.version == msg.version:
                        self._cycle.moved.add(w)
                    elif msg.version > self._done_version:
                        self._early.add((msg.version, w))  # a peer ahead of our own Rescale
                    else:
                        raise OperatorError(
                            name, f"worker {w} moved its parts for an unknown rescale"
                        )
                else:
                    raise OperatorError(name, f"unexpected message from worker {w}: {msg!r}")
        cycle = self._cycle
        if cycle is not None and len(cycle.moved) == len(cycle.peers):
            self.workers = cycle.workers
            self.remotes = [w for w in cycle.workers if w != self.me]
            self._done_version = cycle.version
            self._cycle = None

    def on_control(self, msg: Control) -> None:
        if type(msg) is Rescale:
            assert isinstance(msg, Rescale)
            self._on_rescale(msg)
        self.forward(msg)

    def _on_rescale(self, msg: Rescale) -> None:
        if self.exchange is None:
            raise OperatorError(self.name, "cannot rescale: this runtime has no exchange")
        me, new = self.me, tuple(msg.workers)
        peers = tuple(sorted((set(self.workers) | set(new)) - {me}))
        early = {w for v, w in self._early if v == msg.version}
        self._cycle = _PartsCycle(msg.version, new, peers, early)
        self._early.clear()
        staying: list[_Part] = []
        for p in self.parts:
            dest = rendezvous_select(p.key, new)
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
            self.exchange.send(dest, self.name, PartMove(msg.version, p.key, state))
        self.parts = staying
        done = PartsMoved(msg.version, frozenset(self.finished))
        for w in peers:
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
    def __init__(self, name: str, impl: StatelessSinkImpl) -> None:
        super().__init__(name)
        self.impl = impl
        self.batch_fn = getattr(impl, "sink_batch", None)

    def on_batch(self, batch: Batch, port: int) -> None:
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
            self.done = True


class StatefulSinkOp(Operator):
    """Routes each record to its part (``assign_part(key)``); parts snapshot and restore."""

    def __init__(self, name: str, impl: Any, ctx: BuildContext) -> None:
        super().__init__(name)
        self.impl = impl
        self.parts: dict[Any, Any] = {}
        self._assigned: dict[Any, Any] = {}
        self.migrates = True
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
        parts = self.parts
        assigned = self._assigned
        assign = self.impl.assign_part
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                part = assigned.get(k)
                if part is None:
                    part = assigned[k] = assign(k)
                p = parts.get(part)
                if p is None:
                    p = parts[part] = self._build(part, None)
                p.sink(make_record((k, v, t)))
        except OperatorError:
            raise
        except Exception as e:
            raise user_error(self.name, e, make_record((k, v, t))) from e
        if len(assigned) > 100_000:
            assigned.clear()

    def on_epoch(self, ts: Any) -> None:
        if ts is MAX:
            self.done = True

    def held_keys(self, into: set[Any]) -> None:
        into.update(self.parts)

    def extract(self, select: Select) -> dict[Any, Any]:
        out = {}
        for part in select(self.parts.keys()):
            p = self.parts.pop(part)
            fn = getattr(p, "collect", None) or p.snapshot
            try:
                out[part] = fn()
            except Exception as e:
                raise user_error(self.name, e) from e
        return out

    def install(self, states: dict[Any, Any]) -> None:
        for part, state in states.items():
            self.parts[part] = self._build(part, state)

    def on_barrier(self, barrier: Barrier) -> None:
        states = {}
        for key, p in self.parts.items():
            try:
                states[key] = p.snapshot()
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
