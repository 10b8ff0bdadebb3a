"""Job lifecycle edge cases: stop suspends sources, queued requests are answered, heartbeats
during slow builds, nothing after end of stream, user StopIteration, keys without a stable
hash on one worker."""

from __future__ import annotations

from collections import deque
from typing import Any

from job_errors import job_fails_with

from malstrom import MAX, OperatorError, SingleThreadRuntime, StatefulLogic
from malstrom.coordinator._coordinator import Coordinator, JobPhase
from malstrom.coordinator._messages import BuildComplete, Heartbeat, StartBuild
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence, NoPersistence
from malstrom.sources import IterSource
from malstrom.testing import run_local_cluster, run_pipeline


def test_stop_suspends_sources_so_resume_has_no_duplicates() -> None:
    p = InMemoryPersistence()
    sink = ListSink()

    def build(provider: Any) -> None:
        provider.new_stream().source("n", IterSource(range(5_000))).sink("out", sink)

    def stop_at(n: int, coord: Any) -> None:
        if n == 1:
            coord.request_stop()

    coord = run_local_cluster(build, 1, persistence=p, on_turn=stop_at)
    assert coord.phase is JobPhase.STOPPED
    first = len(sink.values)
    run_local_cluster(build, 1, persistence=p)
    assert sorted(sink.values) == list(range(5_000)), first


def test_requests_queued_when_the_job_ends_are_answered() -> None:
    class Ep:
        def __init__(self) -> None:
            self.inbox: deque[Any] = deque()

        def send(self, msg: Any) -> None:
            pass

        def recv(self) -> Any:
            return self.inbox.popleft() if self.inbox else None

    ep = Ep()
    coord = Coordinator(NoPersistence(), {0: ep}, None)
    coord.start()
    answers: list[Any] = []
    coord.request_snapshot(lambda v, e: answers.append(("snap", v, e)))
    coord.request_stop(lambda v, e: answers.append(("stop", v, e)))
    a = coord.attempt
    ep.inbox.append(BuildComplete(0, a))
    coord.poll()  # running; the snapshot starts
    from malstrom.coordinator._messages import Drained, SnapshotComplete

    ep.inbox.extend([Drained(0, a), SnapshotComplete(0, 0, None, a)])
    coord.poll()  # snapshot committed; every worker drained, so the job finishes first
    ep.inbox.append(SnapshotComplete(0, 1, None, a))
    coord.poll()
    assert coord.phase is JobPhase.FINISHED  # the queued stop is answered: the job is over
    assert [a[0] for a in answers] == ["snap", "stop"] and all(a[2] is None for a in answers)


def test_slow_build_of_one_worker_does_not_trip_the_heartbeat_of_another() -> None:
    now = [0.0]

    class Ep:
        def __init__(self) -> None:
            self.inbox: deque[Any] = deque()
            self.sent: list[Any] = []

        def send(self, msg: Any) -> None:
            self.sent.append(msg)

        def recv(self) -> Any:
            return self.inbox.popleft() if self.inbox else None

    a, b = Ep(), Ep()
    coord = Coordinator(
        NoPersistence(), {0: a, 1: b}, None, heartbeat_timeout=30, clock=lambda: now[0]
    )
    coord.start()
    assert isinstance(a.sent[0], StartBuild)
    at = coord.attempt
    a.inbox.append(BuildComplete(0, at))
    coord.poll()
    now[0] = 40.0  # worker 1 restores a large state for 40 s
    b.inbox.append(BuildComplete(1, at))
    coord.poll()
    assert coord.phase is JobPhase.RUNNING
    now[0] = 50.0
    a.inbox.append(Heartbeat(0, at))
    b.inbox.append(Heartbeat(1, at))
    coord.poll()
    assert coord.phase is JobPhase.RUNNING


def test_on_schedule_emits_nothing_after_end_of_stream() -> None:
    seen: list[Any] = []

    class Ticker(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Any, state: Any, output: Any) -> Any:
            return state

        def on_schedule(self, states: Any, output: Any) -> None:
            output.emit("tick", key="k", timestamp=0)

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("n", IterSource(range(3)))
            .stateful_op("tick", Ticker())
            .stateless_op("obs", Observer(seen))
        )

    class Observer:
        def __init__(self, out: list[Any]) -> None:
            self.out = out

        def on_data(self, record: Any, output: Any) -> None:
            self.out.append(record.value)

        def on_epoch(self, epoch: Any, output: Any) -> None:
            self.out.append(("EPOCH", epoch))

    SingleThreadRuntime(build).execute()
    assert seen[-1] == ("EPOCH", MAX)


def test_user_stop_iteration_is_an_error_not_a_short_batch() -> None:
    def f(x: int) -> int:
        if x == 3:
            raise StopIteration
        return x

    for op in ("map", "filter", "key_local"):
        with job_fails_with(OperatorError, match="StopIteration") as info:
            run_pipeline(range(6), lambda s, op=op: getattr(s, op)("f", f))
        assert info.value.record is not None and info.value.record.value == 3


class Color:
    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Color) and other.name == self.name


def test_keys_without_stable_hash_resume_on_one_worker() -> None:
    p = InMemoryPersistence()
    crashed: list[int] = []

    def check(v: int) -> int:
        if v == 3_000 and not crashed:
            crashed.append(v)
            raise ValueError("once")
        return v

    sink = ListSink()

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("n", IterSource(range(5_000)))
            .map("check", check)
            .key_local("color", lambda v: Color("red" if v % 2 else "blue"))
            .stateful_map("count", lambda k, v, s: ((k.name, s + 1), s + 1), initial=int)
            .sink("out", sink)
        )

    rt = SingleThreadRuntime(build, persistence=p, snapshot_interval=0.0001)
    with job_fails_with(OperatorError):
        rt.execute()
    rt.execute()
    final = {}
    for name, n in sink.values:
        final[name] = max(final.get(name, 0), n)
    assert final == {"red": 2_500, "blue": 2_500}
