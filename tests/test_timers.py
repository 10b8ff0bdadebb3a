"""Keyed event-time timers in ``stateful_op``: ``output.set_timer(t)`` and ``on_timer``.

A timer fires once an epoch reaches its time, in time order, before ``on_epoch``; it belongs
to its key's state, so it is snapshotted and moves with the key on a rescale."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobs import rescale_job as rj

from malstrom import (
    MAX,
    JobFailed,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatefulSink,
    StatefulSource,
    StatelessLogic,
    StreamProvider,
)
from malstrom.sinks import ListSink
from malstrom.testing import LocalCluster, TimedSource

pytestmark = pytest.mark.timeout(120)


class _Remind(StatefulLogic[Any, Any, int, Any]):
    """Counts records per key; each record sets a timer ``after`` past its time (twice: a
    timer set twice fires once). A timer emits (key, its time, the count so far)."""

    def __init__(self, after: int) -> None:
        self.after = after

    def initial_state(self) -> int:
        return 0

    def on_data(self, record: Record, state: int | None, output: Output[Any]) -> int:
        output.set_timer(record.timestamp + self.after)
        output.set_timer(record.timestamp + self.after)
        return (state or 0) + 1

    def on_timer(self, timestamp: Any, key: Any, state: int | None, output: Output[Any]) -> int:
        output.emit(("timer", key, timestamp, state))  # key and timestamp default to the timer's
        return state or 0


def _run(items: list[tuple[Any, int]], logic: StatefulLogic[Any, Any, Any, Any]) -> list[Record]:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("src", TimedSource(items))
            .limit_out_of_orderness("time", 0)[0]
            .key_distribute("by-key", lambda v: v)
            .stateful_op("op", logic)
            .sink("out", sink)
        )

    SingleThreadRuntime(build).execute()
    return sink.records


def test_timers_fire_in_time_order_once_an_epoch_reaches_them() -> None:
    items = [("a", 0), ("b", 3), ("a", 5), ("b", 12), ("a", 14), ("b", 30)]
    out = _run(items, _Remind(10))
    assert [(r.key, r.value, r.timestamp) for r in out] == [
        ("a", ("timer", "a", 10, 2), 10),  # epoch 12 (b's record) reaches 10
        ("b", ("timer", "b", 13, 2), 13),  # epoch 14
        ("a", ("timer", "a", 15, 3), 15),  # epoch 30 fires 15, 22 and 24 in order
        ("b", ("timer", "b", 22, 3), 22),
        ("a", ("timer", "a", 24, 3), 24),
        ("b", ("timer", "b", 40, 3), 40),  # the end of the stream fires the rest
    ]


class _Chain(StatefulLogic[Any, Any, list[int], Any]):
    """A record sets a timer at its time; each timer sets the next one 1 later, 3 times."""

    def on_data(self, record: Record, state: Any, output: Output[Any]) -> list[int]:
        output.set_timer(record.timestamp)
        return []

    def on_timer(self, timestamp: Any, key: Any, state: Any, output: Output[Any]) -> Any:
        state.append(timestamp)
        if len(state) < 3:
            output.set_timer(timestamp + 1)
            return state
        output.emit(list(state))
        return None  # deletes the key's state

    def on_epoch(self, epoch: Any, states: Any, output: Output[Any]) -> None:
        if epoch is not MAX:
            output.emit(("epoch", epoch, sorted(states)), key="-")


def test_a_timer_set_in_on_timer_below_the_epoch_fires_in_the_same_epoch_before_on_epoch() -> None:
    out = _run([("a", 1), ("b", 2), ("c", 100)], _Chain())
    got = [r.value for r in out]
    # Epoch 100 fires a (1, 2, 3) and b (2, 3, 4) interleaved in time order; on_epoch sees
    # both states gone and c's timer not yet fired (100 is not below 100: fired, in fact).
    assert got[:2] == [("epoch", 1, ["a"]), ("epoch", 2, ["a", "b"])]
    assert got[2:4] == [[1, 2, 3], [2, 3, 4]]
    assert got[4] == ("epoch", 100, ["c"])  # c fired once at 100, its next at 101 waits
    assert got[5:] == [[100, 101, 102]]  # the end of the stream


def test_set_timer_without_on_timer_names_the_operator() -> None:
    class NoTimer(StatelessLogic):
        def on_data(self, record: Record, output: Output[Any]) -> None:
            output.set_timer(5)

    def build(p: StreamProvider) -> None:
        p.new_stream().source("src", TimedSource([(1, 1)])).stateless_op("remind", NoTimer())

    with pytest.raises(JobFailed) as e:
        SingleThreadRuntime(build).execute()
    assert "'remind'" in str(e.value) and "on_timer" in str(e.value)


def test_a_timer_of_another_type_than_the_others_is_a_clear_error() -> None:
    class Mixed(_Remind):
        def on_data(self, record: Record, state: int | None, output: Output[Any]) -> int:
            output.set_timer(record.timestamp if record.value == "a" else str(record.timestamp))
            return 1

    with pytest.raises(JobFailed) as e:
        _run([("a", 1), ("b", 2)], Mixed(0))
    assert "'op'" in str(e.value) and "cannot be compared" in str(e.value)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 60)), max_size=40),
    st.integers(-5, 20),
)
def test_every_timer_fires_once_however_records_and_timers_interleave(
    items: list[tuple[str, int]], after: int
) -> None:
    """Out-of-order records (bound 0: some are late and set no timer); every distinct
    (key, time) set fires exactly once, at an epoch at or past its time, in time order."""
    sink = ListSink()
    seen: list[Any] = []

    class Spy(_Remind):
        def on_data(self, record: Record, state: int | None, output: Output[Any]) -> int:
            seen.append((record.key, record.timestamp + self.after))
            return super().on_data(record, state, output)

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("src", TimedSource(items, batch_size=3))
            .limit_out_of_orderness("time", 0)[0]
            .key_distribute("by-key", lambda v: v)
            .stateful_op("op", Spy(after))
            .sink("out", sink)
        )

    SingleThreadRuntime(build).execute()
    fired = [(r.key, r.timestamp) for r in sink.records]
    assert Counter(fired) == Counter(set(seen))


# ----- timers move with their keys, and survive crashes ----------------------------------------


class _Deadline(StatefulLogic[Any, Any, int, Any]):
    """Every 50th record of a part sets a timer 200 past its time; the timer emits (key,
    time). Each key's count is its state, so state and timers move together."""

    def on_data(self, record: Record, state: int | None, output: Output[Any]) -> int:
        if (record.timestamp // rj.PARTS) % 50 == 0:
            output.set_timer(record.timestamp + 200)
        return (state or 0) + 1

    def on_timer(self, timestamp: Any, key: Any, state: int | None, output: Output[Any]) -> Any:
        output.emit((key, timestamp))
        return state


def _expected_deadlines() -> Counter[Any]:
    return Counter((k, t + 200) for k, t in rj.all_values() if (t // rj.PARTS) % 50 == 0)


def _deadline_job(rec: rj.Recorder) -> Any:
    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(rj.Parts()))
            .assign_timestamps("ts", lambda v: v[1])
            .limit_out_of_orderness("time", rj.BOUND)[0]
            .key_distribute("by-key", lambda v: v[0])
            .stateful_op("deadlines", _Deadline())
            .sink("out", StatefulSink(rec))
        )

    return build


def test_every_deadline_fires_once_on_one_worker() -> None:
    rec = rj.Recorder()
    SingleThreadRuntime(_deadline_job(rec)).execute()
    assert Counter(r.value for r in rec.records) == _expected_deadlines()


@pytest.mark.parametrize("steps", [{4: 3, 20: 1}, {3: 4, 12: 2, 30: 3}])
def test_timers_move_with_their_keys_on_live_rescales(steps: dict[int, int]) -> None:
    rec = rj.Recorder()
    rj.run_rescaling(LocalCluster(_deadline_job(rec), 2), steps)
    assert Counter(r.value for r in rec.records) == _expected_deadlines()


@pytest.mark.parametrize("restart_at", [1, 3])
def test_timers_survive_a_crash_and_a_restore_at_another_size(restart_at: int) -> None:
    rec = rj.Recorder()
    rj.crash_after_rescale_and_snapshot(_deadline_job(rec), restart_at)
    assert Counter(r.value for r in rec.records) == _expected_deadlines()
