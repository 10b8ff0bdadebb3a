"""Distributed semantics on several workers (in one thread, over in-memory pipes):
key routing, epoch merging, barrier alignment, snapshots, restore at another parallelism."""

from __future__ import annotations

import os
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from malstrom import MAX, OperatorError, StatefulLogic, StatefulSource, rendezvous_select
from malstrom.sinks import FileSink, ListSink
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence
from malstrom.sources import IterSource
from malstrom.testing import run_local_cluster

PARTS = 5
PER_PART = 4_000
KEYS = 23


class Part:
    def __init__(self, base: int, nxt: int) -> None:
        self.base, self.nxt = base, nxt

    def poll(self) -> tuple[int, int] | None:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        stop = min(PER_PART, self.nxt + min(n, 300))
        out = [(self.base + i, i) for i in range(self.nxt, stop)]
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
        return Part(part * PER_PART, 0 if state is None else int(state))  # type: ignore[call-overload]


class Dump(StatefulLogic[Any, int, int, Any]):
    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + record.value

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k, s in states.items():
                output.emit((k, s), key=k)


class Boom(Exception):
    pass


def oracle() -> dict[int, int]:
    out: Counter[int] = Counter()
    for v in range(PARTS * PER_PART):
        out[v % KEYS] += v
    return dict(out)


def make_build(sink: ListSink, where: set[tuple[int, int]], crash_at: int | None = None) -> Any:
    def check(v: int) -> int:
        if v == crash_at:
            raise Boom(v)
        return v

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("parts", StatefulSource(Parts()))
            .map("check", check)
            .key_distribute("by-key", lambda v: v % KEYS)
            .inspect("where", lambda r, ctx: where.add((r.key, ctx.worker_id)))
            .stateful_op("sum", Dump())
            .sink("out", sink)
        )

    return build


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_keyed_state_is_exact_and_each_key_lives_on_its_owner(n: int) -> None:
    sink, where = ListSink(), set()  # type: ignore[var-annotated]
    run_local_cluster(make_build(sink, where), n)
    assert dict(sink.values) == oracle()
    owners: dict[int, set[int]] = {}
    for key, worker in where:
        owners.setdefault(key, set()).add(worker)
    assert all(ws == {rendezvous_select(k, range(n))} for k, ws in owners.items())
    if n > 1:
        assert len({w for _, w in where}) > 1


def test_epochs_merge_across_workers_rising_with_max_last() -> None:
    seen: dict[int, list[Any]] = {}

    def build(provider: Any) -> None:
        on_time, _ = (
            provider.new_stream()
            .source("parts", StatefulSource(Parts()))
            .assign_timestamps("ts", lambda v: v % PER_PART)
            .limit_out_of_orderness("wm", 10)
        )
        (
            on_time.key_distribute("k", lambda v: v % 3).inspect_frontier(
                "f", lambda t, ctx: seen.setdefault(ctx.worker_id, []).append(t)
            )
        )

    run_local_cluster(build, 3)
    for epochs in seen.values():
        assert epochs[-1] is MAX
        assert all(a < b for a, b in pairwise(epochs))
    assert set(seen) == {0, 1, 2}


def test_one_part_source_feeds_every_worker() -> None:
    sink = ListSink()

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("it", IterSource(range(10_000)))
            .key_distribute("k", lambda v: v % 11)
            .stateful_map("n", lambda k, v, s: (s + 1, s + 1), initial=int)
            .sink("out", sink)
        )

    run_local_cluster(build, 3)
    final: dict[int, int] = {}
    for r in sink.records:
        final[r.key] = max(final.get(r.key, 0), r.value)
    assert final == dict(Counter(v % 11 for v in range(10_000)))


def run_until_crash(p: Any, n: int, crash_at: int) -> None:
    with pytest.raises(OperatorError):
        run_local_cluster(
            make_build(ListSink(), set(), crash_at), n, persistence=p, snapshot_interval=0.0005
        )


def test_restore_at_another_parallelism_2_3_1(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    run_until_crash(p, 2, crash_at=1 * PER_PART + 1500)
    first = p.last_committed()
    assert first is not None
    run_until_crash(p, 3, crash_at=3 * PER_PART + 2500)
    assert p.last_committed() != first
    sink = ListSink()
    coord = run_local_cluster(make_build(sink, set()), 1, persistence=p)
    assert coord.restored_from is not None
    assert dict(sink.values) == oracle()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, PARTS * PER_PART - 1)), min_size=1, max_size=4
    ),
    final_n=st.integers(1, 4),
)
def test_crashes_at_any_parallelism_keep_state_exact(
    steps: list[tuple[int, int]], final_n: int
) -> None:
    p = InMemoryPersistence()
    for n, crash_at in steps:
        try:
            run_local_cluster(
                make_build(ListSink(), set(), crash_at), n, persistence=p, snapshot_interval=0.0005
            )
        except OperatorError:
            pass
        else:
            break  # the crash point was already behind the restored snapshot: job completed
    sink = ListSink()
    run_local_cluster(make_build(sink, set()), final_n, persistence=p)
    if p.last_committed() is not None and not sink.values:
        return  # an earlier run completed the job; its final snapshot ends it at once
    assert dict(sink.values) == oracle()


def test_file_sink_parts_are_spread_and_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("parts", StatefulSource(Parts()))
            .key_distribute("k", lambda v: v % 6)
            .sink("files", FileSink(out, per_key=True))
        )

    run_local_cluster(build, 3)
    got: Counter[int] = Counter()
    for f in out.glob("*.txt"):
        for line in f.read_text().splitlines():
            got[int(line)] += 1
    assert got == Counter(range(PARTS * PER_PART))
    assert len(list(out.glob("*.txt"))) == 6
    assert sorted(os.listdir(out)) == [".malstrom-fence", *sorted(f"{k}.txt" for k in range(6))]


def test_stop_takes_a_resumable_snapshot_and_resume_is_exact() -> None:
    from malstrom.coordinator._coordinator import JobPhase

    p = InMemoryPersistence()
    versions: list[Any] = []
    for stop_after in (3, 5, 4):

        def stop_soon(n: int, coord: Any, stop_after: int = stop_after) -> None:
            if n == stop_after:
                coord.request_stop(lambda v, err: versions.append((v, err)))

        coord = run_local_cluster(
            make_build(ListSink(), set()), 2, persistence=p, on_turn=stop_soon
        )
        assert coord.phase is JobPhase.STOPPED
    assert [err for _, err in versions] == [None, None, None]
    assert [v for v, _ in versions] == sorted(v for v, _ in versions)
    sink = ListSink()
    coord = run_local_cluster(make_build(sink, set()), 3, persistence=p)
    assert coord.phase is JobPhase.FINISHED
    assert dict(sink.values) == oracle()


def test_requested_snapshot_reports_its_committed_version() -> None:
    p = InMemoryPersistence()
    got: list[Any] = []

    def snap(n: int, coord: Any) -> None:
        if n in (2, 4):
            coord.request_snapshot(lambda v, err: got.append((v, err)))

    run_local_cluster(make_build(ListSink(), set()), 2, persistence=p, on_turn=snap)
    assert [err for _, err in got] == [None, None]
    assert got[0][0] < got[1][0] < p.last_committed()  # the final snapshot comes last


def test_key_local_state_refuses_restore_on_fewer_workers() -> None:
    p = InMemoryPersistence()

    def build(provider: Any, crash: bool) -> None:
        def check(v: int) -> int:
            if crash and v == 3 * PER_PART + 2_000:
                raise Boom(v)
            return v

        (
            provider.new_stream()
            .source("parts", StatefulSource(Parts()))
            .map("check", check)
            .key_local("local", lambda v: v % 3)
            .stateful_map("n", lambda k, v, s: (s + 1, s + 1), initial=int)
        )

    import functools

    with pytest.raises(OperatorError):
        run_local_cluster(
            functools.partial(build, crash=True), 3, persistence=p, snapshot_interval=0.0005
        )
    assert p.last_committed() is not None
    with pytest.raises(OperatorError, match="cannot move to another worker"):
        run_local_cluster(functools.partial(build, crash=False), 2, persistence=p)
    run_local_cluster(functools.partial(build, crash=False), 3, persistence=p)  # same: fine


class TwoPhasePart:
    def __init__(self, part: Any, log: list[Any]) -> None:
        self.part, self.log = part, log
        self.pending: list[Any] = []

    def sink(self, record: Any) -> None:
        self.pending.append(record.value)

    def snapshot(self) -> object:
        self.log.append(("snapshot", self.part, len(self.pending)))
        return len(self.pending)

    def collect(self) -> object:
        return len(self.pending)

    def commit(self, version: int) -> None:
        self.log.append(("commit", self.part, version))


class TwoPhaseSink:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def assign_part(self, key: Any) -> Any:
        return key % 2

    def build_part(self, part: Any, state: object | None) -> TwoPhasePart:
        return TwoPhasePart(part, self.log)


def test_two_phase_sinks_commit_only_committed_versions() -> None:
    from malstrom import StatefulSink

    log: list[Any] = []
    p = InMemoryPersistence()

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("parts", StatefulSource(Parts()))
            .key_distribute("k", lambda v: v % 4)
            .sink("tx", StatefulSink(TwoPhaseSink(log)))
        )

    coord = run_local_cluster(build, 2, persistence=p, snapshot_interval=0.0005)
    snapshots: dict[Any, int] = {}
    commits: dict[Any, list[int]] = {}
    for kind, part, x in log:
        if kind == "snapshot":
            snapshots[part] = snapshots.get(part, 0) + 1
        else:
            commits.setdefault(part, []).append(x)
            # a version is committed to a part only after that part snapshotted for it
            assert len(commits[part]) <= snapshots.get(part, 0)
    assert set(commits) == {0, 1}
    for part, versions in commits.items():
        assert versions == sorted(set(versions))  # each version once, in order
        assert len(versions) == snapshots[part]  # every snapshot taken was committed
        assert versions[-1] == coord.last_committed
