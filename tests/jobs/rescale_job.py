"""A keyed event-time job for rescale tests: a partitioned, resumable, trickling source;
running counts per key (``stateful_map``), a tumbling count window per key, and a stateful
(part-keyed) sink, so source parts, keyed state, window state and sink parts all move.

``expected()`` is the oracle: per key the running counts must be exactly ``1..c_k`` (a lost,
repeated or split update breaks that), and every (key, window) count must fire once, whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from malstrom import StatefulSink, StatefulSource, StreamProvider
from malstrom.sinks import ListSink
from malstrom.windows import Count, Tumbling

PARTS = 5
PER_PART = 3_000
KEYS = 23
WINDOW = 500
CHUNK = 40  # records per poll: the job runs for many worker turns
BOUND = 20 * CHUNK * PARTS  # a part moved by a rescale lags a few turns behind the others


def value(part: int, i: int) -> tuple[int, int]:
    """Record ``i`` of ``part``: (key, event time). Parts are interleaved in time."""
    return ((i * 7 + part * 3) % KEYS, i * PARTS + part)


class Part:
    def __init__(self, part: int, nxt: int) -> None:
        self.part, self.nxt = part, nxt

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[Any, int]]:
        stop = min(PER_PART, self.nxt + min(n, CHUNK))
        out = []
        for i in range(self.nxt, stop):
            v = value(self.part, i)
            out.append((v, v[1]))
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= PER_PART

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Parts:
    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        return Part(part, 0 if state is None else int(state))  # type: ignore[call-overload]


class CountsByPart:
    """A stateful sink: part = key % 3; each part keeps its own list of records."""

    def __init__(self, collected: dict[int, list[Any]]) -> None:
        self.collected = collected

    def assign_part(self, key: Any) -> int:
        return int(key) % 3

    def build_part(self, part: int, state: object | None) -> _SinkPart:
        return _SinkPart(self.collected.setdefault(part, []), state)


class _SinkPart:
    def __init__(self, out: list[Any], state: object | None) -> None:
        self.out = out
        self.seen = 0 if state is None else int(state)  # type: ignore[call-overload]

    def sink(self, record: Any) -> None:
        self.seen += 1
        self.out.append((record.key, record.value, self.seen))

    def snapshot(self) -> object:
        return self.seen

    def collect(self) -> object:
        return self.seen


Collected = dict[int, list[Any]]


def make_build(
    counts: ListSink, windows: ListSink, late: ListSink, sink_parts: Collected
) -> Callable[[StreamProvider], None]:
    def build(provider: StreamProvider) -> None:
        keyed = (
            provider.new_stream()
            .source("numbers", StatefulSource(Parts()))
            .assign_timestamps("ts", lambda v: v[1])
            .limit_out_of_orderness("time", BOUND)[0]
            .key_distribute("by-key", lambda v: v[0])
        )
        (
            keyed.stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("counts", counts)
        )
        results, lates = keyed.window("win", Tumbling(WINDOW), Count())
        results.sink("windows", windows)
        lates.sink("late", late)
        keyed.map("one", lambda v: 1).sink("parts", StatefulSink(CountsByPart(sink_parts)))

    return build


def all_values() -> list[tuple[int, int]]:
    return [value(p, i) for p in range(PARTS) for i in range(PER_PART)]


def expected() -> tuple[Counter[Any], Counter[Any]]:
    """(records per key, records per (key, window start))."""
    per_key: Counter[Any] = Counter()
    per_win: Counter[Any] = Counter()
    for k, t in all_values():
        per_key[k] += 1
        per_win[(k, t - t % WINDOW)] += 1
    return per_key, per_win


def check(counts: ListSink, windows: ListSink, late: ListSink, sink_parts: Collected) -> None:
    """Exactly-once everywhere (raises AssertionError with the first difference)."""
    per_key, per_win = expected()
    seen: dict[Any, list[int]] = {}
    for r in counts.records:
        seen.setdefault(r.key, []).append(r.value)
    for k, c in per_key.items():
        got = sorted(seen.get(k, []))
        assert got == list(range(1, c + 1)), (k, c, len(got), got[:5], got[-5:])
    assert set(seen) == set(per_key)
    fired: Counter[Any] = Counter()
    for r in windows.records:
        w = r.value
        fired[(r.key, w.start)] += 1
        assert w.value == per_win[(r.key, w.start)], (r, per_win[(r.key, w.start)])
        assert r.timestamp == w.end
    assert set(fired) == set(per_win), set(per_win) ^ set(fired)
    assert all(n == 1 for n in fired.values()), [kv for kv in fired.items() if kv[1] != 1][:5]
    assert late.records == [], late.records[:5]
    total: Counter[Any] = Counter()
    for part, recs in sink_parts.items():
        seq = [s for _, _, s in recs]
        assert seq == list(range(1, len(seq) + 1)), part  # each part's state moved whole
        for k, _, _ in recs:
            total[k] += 1
    assert total == per_key
