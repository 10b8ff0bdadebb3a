"""Keyed two-input joins: ``join`` (same window) and ``interval_join`` (time bounds).

Both are operators with two input channels: ``on_batch(batch, port)`` gets port 0 for the
left stream and 1 for the right one; the engine merges their epochs by minimum and aligns
barriers. A pair is emitted as soon as its second record arrives, with the larger of the two
timestamps, and buffered records are dropped once the merged epoch shows they can no longer
match, so state stays bounded on unbounded streams.

A record arriving for a join window that is already closed is dropped: it is counted in
:attr:`late_records` and logged at warning level (at most once every few seconds per
operator).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from itertools import count, islice
from operator import itemgetter
from typing import Any

from malstrom.engine.batch import Batch, make_record
from malstrom.engine.context import BuildContext
from malstrom.engine.messages import Select
from malstrom.engine.operator import Operator
from malstrom.engine.user_code import user_error
from malstrom.errors import OperatorError
from malstrom.operators.windows import restore_frontier
from malstrom.types import Partitioner
from malstrom.windows import WindowAssigner

__all__ = ["IntervalJoinOp", "WindowJoinOp"]

log = logging.getLogger(__name__)

Owner = Partitioner | None

WARN_INTERVAL = 10.0
"""Seconds between two warnings about late records of one join operator."""

_first = itemgetter(0)


class _JoinOp(Operator):
    """Frontier bookkeeping, late-record accounting and snapshots shared by both joins."""

    def __init__(self, name: str, ctx: BuildContext) -> None:
        super().__init__(name)
        self._frontier_name = f"{name}::frontier"
        self.frontier: Any = restore_frontier(ctx, self._frontier_name)
        self.late_records = 0
        """Records dropped because their join window was already closed (this worker)."""
        self._unlogged = 0
        self._next_warning = 0.0

    def _late(self, n: int) -> None:
        self.late_records += n
        self._unlogged += n
        now = time.monotonic()
        if now >= self._next_warning:
            log.warning(
                "operator %r dropped %d late record(s) arriving for an already closed join "
                "window (%d on this worker so far)",
                self.name,
                self._unlogged,
                self.late_records,
            )
            self._unlogged = 0
            self._next_warning = now + WARN_INTERVAL

    def on_epoch(self, ts: Any) -> None:
        f = self.frontier
        try:
            rising = f is None or ts > f
        except TypeError as e:
            raise OperatorError(self.name, f"incomparable epochs {ts!r} and {f!r}") from e
        if rising:
            self.frontier = ts
            try:
                self._expire(ts)
            except Exception as e:
                raise user_error(self.name, e) from e
        self.emit_epoch(ts)

    def _expire(self, ts: Any) -> None:
        raise NotImplementedError

    def state_size(self) -> int:
        """Number of buffered records."""
        raise NotImplementedError


class WindowJoinOp(_JoinOp):
    """``left.join(name, right, assigner)``: pairs of one key that share a window."""

    def __init__(
        self, name: str, assigner: WindowAssigner, ctx: BuildContext, owner: Owner
    ) -> None:
        super().__init__(name, ctx)
        self.assigner = assigner
        # window end -> key -> ([(left value, ts)...], [(right value, ts)...])
        self.by_end: dict[Any, dict[Any, tuple[list[Any], list[Any]]]] = {}
        self.pending: list[Any] = []
        self.migrates = owner is not None
        self.install(dict(ctx.restore_keyed(name, owner)))

    def install(self, states: dict[Any, Any]) -> None:
        by_end = self.by_end
        for key, windows in states.items():
            for end, lefts, rights in windows:
                if end not in by_end:
                    by_end[end] = {}
                    heappush(self.pending, end)
                by_end[end][key] = (lefts, rights)

    def held_keys(self, into: set[Any]) -> None:
        for bucket in self.by_end.values():
            into.update(bucket)

    def extract(self, select: Select) -> dict[Any, Any]:
        per_key: dict[Any, list[Any]] = {}
        for e, bucket in self.by_end.items():
            for k in select(bucket.keys()):
                lefts, rights = bucket.pop(k)
                per_key.setdefault(k, []).append((e, lefts, rights))
        return per_key

    def state_size(self) -> int:
        return sum(len(a) + len(b) for bucket in self.by_end.values() for a, b in bucket.values())

    def snapshot(self, writer: Any) -> None:
        per_key: dict[Any, list[tuple[Any, list[Any], list[Any]]]] = {}
        for e, bucket in self.by_end.items():
            for k, (lefts, rights) in bucket.items():
                per_key.setdefault(k, []).append((e, lefts, rights))
        writer.put_keyed(self.name, per_key)
        writer.put_worker(self._frontier_name, self.frontier)

    def on_batch(self, batch: Batch, port: int) -> None:
        side, other = port, 1 - port
        starts_of: Callable[[Any], list[Any]] = self.assigner._starts  # type: ignore[attr-defined]
        size = self.assigner.size  # type: ignore[attr-defined]
        by_end, pending = self.by_end, self.pending
        f = self.frontier
        ok: list[Any] = []
        ov: list[Any] = []
        ot: list[Any] = []
        late = 0
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                windows = starts_of(t)
                placed = False
                for s in windows:
                    e = s + size
                    if f is not None and e <= f:
                        continue  # closed
                    placed = True
                    bucket = by_end.get(e)
                    if bucket is None:
                        bucket = by_end[e] = {}
                        heappush(pending, e)
                    entry = bucket.get(k)
                    if entry is None:
                        entry = bucket[k] = ([], [])
                    for pv, pt in entry[other]:
                        ok.append(k)
                        ov.append((v, pv) if side == 0 else (pv, v))
                        ot.append(pt if pt > t else t)
                    entry[side].append((v, t))
                if not placed and windows:
                    late += 1
        except Exception as ex:
            raise user_error(self.name, ex, make_record((k, v, t))) from ex
        if ok:
            self.emit(Batch(ok, ov, ot))
        if late:
            self._late(late)

    def _expire(self, ts: Any) -> None:
        pending, by_end = self.pending, self.by_end
        while pending and pending[0] <= ts:
            by_end.pop(heappop(pending), None)


class IntervalJoinOp(_JoinOp):
    """``left.interval_join(name, right, lower, upper)``.

    Pairs ``(l, r)`` of one key with ``l.ts + lower <= r.ts <= l.ts + upper``. Per key and side
    the buffered records are kept sorted by timestamp (matching is two bisections). A left
    record can still match while the frontier is below ``ts + upper``, a right one while it is
    below ``ts - lower``; a heap of those expiry times finds what to drop at each epoch. A
    record at or behind the frontier is late: the partners it would need may already be gone.
    """

    def __init__(self, name: str, lower: Any, upper: Any, ctx: BuildContext, owner: Owner) -> None:
        super().__init__(name, ctx)
        self.lower = lower
        self.upper = upper
        # key -> ([(ts, left value)...], [(ts, right value)...]), each sorted by ts
        self.state: dict[Any, tuple[list[Any], list[Any]]] = {}
        # (expiry, seq, key, side): one entry per buffered record
        self.heap: list[tuple[Any, int, Any, int]] = []
        self._seq = count()
        self.migrates = owner is not None
        self.install(dict(ctx.restore_keyed(name, owner)))

    def install(self, states: dict[Any, Any]) -> None:
        for key, (lefts, rights) in states.items():
            self.state[key] = (lefts, rights)
            for side, recs in ((0, lefts), (1, rights)):
                for t, _ in recs:
                    self.heap.append((self._expiry(t, side), next(self._seq), key, side))
        heapify(self.heap)

    def held_keys(self, into: set[Any]) -> None:
        into.update(self.state)

    def extract(self, select: Select) -> dict[Any, Any]:
        state = self.state
        out = {k: state.pop(k) for k in select(state.keys())}
        if out:
            # Their expiry entries go too (the heap is rebuilt without them).
            self.heap = [h for h in self.heap if h[2] not in out]
            heapify(self.heap)
        return out

    def _expiry(self, t: Any, side: int) -> Any:
        return t + self.upper if side == 0 else t - self.lower

    def state_size(self) -> int:
        return len(self.heap)

    def snapshot(self, writer: Any) -> None:
        writer.put_keyed(self.name, self.state)
        writer.put_worker(self._frontier_name, self.frontier)

    def on_batch(self, batch: Batch, port: int) -> None:
        side, other = port, 1 - port
        lower, upper = self.lower, self.upper
        state, heap, seq = self.state, self.heap, self._seq
        f = self.frontier
        ok: list[Any] = []
        ov: list[Any] = []
        ot: list[Any] = []
        late = 0
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                if f is not None and t <= f:
                    late += 1
                    continue
                entry = state.get(k)
                if entry is None:
                    entry = state[k] = ([], [])
                partners = entry[other]
                if partners:
                    if side == 0:
                        lo, hi = t + lower, t + upper
                    else:
                        lo, hi = t - upper, t - lower
                    i = bisect_left(partners, lo, key=_first)
                    j = bisect_right(partners, hi, lo=i, key=_first)
                    for pt, pv in islice(partners, i, j):
                        ok.append(k)
                        ov.append((v, pv) if side == 0 else (pv, v))
                        ot.append(pt if pt > t else t)
                mine = entry[side]
                if not mine or not t < mine[-1][0]:
                    mine.append((t, v))
                else:
                    insort(mine, (t, v), key=_first)
                heappush(heap, (t + upper if side == 0 else t - lower, next(seq), k, side))
        except Exception as ex:
            raise user_error(self.name, ex, make_record((k, v, t))) from ex
        if ok:
            self.emit(Batch(ok, ov, ot))
        if late:
            self._late(late)

    def _expire(self, ts: Any) -> None:
        heap = self.heap
        if not heap or not heap[0][0] <= ts:
            return
        # Expiry grows with the timestamp, so what expires is a prefix of each sorted list.
        gone: dict[tuple[Any, int], int] = {}
        while heap and heap[0][0] <= ts:
            _, _, k, side = heappop(heap)
            ks = (k, side)
            gone[ks] = gone.get(ks, 0) + 1
        state = self.state
        for (k, side), n in gone.items():
            entry = state[k]
            del entry[side][:n]
            if not entry[0] and not entry[1]:
                del state[k]
