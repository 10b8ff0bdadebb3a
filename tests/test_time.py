"""Event time: assign_timestamps, generate_epochs, limit_out_of_orderness, MAX/MIN."""

from __future__ import annotations

import operator as op
import pickle
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from malstrom import MAX, MIN, NoKey, Record, SingleThreadRuntime, StatelessSource, StreamProvider
from malstrom.sinks import ListSink
from malstrom.sources import IterSource
from malstrom.testing import TimedSource

# ----- helpers --------------------------------------------------------------------------------


def one_by_one(items: Iterable[tuple[Any, Any]]) -> TimedSource:
    return TimedSource(items)


def stamped(timestamps: Iterable[Any]) -> StatelessSource:
    """Each timestamp as its own record (value = timestamp), one per batch."""
    return one_by_one((t, t) for t in timestamps)


class Run:
    """Builds source -> generator -> (on_time, late) sinks with frontier probes on both."""

    def __init__(self) -> None:
        self.on_time = ListSink()
        self.late = ListSink()
        self.on_time_epochs: list[Any] = []
        self.late_epochs: list[Any] = []

    def wire(self, streams: tuple[Any, Any]) -> None:
        on_time, late = streams
        on_time.inspect_frontier("on_time_front", lambda t, c: self.on_time_epochs.append(t)).sink(
            "on_time_sink", self.on_time
        )
        late.inspect_frontier("late_front", lambda t, c: self.late_epochs.append(t)).sink(
            "late_sink", self.late
        )


def run_ooo(source: Any, bound: Any) -> Run:
    r = Run()

    def build(p: StreamProvider) -> None:
        r.wire(p.new_stream().source("src", source).limit_out_of_orderness("ooo", bound))

    SingleThreadRuntime(build).execute()
    return r


def run_gen(source: Any, gen: Any) -> Run:
    r = Run()

    def build(p: StreamProvider) -> None:
        r.wire(p.new_stream().source("src", source).generate_epochs("gen", gen))

    SingleThreadRuntime(build).execute()
    return r


# ----- assign_timestamps ----------------------------------------------------------------------


def test_assign_timestamps_replaces_timestamps() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("src", IterSource(["a", "bbb", "cc"]))
            .key_local("k", str.upper)
            .assign_timestamps("ts", len)
            .sink("sink", sink)
        )

    SingleThreadRuntime(build).execute()
    assert sink.records == [Record("A", "a", 1), Record("BBB", "bbb", 3), Record("CC", "cc", 2)]


def test_assign_timestamps_drops_epochs_except_max() -> None:
    before: list[Any] = []
    after: list[Any] = []
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", stamped(range(5)))
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        (
            on_time.inspect_frontier("before", lambda t, c: before.append(t))
            .assign_timestamps("ts", lambda v: -v)
            .inspect_frontier("after", lambda t, c: after.append(t))
            .sink("sink", sink)
        )

    SingleThreadRuntime(build).execute()
    assert before == [0, 1, 2, 3, 4, MAX]
    assert after == [MAX]
    assert [(r.value, r.timestamp) for r in sink.records] == [(v, -v) for v in range(5)]


def test_assign_timestamps_then_generate_epochs() -> None:
    r = Run()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one([("a", 0), ("b", 0), ("c", 0)]))
        stamped_s = s.assign_timestamps("ts", lambda v: {"a": 10, "b": 30, "c": 20}[v])
        r.wire(stamped_s.limit_out_of_orderness("ooo", 5))

    SingleThreadRuntime(build).execute()
    assert r.on_time_epochs == [5, 25, MAX]
    assert [x.value for x in r.on_time.records] == ["a", "b"]
    assert r.late.records == [Record(NoKey, "c", 20)]


# ----- generate_epochs ------------------------------------------------------------------------


def test_generate_epochs_reference_sequence() -> None:
    # Reference unit test: gen = timestamp + prev (prev None counts as 0).
    r = run_gen(stamped(range(10)), lambda rec, prev: rec.timestamp + (prev or 0))
    assert r.on_time_epochs == [0, 1, 3, 6, 10, 15, 21, 28, 36, 45, MAX]
    # both outputs carry the same epochs
    assert r.late_epochs == r.on_time_epochs


def test_generate_epochs_ignores_smaller_and_none_candidates() -> None:
    table = {0: 0, 1: None, 2: 2, 3: 1, 4: 4, 5: 3, 6: 5}
    calls: list[tuple[Any, Any]] = []

    def gen(rec: Record, prev: Any) -> Any:
        calls.append((rec.timestamp, prev))
        return table[rec.timestamp]

    r = run_gen(stamped(range(7)), gen)
    assert r.on_time_epochs == [0, 2, 4, 5, MAX]
    # gen sees the last emitted epoch (None before the first)
    assert calls == [(0, None), (1, 0), (2, 0), (3, 2), (4, 2), (5, 4), (6, 4)]


def test_generate_epochs_gen_receives_the_record() -> None:
    got: list[Any] = []

    def gen(rec: Record, prev: Any) -> Any:
        got.append(rec)
        return None

    r = run_gen(one_by_one([("x", 3), ("y", 1)]), gen)
    assert got == [Record(NoKey, "x", 3), Record(NoKey, "y", 1)]
    # no epoch was ever generated: everything is on time and only MAX passes
    assert [x.value for x in r.on_time.records] == ["x", "y"]
    assert r.late.records == []
    assert r.on_time_epochs == [MAX]
    assert r.late_epochs == [MAX]


def test_generate_epochs_on_time_and_late_classification() -> None:
    # Reference: input 5..10 then 0..5 with limit 0 -> on time 5..9, late 0..4.
    r = run_ooo(stamped([*range(5, 10), *range(5)]), 0)
    assert [x.value for x in r.on_time.records] == [5, 6, 7, 8, 9]
    assert [x.value for x in r.late.records] == [0, 1, 2, 3, 4]
    assert r.on_time_epochs == [5, 6, 7, 8, 9, MAX]


def test_classification_is_the_same_with_all_records_in_one_batch() -> None:
    r = Run()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", IterSource([*range(5, 10), *range(5)]))
        r.wire(s.assign_timestamps("ts", lambda v: v).limit_out_of_orderness("ooo", 0))

    SingleThreadRuntime(build).execute()
    assert [x.value for x in r.on_time.records] == [5, 6, 7, 8, 9]
    assert [x.value for x in r.late.records] == [0, 1, 2, 3, 4]
    # one epoch per batch is allowed (the largest), then MAX
    assert r.on_time_epochs[-1] is MAX
    assert r.on_time_epochs[:-1] in ([9], [5, 6, 7, 8, 9])


def test_late_records_are_passed_unchanged() -> None:
    r = run_ooo(one_by_one([("a", 10), ("b", 3)]), 0)
    assert r.on_time.records == [Record(NoKey, "a", 10)]
    assert r.late.records == [Record(NoKey, "b", 3)]


def test_equal_to_last_epoch_is_late() -> None:
    r = run_ooo(stamped([3, 3, 4]), 0)
    assert [x.value for x in r.on_time.records] == [3, 4]
    assert [x.value for x in r.late.records] == [3]


def test_first_record_is_always_on_time() -> None:
    r = run_gen(stamped([-100]), lambda rec, prev: 10**9)
    assert [x.value for x in r.on_time.records] == [-100]
    assert r.late.records == []


def test_limit_out_of_orderness_with_bound() -> None:
    # epoch after 10 is 8; 9 (> 8) on time, 8 and 7 late; candidates 7, 6, 5 are ignored.
    r = run_ooo(stamped([10, 9, 8, 7, 12]), 2)
    assert [x.value for x in r.on_time.records] == [10, 9, 12]
    assert [x.value for x in r.late.records] == [8, 7]
    assert r.on_time_epochs == [8, 10, MAX]


def test_limit_out_of_orderness_with_floats() -> None:
    r = run_ooo(stamped([1.5, 1.0, 3.25, 2.5]), 0.5)
    assert [x.value for x in r.on_time.records] == [1.5, 3.25]
    assert [x.value for x in r.late.records] == [1.0, 2.5]  # 1.0 equals the epoch 1.5 - 0.5
    assert r.on_time_epochs == [1.0, 2.75, MAX]


def test_limit_out_of_orderness_with_datetimes() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    m = timedelta(minutes=1)
    ts = [t0 + 10 * m, t0 + 6 * m, t0 + 4 * m, t0 + 20 * m, t0 + 15 * m, t0 + 14 * m]
    r = run_ooo(stamped(ts), timedelta(minutes=5))
    assert [x.value for x in r.on_time.records] == [t0 + 10 * m, t0 + 6 * m, t0 + 20 * m]
    assert [x.value for x in r.late.records] == [t0 + 4 * m, t0 + 15 * m, t0 + 14 * m]
    assert r.on_time_epochs == [t0 + 5 * m, t0 + 15 * m, MAX]
    assert r.late_epochs == r.on_time_epochs


def test_custom_generator_with_datetimes_closes_months() -> None:
    # Like the reference event_time example: an epoch at the start of each record's month.
    def gen(rec: Record, prev: Any) -> Any:
        d = rec.timestamp
        return datetime(d.year, d.month, 1) - timedelta(microseconds=1)

    days = [
        datetime(2025, 1, 5),
        datetime(2025, 1, 20),
        datetime(2025, 2, 3),
        datetime(2025, 1, 30),
    ]
    r = run_gen(stamped(days), gen)
    assert r.on_time_epochs == [
        datetime(2024, 12, 31, 23, 59, 59, 999999),
        datetime(2025, 1, 31, 23, 59, 59, 999999),
        MAX,
    ]
    assert [x.value for x in r.late.records] == [datetime(2025, 1, 30)]


def test_late_stream_receives_max_and_ends() -> None:
    r = run_ooo(stamped([5, 1]), 0)
    assert r.late_epochs[-1] is MAX
    assert r.late_epochs == r.on_time_epochs == [5, MAX]


def test_late_stream_without_late_records_still_ends() -> None:
    r = run_ooo(IterSource([1, 2, 3]), 0)
    assert r.late.records == []
    assert r.late_epochs == r.on_time_epochs == [2, MAX]


def test_upstream_epochs_pass_generate_epochs_only_when_rising() -> None:
    seen: list[Any] = []
    late = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", stamped([0, 10, 20, 30]))
        first, _ = s.limit_out_of_orderness("first", 0)  # epochs 0, 10, 20, 30
        # The second generator jumps to 110 at record 10; upstream epochs 10, 20, 30 are not
        # above it and are dropped, and records 20, 30 are now late.
        second, second_late = first.generate_epochs(
            "second", lambda rec, prev: 110 if rec.timestamp == 10 else None
        )
        second.inspect_frontier("front", lambda t, c: seen.append(t))
        second_late.sink("late", late)

    SingleThreadRuntime(build).execute()
    assert seen == [0, 110, MAX]
    assert late.values == [20, 30]


def test_union_of_on_time_and_late_gets_every_record() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", stamped([4, 2, 6, 1, 8]))
        on_time, late = s.limit_out_of_orderness("ooo", 0)
        on_time.union("u", late.map("mark", lambda v: -v)).sink("sink", sink)

    SingleThreadRuntime(build).execute()
    assert sorted(sink.values) == [-2, -1, 4, 6, 8]


# ----- MAX / MIN ------------------------------------------------------------------------------


SAMPLES: list[Any] = [
    0,
    -(10**100),
    10**100,
    1.5,
    float("inf"),
    float("-inf"),
    datetime(2025, 1, 1),
    datetime(1, 1, 1, tzinfo=UTC),
    "",
    "zzz",
    (),
    (1, "a"),
    timedelta(days=3),
    b"bytes",
]


@pytest.mark.parametrize("x", SAMPLES, ids=repr)
def test_max_and_min_compare_with_everything(x: Any) -> None:
    # Both operand orders: the sentinel's own methods and the reflected ones.
    assert op.lt(x, MAX) and op.gt(MAX, x)
    assert op.le(x, MAX) and op.ge(MAX, x)
    assert not op.gt(x, MAX) and not op.lt(MAX, x)
    assert not op.ge(x, MAX) and not op.le(MAX, x)
    assert op.lt(MIN, x) and op.gt(x, MIN)
    assert op.le(MIN, x) and op.ge(x, MIN)
    assert not op.gt(MIN, x) and not op.lt(x, MIN)
    assert op.ne(x, MAX) and op.ne(MAX, x) and op.ne(x, MIN) and op.ne(MIN, x)
    assert not op.eq(x, MAX) and not op.eq(MIN, x)
    assert max(x, MAX) is MAX and max(MAX, x) is MAX
    assert min(x, MIN) is MIN and min(MIN, x) is MIN
    assert min(x, MAX) == x and max(MIN, x) == x


def test_max_and_min_against_themselves() -> None:
    assert MAX == MAX and MIN == MIN and MAX != MIN
    assert MAX >= MAX and MAX <= MAX and not (MAX < MAX) and not (MAX > MAX)
    assert MIN >= MIN and MIN <= MIN and not (MIN < MIN) and not (MIN > MIN)
    assert MIN < MAX and MAX > MIN and not (MAX < MIN)
    assert repr(MAX) == "MAX" and repr(MIN) == "MIN"


def test_sorting_with_sentinels() -> None:
    assert sorted([3, MAX, 1, MIN, 2]) == [MIN, 1, 2, 3, MAX]
    assert sorted(["b", MIN, "a", MAX]) == [MIN, "a", "b", MAX]
    d = [datetime(2025, 3, 1), MAX, datetime(2024, 1, 1), MIN]
    assert sorted(d) == [MIN, datetime(2024, 1, 1), datetime(2025, 3, 1), MAX]


def test_sentinels_survive_pickling_as_the_same_objects() -> None:
    assert pickle.loads(pickle.dumps(MAX)) is MAX
    assert pickle.loads(pickle.dumps(MIN)) is MIN
    assert pickle.loads(pickle.dumps(NoKey)) is NoKey
    assert hash(MAX) == hash(pickle.loads(pickle.dumps(MAX)))


def test_max_minus_a_bound_is_still_max() -> None:
    assert MAX - 5 is MAX
    assert MAX - timedelta(days=1) is MAX
    assert MAX + 1 is MAX


def test_record_repr() -> None:
    assert repr(Record(NoKey, "LOOK", 0)) == "Record(key=NoKey, value='LOOK', timestamp=0)"
    assert Record(NoKey, 1, MAX).timestamp is MAX
