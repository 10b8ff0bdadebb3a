"""``stream.window``: event-time windows with an aggregator per key and window.

State layout (per worker): ``by_end`` maps a window end to ``{key: accumulator}`` (insertion
ordered, so a fired window's keys come out in the order they entered it) and ``begin`` maps it
to the window start. Sessions keep ``{key: session}`` in ``by_end`` and, per key, the list of
open sessions ``[start, end, acc]`` sorted by start. Two heaps of ends make firing cost
proportional to what fires, never to the number of keys: ``pending`` (not fired yet) and,
with ``allowed_lateness``, ``kept`` (fired, kept for late updates until ``end + L``).

Snapshots and rescales hand over, per key, ``(fired_to, [(start, end, acc), ...])``: its
windows, and the frontier up to which they have fired where the key was (addressable by key,
so a restore at another parallelism loads exactly the keys each worker owns). A key's windows
are fired up to the larger of this worker's frontier and the key's own ``fired_to``: with epochs
generated after ``key_distribute`` the workers' frontiers differ, so a key moving to a worker
that is behind brings windows that already fired there (they must not fire again) and one
moving to a worker that is ahead brings windows that have not (they fire at once: every
record for them has arrived, since the new worker's records are on time only above its own
frontier). Per worker, the frontier is stored as well.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from functools import partial
from heapq import heappop, heappush
from itertools import repeat
from operator import itemgetter
from typing import Any

from malstrom.engine.batch import Batch, make_record
from malstrom.engine.context import BuildContext
from malstrom.engine.messages import Select
from malstrom.engine.operator import Operator
from malstrom.engine.user_code import user_error
from malstrom.errors import OperatorError
from malstrom.types import Partitioner
from malstrom.windows import Count, Session, Tumbling, WindowAssigner, WindowResult

__all__ = ["WindowOp", "restore_frontier"]

Owner = Partitioner | None

_MISSING: Any = object()
_make_result: Callable[[tuple[Any, Any, Any]], WindowResult] = partial(tuple.__new__, WindowResult)
_start = itemgetter(0)


def restore_frontier(ctx: BuildContext, name: str) -> Any:
    """The frontier an operator persisted with ``put_worker(name, ...)`` (None: fresh start).

    Restored on the same workers, each takes its own. At another parallelism a worker takes
    keys from other workers, so it takes the smallest frontier any worker stored: downstream
    of epochs merged by ``key_distribute`` they are all equal at a barrier, but epochs
    generated after it differ per worker, and no key may be judged by a frontier its worker
    had not reached.
    """
    restored = ctx.restore_worker(name)
    if set(restored) == set(ctx.worker_set):
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
        # Keys whose windows fired further than this worker's frontier (moved here from a
        # worker that was ahead): key -> that frontier. Dropped once the frontier passes it.
        self.fired_to: dict[Any, Any] = {}
        self._frontier_name = f"{name}::frontier"
        self.frontier: Any = restore_frontier(ctx, self._frontier_name)
        self.migrates = owner is not None
        self._install(dict(ctx.restore_keyed(name, owner)), emit=False)

    def forwards_idle(self) -> bool:
        return not self.by_end  # open windows fire on a later epoch

    # ----- state ---------------------------------------------------------------------------
    def state_size(self) -> int:
        """Number of (key, window) accumulators held."""
        return sum(map(len, self.by_end.values()))

    def _per_key(self, select: Select | None) -> dict[Any, tuple[Any, list[Any]]]:
        """Each key's ``(fired_to, [(start, end, acc), ...])`` (only the keys ``select``
        picks)."""
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
        f = self.frontier
        fired_to = self.fired_to
        out: dict[Any, Any] = per_key
        for k, w in per_key.items():  # in place: values change, the keys do not
            out[k] = (fired_to.get(k, f) if fired_to else f, w)
        return out

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
            for k, (_, windows) in per_key.items():
                for _, e, _ in windows:
                    del by_end[e][k]
        if self.fired_to:
            for k in per_key:
                self.fired_to.pop(k, None)
        # Emptied windows stay in the heaps; firing and expiry skip them.
        return per_key

    def install(self, states: dict[Any, Any]) -> None:
        """Take over keys' windows moved here from another worker (the format of ``extract``)."""
        self._install(states, emit=True)

    def _install(self, states: dict[Any, Any], emit: bool) -> None:
        """Add keys' windows (from a snapshot or another worker); ends new here get queued.

        Windows that had not fired where they were but end at or before this worker's
        frontier fire now (``emit``), or on the next epoch (a restore: nothing can be emitted
        while the graph is built; restored frontiers make this case not arise anyway)."""
        known = set(self.by_end)
        added: set[Any] = set()
        f = self.frontier
        limit = self._limit()
        result = self.agg.result
        due_k: list[Any] = []
        due_v: list[Any] = []
        due_t: list[Any] = []
        late_due: set[Any] = set()
        for key, state in states.items():
            if type(state) is tuple:
                fired_to, windows = state
            else:  # a snapshot of a version that stored the windows only
                fired_to, windows = f, state
            if fired_to is not None and (f is None or fired_to > f):
                self.fired_to[key] = fired_to
            lst = self.sessions.setdefault(key, []) if self.session else None
            for start, end, acc in windows:
                due = f is not None and end <= f and (fired_to is None or end > fired_to)
                if due and emit:
                    due_k.append(key)
                    due_v.append(_make_result((start, end, result(acc))))
                    due_t.append(end)
                    due = False
                if limit is not None and end <= limit and not due:
                    continue  # gone here: nothing can update it any more
                if due:  # cannot emit yet: it fires on the next epoch
                    late_due.add(end)
                if lst is not None:
                    sess = [start, end, acc]
                    lst.append(sess)
                    self.by_end.setdefault(end, {})[key] = sess
                else:
                    self.by_end.setdefault(end, {})[key] = acc
                    self.begin[end] = start
                added.add(end)
            if lst is not None:
                if lst:
                    lst.sort(key=_start)
                else:
                    del self.sessions[key]
        for end in added - known:
            heappush(self.kept if f is not None and end <= f else self.pending, end)
        for end in late_due:
            heappush(self.pending, end)
        if due_k:
            self.emit_to(0, Batch(due_k, due_v, due_t))

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
        elif self.lateness is None and type(assigner) is Tumbling and not self.fired_to:
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
        fired_to = self.fired_to
        lateness = self.lateness
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
                kf = fired_to.get(k) if fired_to else None
                for s in windows:
                    e = s + size
                    if limit is not None and e <= limit:
                        continue  # this window is gone
                    if kf is not None and e <= (kf if lateness is None else kf - lateness):
                        continue  # gone where this key was before it moved here
                    placed = True
                    fired = (frontier is not None and e <= frontier) or (kf is not None and e <= kf)
                    bucket = by_end.get(e)
                    if bucket is None:
                        bucket = by_end[e] = {}
                        begin[e] = s
                        heappush(kept if frontier is not None and e <= frontier else pending, e)
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
        fired_to = self.fired_to
        lateness = self.lateness
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
                kf = fired_to.get(k) if fired_to else None
                if not hits:
                    if (limit is not None and ne <= limit) or (
                        kf is not None and ne <= (kf if lateness is None else kf - lateness)
                    ):
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
                if (frontier is not None and sess[1] <= frontier) or (
                    kf is not None and sess[1] <= kf
                ):
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
                    self._expire(ts if self.lateness is None else ts - self.lateness)
            except OperatorError:
                raise
            except Exception as e:
                raise user_error(self.name, e) from e
            if self.fired_to:
                self.fired_to = {k: f for k, f in self.fired_to.items() if f > ts}
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
            due: Any = bucket
            if self.fired_to:  # keys whose window fired before they moved here: not again
                fired_to = self.fired_to
                due = {k: x for k, x in bucket.items() if k not in fired_to or fired_to[k] < e}
            n = len(due)
            out_k.extend(due)
            if self.session:
                out_v.extend([_make_result((x[0], x[1], result(x[2]))) for x in due.values()])
            else:
                vals = due.values() if identity else map(result, due.values())
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
