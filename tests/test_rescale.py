"""Live rescaling on the in-process multi-worker harness: keys, window state, source parts and
sink parts move between running workers; results stay exactly-once (see jobs/rescale_job.py
for the oracle). Real processes: test_rescale_processes.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from jobs import fanout_job as fj
from jobs import rescale_job as rj

from malstrom import StatefulSource, StatelessLogic, StreamProvider
from malstrom.coordinator._coordinator import Coordinator, JobPhase, OperationRefused
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.testing import LocalCluster, run_local_cluster
from malstrom.windows import Tumbling

pytestmark = pytest.mark.timeout(120)


class Sinks(rj.Outputs):
    def build(self) -> Callable[[StreamProvider], None]:
        return rj.make_build(self)

    def check(self) -> None:
        rj.check(self)

    def check_no_repeats(self) -> None:
        rj.check_no_repeats(self)


def plan(steps: dict[int, int], log: list[Any]) -> Callable[[int, Coordinator], None]:
    """Request rescale ``steps[turn]`` at that turn; completed rescales go to ``log``."""

    def on_turn(n: int, coord: Coordinator) -> None:
        if n in steps:
            coord.request_rescale(steps[n], lambda v, e: log.append((v, e)))

    return on_turn


@pytest.mark.parametrize(
    ("start", "steps"),
    [
        (1, {3: 4, 15: 2, 30: 3}),  # 1 -> 4 -> 2 -> 3
        (2, {5: 1}),
        (2, {5: 3}),
        (3, {2: 1, 4: 4, 6: 2, 8: 5, 10: 1}),  # back to back, each right after the last
    ],
)
def test_rescale_sequences_are_exactly_once(start: int, steps: dict[int, int]) -> None:
    s = Sinks()
    log: list[Any] = []
    coord = run_local_cluster(s.build(), start, on_turn=plan(steps, log))
    assert coord.phase is JobPhase.FINISHED
    assert [e for _, e in log] == [None] * len(steps), log
    assert [v for v, _ in log] == list(steps.values())
    assert sorted(coord.workers) == list(range(list(steps.values())[-1]))
    s.check()


def test_more_workers_than_keys_and_parts() -> None:
    """Workers that own no key and no part take part, idle, and do not stall event time."""
    s = Sinks()
    log: list[Any] = []
    coord = run_local_cluster(s.build(), 2, on_turn=plan({4: rj.PARTS + 3, 30: 2}, log))
    assert log == [(rj.PARTS + 3, None), (2, None)]
    assert coord.phase is JobPhase.FINISHED
    s.check()


def test_windows_fire_during_the_run_with_idle_workers() -> None:
    """With more workers than parts, window results still come out before the end of the
    stream: a worker without source parts is idle and holds no epoch back."""
    fired_at: list[int] = []
    s = Sinks()
    turn = [0]

    def on_turn(n: int, coord: Coordinator) -> None:
        turn[0] = n
        if n == 2:
            coord.request_rescale(rj.PARTS + 2)
        if len(s.windows.records) and not fired_at:
            fired_at.append(n)

    run_local_cluster(s.build(), 1, on_turn=on_turn)
    total_turns = turn[0]
    assert fired_at and fired_at[0] < total_turns // 2, (fired_at, total_turns)
    s.check()


def test_unmoved_keys_keep_flowing_while_keys_move() -> None:
    """Outputs of keys that stay on their worker continue during the rescale."""
    from malstrom.keyed.partitioners import rendezvous_select

    s = Sinks()
    phases: list[tuple[JobPhase, int, set[Any]]] = []
    seen = [0]

    def on_turn(n: int, coord: Coordinator) -> None:
        if n == 10:
            coord.request_rescale(3)
        new = s.counts.records[seen[0] :]
        seen[0] = len(s.counts.records)
        phases.append((coord.phase, n, {r.key for r in new}))

    run_local_cluster(s.build(), 2, on_turn=on_turn)
    unmoved = {
        k for k in range(rj.KEYS) if rendezvous_select(k, [0, 1]) == rendezvous_select(k, [0, 1, 2])
    }
    during = [keys for phase, _, keys in phases if phase is JobPhase.RESCALING]
    assert during, "the rescale finished within one turn; nothing to observe"
    assert any(keys & unmoved for keys in during), phases
    s.check()


def test_rescale_to_zero_is_refused_and_job_goes_on() -> None:
    s = Sinks()
    errors: list[Any] = []

    def on_turn(n: int, coord: Coordinator) -> None:
        if n == 3:
            coord.request_rescale(0, lambda v, e: errors.append(e))
            with pytest.raises(OperationRefused, match="stop"):
                coord.request_rescale(-1)

    run_local_cluster(s.build(), 2, on_turn=on_turn)
    assert len(errors) == 1 and isinstance(errors[0], OperationRefused)
    s.check()


def test_operations_queue_one_at_a_time() -> None:
    """Snapshot and rescale requests made together run one after the other, in order."""
    s = Sinks()
    done: list[Any] = []
    p = InMemoryPersistence()

    def on_turn(n: int, coord: Coordinator) -> None:
        if n == 5:
            coord.request_rescale(3, lambda v, e: done.append(("rescale", v, e)))
            coord.request_snapshot(lambda v, e: done.append(("snapshot", v, e)))
            coord.request_rescale(1, lambda v, e: done.append(("rescale", v, e)))

    run_local_cluster(s.build(), 2, persistence=p, on_turn=on_turn)
    kinds = [(k, e) for k, _, e in done]
    assert kinds == [("rescale", None), ("snapshot", None), ("rescale", None)]
    s.check()


# ----- joins and sessions move too ----------------------------------------------------------


def test_join_state_moves_with_its_key() -> None:
    """A windowed join of two distributed streams: its state of both sides moves at once."""
    out = ListSink()
    n = 2_000

    def build(provider: StreamProvider) -> None:
        def side(name: str, mult: int) -> Any:
            return (
                provider.new_stream()
                .source(name, StatefulSource(_Numbers(n, mult)))
                .assign_timestamps(f"{name}-ts", lambda v: v[1])
                .limit_out_of_orderness(f"{name}-time", 4_000)[0]
                .key_distribute(f"{name}-by-key", lambda v: v[0])
            )

        left, right = side("left", 1), side("right", 2)
        left.join("pairs", right, Tumbling(100)).sink("out", out)

    log: list[Any] = []
    run_local_cluster(build, 2, on_turn=plan({6: 3, 20: 1, 35: 4}, log))
    assert [e for _, e in log] == [None, None, None]
    got = sorted((r.key, r.value[0][1], r.value[1][1]) for r in out.records)
    want = sorted(
        (k, lt, rt)
        for k, lt in _Numbers(n, 1).all()
        for k2, rt in _Numbers(n, 2).all()
        if k == k2 and lt // 100 == rt // 100
    )
    assert got == want


class _Numbers:
    """Two parts of (key, ts) pairs, a few records per poll."""

    def __init__(self, n: int, mult: int) -> None:
        self.n, self.mult = n, mult

    def all(self) -> list[tuple[int, int]]:
        return [((i * self.mult) % 7, i) for i in range(self.n)]

    def list_parts(self) -> list[int]:
        return [0, 1]

    def build_part(self, part: int, state: object | None) -> Any:
        src = self

        class P:
            nxt = part if state is None else int(state)  # type: ignore[call-overload]

            def poll(self) -> Any:
                b = self.poll_batch(1)
                return b[0] if b else None

            def poll_batch(self, k: int) -> list[Any]:
                out = []
                for _ in range(min(k, 20)):
                    if self.nxt >= src.n:
                        break
                    v = ((self.nxt * src.mult) % 7, self.nxt)
                    out.append((v, self.nxt))
                    self.nxt += 2
                return out

            def is_finished(self) -> bool:
                return self.nxt >= src.n

            def snapshot(self) -> object:
                return self.nxt

            def collect(self) -> object:
                return self.nxt

        return P()


# ----- random rescales, snapshots and crashes: a hypothesis state machine ----------------------


class RescaleMachine(RuleBasedStateMachine):
    """Drives a running keyed job: rescale, snapshot, run some turns, crash every worker and
    restart from the last committed snapshot at any parallelism. At every step no update is
    applied twice; at the end, outputs and state equal the oracle exactly."""

    @initialize(n=st.integers(1, 4))
    def start(self, n: int) -> None:
        self.begin(Sinks(), n)

    def begin(self, out: Any, n: int) -> None:
        self.p = InMemoryPersistence()
        self.out = out
        self.cluster = LocalCluster(self.out.build(), n, persistence=self.p)

    @rule(k=st.integers(1, 5))
    def rescale(self, k: int) -> None:
        if not self.cluster.ended:
            self.cluster.coord.request_rescale(k)

    @rule()
    def snapshot(self) -> None:
        if not self.cluster.ended:
            self.cluster.coord.request_snapshot()

    @rule(turns=st.integers(1, 12))
    def run_some(self, turns: int) -> None:
        for _ in range(turns):
            if not self.cluster.step():
                break

    @rule(k=st.integers(1, 5))
    def crash(self, k: int) -> None:
        """Every worker and the coordinator die; a new attempt restores the last snapshot."""
        if self.cluster.ended:
            return
        self.cluster = LocalCluster(self.out.build(), k, persistence=self.p)

    @invariant()
    def no_update_applied_twice(self) -> None:
        self.out.check_no_repeats()

    def teardown(self) -> None:
        if not hasattr(self, "cluster"):
            return
        while self.cluster.step():
            pass
        self.out.check()


class FanOutMachine(RescaleMachine):
    """The same random rescales, snapshots and crashes, on a job whose key regions fan out
    and meet again: a union of split (or cloned and filtered) branches of one keyed stream
    before every kind of keyed state, joins of two paths of one distributor, a join and a
    union fed by two distributors, and epochs generated after key_distribute from in-order
    input (jobs/fanout_job.py, exact oracle for every output)."""

    @initialize(n=st.integers(1, 4), shape=st.sampled_from(fj.SHAPES))
    def start(self, n: int, shape: str) -> None:  # type: ignore[override]
        self.begin(fj.Outputs(fj.OUTPUTS, shape), n)


class AlignedSinks(Sinks):
    lead = 0.0  # align at every turn: the most holds, the most interleavings


class AlignedRescaleMachine(RescaleMachine):
    """The same, with epoch alignment (``max_epoch_lead=0``) on the distributor: holding
    sources while peers catch up must not lose, repeat or reorder anything across rescales,
    snapshots and crashes."""

    @initialize(n=st.integers(1, 4))
    def start(self, n: int) -> None:
        self.begin(AlignedSinks(), n)


class AlignedFanOutMachine(FanOutMachine):
    """The fan-out/fan-in jobs with epoch alignment on every distributor."""

    @initialize(n=st.integers(1, 4), shape=st.sampled_from(fj.SHAPES))
    def start(self, n: int, shape: str) -> None:  # type: ignore[override]
        self.begin(fj.Outputs(fj.OUTPUTS, shape, lead=0.0), n)


for machine in (RescaleMachine, FanOutMachine, AlignedRescaleMachine, AlignedFanOutMachine):
    machine.TestCase.settings = settings(
        max_examples=int(os.environ.get("MALSTROM_RESCALE_EXAMPLES", "12")),
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
test_rescale_state_machine = RescaleMachine.TestCase
test_fan_out_state_machine = FanOutMachine.TestCase
test_aligned_rescale_state_machine = AlignedRescaleMachine.TestCase
test_aligned_fan_out_state_machine = AlignedFanOutMachine.TestCase


def test_a_part_moved_to_a_worker_whose_parts_had_finished_is_not_overtaken_by_the_end() -> None:
    """A sequence the fan-out machine found: rescales back to back while the job runs. One
    takes a part to a worker whose own part had finished (its epoch generator had passed IDLE
    on); the part's last records raised no epoch there, so the union after the split let
    the end of the stream pass them: 11 records late at both joins, a total short by 11."""
    m = FanOutMachine()
    m.start(n=2, shape="split")
    for k in (1, 4, 2, 4, 4, 3, 2, 2, 4, 4, 3, 2):
        m.rescale(k=k)
    m.teardown()


# ----- epochs never overtake records -------------------------------------------------------------


class _EpochOrderChecker(StatelessLogic):
    """Records every record that arrives at or behind an epoch already seen on this worker."""

    def __init__(self, violations: list[Any], seen: list[int]) -> None:
        self.violations = violations
        self.seen = seen
        self.frontier: dict[int, Any] = {}

    def on_data(self, record: Any, output: Any) -> None:
        self.seen.append(1)
        f = self.frontier.get(id(output))
        if f is not None and record.timestamp <= f:
            self.violations.append((record, f))

    def on_epoch(self, epoch: Any, output: Any) -> None:
        self.frontier[id(output)] = epoch


@pytest.mark.parametrize("steps", [{8: 3}, {8: 1}, {5: 4, 20: 2}])
def test_epochs_never_overtake_held_or_moved_records(steps: dict[int, int]) -> None:
    """Tight event time (bound 0): while keys move, the distributor must not let an epoch pass
    records it holds back."""
    violations: list[Any] = []
    seen: list[int] = []

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(rj.Parts()))
            .assign_timestamps("ts", lambda v: v[1])
            .limit_out_of_orderness("time", 0)[0]
            .key_distribute("by-key", lambda v: v[0])
            .stateless_op("check", _EpochOrderChecker(violations, seen))
        )

    log: list[Any] = []
    run_local_cluster(build, 2, on_turn=plan(steps, log))
    assert [e for _, e in log] == [None] * len(steps)
    assert len(seen) > 1000
    assert violations == [], violations[:3]


def test_scaling_down_a_job_with_state_kept_in_place_is_refused() -> None:
    """State after key_local stays on its worker: removing workers would lose it, so the
    coordinator refuses (scaling up is fine)."""
    out = ListSink()
    errors: list[Any] = []

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(rj.Parts()))
            .key_local("local", lambda v: v[0])
            .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("out", out)
        )

    def on_turn(n: int, coord: Coordinator) -> None:
        if n == 3:
            coord.request_rescale(3, lambda v, e: errors.append(e))
        if n == 10:
            coord.request_rescale(1, lambda v, e: errors.append(e))

    coord = run_local_cluster(build, 2, on_turn=on_turn)
    assert errors[0] is None
    assert isinstance(errors[1], OperationRefused) and "'count'" in str(errors[1])
    assert sorted(coord.workers) == [0, 1, 2]
    assert len(out.records) == rj.PARTS * rj.PER_PART


@pytest.mark.parametrize("shape", ["two-distributors", "cloned"])
def test_state_after_a_keyed_union_moves_whole(shape: str) -> None:
    """A union of keyed streams feeding keyed state: its inputs' Handover and Installed align,
    so a key's state and its records from every input move together."""
    out = ListSink()
    n = 1_500

    def build(provider: StreamProvider) -> None:
        def side(name: str, mult: int) -> Any:
            return (
                provider.new_stream()
                .source(name, StatefulSource(_Numbers(n, mult)))
                .key_distribute(f"{name}-by-key", lambda v: v[0])
            )

        if shape == "two-distributors":
            a, b = side("left", 1), side("right", 2)
        else:
            a, b = side("left", 1).cloned("fan", 2)
        (
            a.union("both", b)
            .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("out", out)
        )

    want: dict[Any, int] = {}
    inputs = _Numbers(n, 1).all() * 2 if shape == "cloned" else []
    for k, _ in inputs or _Numbers(n, 1).all() + _Numbers(n, 2).all():
        want[k] = want.get(k, 0) + 1
    _counts_once_through_rescales(build, out, want)


def _counts_once_through_rescales(
    build: Callable[[StreamProvider], None], out: ListSink, want: dict[Any, int]
) -> None:
    """Run ``build`` (a running count per key into ``out``) on 2 workers rescaled 3, 1, 4:
    every key counted 1, 2, ... up to ``want[key]``, each number once (state moved whole)."""
    log: list[Any] = []
    run_local_cluster(build, 2, on_turn=plan({5: 3, 15: 1, 25: 4}, log))
    assert [e for _, e in log] == [None] * 3
    per_key: dict[Any, list[int]] = {}
    for r in out.records:
        per_key.setdefault(r.key, []).append(r.value)
    assert {k: sorted(v) for k, v in per_key.items()} == {
        k: list(range(1, c + 1)) for k, c in want.items()
    }


@pytest.mark.parametrize("shape", ["source", "two-sources", "source-and-distributed"])
def test_state_keyed_by_source_part_moves_with_the_part(shape: str) -> None:
    """Keyed state straight after a source is keyed by part. A rescale moves parts by the
    source's rule; the part's state must arrive with it (it used to stay behind, so a moved
    part counted from 1 again on its new worker). Also when the stream is a union of
    sources, or of a source and a key_distribute stream."""
    out = ListSink()
    n = 1_500

    def build(provider: StreamProvider) -> None:
        a = provider.new_stream().source("left", StatefulSource(_Numbers(n, 1)))
        if shape == "two-sources":
            a = a.union("both", provider.new_stream().source("right", StatefulSource(_Tagged())))
        elif shape == "source-and-distributed":
            b = provider.new_stream().source("right", StatefulSource(_Tagged()))
            a = a.union("both", b.key_distribute("by-tag", lambda v: v[0]))
        a.stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int).sink("out", out)

    want = {0: n // 2, 1: n // 2}
    if shape != "source":
        want.update({k: _Tagged.PER_PART for k in _Tagged.PARTS})
    _counts_once_through_rescales(build, out, want)


@pytest.mark.parametrize("restart_at", [1, 3])
def test_state_keyed_by_source_part_survives_a_crash_and_a_restore_at_another_size(
    restart_at: int,
) -> None:
    """The same job (a source and a key_distribute stream in a union, counted per part): a
    rescale, a snapshot, every worker lost, a restart from the snapshot at another
    parallelism. Each part's count ends exactly at its number of records."""
    out = ListSink()
    n = 1_500

    def build(provider: StreamProvider) -> None:
        a = provider.new_stream().source("left", StatefulSource(_Numbers(n, 1)))
        b = provider.new_stream().source("right", StatefulSource(_Tagged()))
        (
            a.union("both", b.key_distribute("by-tag", lambda v: v[0]))
            .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("out", out)
        )

    rj.crash_after_rescale_and_snapshot(build, restart_at)
    final: dict[Any, int] = {}
    for r in out.records:
        final[r.key] = max(final.get(r.key, 0), r.value)
    assert final == {0: n // 2, 1: n // 2, **{k: _Tagged.PER_PART for k in _Tagged.PARTS}}


@pytest.mark.parametrize(("parts", "workers"), [(4, 2), (5, 3), (16, 3)])
def test_fixed_parts_are_dealt_out_evenly(parts: int, workers: int) -> None:
    """Every worker reads ``parts // workers`` parts or one more (rendezvous per part gave
    4 parts 3:1 on 2 workers), and each part is read on one worker only. After a rescale
    too."""
    seen: dict[int, set[Any]] = {}
    out = ListSink()

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(_Tagged([f"p{i}" for i in range(parts)])))
            .inspect("where", lambda r, ctx: seen.setdefault(ctx.worker_id, set()).add(r.key))
            .sink("out", out)
        )

    def counts() -> list[int]:
        return sorted(len(v) for v in seen.values())

    run_local_cluster(build, workers)
    low = parts // workers
    assert sum(counts()) == parts and all(low <= c <= low + 1 for c in counts()), seen
    assert len(out.records) == parts * _Tagged.PER_PART
    # Rescaled to one more worker after a few turns: the parts read from then on are dealt
    # out over the new set (the records of a part that moved are seen on both workers).
    seen.clear()
    log: list[Any] = []

    def on_turn(n: int, coord: Coordinator) -> None:
        if n == 3:
            coord.request_rescale(workers + 1, lambda v, e: (log.append(e), seen.clear()))

    out.records.clear()
    run_local_cluster(build, workers, on_turn=on_turn)
    assert log == [None]
    low = parts // (workers + 1)
    assert sum(counts()) == parts and all(low <= c <= low + 1 for c in counts()), seen
    assert len(out.records) == parts * _Tagged.PER_PART


class _Tagged:
    """Parts named by strings, a few (tag, i) records per poll."""

    PARTS = ("x", "y", "z")
    PER_PART = 400

    def __init__(self, parts: list[str] | None = None) -> None:
        self.parts = list(self.PARTS) if parts is None else parts

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def build_part(self, part: str, state: object | None) -> Any:
        per_part = self.PER_PART

        class P:
            nxt = 0 if state is None else int(state)  # type: ignore[call-overload]

            def poll(self) -> Any:
                b = self.poll_batch(1)
                return b[0] if b else None

            def poll_batch(self, k: int) -> list[Any]:
                stop = min(per_part, self.nxt + min(k, 10))
                out = [((part, i), i) for i in range(self.nxt, stop)]
                self.nxt = stop
                return out

            def is_finished(self) -> bool:
                return self.nxt >= per_part

            def snapshot(self) -> object:
                return self.nxt

            def collect(self) -> object:
                return self.nxt

        return P()


def test_a_rescale_whose_new_workers_never_come_is_abandoned_cleanly() -> None:
    """The runtime gives up waiting for new workers: the request fails, nothing moved, the
    job runs on and completes exactly once."""
    s = Sinks()
    p = InMemoryPersistence()
    cluster = LocalCluster(s.build(), 2, persistence=p)
    answers: list[Any] = []
    for _ in range(5):
        cluster.step()
    cluster.coord.request_rescale(4, lambda v, e: answers.append((v, e)))
    cluster.coord.poll()
    assert cluster.coord.wanted_workers() == {2, 3}
    cluster.coord.cancel_rescale("workers 2, 3 did not connect")
    assert answers and answers[0][0] is None and "did not connect" in str(answers[0][1])
    assert cluster.coord.phase is JobPhase.RUNNING
    cluster.coord.request_snapshot()  # the next operation runs normally
    while cluster.step():
        pass
    assert sorted(cluster.coord.workers) == [0, 1]
    s.check()


@pytest.mark.parametrize("key_of", ["cycling", "ever-new"])
def test_many_keys_move_in_chunks_exactly_once(key_of: str) -> None:
    """Thousands of keys move (several Handover chunks a rescale), while new keys keep
    appearing (caught by the final Handover): every key's count is exact."""
    out = ListSink()
    n = 24_000

    def key(v: tuple[int, int]) -> int:
        i = v[1]
        return i % 9_000 if key_of == "cycling" else i // 3

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(_Numbers(n, 1)))
            .key_distribute("by-key", key)
            .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("out", out)
        )

    log: list[Any] = []
    run_local_cluster(build, 2, on_turn=plan({150: 3, 300: 1, 450: 4}, log))
    assert [e for _, e in log] == [None] * 3
    final: dict[int, int] = {}
    for r in out.records:
        final[r.key] = max(final.get(r.key, 0), r.value)
    want: dict[int, int] = {}
    for i in range(n):
        want[key((0, i))] = want.get(key((0, i)), 0) + 1
    assert final == want
    assert len(out.records) == n
