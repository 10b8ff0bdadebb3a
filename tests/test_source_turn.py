"""Sources that block: every source turn is bounded in time as well as in records, so records,
barriers, rescales and stops keep moving while a part's ``poll()`` sleeps.

Most assertions are about behaviour counted in records (which snapshot a re-run resumed
from, how many records a batch holds: a poll that sleeps never returns early, so these counts
hold however loaded the machine is). Where latency itself is the point, the bound is 10x the
target: a record is held at most ~one turn (5 ms) after its source returned it, the test
allows 200 ms at the 99th percentile.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with
from jobs import rescale_job as rj
from jobs import slow_parts

from malstrom import (
    MultiProcessRuntime,
    OperatorError,
    SingleThreadRuntime,
    StatefulSink,
    StatefulSource,
    StatelessSink,
    StatelessSource,
    StreamProvider,
)
from malstrom.runtime._worker import SOURCE_TURN_BUDGET
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence
from malstrom.sources import FileSource, IterSource
from malstrom.testing import LocalCluster

pytestmark = pytest.mark.timeout(240)


class Meter:
    """Counts what sinks saw; records whose value is ``(created, ...)`` (``time.monotonic()``
    when the source returned it) also give how long the job held them."""

    def __init__(self) -> None:
        self.seen = 0
        self.held: list[float] = []
        self.batches: list[int] = []
        self.order: list[Any] = []

    def sink(self, record: Any) -> None:
        self.seen += 1
        self.order.append(record.key)
        if isinstance(record.value, tuple):
            self.held.append(time.monotonic() - record.value[0])

    def sink_batch(self, batch: Any) -> None:
        self.batches.append(len(batch))
        for r in batch:
            self.sink(r)

    def p99(self) -> float:
        held = sorted(self.held)
        return held[int(len(held) * 0.99)]


class PacedPart:
    """Blocks in ``poll()`` until its next record is due (``rate`` records per second)."""

    def __init__(self, count: int, rate: float) -> None:
        self.count, self.interval = count, 1.0 / rate
        self.i = 0
        self.due = time.monotonic()

    def poll(self) -> tuple[Any, Any] | None:
        if self.i >= self.count:
            return None
        self.due += self.interval
        pause = self.due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        self.i += 1
        return (time.monotonic(), self.i), self.i

    def is_finished(self) -> bool:
        return self.i >= self.count


class SleepyPart:
    """Sleeps ``delay`` seconds in every ``poll()`` (or ``poll_batch``, per record asked)."""

    def __init__(self, count: int, delay: float, start: int = 0) -> None:
        self.count, self.delay = count, delay
        self.i = start

    def poll(self) -> tuple[Any, Any] | None:
        if self.i >= self.count:
            return None
        time.sleep(self.delay)
        self.i += 1
        return self.i - 1, self.i - 1

    def is_finished(self) -> bool:
        return self.i >= self.count

    def snapshot(self) -> object:
        return self.i

    def collect(self) -> object:
        return self.i


class Parts:
    def __init__(self, make: Any, parts: int) -> None:
        self.make, self.parts = make, parts

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None = None) -> Any:
        return self.make(part, state)


def test_parts_that_block_until_due_keep_latency_within_a_turn() -> None:
    """2 parts at 500 records/s each, ``poll`` sleeping until the next record is due: each
    record reaches the sink within the turn that read it (before: a whole 2048-record batch
    per part, seconds of latency)."""
    meter = Meter()

    def build(provider: StreamProvider) -> None:
        src = StatelessSource(Parts(lambda p, s=None: PacedPart(300, 500.0), 2))
        provider.new_stream().source("paced", src).sink("meter", StatelessSink(meter))

    SingleThreadRuntime(build).execute()
    assert meter.seen == 600
    assert meter.p99() <= 0.2, meter.p99()


def test_a_snapshot_commits_while_a_slow_source_runs_and_the_rerun_resumes_from_it() -> None:
    """``snapshot_interval=0.05``, a source taking 0.3 ms per poll, a map failing at record
    2200: snapshots committed before the failure, so the re-run resumes near it instead of
    replaying everything; the counts stay exact."""
    meter = Meter()
    persistence = InMemoryPersistence()
    starts: list[int] = []
    fail = [True]
    total = 2400

    def make(part: int, state: object | None) -> SleepyPart:
        start = 0 if state is None else int(state)  # type: ignore[call-overload]
        starts.append(start)
        return SleepyPart(total, 0.0003, start)

    def check(v: int) -> int:
        if fail[0] and v == 2200:
            raise ValueError("bad record 2200")
        return v

    counts: list[int] = []

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("slow", StatefulSource(Parts(make, 1)))
            .map("check", check)
            .key_local("one", lambda v: 0)
            .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
            .inspect("out", lambda r, ctx: counts.append(r.value))
            .sink("meter", StatelessSink(meter))
        )

    with job_fails_with(OperatorError, match="bad record 2200"):
        SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.05).execute()
    assert persistence.committed_versions(), "no snapshot was committed before the failure"
    fail[0] = False
    rt = SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.05)
    rt.execute()
    assert rt.restored_from is not None
    # Snapshots every 50 ms of a 0.3 ms/record source: the last one is a few hundred records
    # before the failure, never the start.
    assert starts[-1] >= 1100, starts
    assert counts[-1] == total  # the restored count continued exactly


def test_a_slow_generator_in_iter_source_lets_output_and_snapshots_through() -> None:
    """IterSource over a generator taking 1 ms per item: output flows while it runs, and
    snapshots commit all along (before: nothing for the first 2048 items)."""
    meter = Meter()
    commits: list[int] = []

    def slow() -> Any:
        for i in range(1500):
            time.sleep(0.001)
            yield time.monotonic(), i

    class CommitLog:
        def assign_part(self, key: Any) -> int:
            return 0

        def build_part(self, part: int, state: object | None) -> Any:
            return self

        def sink(self, record: Any) -> None:
            meter.sink(record)

        def snapshot(self) -> object:
            return None

        def commit(self, version: int) -> None:
            commits.append(meter.seen)

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("gen", IterSource(slow))
            .sink("log", StatefulSink(CommitLog()))
        )

    SingleThreadRuntime(build, persistence=InMemoryPersistence(), snapshot_interval=0.05).execute()
    assert meter.seen == 1500
    assert meter.p99() <= 0.2, meter.p99()
    during = sorted({c for c in commits if c < 1500})
    assert len(during) >= 5, commits


def test_a_file_source_reading_a_pipe_lets_lines_through_as_they_come(tmp_path: Path) -> None:
    """FileSource on a FIFO whose writer sends a line per millisecond: lines reach the sink as
    they are written, not 2048 at a time."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    meter = Meter()

    def writer() -> None:
        with open(fifo, "w") as f:
            for i in range(400):
                f.write(f"{time.monotonic()} {i}\n")
                f.flush()
                time.sleep(0.001)

    t = threading.Thread(target=writer, daemon=True)
    t.start()

    def build(provider: StreamProvider) -> None:
        (
            provider.new_stream()
            .source("pipe", FileSource(str(fifo)))
            .map("parse", lambda line: tuple(map(float, line.split())))
            .sink("meter", StatelessSink(meter))
        )

    SingleThreadRuntime(build).execute()
    t.join(10)
    assert meter.seen == 400
    assert meter.p99() <= 0.2, meter.p99()


def test_slow_parts_of_several_sources_take_turns() -> None:
    """Two sources with 3 parts each, all blocking 1 ms per poll: every part is read in every
    turn, within its share of the turn's time (no part waits for another's 100 records)."""
    meter = Meter()

    def build(provider: StreamProvider) -> None:
        streams = []
        for s in range(2):
            parts = Parts(lambda p, st=None: SleepyPart(100, 0.001), 3)
            streams.append(
                provider.new_stream()
                .source(f"src{s}", StatelessSource(parts))
                .key_local(f"tag{s}", lambda v, s=s: s)
            )
        streams[0].union("both", streams[1]).sink("meter", StatelessSink(meter))

    SingleThreadRuntime(build).execute()
    assert meter.seen == 600
    # Both sources show up among the first records (no source waits for another's 300).
    first = meter.order[:60]
    assert set(first) == {0, 1}, first


def test_parts_of_a_source_are_asked_for_the_same_number_of_records() -> None:
    """One part blocks 1 ms per record, two are fast: every turn asks each part for the same
    number of records (sized for the slow one), so no part runs ahead of the others in event
    time, as when every part was asked for a full batch."""
    calls: list[tuple[int, int]] = []

    class Part:
        def __init__(self, part: int) -> None:
            self.part, self.i = part, 0

        def poll(self) -> Any:
            got = self.poll_batch(1)
            return got[0] if got else None

        def poll_batch(self, n: int) -> list[tuple[int, int]]:
            calls.append((self.part, n))
            out = []
            for _ in range(min(n, 300 - self.i)):
                if self.part == 0:
                    time.sleep(0.001)
                out.append((self.i, self.i))
                self.i += 1
            return out

        def is_finished(self) -> bool:
            return self.i >= 300

    def build(provider: StreamProvider) -> None:
        parts = Parts(lambda p, s=None: Part(p), 3)
        provider.new_stream().source("p", StatelessSource(parts)).sink("n", StatelessSink(Meter()))

    SingleThreadRuntime(build).execute()
    rounds = [calls[i : i + 3] for i in range(0, len(calls) - 2, 3)]
    for r in rounds:
        if len({p for p, _ in r}) == 3:  # a turn that read all three parts
            assert len({n for _, n in r}) == 1, r
    assert max(n for p, n in calls if p == 0) <= 2 * int(SOURCE_TURN_BUDGET / 0.001) + 2, calls


def test_parts_moved_by_back_to_back_rescales_keep_their_pace() -> None:
    """14 rescales queued at once on the in-process cluster: parts move again and again. A
    moved part keeps what its reader learnt about its speed (a new reader would start at one
    record and fall behind its siblings in event time, and records would turn late)."""
    out = rj.Outputs()
    cluster = LocalCluster(rj.make_build(out), 2, persistence=InMemoryPersistence())
    for k in [4, 1, 2, 5, 4, 3, 4, 2, 4, 1, 1, 3, 1, 1]:
        cluster.coord.request_rescale(k)
    while cluster.step():
        pass
    rj.check(out)


def test_poll_batch_calls_shrink_when_slow_and_grow_back_when_fast() -> None:
    """``poll_batch(n)`` cannot be interrupted: the engine sizes ``n`` by the time a record
    took in the last call, asking for few records while the part is slow and the full batch
    again once it is fast."""
    asked: list[tuple[int, int]] = []

    class Part:
        def __init__(self) -> None:
            self.i = 0

        def poll(self) -> Any:
            got = self.poll_batch(1)
            return got[0] if got else None

        def poll_batch(self, n: int) -> list[tuple[int, int]]:
            asked.append((self.i, n))
            out = []
            for _ in range(n):
                if self.i >= 20_000:
                    break
                if self.i < 200:
                    time.sleep(0.001)  # slow for the first 200 records
                out.append((self.i, self.i))
                self.i += 1
            return out

        def is_finished(self) -> bool:
            return self.i >= 20_000

    def build(provider: StreamProvider) -> None:
        parts = Parts(lambda p, s=None: Part(), 1)
        provider.new_stream().source("p", StatelessSource(parts)).sink("n", StatelessSink(Meter()))

    SingleThreadRuntime(build).execute()
    slow = [n for i, n in asked if 10 <= i < 190]
    fast = [n for i, n in asked if i > 1000]
    # While slow, a call asks for about what fits the budget at the measured speed (a noisy
    # measurement can at most double it), never for a whole batch.
    fits = int(SOURCE_TURN_BUDGET / 0.001)
    assert max(slow) <= 2 * fits + 2, slow
    assert statistics.median(slow) <= fits + 1, slow
    assert max(fast) == 2048, fast[:20]


def test_poll_batch_with_a_fixed_time_per_call_is_not_cut_to_one_record() -> None:
    """A call that takes 20 ms whatever it is asked for (a request to a slow API): asking
    for fewer records would not make it shorter, only the job slower, so the engine keeps
    asking for full batches (here the API returns at most 100 per call)."""
    asked: list[int] = []

    class Part:
        def __init__(self) -> None:
            self.i = 0

        def poll(self) -> Any:
            got = self.poll_batch(1)
            return got[0] if got else None

        def poll_batch(self, n: int) -> list[tuple[int, int]]:
            asked.append(n)
            time.sleep(0.02)
            out = [(i, i) for i in range(self.i, min(self.i + min(n, 100), 3000))]
            self.i += len(out)
            return out

        def is_finished(self) -> bool:
            return self.i >= 3000

    meter = Meter()

    def build(provider: StreamProvider) -> None:
        parts = Parts(lambda p, s=None: Part(), 1)
        provider.new_stream().source("api", StatelessSource(parts)).sink("n", StatelessSink(meter))

    SingleThreadRuntime(build).execute()
    assert meter.seen == 3000
    # 1, 2, 4, ... then full calls: 3000 records in ~35 calls, not ~3000 calls of one.
    assert len(asked) <= 60, asked
    assert statistics.median(asked[8:]) >= 100, asked


def test_the_budget_is_a_runtime_setting() -> None:
    meter_small, meter_large = Meter(), Meter()

    def build_for(meter: Meter) -> Any:
        def build(provider: StreamProvider) -> None:
            parts = Parts(lambda p, s=None: SleepyPart(120, 0.001), 1)
            provider.new_stream().source("s", StatelessSource(parts)).sink(
                "m", StatelessSink(meter)
            )

        return build

    SingleThreadRuntime(build_for(meter_small), source_turn_budget=0.002).execute()
    SingleThreadRuntime(build_for(meter_large), source_turn_budget=0.05).execute()
    # A poll takes >= 1 ms, so a 2 ms turn reads at most 2 records (+1: the first poll of a
    # turn always runs); a 50 ms turn reads many.
    assert max(meter_small.batches) <= 3, meter_small.batches
    assert max(meter_large.batches) > 3, meter_large.batches
    for bad in (0, -1.0, float("nan"), float("inf"), "5"):
        with pytest.raises(ValueError, match="source_turn_budget"):
            SingleThreadRuntime(build_for(Meter()), source_turn_budget=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source_turn_budget"):
        MultiProcessRuntime(
            functools.partial(slow_parts.build, workdir=".", count=1),
            parallelism=1,
            source_turn_budget=0,
        )


def test_rescale_of_a_job_whose_parts_block_completes_while_it_runs(tmp_path: Path) -> None:
    """2 workers, 3 parts taking 1 ms per poll: ``rescale(3)`` then ``rescale(2)`` each
    complete within 10 s (10x the target; typically ~0.5 s), and every record is counted once
    (before: a rescale took 12-25 s, and a job of a few seconds ended before it was done)."""
    rt = MultiProcessRuntime(
        functools.partial(slow_parts.build, workdir=str(tmp_path), count=None),
        parallelism=2,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.2,
    )
    handle = rt.start()
    start = time.monotonic()
    try:
        deadline = time.monotonic() + 60
        while handle.status().get("phase") != "running":
            assert time.monotonic() < deadline, handle.status()
            time.sleep(0.02)
        time.sleep(0.3)
        for n in (3, 2):
            handle.rescale(n, timeout=10)
            st = handle.status()
            assert st["workers"] == list(range(n)), st
            assert handle.running
        # A part makes at most one record per ms: this is past every part's position.
        count = int((time.monotonic() - start) * 1000) + 500
        slow_parts.end_at(str(tmp_path), count)
        handle.wait(120)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    slow_parts.check(str(tmp_path), count)


def test_the_budget_reaches_worker_processes(tmp_path: Path) -> None:
    """``MultiProcessRuntime(source_turn_budget=...)`` is what each worker uses: with 2 ms
    and polls of >= 1 ms, no source batch holds more than 3 records (the job fails if one
    does)."""
    count = 300
    rt = MultiProcessRuntime(
        functools.partial(slow_parts.build, workdir=str(tmp_path), count=count, max_batch=3),
        parallelism=2,
        source_turn_budget=0.002,
        max_restarts=0,
    )
    rt.execute()
    slow_parts.check(str(tmp_path), count)


APP = f"{Path(__file__).resolve().parent / 'jobs' / 'slow_parts_app.py'}:build"
MALSTROM = [sys.executable, "-m", "malstrom.cli"]


def test_the_command_line_sets_the_budget_of_its_workers(tmp_path: Path) -> None:
    env = dict(os.environ, MALSTROM_TEST_OUT=str(tmp_path), SLOW_COUNT="200", SLOW_MAX_BATCH="3")
    run = [*MALSTROM, "run", APP, "-w", "2", "--max-restarts", "0"]
    r = subprocess.run(
        [*run, "--source-turn-budget", "0.002"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    slow_parts.check(str(tmp_path), 200)
    worker = [*MALSTROM, "worker", APP, "--coordinator", "127.0.0.1:1", "--job", "j"]
    for cmd in (run, [*worker, "--token", "t"]):
        bad = subprocess.run(
            [*cmd, "--source-turn-budget", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2, bad.stderr
        assert "source_turn_budget must be > 0" in bad.stderr


def test_a_file_source_refuses_to_resume_a_pipe_midway(tmp_path: Path) -> None:
    """A pipe cannot be read again: resuming one at a byte offset is refused, clearly."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: open(fifo, "w").close(), daemon=True)
    writer.start()
    with pytest.raises(ValueError, match=r"cannot resume .* not seekable"):
        FileSource(str(fifo)).build_part(str(fifo), (10, 1))
    writer.join(10)
