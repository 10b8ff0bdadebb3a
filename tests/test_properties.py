"""Property tests: random pipelines agree with a plain Python model of the same steps.

One worker preserves order, so the model's output must match the ListSink record for record
(key, value and timestamp). Snapshots, and a crash followed by a resume, must not change the
result either.
"""

from __future__ import annotations

import time
from itertools import cycle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from malstrom import (
    JobFailed,
    NoKey,
    OperatorError,
    Record,
    SingleThreadRuntime,
    StatefulSource,
    StatelessSource,
    Stream,
    StreamProvider,
)
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.sources import IterSource

Step = tuple[Any, ...]

steps_st = st.one_of(
    st.tuples(st.just("map"), st.integers(1, 4), st.integers(-3, 3)),
    st.tuples(st.just("filter"), st.integers(2, 5)),
    st.tuples(st.just("flat_map"), st.integers(2, 4)),
    st.tuples(st.just("key_local"), st.integers(1, 5)),
    st.tuples(st.just("key_distribute"), st.integers(1, 5)),
    # running sum per key; the state is deleted (returned as None) once it exceeds ``limit``
    st.tuples(st.just("stateful_map"), st.integers(3, 150)),
)
pipelines = st.lists(steps_st, max_size=6)
values_st = st.lists(st.integers(-50, 50), max_size=60)
chunks_st = st.lists(st.integers(1, 12), min_size=1, max_size=5)


# ----- the model ------------------------------------------------------------------------------


def model(values: list[int], steps: list[Step]) -> list[Record]:
    recs = [Record(NoKey, v, t) for t, v in enumerate(values)]
    for step in steps:
        kind = step[0]
        if kind == "map":
            a, b = step[1], step[2]
            recs = [Record(k, v * a + b, t) for k, v, t in recs]
        elif kind == "filter":
            m = step[1]
            recs = [r for r in recs if r.value % m != 0]
        elif kind == "flat_map":
            m = step[1]
            recs = [Record(k, y, t) for k, v, t in recs for y in ([v, v + 1] if v % m else [])]
        elif kind in ("key_local", "key_distribute"):
            m = step[1]
            recs = [Record(v % m, v, t) for _, v, t in recs]
        elif kind == "stateful_map":
            limit = step[1]
            sums: dict[Any, int] = {}
            out = []
            for k, v, t in recs:
                s = sums.get(k, 0) + v
                if abs(s) > limit:
                    sums.pop(k, None)
                else:
                    sums[k] = s
                out.append(Record(k, s, t))
            recs = out
        else:  # pragma: no cover
            raise AssertionError(step)
    return recs


# ----- the same steps as a dataflow -----------------------------------------------------------


def apply(stream: Stream, i: int, step: Step) -> Stream:
    kind = step[0]
    name = f"{kind}{i}"
    if kind == "map":
        a, b = step[1], step[2]
        return stream.map(name, lambda x: x * a + b)
    if kind == "filter":
        m = step[1]
        return stream.filter(name, lambda x: x % m != 0)
    if kind == "flat_map":
        m = step[1]
        return stream.flat_map(name, lambda x: [x, x + 1] if x % m else [])
    if kind == "key_local":
        m = step[1]
        return stream.key_local(name, lambda x: x % m)
    if kind == "key_distribute":
        m = step[1]
        return stream.key_distribute(name, lambda x: x % m)
    if kind == "stateful_map":
        limit = step[1]

        def running(key: Any, value: int, state: int) -> tuple[int, int | None]:
            s = state + value
            return s, (None if abs(s) > limit else s)

        return stream.stateful_map(name, running, initial=int)
    raise AssertionError(step)  # pragma: no cover


class _ChunkPart:
    """Polls in chunks of the given sizes (cycled), from position ``pos``; optionally slow."""

    def __init__(self, values: list[int], chunks: list[int], pos: int, delay: float) -> None:
        self.values = values
        self.chunks = cycle(chunks)
        self.pos = pos
        self.delay = delay
        self.snapshots = 0

    def poll(self) -> tuple[Any, Any] | None:  # pragma: no cover - poll_batch is preferred
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, n: int) -> list[tuple[Any, Any]]:
        if self.delay:
            time.sleep(self.delay)
        start = self.pos
        end = min(len(self.values), start + min(n, next(self.chunks)))
        self.pos = end
        return [(self.values[t], t) for t in range(start, end)]

    def is_finished(self) -> bool:
        return self.pos >= len(self.values)

    def snapshot(self) -> object:
        self.snapshots += 1
        return self.pos

    def collect(self) -> object:  # pragma: no cover - one worker never hands parts over
        return self.pos


class ChunkSource:
    """One part keyed NoKey; stateful (resumes at the snapshotted position) or not."""

    def __init__(self, values: list[int], chunks: list[int], delay: float = 0.0) -> None:
        self.values = values
        self.chunks = chunks
        self.delay = delay
        self.parts: list[_ChunkPart] = []

    def list_parts(self) -> list[Any]:
        return [NoKey]

    def build_part(self, part: Any, state: object | None = None) -> _ChunkPart:
        p = _ChunkPart(self.values, self.chunks, int(state or 0), self.delay)  # type: ignore[call-overload]
        self.parts.append(p)
        return p


def run_pipeline(source: Any, steps: list[Step], **runtime: Any) -> list[Record]:
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", source)
        for i, step in enumerate(steps):
            s = apply(s, i, step)
        s.sink("sink", sink)

    SingleThreadRuntime(build, **runtime).execute()
    return sink.records


# ----- properties -----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(values_st, pipelines)
def test_random_pipeline_matches_model_with_iter_source(
    values: list[int], steps: list[Step]
) -> None:
    assert run_pipeline(IterSource(values), steps) == model(values, steps)


@settings(max_examples=80, deadline=None)
@given(values_st, pipelines, chunks_st)
def test_random_pipeline_matches_model_with_any_batching(
    values: list[int], steps: list[Step], chunks: list[int]
) -> None:
    source = StatelessSource(ChunkSource(values, chunks))
    assert run_pipeline(source, steps) == model(values, steps)


@settings(max_examples=25, deadline=None)
@given(
    values_st,
    pipelines,
    chunks_st,
    st.sampled_from([0.0003, 0.001, 0.002, 0.005]),
)
def test_snapshots_do_not_change_results(
    values: list[int], steps: list[Step], chunks: list[int], interval: float
) -> None:
    impl = ChunkSource(values, chunks, delay=0.0002)
    persistence = InMemoryPersistence(retain=0)
    out = run_pipeline(
        StatefulSource(impl), steps, persistence=persistence, snapshot_interval=interval
    )
    assert out == model(values, steps)
    # at least the final snapshot passed the source, and it was committed
    assert impl.parts[0].snapshots >= 1
    assert persistence.committed_versions()


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(-50, 50), min_size=1, max_size=60),
    pipelines,
    chunks_st,
    st.data(),
)
def test_crash_and_resume_applies_every_state_update_once(
    values: list[int], steps: list[Step], chunks: list[int], data: Any
) -> None:
    fail_at = data.draw(st.integers(0, len(values) - 1), label="fail_at")
    persistence = InMemoryPersistence()
    armed = [True]

    def trap(rec: Record, ctx: Any) -> None:
        if armed[0] and rec.timestamp == fail_at:
            armed[0] = False
            raise RuntimeError("injected failure")

    def run_once() -> list[Record]:
        sink = ListSink()
        impl = ChunkSource(values, chunks, delay=0.0002)

        def build(p: StreamProvider) -> None:
            s = p.new_stream().source("src", StatefulSource(impl)).inspect("trap", trap)
            for i, step in enumerate(steps):
                s = apply(s, i, step)
            s.sink("sink", sink)

        try:
            SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.001).execute()
        except JobFailed as failed:
            e = failed.__cause__
            assert isinstance(e, OperatorError) and e.operator == "trap"
            assert isinstance(e.__cause__, RuntimeError)
        return sink.records

    first = run_once()
    assert not armed[0]  # the trap fired
    second = run_once()
    expected = model(values, steps)
    # The second run replays from the last committed snapshot: its output is a suffix of the
    # model's output, and the first run produced (at least) everything before that suffix.
    cut = len(expected) - len(second)
    assert cut >= 0
    assert second == expected[cut:]
    assert first[:cut] == expected[:cut]
