"""Keyed-state operators: stateful_map, stateful_op and ttl_map.

State lives in one dict per operator per worker, keyed by the record key. At a barrier the
whole map is written to the snapshot addressable by (operator, key); on restore each worker
loads the keys its partitioner assigns to it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from itertools import count
from typing import Any, Generic, NamedTuple, TypeVar

from malstrom.engine.batch import Batch, make_record
from malstrom.engine.context import BuildContext
from malstrom.engine.messages import Select
from malstrom.engine.operator import Operator
from malstrom.engine.user_code import user_error
from malstrom.errors import OperatorError
from malstrom.operators.output import Output
from malstrom.types import Partitioner, Record

__all__ = ["ExpireMap", "StatefulLogic", "StatefulMapOp", "StatefulOpOp", "TtlMapOp"]

K = TypeVar("K")
V = TypeVar("V")
S = TypeVar("S")
VO = TypeVar("VO")

Owner = Partitioner | None


class _KeyedStateOp(Operator):
    """Holds ``states`` and takes part in snapshots and restores."""

    def __init__(self, name: str, ctx: BuildContext, owner: Owner) -> None:
        super().__init__(name)
        self.states: dict[Any, Any] = dict(ctx.restore_keyed(name, owner))
        self.migrates = owner is not None

    def snapshot(self, writer: Any) -> None:
        writer.put_keyed(self.name, self.states)

    def held_keys(self, into: set[Any]) -> None:
        into.update(self.states)

    def extract(self, select: Select) -> dict[Any, Any]:
        states = self.states
        return {k: states.pop(k) for k in select(states.keys())}

    def install(self, states: dict[Any, Any]) -> None:
        self.states.update(states)


class StatefulMapOp(_KeyedStateOp):
    def __init__(
        self,
        name: str,
        fn: Callable[[Any, Any, Any], tuple[Any, Any]],
        initial: Callable[[], Any] | None,
        ctx: BuildContext,
        owner: Owner,
    ) -> None:
        super().__init__(name, ctx, owner)
        self.fn = fn
        self.initial = initial

    def on_batch(self, batch: Batch, port: int) -> None:
        states = self.states
        get = states.get
        pop = states.pop
        fn = self.fn
        initial = self.initial
        missing = _MISSING
        out: list[Any] = []
        append = out.append
        k = v = None
        try:
            for k, v in zip(batch.keys, batch.values):
                s = get(k, missing)
                if s is missing:
                    s = initial() if initial is not None else None
                o, s = fn(k, v, s)
                if s is None:
                    pop(k, None)
                else:
                    states[k] = s
                append(o)
        except Exception as e:
            rec = batch.record(len(out)) if len(out) < len(batch) else make_record((k, v, None))
            raise user_error(self.name, e, rec) from e
        self.emit(Batch(batch.keys, out, batch.timestamps))


_MISSING: Any = object()


class StatefulLogic(Generic[K, V, S, VO]):
    """Base class for custom keyed operators (``stream.stateful_op(name, logic)``).

    ``on_data`` receives the record and its key's state (``initial_state()`` when absent) and
    returns the new state; returning ``None`` deletes the key's state. ``on_epoch`` sees every
    key's state and runs before the epoch is forwarded. ``on_schedule`` runs every worker loop
    turn.
    """

    def initial_state(self) -> S | None:
        """State given to ``on_data`` for a key that has none."""
        return None

    def on_data(self, record: Record, state: S | None, output: Output[VO]) -> S | None:
        """Handle one record of ``record.key``; return that key's new state (None deletes it)."""
        raise NotImplementedError

    def on_epoch(self, epoch: Any, states: MutableMapping[K, S], output: Output[VO]) -> None:
        """Called for every epoch (strictly increasing, ``MAX`` last)."""

    def on_schedule(self, states: MutableMapping[K, S], output: Output[VO]) -> None:
        """Called once per worker loop turn, idle or not."""

    def on_timer(self, timestamp: Any, key: K, state: S | None, output: Output[VO]) -> S | None:
        """A timer ``key`` set with ``output.set_timer(timestamp)`` fired: an epoch reached
        ``timestamp``. Receives the key's state (``initial_state()`` when absent) and returns
        its new state (None deletes it). Optional.

        Timers fire in the order of their timestamps, before ``on_epoch`` sees that epoch; a
        timer set here at or below the epoch fires in the same epoch. ``output.emit`` defaults
        to the key and ``timestamp``. Timers belong to their key's state: only the keys
        whose timers fire are visited, where an ``on_epoch`` scan visits every key."""
        return state


def _overrides(logic: object, name: str) -> bool:
    return getattr(type(logic), name, None) is not getattr(StatefulLogic, name)


class _Timed(NamedTuple):
    """A key's state with its pending timers, as snapshots and rescales carry a key that has
    timers (keys without timers carry their state alone)."""

    state: Any
    timers: tuple[Any, ...]


class StatefulOpOp(_KeyedStateOp):
    hooks_on_epoch = True

    def __init__(
        self, name: str, logic: StatefulLogic[Any, Any, Any, Any], ctx: BuildContext, owner: Owner
    ) -> None:
        super().__init__(name, ctx, owner)
        self.logic = logic
        self.output: Output[Any] = Output(name)
        self.has_epoch = _overrides(logic, "on_epoch")
        self.wants_schedule = _overrides(logic, "on_schedule")
        self.has_timers = _overrides(logic, "on_timer")
        # Pending timers per key (the truth), and a heap of (timestamp, seq, key) to find
        # those due: an entry whose timer is gone (fired, or its key moved away) is skipped.
        self.timers: dict[Any, set[Any]] = {}
        self._heap: list[tuple[Any, int, Any]] = []
        self._seq = count()
        if self.has_timers:
            self.output._set_timer = self._add_timer
            self._unpack(self.states)

    def forwards_idle(self) -> bool:
        # A user on_epoch or on_timer may emit when time moves on.
        return not (self.has_epoch or self.has_timers)

    # ----- timers ----------------------------------------------------------------------
    def _add_timer(self, key: Any, ts: Any) -> None:
        pending = self.timers.get(key)
        if pending is None:
            self.timers[key] = {ts}
        elif ts in pending:
            return
        else:
            pending.add(ts)
        try:
            heapq.heappush(self._heap, (ts, next(self._seq), key))
        except TypeError as e:
            pending = self.timers[key]
            pending.discard(ts)
            if not pending:
                del self.timers[key]
            raise OperatorError(
                self.name, f"timer at {ts!r} cannot be compared with the other timers ({e})"
            ) from e

    def _unpack(self, states: dict[Any, Any]) -> None:
        """Split restored or moved ``_Timed`` entries into state and timers."""
        for k in [k for k, v in states.items() if type(v) is _Timed]:
            state, timers = states[k]
            if state is None:
                del states[k]
            else:
                states[k] = state
            for ts in timers:
                self._add_timer(k, ts)

    def _pack(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """``keys``' state as snapshots and rescales carry it, removing nothing."""
        states, timers = self.states, self.timers
        out: dict[Any, Any] = {}
        for k in keys:
            t = timers.get(k)
            s = states.get(k)
            out[k] = s if t is None else _Timed(s, tuple(t))
        return out

    def _fire(self, epoch: Any) -> None:
        """Run ``on_timer`` for every timer at or below ``epoch``, oldest first."""
        heap, timers, states, out = self._heap, self.timers, self.states, self.output
        on_timer = self.logic.on_timer
        initial = self.logic.initial_state
        missing = _MISSING
        while heap:
            try:
                due = heap[0][0] <= epoch
            except TypeError as e:
                raise OperatorError(
                    self.name, f"timer at {heap[0][0]!r} cannot be compared with epoch {epoch!r}"
                ) from e
            if not due:
                break
            ts, _, k = heapq.heappop(heap)
            pending = timers.get(k)
            if pending is None or ts not in pending:
                continue  # fired already, or the key moved away
            pending.discard(ts)
            if not pending:
                del timers[k]
            out._key = k
            out._ts = ts
            s = states.get(k, missing)
            if s is missing:
                s = initial()
            try:
                s = on_timer(ts, k, s, out)
            except Exception as e:
                raise user_error(self.name, e, make_record((k, None, ts))) from e
            if s is None:
                states.pop(k, None)
            else:
                states[k] = s

    # ----- keyed state with timers --------------------------------------------------------
    def snapshot(self, writer: Any) -> None:
        if not self.timers:
            super().snapshot(writer)
            return
        writer.put_keyed(self.name, self._pack(self.states.keys() | self.timers.keys()))

    def held_keys(self, into: set[Any]) -> None:
        into.update(self.states)
        into.update(self.timers)

    def extract(self, select: Select) -> dict[Any, Any]:
        if not self.timers:
            return super().extract(select)
        leaving = select(self.states.keys() | self.timers.keys())
        got = self._pack(leaving)
        for k in leaving:
            self.states.pop(k, None)
            self.timers.pop(k, None)  # its heap entries are skipped from now on
        live = self.timers
        if len(self._heap) > 2 * sum(map(len, live.values())) + 1024:
            # Most entries belong to keys that left: drop them rather than carry them until
            # their time comes.
            self._heap = [h for h in self._heap if h[0] in live.get(h[2], ())]
            heapq.heapify(self._heap)
        return got

    def install(self, states: dict[Any, Any]) -> None:
        if self.has_timers:
            states = dict(states)
            self._unpack(states)
        self.states.update(states)

    def on_batch(self, batch: Batch, port: int) -> None:
        states = self.states
        get = states.get
        pop = states.pop
        out = self.output
        on_data = self.logic.on_data
        initial = self.logic.initial_state
        missing = _MISSING
        rec = None
        try:
            for rec in batch.iter_records():
                k = rec[0]
                # Output._bind inlined: a call per record costs ~30 ns (3% of bench (c)).
                out._key = k
                out._ts = rec[2]
                s = get(k, missing)
                if s is missing:
                    s = initial()
                s = on_data(rec, s, out)
                if s is None:
                    pop(k, None)
                else:
                    states[k] = s
        except Exception as e:
            raise user_error(self.name, e, rec) from e
        out._flush(self.emit)

    def on_epoch(self, ts: Any) -> None:
        if self.has_timers and self._heap:
            self._fire(ts)
            self.output._flush(self.emit)
        if self.has_epoch:
            out = self.output
            out._bind(timestamp=ts)  # a stateful operator must name the key
            try:
                self.logic.on_epoch(ts, self.states, out)
            except Exception as e:
                raise user_error(self.name, e) from e
            out._flush(self.emit)
        self.emit_epoch(ts)

    def schedule(self) -> None:
        if self.ended:
            return  # nothing may follow this operator's end of stream
        out = self.output
        out._bind()
        try:
            self.logic.on_schedule(self.states, out)
        except Exception as e:
            raise user_error(self.name, e) from e
        out._flush(self.emit)


class ExpireMap(Generic[K, V]):
    """A per-key map whose entries expire once an epoch reaches their expiry time (``ttl_map``)."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[Any, tuple[Any, Any]] = {}

    def insert(self, key: K, value: V, expiry: Any) -> None:
        """Store ``value`` under ``key`` until an epoch ``>= expiry`` arrives."""
        self._data[key] = (value, expiry)

    def get(self, key: K, default: Any = None) -> V | Any:
        """The live value under ``key``, or ``default``."""
        item = self._data.get(key)
        return default if item is None else item[0]

    def remove(self, key: K) -> V | None:
        """Remove ``key``; returns its value if it was present."""
        item = self._data.pop(key, None)
        return None if item is None else item[0]

    def expire(self, epoch: Any) -> None:
        """Drop entries whose expiry is ``<= epoch``."""
        dead = [k for k, (_, exp) in self._data.items() if exp <= epoch]
        for k in dead:
            del self._data[k]

    def items(self) -> Iterator[tuple[K, V]]:
        """Live ``(key, value)`` pairs."""
        return ((k, v) for k, (v, _) in self._data.items())

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ExpireMap({self._data!r})"


class TtlMapOp(_KeyedStateOp):
    def __init__(
        self,
        name: str,
        fn: Callable[[Any, Any, Any, ExpireMap[Any, Any]], tuple[Any, ExpireMap[Any, Any] | None]],
        ctx: BuildContext,
        owner: Owner,
    ) -> None:
        super().__init__(name, ctx, owner)
        self.fn = fn

    def on_batch(self, batch: Batch, port: int) -> None:
        states = self.states
        fn = self.fn
        out: list[Any] = []
        append = out.append
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                m = states.get(k)
                o, m = fn(k, v, t, m if m is not None else ExpireMap())
                if m is None or not len(m):
                    states.pop(k, None)
                else:
                    states[k] = m
                append(o)
        except Exception as e:
            raise user_error(self.name, e, make_record((k, v, t))) from e
        self.emit(Batch(batch.keys, out, batch.timestamps))

    def on_epoch(self, ts: Any) -> None:
        states = self.states
        try:
            for m in states.values():
                m.expire(ts)
        except TypeError as e:
            raise user_error(self.name, e) from e
        for k in [k for k, m in states.items() if not len(m)]:
            del states[k]
        self.emit_epoch(ts)
