"""One or more tests per Stream method, run on SingleThreadRuntime into a ListSink."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import pytest

from malstrom import (
    MAX,
    ExpireMap,
    NoKey,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatelessLogic,
    StatelessSource,
    Stream,
    StreamProvider,
)
from malstrom.sinks import ListSink
from malstrom.sources import IterSource

# ----- helpers --------------------------------------------------------------------------------


class _OneByOnePart:
    """Yields one ``(value, timestamp)`` per poll, so every record travels in its own batch."""

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items
        self.i = 0
        self.polls = 0

    def poll(self) -> tuple[Any, Any] | None:
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, n: int) -> list[tuple[Any, Any]]:
        self.polls += 1
        if self.i >= len(self.items):
            return []
        item = self.items[self.i]
        self.i += 1
        return [item]

    def is_finished(self) -> bool:
        return self.i >= len(self.items)


class OneByOne:
    """A one-part stateless source emitting one record per batch."""

    def __init__(self, items: Iterable[tuple[Any, Any]], part: Any = NoKey) -> None:
        self.items = list(items)
        self.part = part
        self.built: list[_OneByOnePart] = []

    def list_parts(self) -> list[Any]:
        return [self.part]

    def build_part(self, part: Any) -> _OneByOnePart:
        p = _OneByOnePart(self.items)
        self.built.append(p)
        return p


def one_by_one(items: Iterable[tuple[Any, Any]], part: Any = NoKey) -> StatelessSource:
    return StatelessSource(OneByOne(items, part))


def run(build: Callable[[StreamProvider], None]) -> None:
    SingleThreadRuntime(build).execute()


def pipe(values: list[Any], extend: Callable[[Stream], Stream]) -> list[Record]:
    """Run ``IterSource(values) -> extend(...) -> ListSink`` and return the sink's records."""
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        extend(p.new_stream().source("src", IterSource(values))).sink("sink", sink)

    run(build)
    return sink.records


def R(value: Any, ts: Any, key: Any = NoKey) -> Record:
    return Record(key, value, ts)


# ----- map / filter / filter_map / flatten / flat_map -----------------------------------------


def test_map_replaces_values_and_keeps_key_and_timestamp() -> None:
    out = pipe([1, 2, 3], lambda s: s.map("m", lambda x: x * 10))
    assert out == [R(10, 0), R(20, 1), R(30, 2)]


def test_map_after_key_local_keeps_the_new_key() -> None:
    out = pipe(
        ["a", "bb", "ccc"],
        lambda s: s.key_local("k", len).map("m", str.upper),
    )
    assert out == [R("A", 0, 1), R("BB", 1, 2), R("CCC", 2, 3)]


def test_filter_keeps_records_whose_predicate_is_true() -> None:
    out = pipe(list(range(10)), lambda s: s.filter("f", lambda x: x % 3 == 0))
    assert out == [R(0, 0), R(3, 3), R(6, 6), R(9, 9)]


def test_filter_all_and_none() -> None:
    assert pipe([1, 2, 3], lambda s: s.filter("f", lambda x: True)) == [
        R(1, 0),
        R(2, 1),
        R(3, 2),
    ]
    assert pipe([1, 2, 3], lambda s: s.filter("f", lambda x: False)) == []


def test_filter_map_drops_only_none() -> None:
    # 0, False and "" are falsy but not None: they must be kept.
    table = {0: 0, 1: None, 2: False, 3: "", 4: None, 5: "five"}
    out = pipe(list(table), lambda s: s.filter_map("fm", table.__getitem__))
    assert out == [R(0, 0), R(False, 2), R("", 3), R("five", 5)]


def test_flatten_emits_one_record_per_element_with_input_key_and_timestamp() -> None:
    out = pipe([[1, 2], [], (3,), range(4, 6)], lambda s: s.flatten("fl"))
    assert out == [R(1, 0), R(2, 0), R(3, 2), R(4, 3), R(5, 3)]


def test_flat_map_accepts_generators_and_empty_results() -> None:
    def fn(x: int) -> Iterable[int]:
        yield from range(x)

    out = pipe([2, 0, 3], lambda s: s.key_local("k", lambda v: f"k{v}").flat_map("fm", fn))
    assert out == [
        R(0, 0, "k2"),
        R(1, 0, "k2"),
        R(0, 2, "k3"),
        R(1, 2, "k3"),
        R(2, 2, "k3"),
    ]


# ----- inspect / inspect_frontier -------------------------------------------------------------


def test_inspect_sees_records_and_context_and_passes_them_on() -> None:
    seen: list[tuple[Record, int, str]] = []

    def look(rec: Record, ctx: Any) -> None:
        seen.append((rec, ctx.worker_id, ctx.operator_name))

    out = pipe(["a", "b"], lambda s: s.inspect("peek", look).map("m", str.upper))
    assert seen == [(R("a", 0), 0, "peek"), (R("b", 1), 0, "peek")]
    assert all(isinstance(r, Record) for r, _, _ in seen)
    assert out == [R("A", 0), R("B", 1)]


def test_inspect_frontier_on_iter_source_sees_only_max() -> None:
    seen: list[Any] = []
    ctxs: list[tuple[int, str]] = []

    def look(ts: Any, ctx: Any) -> None:
        seen.append(ts)
        ctxs.append((ctx.worker_id, ctx.operator_name))

    out = pipe([1, 2], lambda s: s.inspect_frontier("front", look))
    assert seen == [MAX]
    assert seen[0] is MAX  # the sentinel itself, never a wrapper
    assert ctxs == [(0, "front")]
    assert out == [R(1, 0), R(2, 1)]


def test_inspect_frontier_sees_every_epoch_strictly_increasing_with_max_last() -> None:
    seen: list[Any] = []
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one((v, v) for v in [0, 3, 1, 5, 5, 8, 2, 9]))
        on_time, _late = s.limit_out_of_orderness("ooo", 0)
        on_time.inspect_frontier("front", lambda t, ctx: seen.append(t)).sink("sink", sink)

    run(build)
    assert seen == [0, 3, 5, 8, 9, MAX]
    assert [r.value for r in sink.records] == [0, 3, 5, 8, 9]


# ----- keys -----------------------------------------------------------------------------------


def test_key_local_rekeys_without_changing_value_or_timestamp() -> None:
    out = pipe([10, 11, 12, 13], lambda s: s.key_local("k", lambda v: v % 2))
    assert out == [R(10, 0, 0), R(11, 1, 1), R(12, 2, 0), R(13, 3, 1)]


def test_key_distribute_sets_keys_from_key_fn() -> None:
    out = pipe(["apple", "bob", "avocado", "cat"], lambda s: s.key_distribute("kd", lambda v: v[0]))
    assert out == [R("apple", 0, "a"), R("bob", 1, "b"), R("avocado", 2, "a"), R("cat", 3, "c")]


def test_key_distribute_with_custom_partitioner() -> None:
    calls: list[tuple[Any, tuple[int, ...]]] = []

    def part(key: Any, workers: Any) -> int:
        calls.append((key, tuple(workers)))
        return workers[0]

    out = pipe([1, 2, 3], lambda s: s.key_distribute("kd", lambda v: v % 2, part))
    assert out == [R(1, 0, 1), R(2, 1, 0), R(3, 2, 1)]
    assert all(w == (0,) for _, w in calls)


def test_key_distribute_feeds_keyed_state() -> None:
    out = pipe(
        [1, 2, 3, 4, 5, 6],
        lambda s: s.key_distribute("kd", lambda v: v % 3).stateful_map(
            "sum", lambda k, v, st: (st + v, st + v), initial=int
        ),
    )
    assert out == [
        R(1, 0, 1),
        R(2, 1, 2),
        R(3, 2, 0),
        R(5, 3, 1),
        R(7, 4, 2),
        R(9, 5, 0),
    ]


# ----- stateful_map ---------------------------------------------------------------------------


def test_stateful_map_running_sum_per_key() -> None:
    out = pipe(
        [1, 2, 3, 4, 5],
        lambda s: s.key_local("parity", lambda v: v % 2).stateful_map(
            "sum", lambda k, v, st: (st + v, st + v), initial=int
        ),
    )
    assert out == [R(1, 0, 1), R(2, 1, 0), R(4, 2, 1), R(6, 3, 0), R(9, 4, 1)]


def test_stateful_map_without_initial_gets_none_and_fn_sees_key() -> None:
    calls: list[tuple[Any, Any, Any]] = []

    def fn(k: Any, v: Any, st: Any) -> tuple[Any, Any]:
        calls.append((k, v, st))
        return (k, v, st), v

    out = pipe(["x", "y"], lambda s: s.stateful_map("sm", fn))
    assert calls == [(NoKey, "x", None), (NoKey, "y", "x")]
    assert out == [R((NoKey, "x", None), 0), R((NoKey, "y", "x"), 1)]


def test_stateful_map_initial_is_called_fresh_per_key() -> None:
    def fn(k: Any, v: Any, st: list[Any]) -> tuple[Any, Any]:
        st.append(v)
        return list(st), st

    out = pipe(
        [1, 2, 3, 4],
        lambda s: s.key_local("k", lambda v: v % 2).stateful_map("sm", fn, initial=list),
    )
    assert [r.value for r in out] == [[1], [2], [1, 3], [2, 4]]


def test_stateful_map_none_state_deletes_it() -> None:
    # A count that resets (deletes its state) whenever it sees a 0.
    def fn(k: Any, v: int, st: int) -> tuple[int, int | None]:
        if v == 0:
            return st, None
        return st + v, st + v

    out = pipe([1, 2, 0, 5, 0, 0, 7], lambda s: s.stateful_map("sm", fn, initial=lambda: 100))
    assert [r.value for r in out] == [101, 103, 103, 105, 105, 100, 107]


# ----- stateful_op ----------------------------------------------------------------------------


class _Collect(StatefulLogic[Any, Any, list[Any], Any]):
    """Collects values per key; flushes each key's list (explicit key) at every epoch."""

    def initial_state(self) -> list[Any]:
        return []

    def on_data(self, record: Record, state: list[Any] | None, output: Output[Any]) -> Any:
        assert state is not None
        state.append(record.value)
        if record.value == "drop":
            return None  # deletes the key's state
        output.emit(("seen", len(state)))  # default key and timestamp of the record
        return state

    def on_epoch(self, epoch: Any, states: Any, output: Output[Any]) -> None:
        for key in sorted(states):
            output.emit(("flush", list(states[key])), key=key)
        states.clear()


def test_stateful_op_on_data_defaults_key_and_timestamp_and_none_deletes_state() -> None:
    out = pipe(
        ["a", "b", "drop", "c", "x"],
        lambda s: s.key_local("k", lambda v: "x" if v == "x" else "letters").stateful_op(
            "op", _Collect()
        ),
    )
    assert out[:4] == [
        R(("seen", 1), 0, "letters"),
        R(("seen", 2), 1, "letters"),
        # "drop" deleted the state: "c" starts from initial_state() again
        R(("seen", 1), 3, "letters"),
        R(("seen", 1), 4, "x"),
    ]
    # Epoch(MAX) flushes every key with the explicit key and the epoch as timestamp.
    assert out[4:] == [R(("flush", ["c"]), MAX, "letters"), R(("flush", ["x"]), MAX, "x")]


def test_stateful_op_on_epoch_emits_before_the_epoch() -> None:
    events: list[Any] = []

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one([("a", 1), ("b", 2), ("c", 5)]))
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        (
            on_time.stateful_op("op", _Collect())
            .inspect("rec", lambda r, ctx: events.append(("rec", r.value, r.timestamp)))
            .inspect_frontier("front", lambda t, ctx: events.append(("epoch", t)))
        )

    run(build)
    assert events == [
        ("rec", ("seen", 1), 1),
        ("rec", ("flush", ["a"]), 1),
        ("epoch", 1),
        ("rec", ("seen", 1), 2),
        ("rec", ("flush", ["b"]), 2),
        ("epoch", 2),
        ("rec", ("seen", 1), 5),
        ("rec", ("flush", ["c"]), 5),
        ("epoch", 5),
        ("epoch", MAX),  # no state left: nothing flushed at MAX
    ]


def test_stateful_op_on_epoch_may_set_timestamp_and_sees_all_keys() -> None:
    class Counts(StatefulLogic[Any, Any, int, Any]):
        def initial_state(self) -> int:
            return 0

        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return state + 1

        def on_epoch(self, epoch: Any, states: Any, output: Output[Any]) -> None:
            if epoch is MAX:
                output.emit(dict(states), key="all", timestamp=-1)

    out = pipe(list("abcab"), lambda s: s.key_local("k", str).stateful_op("op", Counts()))
    assert out == [R({"a": 2, "b": 2, "c": 1}, -1, "all")]


class _Scheduled(StatefulLogic[Any, Any, int, Any]):
    """Sums per key; on_schedule emits each key's total once the source says it is done."""

    def __init__(self) -> None:
        self.calls = 0

    def initial_state(self) -> int:
        return 0

    def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
        return state + record.value

    def on_schedule(self, states: Any, output: Output[Any]) -> None:
        self.calls += 1
        if self.calls == 200:
            for k in sorted(states):
                output.emit(("total", states[k]), key=k, timestamp=1000)


def test_stateful_op_on_schedule_runs_every_turn_and_emits_with_explicit_key_and_ts() -> None:
    logic = _Scheduled()
    sink = ListSink()
    src = OneByOne([(i, i) for i in range(300)])

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("src", StatelessSource(src))
            .key_local("k", lambda v: v % 2)
            .stateful_op("op", logic)
            .sink("sink", sink)
        )

    run(build)
    # One record per turn: on_schedule ran once per turn, at least once per source poll.
    assert logic.calls >= src.built[0].polls >= 300
    # At call 200 the states held the sums of the first 199 (or 200) records.
    totals = dict((r.key, r.value[1]) for r in sink.records)
    assert {r.timestamp for r in sink.records} == {1000}
    assert sorted(totals) == [0, 1]
    seen = sum(totals.values())
    assert seen in {sum(range(n)) for n in range(195, 201)}


def test_stateful_op_on_schedule_runs_while_idle() -> None:
    class Idle:
        """A part that produces nothing for a while (not finished), then one record."""

        def __init__(self) -> None:
            self.n = 0

        def poll(self) -> Any:
            self.n += 1
            return ("late", 0) if self.n == 50 else None

        def is_finished(self) -> bool:
            return self.n >= 50

    class Src:
        def list_parts(self) -> list[Any]:
            return ["p"]

        def build_part(self, part: Any) -> Idle:
            return Idle()

    class Count(StatefulLogic[Any, Any, Any, Any]):
        calls_before_data = 0
        got_data = False

        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            self.got_data = True
            output.emit(self.calls_before_data)
            return None

        def on_schedule(self, states: Any, output: Output[Any]) -> None:
            if not self.got_data:
                self.calls_before_data += 1

    sink = ListSink()

    def build(p: StreamProvider) -> None:
        p.new_stream().source("src", StatelessSource(Src())).stateful_op("op", Count()).sink(
            "sink", sink
        )

    run(build)
    assert len(sink.records) == 1
    assert sink.records[0].key == "p"
    assert sink.records[0].value >= 49


# ----- stateless_op ---------------------------------------------------------------------------


def test_stateless_op_on_data_and_on_epoch() -> None:
    class Doubler(StatelessLogic):
        def __init__(self) -> None:
            self.epochs: list[Any] = []

        def on_data(self, record: Any, output: Output[Any]) -> None:
            output.emit(record.value)
            output.emit(record.value, timestamp=record.timestamp + 100)

        def on_epoch(self, epoch: Any, output: Output[Any]) -> None:
            self.epochs.append(epoch)
            output.emit(("epoch", epoch))

    logic = Doubler()
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one([(7, 1), (8, 4)], part="p"))
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        on_time.stateless_op("sl", logic).sink("sink", sink)

    run(build)
    assert logic.epochs == [1, 4, MAX]
    body = [r for r in sink.records if not isinstance(r.value, tuple)]
    assert body == [R(7, 1, "p"), R(7, 101, "p"), R(8, 4, "p"), R(8, 104, "p")]
    marks = [(r.value, r.timestamp) for r in sink.records if isinstance(r.value, tuple)]
    # on_epoch's emit defaults the timestamp to the epoch
    assert marks == [(("epoch", 1), 1), (("epoch", 4), 4), (("epoch", MAX), MAX)]
    # and each epoch's records follow that epoch's data
    assert [r.value for r in sink.records] == [
        7,
        7,
        ("epoch", 1),
        8,
        8,
        ("epoch", 4),
        ("epoch", MAX),
    ]


def test_stateless_op_on_data_only() -> None:
    class Flatten(StatelessLogic):
        def on_data(self, record: Any, output: Output[Any]) -> None:
            for v in record.value:
                output.emit(v)

    out = pipe([[1, 2, 3], [4], [5, 6]], lambda s: s.stateless_op("fl", Flatten()))
    assert out == [R(1, 0), R(2, 0), R(3, 0), R(4, 1), R(5, 2), R(6, 2)]


# ----- ttl_map --------------------------------------------------------------------------------


def test_ttl_map_entries_expire_when_an_epoch_reaches_them() -> None:
    sink = ListSink()

    def fn(key: Any, value: int, ts: int, m: ExpireMap[Any, Any]) -> tuple[Any, Any]:
        m.insert(value, value * 10, ts + 2)
        return sorted(k for k, _ in m.items()), m

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one([(t, t) for t in range(6)]))
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        on_time.ttl_map("ttl", fn).sink("sink", sink)

    run(build)
    assert [r.value for r in sink.records] == [
        [0],
        [0, 1],
        [0, 1, 2],  # epoch 2 arrives after this record: entry 0 (expiry 2) is gone next
        [1, 2, 3],
        [2, 3, 4],
        [3, 4, 5],
    ]
    assert [r.timestamp for r in sink.records] == list(range(6))


def test_ttl_map_epoch_expires_between_records_of_a_key() -> None:
    sink = ListSink()
    sizes: list[int] = []

    def fn(key: Any, value: str, ts: int, m: ExpireMap[Any, Any]) -> tuple[Any, Any]:
        if not key:
            sizes.append(len(m))
        prev = m.get("last")
        m.insert("last", value, ts + 3)
        return prev, m

    def build(p: StreamProvider) -> None:
        # "tick" records live under another key and only move the epoch forward.
        s = p.new_stream().source(
            "src", one_by_one([("a", 0), ("tick", 3), ("b", 4), ("tick", 5), ("c", 6)])
        )
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        (on_time.key_local("k", lambda v: v == "tick").ttl_map("ttl", fn).sink("sink", sink))

    run(build)
    by_key = [(r.key, r.value) for r in sink.records if r.key is False]
    # a expires at 3: epoch 3 arrives before b, so b sees nothing; b expires at 7 > 5, so c sees b.
    assert by_key == [(False, None), (False, None), (False, "b")]
    # b found the key's map empty, c found b's entry
    assert sizes == [0, 0, 1]


# ----- split / cloned -------------------------------------------------------------------------


def test_split_routes_to_none_one_or_several_outputs() -> None:
    sinks = [ListSink(), ListSink(), ListSink()]

    def route(rec: Record, outs: list[bool]) -> None:
        assert isinstance(rec, Record)
        assert outs == [False, False, False]
        if rec.value % 2 == 0:
            outs[0] = True
        if rec.value % 3 == 0:
            outs[1] = True

    def build(p: StreamProvider) -> None:
        outs = p.new_stream().source("src", IterSource(range(10))).split("sp", 3, route)
        assert len(outs) == 3
        for i, (s, sink) in enumerate(zip(outs, sinks)):
            s.sink(f"sink{i}", sink)

    run(build)
    assert [r.value for r in sinks[0].records] == [0, 2, 4, 6, 8]
    assert [r.value for r in sinks[1].records] == [0, 3, 6, 9]
    assert sinks[2].records == []
    # records are routed unchanged
    assert sinks[1].records[1] == R(3, 3)


def test_split_outputs_all_receive_epochs() -> None:
    seen: list[list[Any]] = [[], []]

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", one_by_one([(1, 1), (2, 2)]))
        on_time, _ = s.limit_out_of_orderness("ooo", 0)
        a, b = on_time.split("sp", 2, lambda r, o: o.__setitem__(0, True))
        a.inspect_frontier("fa", lambda t, c: seen[0].append(t))
        b.inspect_frontier("fb", lambda t, c: seen[1].append(t))

    run(build)
    assert seen == [[1, 2, MAX], [1, 2, MAX]]


def test_cloned_sends_every_record_to_every_output() -> None:
    sinks = [ListSink() for _ in range(3)]

    def build(p: StreamProvider) -> None:
        outs = p.new_stream().source("src", IterSource("abc")).cloned("cl", 3)
        assert len(outs) == 3
        outs[0].sink("s0", sinks[0])
        outs[1].map("up", str.upper).sink("s1", sinks[1])
        outs[2].sink("s2", sinks[2])

    run(build)
    assert sinks[0].records == [R("a", 0), R("b", 1), R("c", 2)]
    assert sinks[1].records == [R("A", 0), R("B", 1), R("C", 2)]
    assert sinks[2].records == sinks[0].records


def test_a_stream_may_feed_several_operators() -> None:
    a, b = ListSink(), ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", IterSource([1, 2]))
        s.map("m1", lambda x: x + 1).sink("a", a)
        s.map("m2", lambda x: x * 5).sink("b", b)

    run(build)
    assert a.values == [2, 3]
    assert b.values == [5, 10]


# ----- union ----------------------------------------------------------------------------------


def test_union_of_two_streams_keeps_every_record_and_per_input_order() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        a = p.new_stream().source("a", IterSource(range(3000)))
        b = p.new_stream().source("b", IterSource(range(10_000, 12_500)))
        a.union("u", b).sink("sink", sink)

    run(build)
    values = sink.values
    assert sorted(values) == [*range(3000), *range(10_000, 12_500)]
    assert [v for v in values if v < 10_000] == list(range(3000))
    assert [v for v in values if v >= 10_000] == list(range(10_000, 12_500))


def test_union_of_three_streams() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        a = p.new_stream().source("a", IterSource(["a1", "a2"]))
        b = p.new_stream().source("b", one_by_one([("b1", 5), ("b2", 6)], part="pb"))
        c = p.new_stream().source("c", IterSource([]))
        a.union("u", b, c).sink("sink", sink)

    run(build)
    assert sorted(sink.records, key=repr) == sorted(
        [R("a1", 0), R("a2", 1), R("b1", 5, "pb"), R("b2", 6, "pb")], key=repr
    )


def test_union_merges_epochs_by_minimum() -> None:
    seen: list[Any] = []

    def build(p: StreamProvider) -> None:
        low = p.new_stream().source("low", one_by_one([(t, t) for t in range(5)]))
        high = p.new_stream().source("high", one_by_one([(t, t) for t in range(100, 105)]))
        low_on, _ = low.limit_out_of_orderness("low_ooo", 0)
        high_on, _ = high.limit_out_of_orderness("high_ooo", 0)
        low_on.union("u", high_on).inspect_frontier("front", lambda t, c: seen.append(t))

    run(build)
    # While both inputs are open the merged epoch is the low side's.
    assert seen[:5] == [0, 1, 2, 3, 4]
    # The high side's early epochs never pass while the low side is behind.
    assert not {100, 101, 102} & set(seen)
    assert seen[-1] is MAX
    rest = seen[5:-1]
    assert all(t in range(100, 105) for t in rest)
    assert all(a < b for a, b in pairwise(seen[:-1]))


def test_union_waits_for_an_epoch_from_every_input() -> None:
    seen: list[Any] = []

    def build(p: StreamProvider) -> None:
        # "quiet" sends no epoch before MAX (after 10 one-record batches): the union passes
        # no epoch until it ends, although "loud" sends an epoch with every record.
        quiet = p.new_stream().source("quiet", one_by_one([(t, t) for t in range(10)], "q"))
        loud = p.new_stream().source("loud", one_by_one([(t, t) for t in range(50)]))
        loud_on, _ = loud.limit_out_of_orderness("ooo", 0)
        quiet.union("u", loud_on).inspect_frontier("front", lambda t, c: seen.append(t))

    run(build)
    assert seen[-1] is MAX
    assert not set(range(8)) & set(seen)
    # once quiet ended, the loud side's epochs pass
    assert seen[-2] == 49
    assert all(a < b for a, b in pairwise(seen[:-1]))


# ----- streams without sink or source ---------------------------------------------------------


def test_stream_without_sink_is_allowed_and_processed() -> None:
    calls: list[int] = []
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        p.new_stream().source("src", IterSource([1, 2, 3])).map("dead", calls.append)
        p.new_stream().source("src2", IterSource([4])).sink("sink", sink)

    run(build)
    assert calls == [1, 2, 3]
    assert sink.values == [4]


def test_stream_without_source_ends_immediately() -> None:
    calls: list[Any] = []
    seen: list[Any] = []
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .map("m", calls.append)
            .inspect_frontier("front", lambda t, c: seen.append(t))
            .sink("sink", sink)
        )

    run(build)
    assert calls == []
    assert sink.records == []
    assert seen == [MAX]


def test_union_with_a_stream_without_source() -> None:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        empty = p.new_stream().map("m", lambda x: x)
        p.new_stream().source("src", IterSource([1, 2])).union("u", empty).sink("sink", sink)

    run(build)
    assert sink.values == [1, 2]


def test_job_with_no_streams_completes() -> None:
    run(lambda p: None)


# ----- batch-level behaviour ------------------------------------------------------------------


def test_large_input_keeps_order_key_and_timestamp_through_every_operator() -> None:
    n = 10_000  # several source batches

    def fm(x: int) -> list[int]:
        return [x, -x] if x % 7 == 0 else [x]

    def build_expected() -> list[Record]:
        sums: dict[int, int] = {}
        out = []
        for t in range(n):
            x = t * 3 + 1
            if x % 5 == 0:
                continue
            for y in fm(x):
                k = y % 13
                sums[k] = sums.get(k, 0) + y
                out.append(Record(k, (y, sums[k]), t))
        return out

    out = pipe(
        list(range(n)),
        lambda s: (
            s.map("m", lambda x: x * 3 + 1)
            .filter("f", lambda x: x % 5 != 0)
            .flat_map("fm", fm)
            .key_local("k", lambda y: y % 13)
            .stateful_map("sum", lambda k, y, st: ((y, st + y), st + y), initial=int)
            .inspect("i", lambda r, c: None)
        ),
    )
    assert out == build_expected()


def test_one_record_batches_and_big_batches_give_the_same_result() -> None:
    data = [(v, t) for t, v in enumerate([5, 3, 8, 1, 9, 2, 7])]

    def extend(s: Stream) -> Stream:
        return (
            s.key_local("k", lambda v: v % 2)
            .stateful_map("sm", lambda k, v, st: ([*st, v], [*st, v]), initial=list)
            .flat_map("fm", lambda vs: vs[-2:])
        )

    a, b = ListSink(), ListSink()

    def build_a(p: StreamProvider) -> None:
        extend(p.new_stream().source("src", one_by_one(data))).sink("sink", a)

    def build_b(p: StreamProvider) -> None:
        extend(p.new_stream().source("src", IterSource([v for v, _ in data]))).sink("sink", b)

    run(build_a)
    run(build_b)
    assert a.records == b.records
    assert len(a.records) > len(data)


@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 2049, 5000])
def test_iter_source_around_batch_size(n: int) -> None:
    out = pipe(list(range(n)), lambda s: s.map("m", lambda x: x))
    assert out == [R(i, i) for i in range(n)]
