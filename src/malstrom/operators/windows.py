"""``stream.window``: event-time windows with an aggregator per key and window.

State layout (per worker): ``by_end`` maps a window end to ``{key: accumulator}`` (insertion
ordered, so a fired window's keys come out in the order they entered it) and ``begin`` maps it
to the window start. Sessions keep ``{key: session}`` in ``by_end`` and, per key, the list of
open sessions ``[start, end, acc]`` sorted by start. Two heaps of ends make firing cost
proportional to what fires, never to the number of keys: ``pending`` (not fired yet) and,
with ``allowed_lateness``, ``kept`` (fired, kept for late updates until ``end + L``).

Snapshots store, per key, the list of its windows ``(start, end, acc)`` (addressable by key,
so a restore at another parallelism loads exactly the keys each worker owns) and, per worker,
the frontier (which windows have fired).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Sequence
from functools import partial
from heapq import heappop, heappush
from itertools import repeat
from operator import itemgetter
from typing import Any

from malstrom._errors import OperatorError
from malstrom.operators._util import user_error
from malstrom.runtime._engine import Batch, BuildContext, Operator, Select, make_record
from malstrom.windows import Count, Session, Tumbling, WindowAssigner, WindowResult

__all__ = ["WindowOp", "restore_frontier"]

Owner = Callable[[Any, Sequence[int]], int] | None

_MISSING: Any = object()
_make_result: Callable[[tuple[Any, Any, Any]], WindowResult] = partial(tuple.__new__, WindowResult)
_start = itemgetter(0)


def restore_frontier(ctx: BuildContext, name: str) -> Any:
    """The frontier an operator persisted with ``put_worker(name, ...)`` (None: fresh start).

    Restored at another parallelism, a new worker takes the smallest frontier any worker
    stored (downstream of ``key_distribute`` they are all equal at a barrier).
    """
    restored = ctx.restore_worker(name)
    if ctx.worker_id in restored:
        return restored[ctx.worker_id]
    known = [v for v in restored.values() if v is not None]
    return min(known) if known else None


class WindowOp(Operator):
    """Ports: 0 = window results, 1 = late records."""

    def __init__(
        self,
        name: str,
        assigner: WindowAssigner,
        aggregator: Any,
        allowed_lateness: Any,
        ctx: BuildContext,
        owner: Owner,
    ) -> None:
        super().__init__(name)
        self.set_ports(2)
        self.assigner = assigner
        self.agg = aggregator
        self.lateness: Any = allowed_lateness if allowed_lateness else None  # None: zero
        self.is_count = type(aggregator) is Count
        self.session = isinstance(assigner, Session)
        self.by_end: dict[Any, dict[Any, Any]] = {}
        self.begin: dict[Any, Any] = {}
        self.sessions: dict[Any, list[list[Any]]] = {}
        self.pending: list[Any] = []
        self.kept: list[Any] = []
        self._frontier_name = f"{name}::frontier"
        self.frontier: Any = restore_frontier(ctx, self._frontier_name)
        self.migrates = owner is not None
        self.install(dict(ctx.restore_keyed(name, owner)))

    def forwards_idle(self) -> bool:
        return not self.by_end  # open windows fire on a later epoch

    # ----- state ---------------------------------------------------------------------------
    def state_size(self) -> int:
        """Number of (key, window) accumulators held."""
        return sum(map(len, self.by_end.values()))

    def _per_key(self, select: Select | None) -> dict[Any, list[Any]]:
        """Each key's windows ``[(start, end, acc), ...]`` (only the keys ``select`` picks)."""
        per_key: dict[Any, list[Any]] = {}
        if self.session:
            sessions = self.sessions
            for k in sessions if select is None else select(sessions.keys()):
                per_key[k] = [(s[0], s[1], s[2]) for s in sessions[k]]
        else:
            begin = self.begin
            for e, bucket in self.by_end.items():
                s = begin[e]
                for k in bucket if select is None else select(bucket.keys()):
                    acc = bucket[k]
                    w = per_key.get(k)
                    if w is None:
                        per_key[k] = [(s, e, acc)]
                    else:
                        w.append((s, e, acc))
        return per_key

    def snapshot(self, writer: Any) -> None:
        writer.put_keyed(self.name, self._per_key(None))
        writer.put_worker(self._frontier_name, self.frontier)

    def held_keys(self, into: set[Any]) -> None:
        if self.session:
            into.update(self.sessions)
        else:
            for bucket in self.by_end.values():
                into.update(bucket)

    def extract(self, select: Select) -> dict[Any, Any]:
        per_key = self._per_key(select)
        if self.session:
            for k in per_key:
                for sess in self.sessions.pop(k):
                    bucket = self.by_end.get(sess[1])
                    if bucket is not None and bucket.get(k) is sess:
                        del bucket[k]
        else:
            by_end = self.by_end
            for k, windows in per_key.items():
                for _, e, _ in windows:
                    del by_end[e][k]
        # Emptied windows stay in the heaps; firing and expiry skip them.
        return per_key

    def install(self, states: dict[Any, Any]) -> None:
        """Add keys' windows (from a snapshot or another worker); ends new here get queued."""
        known = set(self.by_end)
        added: set[Any] = set()
        for key, windows in states.items():
            if self.session:
                lst = self.sessions.setdefault(key, [])
                for start, end, acc in windows:
                    sess = [start, end, acc]
                    lst.append(sess)
                    self.by_end.setdefault(end, {})[key] = sess
                    added.add(end)
                lst.sort(key=_start)
            else:
                for start, end, acc in windows:
                    self.by_end.setdefault(end, {})[key] = acc
                    self.begin[end] = start
                    added.add(end)
        f = self.frontier
        for end in added - known:
            heappush(self.kept if f is not None and end <= f else self.pending, end)

    def _limit(self) -> Any:
        """Windows ending at or before this are gone (None: nothing is)."""
        f = self.frontier
        if f is None or self.lateness is None:
            return f
        return f - self.lateness

    # ----- records -------------------------------------------------------------------------
    def on_batch(self, batch: Batch, port: int) -> None:
        if not len(batch):
            return
        assigner = self.assigner
        if self.session:
            self._add_sessions(batch)
        elif self.lateness is None and type(assigner) is Tumbling:
            anchor = assigner._static_anchor(batch.timestamps[0])
            if anchor is None:
                self._add_general(batch)
            else:
                self._add_tumbling(batch, anchor)
        else:
            self._add_general(batch)

    def _tumbling_bucket(self, q: Any, anchor: Any, size: Any, limit: Any) -> Any:
        """The accumulators of the ``q``-th tumbling window, or None if it has closed."""
        s = anchor + q * size
        e = s + size
        if limit is not None and e <= limit:
            return None
        b = self.by_end.get(e)
        if b is None:
            b = self.by_end[e] = {}
            self.begin[e] = s
            heappush(self.pending, e)
        return b

    def _add_tumbling(self, batch: Batch, anchor: Any) -> None:
        """Tumbling windows, no lateness: the hot path (window lookup once per run of records
        in the same window; a Count adds without calling the aggregator)."""
        size = self.assigner.size  # type: ignore[attr-defined]
        limit = self.frontier
        lk: list[Any] = []
        lv: list[Any] = []
        lt: list[Any] = []
        last_q: Any = _MISSING
        bucket: Any = None
        get: Any = None
        count = self.is_count
        add, create = self.agg.add, self.agg.create
        missing = _MISSING
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                q = (t - anchor) // size
                if q != last_q:
                    bucket = self._tumbling_bucket(q, anchor, size, limit)
                    get = bucket.get if bucket is not None else None
                    last_q = q
                if bucket is None:  # its window has closed: late
                    lk.append(k)
                    lv.append(v)
                    lt.append(t)
                elif count:
                    bucket[k] = get(k, 0) + 1
                else:
                    acc = get(k, missing)
                    bucket[k] = add(create() if acc is missing else acc, v)
        except Exception as ex:
            raise user_error(self.name, ex, make_record((k, v, t))) from ex
        if lk:
            self.emit_to(1, Batch(lk, lv, lt))

    def _add_general(self, batch: Batch) -> None:
        """Tumbling or sliding windows, any lateness and time zone."""
        assigner = self.assigner
        starts_of: Callable[[Any], list[Any]] = assigner._starts  # type: ignore[attr-defined]
        size = assigner.size  # type: ignore[attr-defined]
        by_end, begin, pending, kept = self.by_end, self.begin, self.pending, self.kept
        add, create, result = self.agg.add, self.agg.create, self.agg.result
        frontier = self.frontier
        limit = self._limit()
        missing = _MISSING
        lk: list[Any] = []
        lv: list[Any] = []
        lt: list[Any] = []
        rk: list[Any] = []
        rv: list[Any] = []
        rt: list[Any] = []
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                windows = starts_of(t)
                placed = False
                for s in windows:
                    e = s + size
                    if limit is not None and e <= limit:
                        continue  # this window is gone
                    placed = True
                    fired = frontier is not None and e <= frontier
                    bucket = by_end.get(e)
                    if bucket is None:
                        bucket = by_end[e] = {}
                        begin[e] = s
                        heappush(kept if fired else pending, e)
                    acc = bucket.get(k, missing)
                    acc = bucket[k] = add(create() if acc is missing else acc, v)
                    if fired:  # a late update of a kept window: emit it again at once
                        rk.append(k)
                        rv.append(_make_result((begin[e], e, result(acc))))
                        rt.append(e)
                if not placed and windows:
                    lk.append(k)
                    lv.append(v)
                    lt.append(t)
        except Exception as ex:
            raise user_error(self.name, ex, make_record((k, v, t))) from ex
        if rk:
            self.emit_to(0, Batch(rk, rv, rt))
        if lk:
            self.emit_to(1, Batch(lk, lv, lt))

    def _add_sessions(self, batch: Batch) -> None:
        gap = self.assigner.gap  # type: ignore[attr-defined]
        sessions = self.sessions
        add, create, merge, result = self.agg.add, self.agg.create, self.agg.merge, self.agg.result
        frontier = self.frontier
        limit = self._limit()
        lk: list[Any] = []
        lv: list[Any] = []
        lt: list[Any] = []
        rk: list[Any] = []
        rv: list[Any] = []
        rt: list[Any] = []
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                ne = t + gap
                lst = sessions.get(k)
                hits = [x for x in lst if x[0] < ne and t < x[1]] if lst else None
                if not hits:
                    if limit is not None and ne <= limit:
                        lk.append(k)
                        lv.append(v)
                        lt.append(t)
                        continue
                    sess = [t, ne, add(create(), v)]
                    if lst is None:
                        sessions[k] = [sess]
                    else:
                        insort(lst, sess, key=_start)
                    self._index(k, sess)
                elif len(hits) == 1 and hits[0][0] <= t and ne <= hits[0][1]:
                    sess = hits[0]
                    sess[2] = add(sess[2], v)
                else:
                    assert lst is not None
                    sess = hits[0]
                    end = hits[-1][1]  # sessions of a key are disjoint and sorted
                    if ne > end:
                        end = ne
                    acc = sess[2]
                    for h in hits[1:]:
                        self._unindex(k, h)
                        acc = merge(acc, h[2])
                        _remove(lst, h)
                    if t < sess[0]:
                        sess[0] = t
                    sess[2] = add(acc, v)
                    if end != sess[1]:  # keeps its place among its end's keys otherwise
                        self._unindex(k, sess)
                        sess[1] = end
                        self._index(k, sess)
                if frontier is not None and sess[1] <= frontier:
                    rk.append(k)
                    rv.append(_make_result((sess[0], sess[1], result(sess[2]))))
                    rt.append(sess[1])
        except Exception as ex:
            raise user_error(self.name, ex, make_record((k, v, t))) from ex
        if rk:
            self.emit_to(0, Batch(rk, rv, rt))
        if lk:
            self.emit_to(1, Batch(lk, lv, lt))

    def _index(self, key: Any, sess: list[Any]) -> None:
        e = sess[1]
        bucket = self.by_end.get(e)
        if bucket is None:
            bucket = self.by_end[e] = {}
            f = self.frontier
            heappush(self.kept if f is not None and e <= f else self.pending, e)
        bucket[key] = sess

    def _unindex(self, key: Any, sess: list[Any]) -> None:
        e = sess[1]
        bucket = self.by_end[e]
        del bucket[key]
        if not bucket:
            del self.by_end[e]  # its heap entry goes stale and is skipped when popped

    # ----- epochs ----------------------------------------------------------------------------
    def on_epoch(self, ts: Any) -> None:
        f = self.frontier
        try:
            rising = f is None or ts > f
        except TypeError as e:
            raise OperatorError(self.name, f"incomparable epochs {ts!r} and {f!r}") from e
        if rising:
            self.frontier = ts
            try:
                if self.pending and self.pending[0] <= ts:
                    self._fire(ts)
                if self.kept:
                    self._expire(ts - self.lateness)
            except OperatorError:
                raise
            except Exception as e:
                raise user_error(self.name, e) from e
        self.emit_epoch(ts)

    def _fire(self, ts: Any) -> None:
        """Emit every window with ``end <= ts``, by end, then by key insertion."""
        pending, by_end, begin = self.pending, self.by_end, self.begin
        result = self.agg.result
        keep = self.lateness is not None
        identity = self.is_count
        out_k: list[Any] = []
        out_v: list[Any] = []
        out_t: list[Any] = []
        while pending and pending[0] <= ts:
            e = heappop(pending)
            while pending and pending[0] == e:
                heappop(pending)
            bucket = by_end.get(e)
            if not bucket:
                continue  # a session end that moved
            n = len(bucket)
            out_k.extend(bucket)
            if self.session:
                out_v.extend([_make_result((x[0], x[1], result(x[2]))) for x in bucket.values()])
            else:
                vals = bucket.values() if identity else map(result, bucket.values())
                out_v.extend(map(_make_result, zip(repeat(begin[e], n), repeat(e, n), vals)))
            out_t.extend(repeat(e, n))
            if keep:
                heappush(self.kept, e)
            else:
                self._drop(e)
        self.emit_to(0, Batch(out_k, out_v, out_t))

    def _expire(self, limit: Any) -> None:
        kept = self.kept
        while kept and kept[0] <= limit:
            self._drop(heappop(kept))

    def _drop(self, e: Any) -> None:
        bucket = self.by_end.pop(e, None)
        if not self.session:
            self.begin.pop(e, None)
        elif bucket:
            sessions = self.sessions
            for k, sess in bucket.items():
                lst = sessions[k]
                _remove(lst, sess)
                if not lst:
                    del sessions[k]


def _remove(lst: list[list[Any]], sess: list[Any]) -> None:
    """Remove ``sess`` (by identity) from a key's session list."""
    if lst[0] is sess:
        del lst[0]
        return
    for i, x in enumerate(lst):
        if x is sess:
            del lst[i]
            return
