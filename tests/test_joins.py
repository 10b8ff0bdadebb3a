"""Keyed joins: ``join`` (same window) and ``interval_join`` (time bounds).

Pairs are checked against brute-force models (every pair of on-time records of one key that
share a window / satisfy the bounds), on one worker and across workers; state must stay
bounded on long inputs, late records are dropped and counted, and state survives crashes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from malstrom import (
    MAX,
    BuildError,
    OperatorError,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatefulSource,
    Stream,
    StreamProvider,
)
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators.joins import IntervalJoinOp, WindowJoinOp, _JoinOp
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.sources import IterSource
from malstrom.testing import TimedSource, run_local_cluster
from malstrom.windows import Session, Sliding, Tumbling

# ----- helpers --------------------------------------------------------------------------------


def one_by_one(values: Iterable[Any]) -> TimedSource:
    """Each value in its own batch."""
    return TimedSource((v, 0) for v in values)


Event = tuple[Any, Any, Any]  # (key, timestamp, tag)


def side(p: StreamProvider, name: str, events: list[Event], bound: Any) -> Stream:
    """A keyed, timestamped stream of ``events`` (on-time records only)."""
    on_time, _late = (
        p.new_stream()
        .source(f"{name}-src", one_by_one(events))
        .key_distribute(f"{name}-key", lambda e: e[0])
        .assign_timestamps(f"{name}-ts", lambda e: e[1])
        .limit_out_of_orderness(f"{name}-ooo", bound)
    )
    return on_time.map(f"{name}-tag", lambda e: e[2])


def on_time(events: list[Event], bound: Any) -> list[Event]:
    """The records ``limit_out_of_orderness(bound)`` lets through."""
    out, prev = [], None
    for e in events:
        if prev is None or e[1] > prev:
            out.append(e)
        cand = e[1] - bound
        if prev is None or cand > prev:
            prev = cand
    return out


def join_model(left: list[Event], right: list[Event], assigner: Any) -> Counter[Any]:
    """Every pair of one key per shared window (found by enumeration)."""

    def windows(t: int) -> set[int]:
        slide = assigner.slide if isinstance(assigner, Sliding) else assigner.size
        starts = (assigner.offset + k * slide for k in range(-300, 300))
        return {s for s in starts if s <= t < s + assigner.size}

    out: Counter[Any] = Counter()
    for lk, lt, lv in left:
        for rk, rt, rv in right:
            if lk == rk:
                for _ in windows(lt) & windows(rt):
                    out[Record(lk, (lv, rv), max(lt, rt))] += 1
    return out


def interval_model(left: list[Event], right: list[Event], lower: int, upper: int) -> Counter[Any]:
    out: Counter[Any] = Counter()
    for lk, lt, lv in left:
        for rk, rt, rv in right:
            if lk == rk and lt + lower <= rt <= lt + upper:
                out[Record(lk, (lv, rv), max(lt, rt))] += 1
    return out


def run_join(
    left: list[Event],
    right: list[Event],
    how: Any,
    bound: Any = 0,
    workers: int = 1,
) -> list[Record]:
    """``how`` is an assigner (join) or a ``(lower, upper)`` pair (interval_join)."""
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        a, b = side(p, "left", left, bound), side(p, "right", right, bound)
        if isinstance(how, tuple):
            a.interval_join("join", b, *how).sink("out", sink)
        else:
            a.join("join", b, how).sink("out", sink)

    if workers == 1:
        SingleThreadRuntime(build).execute()
    else:
        run_local_cluster(build, workers)
    return sink.records


# ----- window join ----------------------------------------------------------------------------


def test_join_pairs_same_key_same_window_with_larger_timestamp() -> None:
    left = [("a", 1, "l1"), ("b", 3, "l2"), ("a", 12, "l3")]
    right = [("a", 5, "r1"), ("a", 9, "r2"), ("b", 11, "r3"), ("a", 15, "r4")]
    got = run_join(left, right, Tumbling(10))
    assert Counter(got) == Counter(
        [
            Record("a", ("l1", "r1"), 5),
            Record("a", ("l1", "r2"), 9),
            Record("a", ("l3", "r4"), 15),
        ]
    )


def test_join_emits_as_soon_as_both_sides_are_present() -> None:
    """Pairs arrive before the window closes: before any epoch past the window's end."""
    log: list[Any] = []
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = (
            p.new_stream()
            .source(
                "src", one_by_one([("L", "k", 1, "l1"), ("R", "k", 2, "r1"), ("L", "k", 3, "l2")])
            )
            .assign_timestamps("ts", lambda e: e[2])
        )
        ot, _ = s.limit_out_of_orderness("ooo", 0)
        left, right = ot.split("split", 2, lambda r, out: out.__setitem__(r.value[0] == "R", True))
        a = left.key_distribute("kl", lambda e: e[1]).map("vl", lambda e: e[3])
        b = right.key_distribute("kr", lambda e: e[1]).map("vr", lambda e: e[3])
        (
            a.join("join", b, Tumbling(100))
            .inspect("log", lambda r, c: log.append(r))
            .inspect_frontier("front", lambda t, c: log.append(("epoch", t)))
            .sink("out", sink)
        )

    SingleThreadRuntime(build).execute()
    assert sink.records == [Record("k", ("l1", "r1"), 2), Record("k", ("l2", "r1"), 3)]
    assert log.index(sink.records[-1]) < log.index(("epoch", MAX))


def test_sliding_join_pairs_once_per_shared_window() -> None:
    got = run_join([("k", 4, "l")], [("k", 6, "r"), ("k", 12, "s")], Sliding(10, 5))
    # 4 is in [-5, 5) and [0, 10); 6 in [0, 10) and [5, 15); 12 in [5, 15) and [10, 20)
    assert Counter(got) == Counter({Record("k", ("l", "r"), 6): 1})
    got = run_join([("k", 6, "l")], [("k", 7, "r")], Sliding(10, 5))
    assert Counter(got) == Counter({Record("k", ("l", "r"), 7): 2})


def test_join_with_datetimes() -> None:
    t0 = datetime(2024, 5, 1, 12, 0)
    m = timedelta(minutes=1)
    left = [("k", t0 + 10 * m, "l")]
    right = [("k", t0 + 50 * m, "r"), ("k", t0 + 70 * m, "s")]
    assert run_join(left, right, Tumbling(timedelta(hours=1)), bound=timedelta(0)) == [
        Record("k", ("l", "r"), t0 + 50 * m)
    ]
    assert run_join(left, right, (timedelta(0), 59 * m), bound=timedelta(0)) == [
        Record("k", ("l", "r"), t0 + 50 * m)
    ]


events = st.lists(st.tuples(st.sampled_from("xyz"), st.integers(-20, 60)), max_size=25)


def tagged(evs: list[tuple[str, int]], prefix: str) -> list[Event]:
    return [(k, t, f"{prefix}{i}") for i, (k, t) in enumerate(evs)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    left=events,
    right=events,
    assigner=st.one_of(
        st.builds(Tumbling, st.integers(1, 15), st.integers(-5, 5)),
        st.builds(Sliding, st.integers(1, 15), st.integers(1, 15), st.integers(-5, 5)),
    ),
    bound=st.integers(0, 10),
)
def test_join_matches_brute_force_model(
    left: list[tuple[str, int]], right: list[tuple[str, int]], assigner: Any, bound: int
) -> None:
    lt, rt = tagged(left, "l"), tagged(right, "r")
    got = run_join(lt, rt, assigner, bound)
    assert Counter(got) == join_model(on_time(lt, bound), on_time(rt, bound), assigner)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    left=events,
    right=events,
    lower=st.integers(-12, 8),
    width=st.integers(0, 12),
    bound=st.integers(0, 10),
)
def test_interval_join_matches_brute_force_model(
    left: list[tuple[str, int]], right: list[tuple[str, int]], lower: int, width: int, bound: int
) -> None:
    lt, rt = tagged(left, "l"), tagged(right, "r")
    got = run_join(lt, rt, (lower, lower + width), bound)
    want = interval_model(on_time(lt, bound), on_time(rt, bound), lower, lower + width)
    assert Counter(got) == want


@pytest.mark.parametrize("n", [2, 3])
def test_joins_are_exact_across_workers(n: int) -> None:
    left = [(f"k{i % 17}", i // 3, f"l{i}") for i in range(600)]
    right = [(f"k{i % 13}", i // 4 + (i % 5), f"r{i}") for i in range(600)]
    for how in (Tumbling(10), Sliding(10, 5), (-3, 4)):
        got = run_join(left, right, how, bound=5, workers=n)
        lo, ro = on_time(left, 5), on_time(right, 5)
        want = interval_model(lo, ro, *how) if isinstance(how, tuple) else join_model(lo, ro, how)
        assert Counter(got) == want
        assert len(got) > 100


# ----- bounded state, late records ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["join", "interval"])
def test_join_state_stays_bounded_on_a_long_input(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    on_epoch = _JoinOp.on_epoch

    def watch(self: _JoinOp, ts: Any) -> None:
        on_epoch(self, ts)
        sizes.append(self.state_size())

    monkeypatch.setattr(_JoinOp, "on_epoch", watch)
    n = 100_000
    count = ListSink()

    def build(p: StreamProvider) -> None:
        def stream(name: str, shift: int) -> Stream:
            ot, _ = (
                p.new_stream()
                .source(name, IterSource(range(n)))
                .key_distribute(f"{name}-key", lambda v: v % 10)
                .assign_timestamps(f"{name}-ts", lambda v: v + shift)
                .limit_out_of_orderness(f"{name}-ooo", 0)
            )
            return ot

        a, b = stream("a", 0), stream("b", 3)
        joined = a.join("j", b, Tumbling(50)) if kind == "join" else a.interval_join("j", b, -5, 5)
        joined.filter("sample", lambda v: v[0] % 1000 == 0).sink("out", count)

    SingleThreadRuntime(build).execute()
    assert count.records  # it did join
    assert len(sizes) > 40
    # Each side's records sit in state only while they can still match: a few source batches
    # (2048 records each), far below the 2 * n records a join without expiry would hold.
    assert max(sizes) < 6 * 2048
    assert sizes[-1] == 0


def test_late_records_are_dropped_counted_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops: list[_JoinOp] = []
    for cls in (WindowJoinOp, IntervalJoinOp):
        init = cls.__init__

        def remember(self: Any, *args: Any, _init: Any = init) -> None:
            _init(self, *args)
            ops.append(self)

        monkeypatch.setattr(cls, "__init__", remember)

    def run(kind: str, events: list[tuple[str, int, str]]) -> list[Record]:
        sink = ListSink()

        def build(p: StreamProvider) -> None:
            ot, late = (
                p.new_stream()
                .source("src", one_by_one(events))
                .assign_timestamps("ts", lambda e: e[1])
                .limit_out_of_orderness("ooo", 0)
            )
            both = ot.union("u", late)  # late records reach the join
            left, right = both.split(
                "split", 2, lambda r, o: o.__setitem__(r.value[0] == "R", True)
            )
            a = left.key_distribute("kl", lambda e: "k").map("vl", lambda e: e[2])
            b = right.key_distribute("kr", lambda e: "k").map("vr", lambda e: e[2])
            j = (
                a.join("join", b, Tumbling(10))
                if kind == "join"
                else a.interval_join("join", b, 0, 5)
            )
            j.sink("out", sink)

        SingleThreadRuntime(build).execute()
        return sink.records

    events = [
        ("L", 5, "l1"),
        ("R", 7, "r1"),
        ("L", 25, "l2"),  # epoch 25 closes [0, 10) and [10, 20)
        ("R", 3, "late"),  # its only window is closed: dropped
        ("R", 12, "late2"),
        ("R", 22, "r2"),  # behind the frontier, but [20, 30) is open: joins l2
    ]
    with caplog.at_level(logging.WARNING, logger="malstrom.operators.joins"):
        got = run("join", events)
    assert got == [Record("k", ("l1", "r1"), 7), Record("k", ("l2", "r2"), 25)]
    assert ops[-1].late_records == 2
    warnings = [r for r in caplog.records if "late record" in r.getMessage()]
    assert len(warnings) == 1  # rate limited: the second drop follows within seconds
    assert "'join'" in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="malstrom.operators.joins"):
        got = run("interval", [("L", 5, "l1"), ("R", 7, "r1"), ("L", 9, "l2"), ("R", 8, "late")])
    assert got == [Record("k", ("l1", "r1"), 7)]
    assert ops[-1].late_records == 1
    assert len([r for r in caplog.records if "late record" in r.getMessage()]) == 1


# ----- snapshots ------------------------------------------------------------------------------


class _CollectAtEnd(StatefulLogic[Any, Any, list[Any], Any]):
    def on_data(self, record: Any, state: list[Any] | None, output: Any) -> list[Any]:
        return [*(state or []), (record.value, record.timestamp)]

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k, s in states.items():
                output.emit(sorted(s), key=k)


class Boom(Exception):
    pass


class _RangePart:
    """``range(n)`` in batches of 100, remembering how far it got."""

    def __init__(self, n: int, nxt: int) -> None:
        self.n, self.nxt = n, nxt

    def poll(self) -> tuple[int, int] | None:
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, k: int) -> list[tuple[int, int]]:
        stop = min(self.n, self.nxt + min(k, 100))
        out = [(v, v) for v in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= self.n

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class _Range:
    def __init__(self, n: int) -> None:
        self.n = n

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, part: str, state: object | None) -> _RangePart:
        return _RangePart(self.n, 0 if state is None else int(state))  # type: ignore[call-overload]


def crash_build(sink: ListSink, how: Any, crash_at: int | None) -> Any:
    def check(v: int) -> int:
        if v == crash_at:
            raise Boom(v)
        return v

    def build(p: StreamProvider) -> None:
        def stream(name: str, n: int, stamp: Any) -> Stream:
            ot, _ = (
                p.new_stream()
                .source(name, StatefulSource(_Range(n)))
                .map(f"{name}-check", check)
                .key_distribute(f"{name}-key", lambda v: v % 11)
                .assign_timestamps(f"{name}-ts", stamp)
                .limit_out_of_orderness(f"{name}-ooo", 40)
            )
            return ot

        a = stream("a", 8_000, lambda v: v - (v % 7) * 5)
        b = stream("b", 6_000, lambda v: v + v // 3 - (v % 3) * 4)
        j = a.interval_join("join", b, *how) if isinstance(how, tuple) else a.join("join", b, how)
        j.stateful_op("collect", _CollectAtEnd()).sink("out", sink)

    return build


@pytest.mark.parametrize("how", [Tumbling(25), Sliding(30, 10), (-6, 9)], ids=str)
def test_join_state_survives_a_crash_exactly_once(how: Any) -> None:
    want = ListSink()
    SingleThreadRuntime(crash_build(want, how, None)).execute()
    assert sum(len(r.value) for r in want.records) > 1000
    p = InMemoryPersistence()
    with pytest.raises(OperatorError) as info:
        run_local_cluster(
            crash_build(ListSink(), how, 5_500), 2, persistence=p, snapshot_interval=0.0005
        )
    assert isinstance(info.value.__cause__, Boom)
    assert p.last_committed() is not None
    got = ListSink()
    coord = run_local_cluster(crash_build(got, how, None), 3, persistence=p)
    assert coord.restored_from is not None
    assert sorted(map(repr, got.records)) == sorted(map(repr, want.records))


# ----- build errors ---------------------------------------------------------------------------


def keyed(p: StreamProvider, name: str, partitioner: Any = rendezvous_select) -> Stream:
    return (
        p.new_stream()
        .source(name, IterSource([1]))
        .key_distribute(f"{name}-k", lambda v: v, partitioner)
    )


def _other_partitioner(key: Any, workers: Any) -> int:
    return rendezvous_select(key, workers)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (lambda p: keyed(p, "a").join("j", keyed(p, "b"), Session(5)), r"'j'.*Session"),
        (lambda p: keyed(p, "a").join("j", keyed(p, "b"), 10), r"'j'.*Tumbling or Sliding"),
        (
            lambda p: keyed(p, "a").join("j", keyed(p, "b", _other_partitioner), Tumbling(5)),
            r"'j'.*same partitioner",
        ),
        (
            lambda p: keyed(p, "a").interval_join(
                "j", p.new_stream().source("b", IterSource([1])), 0, 1
            ),
            r"'j'.*right stream must be keyed by key_distribute",
        ),
        (
            lambda p: (
                p.new_stream().source("a", IterSource([1])).join("j", keyed(p, "b"), Tumbling(5))
            ),
            r"'j'.*left stream must be keyed by key_distribute",
        ),
        (
            lambda p: (
                keyed(p, "a").key_local("kl", lambda v: v).join("j", keyed(p, "b"), Tumbling(5))
            ),
            r"'j'.*left stream must be keyed",
        ),
        (
            lambda p: keyed(p, "a").interval_join("j", keyed(p, "b"), 5, 1),
            r"'j'.*lower <= upper",
        ),
        (lambda p: keyed(p, "a").interval_join("j", "b", 0, 1), r"'j'.*same job"),
        (
            lambda p: keyed(p, "a").join("j", p.new_stream(), Tumbling(5)),
            r"'j'.*right stream must be keyed",
        ),
        (lambda p: keyed(p, "a").join("j::x", keyed(p, "b"), Tumbling(5)), "reserved"),
    ],
)
def test_join_build_errors_name_the_operator(wire: Any, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        SingleThreadRuntime(wire).execute()


def test_join_accepts_keyed_streams_after_maps_unions_and_windows() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        a = keyed(p, "a").map("m", lambda v: v).assign_timestamps("ta", lambda v: 0)
        b = keyed(p, "b").union("u", keyed(p, "c")).assign_timestamps("tb", lambda v: 0)
        a.join("j", b, Tumbling(5)).interval_join("ij", a, -1, 1).sink("out", sink)

    SingleThreadRuntime(build).execute()
    assert sink.records == [Record(1, ((1, 1), 1), 0), Record(1, ((1, 1), 1), 0)]
