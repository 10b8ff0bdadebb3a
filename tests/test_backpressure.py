"""Credit-based backpressure between workers, deterministically: the credit accounting itself,
which intakes a worker holds, and whole jobs on the in-process cluster with tiny credit
windows, where a slow worker is one that turns less often than the others.

Real processes over gRPC: test_backpressure_processes.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from jobs import rescale_job as rj

from malstrom import StatefulSink, StatefulSource, StreamProvider
from malstrom.coordinator._coordinator import JobPhase
from malstrom.runtime._backpressure import IntakeGate
from malstrom.runtime._worker import WorkerPhase
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.testing import LocalCluster
from malstrom.transport._exchange import InPipe, LocalExchangeHub, OutPipe
from malstrom.windows import Count, Tumbling

pytestmark = pytest.mark.timeout(120)


# ----- credit accounting ------------------------------------------------------------------
def test_a_pipe_sends_while_less_than_its_window_is_in_flight() -> None:
    pipe = OutPipe()
    for i in range(5):
        pipe.push(f"m{i}", 3)
    # 0, 3 and 6 in flight are below the window of 7: three messages leave (one crosses it).
    assert pipe.release(7) == ["m0", "m1", "m2"]
    assert (pipe.in_flight, pipe.queued) == (9, 6)
    assert pipe.release(7) == []
    pipe.grant(4)  # the receiver consumed 4 of them (running total)
    assert pipe.release(7) == ["m3"]
    pipe.grant(2)  # an older report arriving late takes nothing back
    assert pipe.in_flight == 8 and pipe.release(7) == []
    pipe.grant(12)
    assert pipe.release(7) == ["m4"] and (pipe.in_flight, pipe.queued) == (3, 0)


def test_a_message_larger_than_the_window_travels_alone() -> None:
    pipe = OutPipe()
    pipe.push("big", 100)
    pipe.push("small", 1)
    assert pipe.release(10) == ["big"]
    assert pipe.release(10) == []
    pipe.grant(100)
    assert pipe.release(10) == ["small"]


def hub_pair(window: int, bound: int) -> tuple[LocalExchangeHub, Any, Any]:
    hub = LocalExchangeHub(window=window, bound=bound)
    return hub, hub.endpoint(0), hub.endpoint(1)


def test_credit_reports_are_batched_per_half_window_and_cumulative() -> None:
    hub, a, b = hub_pair(window=8, bound=100)
    for i in range(20):
        a.send(1, "op", [i])  # one record each
    a.flush()
    assert hub.in_flight(0, 1, "op") == 8 and hub.queued(0, 1, "op") == 12
    got = [b.recv(0, "op") for _ in range(3)]
    assert got == [[0], [1], [2]]
    b.flush()  # 3 consumed: below the report threshold (4), no report yet
    a.flush()
    assert hub.in_flight(0, 1, "op") == 8
    assert b.recv(0, "op") == [3]
    b.flush()  # 4 consumed: one report, for the running total
    a.flush()
    assert hub.in_flight(0, 1, "op") == 8 and hub.queued(0, 1, "op") == 8
    # Everything arrives in order once the receiver keeps consuming and flushing.
    out = [*got, [3]]
    for _ in range(20):
        while (m := b.recv(0, "op")) is not None:
            out.append(m)
        b.flush()
        a.flush()
    assert out == [[i] for i in range(20)]


def test_saturated_names_operators_whose_queue_passes_the_bound() -> None:
    hub, a, b = hub_pair(window=4, bound=6)
    for i in range(10):
        a.send(1, "x", [i])  # 1 record each: 4 in flight, 6 queued (at the bound)
        a.send(1, "y", [i, i])  # 2 records each: 4 in flight, 16 queued
    a.flush()
    assert a.saturated() == {"y"}
    assert (hub.queued(0, 1, "x"), hub.queued(0, 1, "y")) == (6, 16)
    for _ in range(3):  # the receiver takes y's messages: y's queue drains to the bound
        while b.recv(0, "y") is not None:
            pass
        b.flush()
        a.flush()
    assert hub.queued(0, 1, "y") <= 6 and a.saturated() == set()


def test_held_operators_get_nothing_and_give_no_credit() -> None:
    hub, a, b = hub_pair(window=2, bound=0)
    for i in range(4):
        a.send(1, "held", [i])
        a.send(1, "free", [i])
    a.flush()
    b.hold(frozenset({"held"}))
    assert b.recv(0, "held") is None
    assert b.recv(0, "free") == [0]
    for _ in range(5):
        while b.recv(0, "free") is not None:
            pass
        b.flush()
        a.flush()
    assert a.saturated() == {"held"}
    assert hub.queued(0, 1, "free") == 0 and hub.queued(0, 1, "held") == 2
    b.hold(frozenset())
    assert [b.recv(0, "held") for _ in range(2)] == [[0], [1]]


def test_receiving_is_not_consuming() -> None:
    # Credit comes back only for what the worker loop took out: a pipe whose messages sit in
    # the receiver's inbox stays out of credit however often both sides flush.
    assert InPipe().unreported == 0
    hub, a, b = hub_pair(window=3, bound=100)
    for i in range(10):
        a.send(1, "op", [i])
    for _ in range(5):
        a.flush()
        b.flush()
    assert hub.in_flight(0, 1, "op") == 3 and hub.queued(0, 1, "op") == 7


# ----- which intakes a worker holds -------------------------------------------------------
def built_worker(build: Callable[[StreamProvider], None], workers: int = 2) -> Any:
    cluster = LocalCluster(build, workers)
    while cluster.workers[0].phase is not WorkerPhase.RUNNING:
        cluster.step()
    return cluster.workers[0]


def test_intakes_are_held_only_upstream_of_a_saturated_operator() -> None:
    def build(provider: StreamProvider) -> None:
        s = provider.new_stream().source("src", StatefulSource(rj.Parts()))
        s = s.key_distribute("kd1", lambda v: v[0]).map("m", lambda v: v)
        s.key_distribute("kd2", lambda v: v[1]).sink("out", ListSink())
        other = provider.new_stream().source("other", StatefulSource(rj.Parts()))
        other.key_distribute("kd3", lambda v: v[0]).sink("out3", ListSink())

    gate = IntakeGate(built_worker(build).ops)
    assert gate.held(frozenset()) == frozenset()
    # kd2's pipes are full: everything that feeds kd2 stops, kd2's own peer intake does not,
    # and the other stream runs on.
    assert gate.held(frozenset({"kd2"})) == {"src", "kd1"}
    assert gate.held(frozenset({"kd1"})) == {"src"}
    assert gate.held(frozenset({"kd3"})) == {"other"}
    assert gate.held(frozenset({"kd2", "kd3"})) == {"src", "kd1", "other"}
    # A stateful sink's part router is a distributor too.
    assert gate.held(frozenset({"out::distribute"})) == frozenset()


# ----- jobs on the in-process cluster -----------------------------------------------------
PARTS = 4
PER_PART = 600
CHUNK = 8  # records per poll


class Part:
    def __init__(self, part: int, nxt: int) -> None:
        self.part, self.nxt = part, nxt

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[Any, int]]:
        stop = min(PER_PART, self.nxt + min(n, CHUNK))
        out = [((self.part, i), i) for i in range(self.nxt, stop)]
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


def to_middle(key: Any, workers: Sequence[int]) -> int:
    return workers[len(workers) // 2]


def to_last(key: Any, workers: Sequence[int]) -> int:
    return workers[-1]


FAN = 3  # records each record becomes between the hops


def make_build(sink: Any, hops: str) -> Callable[[StreamProvider], None]:
    def build(provider: StreamProvider) -> None:
        s = provider.new_stream().source("numbers", StatefulSource(Parts()))
        if hops == "relay":  # everything to the middle worker, then all of it to the last
            s = s.key_distribute("hop1", lambda v: v[1] % 17, partitioner=to_middle)
            s = s.flat_map("fan", lambda v: [(*v, j) for j in range(FAN)])
            s = s.key_distribute("hop2", lambda v: v[1] % 13, partitioner=to_last)
        else:  # "both": two hops keyed differently, records cross both ways twice
            s = s.key_distribute("hop1", lambda v: v[1] % 17)
            s = s.flat_map("fan", lambda v: [(*v, j) for j in range(FAN)])
            s = s.key_distribute("hop2", lambda v: (v[1] // 17, v[2]))
        s.sink("out", sink)

    return build


def expected() -> Counter[Any]:
    return Counter((p, i, j) for p in range(PARTS) for i in range(PER_PART) for j in range(FAN))


def buffered(hub: LocalExchangeHub) -> dict[int, int]:
    """Per worker: records waiting for credit in its pipes' queues, plus records received
    and not yet consumed from its inboxes."""
    out: Counter[int] = Counter()
    for (src, dst, _), p in hub._pipes.items():
        out[src] += p.out.queued
        out[dst] += sum(size for _, size in p.inbox)
    return dict(out)


def run(
    cluster: LocalCluster,
    every: dict[int, int],
    *,
    snapshot_every: int = 0,
    on_snapshot: Callable[[Any, Any], None] | None = None,
    max_rounds: int = 200_000,
) -> tuple[int, dict[int, int]]:
    """Run to the end; worker ``w`` turns once per ``every[w]`` rounds (1 by default).
    Returns the rounds taken and the peak of :func:`buffered` per worker."""
    coord = cluster.coord
    peak: Counter[int] = Counter()
    n = 0
    while not cluster.ended:
        n += 1
        assert n < max_rounds, f"no end after {n} rounds (deadlock?): {buffered(cluster.hub)}"
        if snapshot_every and n % snapshot_every == 0 and coord.phase is JobPhase.RUNNING:
            coord.request_snapshot(on_snapshot)
        coord.poll()
        if coord.phase is JobPhase.FAILED:
            raise AssertionError(coord.error)
        for wid, w in list(cluster.workers.items()):
            if n % every.get(wid, 1) == 0:
                w.turn()
        for w, b in buffered(cluster.hub).items():
            peak[w] = max(peak[w], b)
    for w in cluster.workers.values():
        w.turn()
    return n, dict(peak)


WINDOW = 16
BOUND = 16


def peak_bound(peers: int) -> int:
    """What one worker may buffer: every input pipe its window plus one message; every
    output pipe's queue its bound, plus what one turn takes in (the input pipes of the first
    hop, fanned out, and one poll of every source part). Messages are at most CHUNK * FAN
    records; two hops, so two pipes per peer each way."""
    msg = CHUNK * FAN
    pipes = 2 * peers
    intake = FAN * peers * (WINDOW + msg) + FAN * PARTS * CHUNK
    return pipes * (WINDOW + msg) + pipes * BOUND + intake


def test_relay_to_a_slow_worker_stays_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Worker 2, where every record ends, turns once per 10 rounds; worker 1 relays all that
    # worker 0 sends. Credits bound what worker 2 takes per turn, and holding worker 1's intake
    # bounds what worker 1 keeps.
    sink = ListSink()
    hub = LocalExchangeHub(window=WINDOW, bound=BOUND)
    _, peak = run(LocalCluster(make_build(sink, "relay"), 3, hub=hub), {2: 10})
    assert Counter(r.value for r in sink.records) == expected()
    assert max(peak.values()) <= peak_bound(2), peak
    # Credits alone, without holding the intakes upstream of a saturated pipe: worker 1 keeps
    # taking in what worker 0 sends, and its queue to worker 2 grows with the whole input.
    monkeypatch.setattr(IntakeGate, "held", lambda self, saturated: frozenset())
    sink = ListSink()
    hub = LocalExchangeHub(window=WINDOW, bound=BOUND)
    _, unbounded = run(LocalCluster(make_build(sink, "relay"), 3, hub=hub), {2: 10})
    assert Counter(r.value for r in sink.records) == expected()
    assert unbounded[1] > 3 * peak_bound(2), unbounded


@pytest.mark.parametrize("window", [1, 4, WINDOW])
def test_two_slow_workers_feeding_each_other_do_not_deadlock(window: int) -> None:
    # Both workers slow at different rhythms, each sending to the other on two hops, tiny
    # windows and no queue slack (bound 0: every queued message holds the intakes upstream),
    # snapshots all along (their barrier markers travel behind the held records).
    sink = ListSink()
    hub = LocalExchangeHub(window=window, bound=0)
    cluster = LocalCluster(make_build(sink, "both"), 2, hub=hub, persistence=InMemoryPersistence())
    done: list[Any] = []
    run(cluster, {0: 3, 1: 5}, snapshot_every=37, on_snapshot=lambda v, e: done.append(e))
    assert Counter(r.value for r in sink.records) == expected()
    assert len(done) > 5 and all(e is None for e in done[:5]), done


def test_restore_after_a_crash_under_backpressure_is_exactly_once() -> None:
    # An exactly-once sink (a restored part cuts its output back to its snapshot).
    out = rj.Recorder(3)
    persistence = InMemoryPersistence()
    build = make_build(StatefulSink(out), "both")
    cluster = LocalCluster(
        build, 2, hub=LocalExchangeHub(window=4, bound=0), persistence=persistence
    )
    n = 0
    while len(persistence.committed_versions()) < 3:
        n += 1
        if n % 41 == 0:
            cluster.coord.request_snapshot()
        cluster.step()
    assert 0 < len(out.records) < sum(expected().values())
    del cluster  # every worker crashes, with records held in pipes and queues
    cluster = LocalCluster(
        build, 3, hub=LocalExchangeHub(window=4, bound=0), persistence=persistence
    )
    run(cluster, {1: 4})
    assert Counter(r.value for r in out.records) == expected()


def single_hop_build(sink: ListSink) -> Callable[[StreamProvider], None]:
    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(Parts()))
            .key_distribute("by-index", lambda v: v[1] % 29)
            .stateful_map("count", lambda k, v, s: ((v, s + 1), s + 1), initial=int)
            .sink("out", sink)
        )

    return build


@pytest.mark.parametrize("steps", [{15: 3, 50: 1, 65: 4}, {30: 2}])
def test_rescales_under_backpressure_are_exact(steps: dict[int, int]) -> None:
    sink = ListSink()
    cluster = LocalCluster(single_hop_build(sink), 2, hub=LocalExchangeHub(window=2, bound=0))
    log: list[Any] = []
    n = 0
    while not cluster.ended:
        if n in steps:
            cluster.coord.request_rescale(steps[n], lambda v, e: log.append((v, e)))
        n += 1
        assert n < 100_000, "no end (deadlock?)"
        cluster.step()
    assert [e for _, e in log] == [None] * len(steps)
    counts: dict[int, list[int]] = {}
    for r in sink.records:
        counts.setdefault(r.key, []).append(r.value[1])
    per_key = Counter(i % 29 for _ in range(PARTS) for i in range(PER_PART))
    assert {k: sorted(v) for k, v in counts.items()} == {
        k: list(range(1, c + 1)) for k, c in per_key.items()
    }


def test_scale_down_with_chained_distributors_when_pipes_are_slow() -> None:
    """A distributor downstream of another (a stateful sink's part router after
    key_distribute) on a leaving worker: the upstream one still emits records its peers sent
    under the old configuration after the downstream one collected its keys. The downstream
    one must not send its last transfer before those passed (it waits for the upstream
    one's Released), or the staying worker, done with the leaving one, never reads them."""
    # One message in flight per pipe delays every message; no queue ever counts as saturated,
    # so nothing is held and the job ends: the records never read are missing. (With holding,
    # the leaving worker's full pipe holds its intakes and the rescale never completes.)
    out = rj.Outputs()
    cluster = LocalCluster(rj.make_build(out), 1, hub=LocalExchangeHub(window=1, bound=10**9))
    # Steps that hit the race with this job's part placement (parts are dealt out evenly;
    # under rendezvous per part 1 -> 4 -> 2 -> 3 hit it).
    rj.run_rescaling(cluster, {3: 4, 15: 3})
    rj.check(out)


@pytest.mark.parametrize("steps", [{3: 4, 15: 3}, {3: 3, 12: 1}, {2: 2, 9: 4, 20: 2}])
def test_a_router_fed_by_two_distributors_waits_for_both_on_a_scale_down(
    steps: dict[int, int],
) -> None:
    """Two key_distributes meet in a union before a stateful sink (whose part router is a
    third distributor): the router waits for both upstream rescales to end on its worker (the
    union merges their Released into one); every record reaches the sink once."""
    rec = rj.Recorder(3)

    def build(provider: StreamProvider) -> None:
        on_time = (
            provider.new_stream()
            .source("numbers", StatefulSource(rj.Parts()))
            .assign_timestamps("ts", lambda v: v[1])
            .limit_out_of_orderness("time", rj.BOUND)[0]
        )
        evens = on_time.filter("evens", lambda v: v[1] % 2 == 0).key_distribute("a", lambda v: v[0])
        odds = on_time.filter("odds", lambda v: v[1] % 2 == 1).key_distribute(
            "b", lambda v: v[0] + 1
        )
        evens.union("both", odds).sink("out", StatefulSink(rec))

    rj.run_rescaling(LocalCluster(build, 1, hub=LocalExchangeHub(window=1, bound=10**9)), steps)
    assert Counter(r.value for r in rec.records) == Counter(rj.all_values())


def test_time_an_input_is_held_by_backpressure_does_not_make_it_idle() -> None:
    # A held source brings no records, for however long its pipes stay saturated: that is
    # not an idle input. Were it taken for one, worker 1's epochs alone would close windows
    # that worker 0's held records still belong to, and those would come too late.
    windows, late = ListSink(), ListSink()

    def build(provider: StreamProvider) -> None:
        on_time, _ = (
            provider.new_stream()
            .source("numbers", StatefulSource(Parts()))
            .limit_out_of_orderness("time", 2 * CHUNK, idle_timeout=0.005)
        )
        results, too_late = on_time.key_distribute("by-index", lambda v: v[1] % 7).window(
            "count", Tumbling(40), Count()
        )
        results.sink("windows", windows)
        too_late.sink("late", late)

    cluster = LocalCluster(build, 2, hub=LocalExchangeHub(window=4, bound=0))
    for _ in range(20):
        cluster.step()
    worker = cluster.workers[0]
    gen = next(op for op in worker.ops if op.name == "time")
    source = next(op for op in worker.ops if op.name == "numbers")
    exchange = worker.exchange
    polled = [p.part.nxt for p in source.parts]
    exchange.saturated = lambda: frozenset({"by-index"})  # worker 0's pipes stay full
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.05:  # ten idle timeouts; worker 1 runs ahead meanwhile
        cluster.step()
        time.sleep(0.001)
    assert [p.part.nxt for p in source.parts] == polled  # the source was held throughout
    assert not gen._idle
    del exchange.saturated
    while cluster.step():
        pass
    assert late.records == []
    counts = Counter((r.key, r.value.start) for r in windows.records for _ in range(r.value.value))
    assert counts == Counter((i % 7, i - i % 40) for _ in range(PARTS) for i in range(PER_PART))
