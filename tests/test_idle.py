"""Idle workers and idle_timeout: a worker with no source data must not hold back event time
merged across workers, so windows keep closing (``idle_timeout``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from malstrom import BuildError, StatefulSource, StreamProvider, rendezvous_select
from malstrom.sinks import ListSink
from malstrom.testing import run_local_cluster
from malstrom.windows import Count, Tumbling

pytestmark = pytest.mark.timeout(60)


class _Parts:
    """Part ``fast`` yields ``n`` records (ts 0..n-1), 50 per poll and one poll every
    ``pace`` seconds; part ``slow`` waits ``wait`` seconds first."""

    def __init__(self, fast: int, slow: int | None, n: int, wait: float, pace: float = 0.0) -> None:
        self.fast, self.slow, self.n, self.wait, self.pace = fast, slow, n, wait, pace

    def list_parts(self) -> list[int]:
        return [p for p in (self.fast, self.slow) if p is not None]

    def build_part(self, part: int, state: object | None) -> Any:
        src = self
        start = time.monotonic()

        class P:
            nxt = 0

            def poll(self) -> Any:
                b = self.poll_batch(1)
                return b[0] if b else None

            def poll_batch(self, k: int) -> list[Any]:
                if part == src.slow and time.monotonic() - start < src.wait:
                    return []
                if src.pace:
                    time.sleep(src.pace)
                out = [(i, i) for i in range(self.nxt, min(src.n, self.nxt + min(k, 50)))]
                self.nxt += len(out)
                return out

            def is_finished(self) -> bool:
                return self.nxt >= src.n

            def snapshot(self) -> object:
                return self.nxt

            def collect(self) -> object:
                return self.nxt

        return P()


def _parts_on_two_workers() -> tuple[int, int]:
    """Two part ids that live on different workers of {0, 1}."""
    a = 0
    home = rendezvous_select(a, [0, 1])
    b = next(p for p in range(1, 100) if rendezvous_select(p, [0, 1]) != home)
    return a, b


@pytest.mark.parametrize("idle_timeout", [None, 0.05])
def test_idle_timeout_lets_windows_close_while_a_worker_has_no_data(
    idle_timeout: float | None,
) -> None:
    fast, slow = _parts_on_two_workers()
    results, late_records = ListSink(), ListSink()
    fired_before_slow: list[int] = []
    slow_started = [False]

    def build(provider: StreamProvider) -> None:
        src = provider.new_stream().source(
            "numbers", StatefulSource(_Parts(fast, slow, 2000, wait=1.0, pace=0.01))
        )

        def note(record: Any, ctx: Any) -> None:
            if record.key == slow:
                slow_started[0] = True

        on_time, _late = (
            src.inspect("note", note)
            .assign_timestamps("ts", lambda v: v)
            .limit_out_of_orderness("time", 10, idle_timeout=idle_timeout)
        )
        windows, late = on_time.key_distribute("by-key", lambda v: v % 5).window(
            "win", Tumbling(100), Count()
        )
        late.sink("late", late_records)

        def fired(record: Any, ctx: Any) -> None:
            if not slow_started[0]:
                fired_before_slow.append(1)

        windows.inspect("fired", fired).sink("out", results)

    run_local_cluster(build, 2)
    fired = [(r.key, r.value.start) for r in results.records]
    assert len(fired) == len(set(fired))  # each window fires once
    total = sum(r.value.value for r in results.records)
    if idle_timeout is None:
        # The waiting worker holds every window back: all close whole, nothing is late.
        assert not fired_before_slow
        assert total == 4000 and not late_records.records
    else:
        # It went idle: the fast part's windows closed without it; what the slow part
        # brings for them afterwards is late (as in Flink), never lost.
        assert fired_before_slow
        assert total + len(late_records.records) == 4000
        assert late_records.records


def test_more_workers_than_source_parts_do_not_stall_event_time() -> None:
    """Workers that own no source part are idle from the start (no timeout needed)."""
    results = ListSink()
    progress = {"records": 0, "fired_at": None}

    def build(provider: StreamProvider) -> None:
        src = provider.new_stream().source("numbers", StatefulSource(_Parts(0, None, 3000, 0.0)))

        def count(record: Any, ctx: Any) -> None:
            progress["records"] += 1

        def fired(record: Any, ctx: Any) -> None:
            if progress["fired_at"] is None:
                progress["fired_at"] = progress["records"]

        on_time, _ = (
            src.inspect("count", count)
            .assign_timestamps("ts", lambda v: v)
            .limit_out_of_orderness("time", 10)
        )
        windows, _ = on_time.key_distribute("by-key", lambda v: v % 7).window(
            "win", Tumbling(100), Count()
        )
        windows.inspect("fired", fired).sink("out", results)

    run_local_cluster(build, 4)  # one source part, four workers
    assert progress["fired_at"] is not None and progress["fired_at"] < 3000
    assert sum(r.value.value for r in results.records) == 3000


def test_idle_timeout_must_be_positive_seconds() -> None:
    def build(provider: StreamProvider) -> None:
        provider.new_stream().source(
            "numbers", StatefulSource(_Parts(0, 1, 10, 0.0))
        ).limit_out_of_orderness("time", 1, idle_timeout=0)

    with pytest.raises(BuildError, match="idle_timeout"):
        run_local_cluster(build, 1)


def _epochs_before_records(out: list[Any]) -> list[Any]:
    """The epochs an output channel carried before its first record batch."""
    from malstrom.engine.batch import Batch
    from malstrom.engine.messages import Epoch

    seen = []
    for m in out:
        if type(m) is Batch:
            break
        if type(m) is Epoch:
            seen.append(m.ts)
    return seen


@pytest.mark.parametrize("timeout", [None, 0.001])
def test_a_generator_whose_output_went_idle_wakes_it_before_records_follow(
    timeout: float | None,
) -> None:
    """A worker whose parts finished goes idle (IDLE reaches the generator, which passes it
    on); a rescale then moves a part to it (the source says MIN, then reads). The part's
    records are on time but raise no epoch (within the bound of what the generator promised):
    the generator must still bring its output back into the merges before they pass, or a
    union downstream that merges this path with another lets an epoch (the end of the stream,
    say) overtake them (the fan-out rescale state machine lost join records this way)."""
    from malstrom.engine.batch import Batch
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import IDLE, Epoch
    from malstrom.operators.time import GenerateEpochsOp
    from malstrom.types import MIN

    gen = GenerateEpochsOp("g", None, 50, BuildContext(0, (0,)), idle_timeout=timeout)
    inp = gen.add_input()
    out: list[Any] = []
    gen.outs = [[out], [[]]]
    inp.append(Batch([0, 0], [1, 2], [100, 200]))  # promises 150
    gen.drain()
    assert [m.ts for m in out if type(m) is Epoch] == [150]
    inp.extend([Epoch(IDLE), Epoch(MIN), Batch([0], [3], [180])])  # on time, below 150 + 50
    out.clear()
    gen.drain()
    assert _epochs_before_records(out) == [IDLE, 150]
    assert [v for m in out if type(m) is Batch for v in m.values] == [3]
    if timeout is not None:
        # Idle by its own timeout: the next record brings the output back first.
        time.sleep(0.01)
        out.clear()
        gen.schedule()
        inp.append(Batch([0], [4], [190]))
        gen.drain()
        assert _epochs_before_records(out) == [IDLE, 150]


def test_a_generator_idle_before_any_epoch_wakes_its_output_with_min() -> None:
    """Idle by its timeout before it promised anything: MIN brings it back before records."""
    from malstrom.engine.batch import Batch
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import IDLE
    from malstrom.operators.time import GenerateEpochsOp
    from malstrom.types import MIN

    gen = GenerateEpochsOp("g", None, 50, BuildContext(0, (0,)), idle_timeout=0.001)
    inp = gen.add_input()
    out: list[Any] = []
    gen.outs = [[out], [[]]]
    time.sleep(0.01)
    gen.schedule()
    inp.append(Batch([0], [1], [10]))
    gen.drain()
    assert _epochs_before_records(out) == [IDLE, MIN]
