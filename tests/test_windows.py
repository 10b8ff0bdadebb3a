"""Event-time windows: ``stream.window`` with every assigner and aggregator.

Exact epoch sequences come from a one-record-per-batch source; a brute-force model (written
independently of the operator: windows found by enumeration, results recomputed from lists)
checks random inputs, including late records unioned back in and allowed lateness.
"""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from job_errors import job_fails_with

import malstrom.windows
from malstrom import (
    MAX,
    BuildError,
    OperatorError,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatefulSource,
    StatelessLogic,
    Stream,
    StreamProvider,
)
from malstrom.operators.windows import WindowOp
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.sources import IterSource
from malstrom.testing import TimedSource, run_local_cluster
from malstrom.windows import (
    Collect,
    Count,
    Fold,
    Max,
    Min,
    Reduce,
    Session,
    Sliding,
    Sum,
    Tumbling,
    WindowResult,
)

ROOT = Path(__file__).resolve().parent.parent

# ----- helpers --------------------------------------------------------------------------------


def one_by_one(values: Iterable[Any]) -> TimedSource:
    """Each value in its own batch."""
    return TimedSource((v, 0) for v in values)


Event = tuple[Any, Any, Any]  # (key, timestamp, tag)


class Log(StatelessLogic):
    """Passes records on, logging records and epochs in the order they arrive."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def on_data(self, record: Any, output: Output[Any]) -> None:
        self.log.append(record)
        output.emit(record.value)

    def on_epoch(self, epoch: Any, output: Output[Any]) -> None:
        self.log.append(("epoch", epoch))


def windowed(
    events: list[Event],
    assigner: Any,
    aggregator: Any,
    *,
    lateness: Any = 0,
    bound: Any = None,
    log: list[Any] | None = None,
) -> tuple[list[Record], list[Record]]:
    """``events`` one per batch -> key by e[0] -> timestamp e[1] -> value e[2] -> window.

    With ``bound`` the stream gets epochs from ``limit_out_of_orderness(bound)`` and its late
    records are unioned back in (so the window sees every record, some behind the frontier);
    without, only ``Epoch(MAX)`` arrives. ``log`` records results and epochs in order.
    """
    results, late = ListSink(), ListSink()

    def build(p: StreamProvider) -> None:
        s = (
            p.new_stream()
            .source("src", one_by_one(events))
            .key_distribute("key", lambda e: e[0])
            .assign_timestamps("ts", lambda e: e[1])
            .map("tag", lambda e: e[2])
        )
        if bound is not None:
            on_time, behind = s.limit_out_of_orderness("ooo", bound)
            s = on_time.union("all", behind)
        res, too_late = s.window("win", assigner, aggregator, allowed_lateness=lateness)
        if log is not None:
            res = res.stateless_op("log", Log(log))
        res.sink("results", results)
        too_late.sink("late", late)

    SingleThreadRuntime(build).execute()
    return results.records, late.records


def wr(key: Any, start: Any, end: Any, value: Any) -> Record:
    return Record(key, WindowResult(start, end, value), end)


# ----- tumbling -------------------------------------------------------------------------------


def test_tumbling_count_fires_when_epoch_reaches_end_before_the_epoch() -> None:
    log: list[Any] = []
    events = [("a", 1, 0), ("b", 2, 1), ("a", 9, 2), ("a", 12, 3), ("b", 19, 4), ("a", 25, 5)]
    res, late = windowed(events, Tumbling(10), Count(), bound=0, log=log)
    assert late == []
    assert log == [
        ("epoch", 1),
        ("epoch", 2),
        ("epoch", 9),
        wr("a", 0, 10, 2),  # epoch 12 >= 10 closes [0, 10): a first (entered first), then b
        wr("b", 0, 10, 1),
        ("epoch", 12),
        ("epoch", 19),
        wr("a", 10, 20, 1),
        wr("b", 10, 20, 1),
        ("epoch", 25),
        wr("a", 20, 30, 1),
        ("epoch", MAX),
    ]
    assert res == [r for r in log if isinstance(r, Record)]


def test_window_fires_at_epoch_equal_to_end_not_before() -> None:
    log: list[Any] = []
    windowed([("k", 5, 0), ("k", 9, 1), ("k", 10, 2)], Tumbling(10), Count(), bound=0, log=log)
    assert log == [
        ("epoch", 5),
        ("epoch", 9),
        wr("k", 0, 10, 2),
        ("epoch", 10),
        wr("k", 10, 20, 1),
        ("epoch", MAX),
    ]


def test_max_fires_every_open_window_in_end_then_key_order() -> None:
    events = [("b", 35, 0), ("a", 3, 1), ("b", 4, 2), ("c", 17, 3), ("a", 36, 4), ("a", 5, 5)]
    res, late = windowed(events, Tumbling(10), Count())
    assert late == []
    assert res == [
        wr("a", 0, 10, 2),
        wr("b", 0, 10, 1),
        wr("c", 10, 20, 1),
        wr("b", 30, 40, 1),
        wr("a", 30, 40, 1),
    ]


def test_cascaded_windows_put_results_in_the_window_containing_their_end() -> None:
    sink = ListSink()
    stamps = [1, 5, 12, 25, 31, 44]

    def build(p: StreamProvider) -> None:
        on_time, _ = (
            p.new_stream()
            .source("src", one_by_one(stamps))
            .key_distribute("key", lambda v: "k")
            .assign_timestamps("ts", lambda v: v)
            .limit_out_of_orderness("ooo", 0)
        )
        tens, late1 = on_time.window("tens", Tumbling(10), Count())
        twenties, late2 = tens.window("twenties", Tumbling(20), Collect())
        twenties.sink("out", sink)
        late1.union("lates", late2).sink("late", sink)

    SingleThreadRuntime(build).execute()
    counts = [WindowResult(s, s + 10, n) for s, n in [(0, 2), (10, 1), (20, 1), (30, 1), (40, 1)]]
    # [0, 10) ends at 10: it lands in [0, 20); [10, 20) ends at 20: in [20, 40) ...
    assert sink.records == [
        wr("k", 0, 20, counts[:1]),
        wr("k", 20, 40, counts[1:3]),
        wr("k", 40, 60, counts[3:]),
    ]


def test_tumbling_negative_timestamps_and_offsets() -> None:
    events = [("k", -15, 0), ("k", -1, 1), ("k", 0, 2), ("k", 2, 3), ("k", 3, 4)]
    res, _ = windowed(events, Tumbling(10), Collect())
    assert res == [wr("k", -20, -10, [0]), wr("k", -10, 0, [1]), wr("k", 0, 10, [2, 3, 4])]
    res, _ = windowed(events, Tumbling(10, offset=3), Collect())
    assert res == [wr("k", -17, -7, [0]), wr("k", -7, 3, [1, 2, 3]), wr("k", 3, 13, [4])]


def test_tumbling_float_timestamps_share_one_window() -> None:
    events = [("k", 0.25, 0), ("k", 0.3, 1), ("k", 0.75, 2)]
    res, _ = windowed(events, Tumbling(0.1), Count())
    assert [(r.value.start, r.value.value) for r in res] == [
        (pytest.approx(0.2), 2),
        (pytest.approx(0.7), 1),
    ]


# ----- sliding --------------------------------------------------------------------------------


def test_sliding_assigns_every_containing_window_including_negative_starts() -> None:
    events = [("k", -3, "a"), ("k", 0, "b"), ("k", 7, "c")]
    res, _ = windowed(events, Sliding(10, 5), Collect())
    assert res == [
        wr("k", -10, 0, ["a"]),
        wr("k", -5, 5, ["a", "b"]),
        wr("k", 0, 10, ["b", "c"]),
        wr("k", 5, 15, ["c"]),
    ]


def test_sliding_with_offset_and_uneven_slide() -> None:
    res, _ = windowed([("k", 4, "x")], Sliding(7, 3, offset=1), Collect())
    # starts 1 + 3k with start <= 4 < start + 7: -2, 1, 4
    assert [(r.value.start, r.value.end) for r in res] == [(-2, 5), (1, 8), (4, 11)]


def test_sliding_with_gaps_drops_records_between_windows() -> None:
    res, late = windowed([("k", 1, "in"), ("k", 7, "gap")], Sliding(5, 10), Collect())
    assert res == [wr("k", 0, 5, ["in"])]
    assert late == []


# ----- sessions -------------------------------------------------------------------------------


def test_sessions_are_half_open_and_merge() -> None:
    events = [
        ("a", 0, 0),
        ("a", 2, 1),  # [0, 5) + [2, 7) -> [0, 7)
        ("a", 7, 2),  # 7 >= 2 + 5: a new session [7, 12)
        ("b", 1, 3),
        ("a", 20, 4),
        ("a", 28, 5),
        ("a", 24, 6),  # [24, 29) bridges [20, 25) and [28, 33): merged [20, 33)
    ]
    res, _ = windowed(events, Session(5), Collect())
    assert res == [
        wr("b", 1, 6, [3]),
        wr("a", 0, 7, [0, 1]),
        wr("a", 7, 12, [2]),
        wr("a", 20, 33, [4, 5, 6]),
    ]


def test_session_extended_backwards_keeps_its_end() -> None:
    res, _ = windowed([("a", 10, 0), ("a", 8, 1), ("a", 3, 2)], Session(5), Collect())
    # [10, 15) + [8, 13) -> [8, 15); [3, 8) only touches it (half open): separate
    assert res == [wr("a", 3, 8, [2]), wr("a", 8, 15, [0, 1])]


def test_sessions_fire_on_epochs() -> None:
    log: list[Any] = []
    windowed([("a", 0, 0), ("a", 3, 1), ("a", 10, 2)], Session(4), Count(), bound=0, log=log)
    assert log == [
        ("epoch", 0),
        ("epoch", 3),
        wr("a", 0, 7, 2),
        ("epoch", 10),
        wr("a", 10, 14, 1),
        ("epoch", MAX),
    ]


# ----- aggregators ----------------------------------------------------------------------------

EVENTS: list[Event] = [
    ("a", 3, 5),
    ("b", 4, -2),
    ("a", 11, 7),
    ("a", 6, 1),
    ("b", 28, 4),
    ("a", 14, -3),
    ("c", 0, 8),
    ("b", 25, 6),
    ("a", 40, 2),
    ("a", 13, 9),
]

AGGREGATORS: dict[str, tuple[Any, Callable[[list[Any]], Any]]] = {
    "count": (Count(), len),
    "sum": (Sum(), sum),
    "sum-fn": (Sum(lambda v: v * v), lambda vs: sum(v * v for v in vs)),
    "min": (Min(), min),
    "min-fn": (Min(abs), lambda vs: min(map(abs, vs))),
    "max": (Max(), max),
    "max-fn": (Max(lambda v: -v), lambda vs: max(-v for v in vs)),
    "collect": (Collect(), list),
    "fold": (
        Fold(tuple, lambda acc, v: (*acc, v), merge=lambda a, b: a + b),
        tuple,
    ),
    "reduce": (Reduce(lambda a, b: a * 10 + b), lambda vs: _reduce(vs)),
}


def _reduce(vs: list[int]) -> int:
    acc = vs[0]
    for v in vs[1:]:
        acc = acc * 10 + v
    return acc


def brute_windows(assigner: Any, t: int) -> list[tuple[int, int]]:
    """Windows containing ``t``, by enumeration."""
    if isinstance(assigner, Tumbling):
        size, step, off = assigner.size, assigner.size, assigner.offset
    else:
        size, step, off = assigner.size, assigner.slide, assigner.offset
    out = []
    for k in range(-200, 200):
        s = off + k * step
        if s <= t < s + size:
            out.append((s, s + size))
    return out


def merge_sessions(events: list[Event], gap: int) -> list[tuple[Any, int, int, list[Any]]]:
    """Sessions per key, by repeated merging of overlapping ``[t, t + gap)`` intervals."""
    out = []
    for key in dict.fromkeys(e[0] for e in events):
        spans = [[t, t + gap, [v]] for k, t, v in events if k == key]
        merged = True
        while merged:
            merged = False
            for i in range(len(spans)):
                for j in range(i + 1, len(spans)):
                    a, b = spans[i], spans[j]
                    if a[0] < b[1] and b[0] < a[1]:
                        spans[i] = [min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2]]
                        del spans[j]
                        merged = True
                        break
                if merged:
                    break
        out += [(key, s, e, vs) for s, e, vs in spans]
    return out


@pytest.mark.parametrize(
    ("agg", "assigner"),
    [
        (agg, assigner)
        for assigner in (Tumbling(10), Sliding(10, 5, offset=2), Session(4))
        for agg in AGGREGATORS
        # merged reduced sessions are no function of the value list: tested below
        if not (agg == "reduce" and isinstance(assigner, Session))
    ],
    ids=str,
)
def test_every_aggregator_with_every_assigner(agg: str, assigner: Any) -> None:
    aggregator, fn = AGGREGATORS[agg]
    res, late = windowed(EVENTS, assigner, aggregator)  # MAX only: everything fires at the end
    assert late == []
    # The model with an epoch far behind every record: all windows fire at the end.
    want, _ = model(EVENTS, assigner, 0, bound=10**9)
    assert [(r.key, r.value.start, r.value.end, r.timestamp, r.value.value) for r in res] == [
        (k, s, e, t, fn(list(tags))) for k, s, e, tags, t in want
    ]
    if isinstance(assigner, Session):
        groups = merge_sessions(EVENTS, assigner.gap)  # an independent check of the bounds
        assert sorted((k, s, e) for k, s, e, _ in groups) == sorted(
            (k, s, e) for k, s, e, *_ in want
        )


def test_reduce_and_fold_with_sessions_merge_earlier_first() -> None:
    events = [("a", 0, 1), ("a", 10, 2), ("a", 5, 3)]  # gap 6: [0,6) [10,16) then [5,11) joins
    res, _ = windowed(events, Session(6), Reduce(lambda a, b: a * 10 + b))
    assert res == [wr("a", 0, 16, 123)]
    fold = Fold(str, lambda acc, v: acc + str(v), merge=lambda a, b: a + "|" + b)
    res, _ = windowed(events, Session(6), fold)
    assert res == [wr("a", 0, 16, "1|23")]


def test_sum_works_for_timedeltas_and_empty_accumulators_have_results() -> None:
    res, _ = windowed([("k", 1, timedelta(seconds=2)), ("k", 2, timedelta(1))], Tumbling(5), Sum())
    assert res == [wr("k", 0, 5, timedelta(days=1, seconds=2))]
    assert Sum().result(Sum().create()) == 0
    assert Min().result(Min().create()) is None
    assert Max().result(Max().create()) is None
    assert Reduce(max).result(Reduce(max).create()) is None
    assert Collect().result(Collect().create()) == []
    assert Count().merge(2, 3) == 5


def test_user_aggregator_protocol() -> None:
    class Mean:
        def create(self) -> tuple[float, int]:
            return (0.0, 0)

        def add(self, acc: tuple[float, int], value: float) -> tuple[float, int]:
            return (acc[0] + value, acc[1] + 1)

        def merge(self, a: tuple[float, int], b: tuple[float, int]) -> tuple[float, int]:
            return (a[0] + b[0], a[1] + b[1])

        def result(self, acc: tuple[float, int]) -> float:
            return acc[0] / acc[1]

    res, _ = windowed([("k", 1, 1.0), ("k", 4, 6.0), ("k", 2, 2.0)], Session(3), Mean())
    assert res == [wr("k", 1, 7, 3.0)]  # [1, 4) and [4, 7) merge through [2, 5)


def test_collect_results_are_not_changed_by_later_updates() -> None:
    events = [("k", 1, "a"), ("k", 12, "b"), ("k", 2, "late")]
    res, late = windowed(events, Tumbling(10), Collect(), lateness=5, bound=0)
    assert late == []
    assert res == [wr("k", 0, 10, ["a"]), wr("k", 0, 10, ["a", "late"]), wr("k", 10, 20, ["b"])]


# ----- datetimes ------------------------------------------------------------------------------


def at(day: int, hour: int, minute: int = 0, tz: Any = None) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=tz)


def test_datetime_tumbling_aligns_on_1970_in_the_timestamps_time_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    day = timedelta(days=1)
    for tz in (None, UTC, plus2):
        events = [("k", at(5, 1, tz=tz), 0), ("k", at(5, 23, tz=tz), 1), ("k", at(6, 0, tz=tz), 2)]
        res, _ = windowed(events, Tumbling(day), Count())
        assert res == [
            wr("k", at(5, 0, tz=tz), at(6, 0, tz=tz), 2),
            wr("k", at(6, 0, tz=tz), at(7, 0, tz=tz), 1),
        ]
        assert res[0].value.start.utcoffset() == (None if tz is None else tz.utcoffset(None))


def test_datetime_offsets_sliding_sessions_and_lateness() -> None:
    hour = timedelta(hours=1)
    events = [("k", at(5, 10, 30), 0), ("k", at(5, 11, 10), 1)]
    res, _ = windowed(events, Tumbling(hour, offset=timedelta(minutes=15)), Count())
    assert res == [wr("k", at(5, 10, 15), at(5, 11, 15), 2)]
    res, _ = windowed(events, Tumbling(hour, offset=datetime(2000, 1, 1, 0, 45)), Count())
    assert res == [
        wr("k", at(5, 9, 45), at(5, 10, 45), 1),
        wr("k", at(5, 10, 45), at(5, 11, 45), 1),
    ]
    res, _ = windowed(events, Sliding(hour, timedelta(minutes=30)), Collect())
    assert [(r.value.start, r.value.value) for r in res] == [
        (at(5, 10, 0), [0]),
        (at(5, 10, 30), [0, 1]),
        (at(5, 11, 0), [1]),
    ]
    res, _ = windowed(events, Session(timedelta(minutes=45)), Count())
    assert res == [wr("k", at(5, 10, 30), at(5, 11, 55), 2)]
    # lateness as a timedelta, epochs from a timedelta bound
    late_events = [("k", at(5, 10), 0), ("k", at(5, 11, 20), 1), ("k", at(5, 10, 5), 2)]
    res, late = windowed(
        late_events, Tumbling(hour), Count(), lateness=timedelta(minutes=30), bound=timedelta(0)
    )
    assert late == []
    assert res == [
        wr("k", at(5, 10), at(5, 11), 1),
        wr("k", at(5, 10), at(5, 11), 2),  # 11:20 < 11:00 + 30 min: still kept
        wr("k", at(5, 11), at(5, 12), 1),
    ]


# ----- lateness -------------------------------------------------------------------------------


def test_allowed_lateness_reemits_updated_result_then_sends_to_late() -> None:
    log: list[Any] = []
    events = [
        ("k", 1, 0),
        ("k", 5, 1),
        ("k", 12, 2),  # epoch 12 fires [0, 10); kept until an epoch >= 10 + 5
        ("k", 3, 3),  # behind the frontier, window kept: updated result at once
        ("k", 14, 4),
        ("k", 4, 5),  # still kept (14 < 15)
        ("k", 16, 6),  # epoch 16 >= 15: [0, 10) is gone
        ("k", 2, 7),  # -> late
    ]
    _, late = windowed(events, Tumbling(10), Count(), lateness=5, bound=0, log=log)
    assert late == [Record("k", 7, 2)]
    assert log == [
        ("epoch", 1),
        ("epoch", 5),
        wr("k", 0, 10, 2),
        ("epoch", 12),
        wr("k", 0, 10, 3),
        ("epoch", 14),
        wr("k", 0, 10, 4),
        ("epoch", 16),
        wr("k", 10, 20, 3),
        ("epoch", MAX),
    ]


def test_without_lateness_records_behind_a_fired_window_are_late_but_open_ones_count() -> None:
    events = [("k", 1, 0), ("k", 12, 1), ("k", 3, 2), ("k", 11, 3), ("j", 9, 4)]
    res, late = windowed(events, Tumbling(10), Count(), bound=0)
    # 11 is behind the frontier (12) but [10, 20) is still open: it counts
    assert res == [wr("k", 0, 10, 1), wr("k", 10, 20, 2)]
    assert late == [Record("k", 2, 3), Record("j", 4, 9)]


def test_late_window_with_lateness_created_after_it_fired() -> None:
    # [0, 10) of key j has no record when it fires; a late j record within the lateness still
    # creates it and emits at once
    res, late = windowed(
        [("k", 1, 0), ("k", 12, 1), ("j", 2, 2)], Tumbling(10), Count(), lateness=3, bound=0
    )
    assert late == []
    assert res == [wr("k", 0, 10, 1), wr("j", 0, 10, 1), wr("k", 10, 20, 1)]


def test_sliding_record_with_some_windows_gone_updates_the_rest() -> None:
    events = [("k", 0, "a"), ("k", 6, "b"), ("k", 4, "c")]
    res, late = windowed(events, Sliding(10, 5), Collect(), bound=0)
    # at epoch 6, [-5, 5) has fired: "c" only joins [0, 10)
    assert late == []
    assert res == [wr("k", -5, 5, ["a"]), wr("k", 0, 10, ["a", "b", "c"]), wr("k", 5, 15, ["b"])]


def test_session_lateness_merges_kept_sessions_and_late_output() -> None:
    events = [("k", 0, 0), ("k", 20, 1), ("k", 2, 2), ("k", 40, 3), ("k", 1, 4)]
    res, late = windowed(events, Session(5), Collect(), lateness=10, bound=0)
    assert res == [
        wr("k", 0, 5, [0]),  # fired by epoch 20, which is past 5 + 10: gone at once
        wr("k", 20, 25, [1]),
        wr("k", 40, 45, [3]),
    ]
    assert late == [Record("k", 2, 2), Record("k", 4, 1)]
    events = [("k", 0, 0), ("k", 8, 1), ("k", 3, 2), ("k", 4, 3)]
    res, late = windowed(events, Session(5), Collect(), lateness=10, bound=0)
    # epoch 8 fires [0, 5); the late 3 extends it to [0, 8), fired already: emitted at once;
    # the late 4 merges it with [8, 13): [0, 13) is open again and fires at the end
    assert late == []
    assert res == [wr("k", 0, 5, [0]), wr("k", 0, 8, [0, 2]), wr("k", 0, 13, [0, 2, 1, 3])]


# ----- property: the operator against a brute-force model -------------------------------------

INF = math.inf


def model(
    events: list[Event], assigner: Any, lateness: int, bound: int
) -> tuple[list[tuple[Any, ...]], list[Event]]:
    """Replays ``events`` in order: each record, then the epoch ``max(ts) - bound`` if it rose."""
    results: list[tuple[Any, ...]] = []
    late: list[Event] = []
    seq = count()
    frontier: Any = None
    # aligned windows: (key, start, end) -> [tags, seq]; sessions: key -> [[s, e, tags, seq]]
    state: dict[tuple[Any, int, int], list[Any]] = {}
    sessions: dict[Any, list[list[Any]]] = {}
    is_session = isinstance(assigner, Session)

    def emit(key: Any, s: int, e: int, tags: list[Any]) -> None:
        results.append((key, s, e, tuple(tags), e))

    def advance(new: Any) -> None:
        old = -INF if frontier is None else frontier
        if is_session:
            due = [(x[1], x[3], k, x) for k, xs in sessions.items() for x in xs]
            for _, _, k, x in sorted((d for d in due if old < d[0] <= new), key=lambda d: d[:2]):
                emit(k, x[0], x[1], x[2])
            for k in list(sessions):
                sessions[k] = [x for x in sessions[k] if not x[1] <= new - lateness]
        else:
            due2 = sorted((e, st[1], k, s) for (k, s, e), st in state.items() if old < e <= new)
            for e, _, k, s in due2:
                emit(k, s, e, state[(k, s, e)][0])
            for w in [w for w in state if w[2] <= new - lateness]:
                del state[w]

    for key, t, tag in events:
        limit = None if frontier is None else frontier - lateness
        if is_session:
            gap = assigner.gap
            mine = sorted(sessions.setdefault(key, []), key=lambda x: x[0])
            hits = [x for x in mine if x[0] < t + gap and t < x[1]]
            if not hits:
                if limit is not None and t + gap <= limit:
                    late.append((key, t, tag))
                else:
                    sess = [t, t + gap, [tag], next(seq)]
                    sessions[key].append(sess)
                    if frontier is not None and sess[1] <= frontier:
                        emit(key, *sess[:3])
            else:
                first = hits[0]
                tags = [x for h in hits for x in h[2]] + [tag]
                end = max(t + gap, *(h[1] for h in hits))
                for h in hits[1:]:
                    sessions[key].remove(h)
                if end != first[1]:
                    first[3] = next(seq)
                first[0], first[1], first[2] = min(first[0], t), end, tags
                if frontier is not None and end <= frontier:
                    emit(key, *first[:3])
        else:
            ws = brute_windows(assigner, t)
            live = [(s, e) for s, e in ws if limit is None or e > limit]
            if ws and not live:
                late.append((key, t, tag))
            for s, e in live:
                st_ = state.setdefault((key, s, e), [[], next(seq)])
                st_[0].append(tag)
                if frontier is not None and e <= frontier:
                    emit(key, s, e, st_[0])
        cand = t - bound
        if frontier is None or cand > frontier:
            advance(cand)
            frontier = cand
    advance(INF)
    return results, late


assigners = st.one_of(
    st.builds(Tumbling, st.integers(1, 12), st.integers(-6, 6)),
    st.builds(Sliding, st.integers(1, 12), st.integers(1, 12), st.integers(-6, 6)),
    st.builds(Session, st.integers(1, 10)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ts=st.lists(st.tuples(st.sampled_from("abc"), st.integers(-30, 60)), max_size=30),
    assigner=assigners,
    lateness=st.sampled_from([0, 0, 3, 10]),
    bound=st.integers(0, 12),
)
def test_window_matches_brute_force_model(
    ts: list[tuple[str, int]], assigner: Any, lateness: int, bound: int
) -> None:
    events = [(k, t, i) for i, (k, t) in enumerate(ts)]
    res, late = windowed(events, assigner, Collect(), lateness=lateness, bound=bound)
    want_res, want_late = model(events, assigner, lateness, bound)
    got = [(r.key, r.value.start, r.value.end, tuple(r.value.value), r.timestamp) for r in res]
    assert got == want_res
    assert [(r.key, r.timestamp, r.value) for r in late] == want_late


# ----- state, multiple workers, snapshots -----------------------------------------------------


def test_window_state_is_dropped_after_firing(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    on_epoch = WindowOp.on_epoch

    def watch(self: WindowOp, ts: Any) -> None:
        on_epoch(self, ts)
        sizes.append(self.state_size())

    monkeypatch.setattr(WindowOp, "on_epoch", watch)
    sink = ListSink()
    n = 60_000

    def build(p: StreamProvider) -> None:
        on_time, _ = (
            p.new_stream()
            .source("src", IterSource(range(n)))
            .key_distribute("key", lambda v: v % 50)
            .limit_out_of_orderness("ooo", 0)
        )
        res, _ = on_time.window("win", Sliding(200, 100), Count(), allowed_lateness=300)
        res.sink("out", sink)

    SingleThreadRuntime(build).execute()
    assert sum(r.value.value for r in sink.records) == 2 * n
    assert len(sizes) > 20
    assert max(sizes) < 50 * 2 * 40  # a few batches' windows, never the whole stream
    assert sizes[-1] == 0


PARTS, PER_PART, KEYS = 4, 3_000, 13


class _Counter:
    def __init__(self, base: int, nxt: int) -> None:
        self.base, self.nxt = base, nxt

    def poll(self) -> tuple[int, int] | None:
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        stop = min(PER_PART, self.nxt + min(n, 250))
        out = [(self.base + i, i) for i in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= PER_PART

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class _Counters:
    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> _Counter:
        return _Counter(part * PER_PART, 0 if state is None else int(state))  # type: ignore[call-overload]


class _CollectAtEnd(StatefulLogic[Any, Any, list[Any], Any]):
    """Keeps every result in keyed state and emits them all at the end (exactly-once check)."""

    def on_data(self, record: Any, state: list[Any] | None, output: Any) -> list[Any]:
        return [*(state or []), tuple(record.value)]

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k, s in states.items():
                output.emit(sorted(s), key=k)


class Boom(Exception):
    pass


def counters_build(sink: ListSink, late: ListSink, crash_at: int | None = None) -> Any:
    def check(v: int) -> int:
        if v == crash_at:
            raise Boom(v)
        return v

    def build(p: StreamProvider) -> None:
        on_time, behind = (
            p.new_stream()
            .source("counters", StatefulSource(_Counters()))
            .map("check", check)
            .assign_timestamps("ts", lambda v: v % PER_PART)
            .limit_out_of_orderness("ooo", 2 * 250)
        )
        behind.sink("late", late)
        res, _ = on_time.key_distribute("key", lambda v: v % KEYS).window(
            "win", Tumbling(100), Sum()
        )
        res.stateful_op("collect", _CollectAtEnd()).sink("out", sink)

    return build


def counters_oracle() -> dict[int, list[tuple[int, int, int]]]:
    by: dict[tuple[int, int], int] = {}
    for v in range(PARTS * PER_PART):
        w = (v % KEYS, (v % PER_PART) // 100 * 100)
        by[w] = by.get(w, 0) + v
    out: dict[int, list[tuple[int, int, int]]] = {}
    for (k, s), total in sorted(by.items()):
        out.setdefault(k, []).append((s, s + 100, total))
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_windows_are_exact_across_workers(n: int) -> None:
    sink, late = ListSink(), ListSink()
    run_local_cluster(counters_build(sink, late), n)
    assert late.records == []
    assert dict((r.key, r.value) for r in sink.records) == counters_oracle()


def test_window_state_survives_a_crash_exactly_once_at_any_parallelism() -> None:
    p = InMemoryPersistence()
    with pytest.raises(OperatorError) as info:
        run_local_cluster(
            counters_build(ListSink(), ListSink(), crash_at=2 * PER_PART + 1800),
            2,
            persistence=p,
            snapshot_interval=0.0005,
        )
    assert isinstance(info.value.__cause__, Boom)
    assert p.last_committed() is not None
    sink, late = ListSink(), ListSink()
    coord = run_local_cluster(counters_build(sink, late), 3, persistence=p)
    assert coord.restored_from is not None
    assert late.records == []
    assert dict((r.key, r.value) for r in sink.records) == counters_oracle()


def test_window_with_lateness_and_sessions_restore_single_thread() -> None:
    p = InMemoryPersistence()

    def build_for(sink: ListSink, crash_at: int | None) -> Any:
        def check(v: int) -> int:
            if v == crash_at:
                raise Boom(v)
            return v

        def build(provider: StreamProvider) -> None:
            on_time, behind = (
                provider.new_stream()
                .source("src", IterSource(range(20_000)))
                .map("check", check)
                .key_distribute("key", lambda v: v % 7)
                .assign_timestamps("ts", lambda v: v - (v % 5) * 37)  # out of order
                .limit_out_of_orderness("ooo", 100)
            )
            both = on_time.union("u", behind)
            res, too_late = both.window("sess", Session(30), Count(), allowed_lateness=60)
            res.stateful_op("collect", _CollectAtEnd()).sink("out", sink)
            too_late.map("tag", lambda v: ("late", v)).key_local("k", lambda v: "late").stateful_op(
                "collect-late", _CollectAtEnd()
            ).sink("out-late", sink)

        return build

    want = ListSink()
    SingleThreadRuntime(build_for(want, None)).execute()
    with job_fails_with(OperatorError):
        SingleThreadRuntime(
            build_for(ListSink(), 15_000), persistence=p, snapshot_interval=0.0005
        ).execute()
    assert p.last_committed() is not None
    got = ListSink()
    rt = SingleThreadRuntime(build_for(got, None), persistence=p)
    rt.execute()
    assert rt.restored_from is not None
    assert sorted(map(repr, got.records)) == sorted(map(repr, want.records))


# ----- errors ---------------------------------------------------------------------------------


def keyed_stream(p: StreamProvider) -> Stream:
    return p.new_stream().source("src", IterSource([1])).key_distribute("k", lambda v: v)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("w", "tumbling", Count()), "assigner must be"),
        (("w", Tumbling(5), object()), "aggregator.create"),
        (("w", Session(5), Fold(int, lambda a, v: a + v)), "Fold needs merge"),
        (("w::x", Tumbling(5), Count()), "reserved"),
    ],
)
def test_window_build_errors_name_the_operator(args: tuple[Any, ...], message: str) -> None:
    def build(p: StreamProvider) -> None:
        keyed_stream(p).window(*args)

    with pytest.raises(BuildError, match=message):
        SingleThreadRuntime(build).execute()


def test_window_needs_merge_only_for_sessions_and_lateness_non_negative() -> None:
    class NoMerge:
        def create(self) -> int:
            return 0

        def add(self, acc: int, v: Any) -> int:
            return acc + 1

        def result(self, acc: int) -> int:
            return acc

    def ok(p: StreamProvider) -> None:
        keyed_stream(p).window("w", Tumbling(5), NoMerge())

    SingleThreadRuntime(ok).execute()

    def session(p: StreamProvider) -> None:
        keyed_stream(p).window("w", Session(5), NoMerge())

    with pytest.raises(BuildError, match=r"'w'.*aggregator.merge"):
        SingleThreadRuntime(session).execute()

    def negative(p: StreamProvider) -> None:
        keyed_stream(p).window("w", Tumbling(5), Count(), allowed_lateness=-1)

    with pytest.raises(BuildError, match=r"'w'.*allowed_lateness"):
        SingleThreadRuntime(negative).execute()


def test_assigner_and_aggregator_arguments_are_checked() -> None:
    for bad in (lambda: Tumbling(0), lambda: Sliding(5, -1), lambda: Session(timedelta(0))):
        with pytest.raises(ValueError, match="positive"):
            bad()
    with pytest.raises(ValueError):
        Reduce(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fold(list, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="merge"):
        Fold(int, lambda a, v: a).merge(1, 2)


def test_aggregator_errors_become_operator_errors() -> None:
    with job_fails_with(OperatorError, match="'win'") as info:
        windowed([("k", 1, 0), ("k", 2, "x")], Tumbling(10), Sum())
    assert isinstance(info.value.__cause__, TypeError)
    assert info.value.record == Record("k", "x", 2)


# ----- documentation and the example ----------------------------------------------------------


def test_module_docstring_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    doc = malstrom.windows.__doc__ or ""
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", doc)
    code = next(b for b in blocks if "SingleThreadRuntime(build).execute()" in b)
    printed = blocks[blocks.index(code) + 1]
    script = tmp_path / "doc_example.py"
    script.write_text(re.sub(r"(?m)^    ", "", code))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [line.strip() for line in printed.strip().splitlines()]


def test_windowed_count_example_prints_per_second_counts() -> None:
    script = ROOT / "examples" / "windowed_count.py"
    tree = ast.parse(script.read_text())
    assert ast.get_docstring(tree)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "build" for n in tree.body)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "late: sensor-a @0.400",
        "[0.000, 1.000) sensor-a: 3",
        "[0.000, 1.000) sensor-b: 1",
        "[1.000, 2.000) sensor-b: 2",
        "[1.000, 2.000) sensor-a: 1",
        "[2.000, 3.000) sensor-a: 2",
        "[3.000, 4.000) sensor-b: 1",
    ]
