"""PostgresSink against a real PostgreSQL server (started by the ``postgres_server`` fixture):
exactly-once through two-phase commit across SIGKILLs, restores and rescales; upserts; clear
errors for bad input."""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from job_errors import job_fails_with
from jobs import pg_job

from malstrom import OperatorError, SingleThreadRuntime, StatefulSource
from malstrom.connectors.postgres import PostgresSink
from malstrom.runtime._multi import MultiProcessRuntime
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence
from malstrom.sources import IterSource

pytestmark = pytest.mark.timeout(240)

CRASH_JOB = Path(__file__).parent / "jobs" / "sink_crash.py"


def sql(dsn: str, *stmts: str) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in stmts:
            cur = c.execute(s)
            out = cur.fetchall() if cur.description else []
    return out


def prepared(dsn: str) -> list[str]:
    return [
        g
        for (g,) in sql(
            dsn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        )
    ]


def run(build: Any, **kw: Any) -> None:
    SingleThreadRuntime(build, **kw).execute()


def test_exactly_once_writes_every_row_once_and_leaves_nothing_prepared(pg: str) -> None:
    sql(pg, "CREATE TABLE t (k int, v int, label text)")

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(range(20_000)))
            .key_local("k", lambda v: v % 7)
            .map("row", lambda v: (v % 7, v, f"#{v}"))
            .sink("pg", PostgresSink(pg, "t", batch_size=1000))
        )

    run(build, persistence=InMemoryPersistence(), snapshot_interval=0.01)
    assert sql(pg, "SELECT count(*), count(DISTINCT v), sum(v) FROM t") == [
        (20_000, 20_000, sum(range(20_000)))
    ]
    assert sql(pg, "SELECT label FROM t WHERE v = 1234") == [("#1234",)]
    assert prepared(pg) == []


def test_rows_are_invisible_until_the_snapshot_commits(pg: str) -> None:
    sql(pg, "CREATE TABLE t (v int)")
    seen: list[int] = []

    def watch(v: int) -> int:
        # While the job runs without snapshots, nothing it wrote is visible yet.
        if v % 500 == 499:
            seen.append(sql(pg, "SELECT count(*) FROM t")[0][0])
        return v

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(range(3000)))
            .map("watch", watch)
            .map("row", lambda v: (v,))
            .sink("pg", PostgresSink(pg, "t", batch_size=100))
        )

    run(build)
    assert seen == [0] * 6
    assert sql(pg, "SELECT count(*) FROM t") == [(3000,)]


def crash_job(dsn: str, work: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(CRASH_JOB), "pg", str(work), dsn]
    if crash:
        args += ["--crash", crash]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_restore_commits_a_prepared_transaction_whose_snapshot_committed(
    pg: str, tmp_path: Path
) -> None:
    """The snapshot committed, the worker died before COMMIT PREPARED: the restore commits it
    (its rows are not replayed, so rolling it back would lose them)."""
    sql(pg, "CREATE TABLE t (v int)")
    died = crash_job(pg, tmp_path, "commit:3")
    assert died.returncode == 9, died.stderr
    left = prepared(pg)
    assert left, "the crash should leave the committed snapshot's transactions prepared"
    before = sql(pg, "SELECT count(*) FROM t")[0][0]
    done = crash_job(pg, tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert sql(pg, "SELECT count(*), count(DISTINCT v) FROM t") == [(3000, 3000)]
    assert before < 3000
    assert prepared(pg) == []


def test_restore_rolls_back_a_transaction_prepared_for_a_snapshot_that_never_committed(
    pg: str, tmp_path: Path
) -> None:
    """The barrier prepared, the worker died before the snapshot committed: the restore rolls
    the transaction back (its rows are replayed, so committing it would duplicate them)."""
    sql(pg, "CREATE TABLE t (v int)")
    died = crash_job(pg, tmp_path, "prepare:3")
    assert died.returncode == 9, died.stderr
    assert prepared(pg)
    done = crash_job(pg, tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert sql(pg, "SELECT count(*), count(DISTINCT v) FROM t") == [(3000, 3000)]
    assert prepared(pg) == []


def test_a_fresh_start_rolls_back_what_a_run_without_any_snapshot_prepared(
    pg: str, tmp_path: Path
) -> None:
    sql(pg, "CREATE TABLE t (v int)")
    died = crash_job(pg, tmp_path, "prepare:1")
    assert died.returncode == 9, died.stderr
    assert prepared(pg)
    done = crash_job(pg, tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert sql(pg, "SELECT count(*), count(DISTINCT v) FROM t") == [(3000, 3000)]
    assert prepared(pg) == []


def mp_runtime(dsn: str, work: Path, n: int, **kw: Any) -> MultiProcessRuntime:
    return MultiProcessRuntime(
        functools.partial(pg_job.build, dsn=dsn, delay=kw.pop("delay", 0.01)),
        parallelism=n,
        persistence=LocalDiskPersistence(work / "snap"),
        **kw,
    )


def test_sigkill_workers_mid_run_table_is_exact(pg: str, tmp_path: Path) -> None:
    sql(pg, *pg_job.SCHEMA)
    rng = random.Random(7)
    handle = mp_runtime(pg, tmp_path, 2, snapshot_interval=0.1, max_restarts=10).start()
    kills = 0
    deadline = time.monotonic() + 120
    while kills < 2 and handle.running and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 1.0))
        status = handle.status()
        pids = status.get("pids", {})
        if status["phase"] in ("running", "snapshotting") and pids:
            try:
                os.kill(pids[rng.choice(sorted(pids))], signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            start = handle.status()["restarts"]
            while handle.running and handle.status()["restarts"] == start:
                time.sleep(0.02)
    handle.wait(180)
    assert kills >= 1
    assert handle.status()["restarts"] == kills
    pg_job.check(pg)


def test_rescale_moves_parts_with_their_pending_transactions(pg: str, tmp_path: Path) -> None:
    sql(pg, *pg_job.SCHEMA)
    handle = mp_runtime(pg, tmp_path, 2, snapshot_interval=0.2, delay=0.03).start()
    time.sleep(1.0)
    handle.rescale(3)
    time.sleep(0.7)
    handle.rescale(1)
    assert handle.running
    handle.wait(180)
    pg_job.check(pg)


def test_upsert_mode_keeps_the_last_row_per_key(pg: str) -> None:
    sql(pg, "CREATE TABLE u (k text PRIMARY KEY, n int NOT NULL, note text DEFAULT 'x')")

    @dataclasses.dataclass
    class Row:
        k: str
        n: int

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(range(10_000)))
            .key_local("k", lambda v: f"key{v % 37}")
            .map("row", lambda v: Row(f"key{v % 37}", v))
            .sink("pg", PostgresSink(pg, "u", mode="upsert", key_columns=["k"], batch_size=333))
        )

    run(build, persistence=InMemoryPersistence(), snapshot_interval=0.01)
    got = dict(sql(pg, "SELECT k, n FROM u"))
    want = {f"key{k}": max(v for v in range(10_000) if v % 37 == k) for k in range(37)}
    assert got == want
    assert sql(pg, "SELECT DISTINCT note FROM u") == [("x",)]


def test_exactly_once_with_key_columns_upserts_inside_the_transactions(pg: str) -> None:
    sql(pg, "CREATE TABLE u (k int PRIMARY KEY, n int)")

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(range(5000)))
            .key_local("k", lambda v: v % 11)
            .map("row", lambda v: {"n": v, "k": v % 11})
            .sink("pg", PostgresSink(pg, "u", key_columns=["k"], row=lambda r: r.value))
        )

    run(build, persistence=InMemoryPersistence(), snapshot_interval=0.01)
    want = {k: max(v for v in range(5000) if v % 11 == k) for k in range(11)}
    assert dict(sql(pg, "SELECT k, n FROM u")) == want
    assert prepared(pg) == []


def test_upsert_mode_flushes_after_max_delay_while_records_flow(pg: str) -> None:
    sql(pg, "CREATE TABLE u (k int PRIMARY KEY, n int)")
    counts: list[int] = []

    def slow(v: int) -> int:
        if v == 60:
            counts.append(sql(pg, "SELECT count(*) FROM u")[0][0])
        return v

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", StatefulSource(OneByOne(80, 0.02)))
            .map("slow", slow)
            .map("row", lambda v: (v, v))
            .sink("pg", PostgresSink(pg, "u", mode="upsert", key_columns="k", max_delay=0.2))
        )

    run(build)
    assert counts and counts[0] > 0  # written before the end, though batch_size was not reached
    assert sql(pg, "SELECT count(*) FROM u") == [(80,)]


class OneByOne:
    """A source of 0..n-1, one record per poll, ``delay`` seconds apart."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def list_parts(self) -> list[int]:
        return [0]

    def build_part(self, part: int, state: object | None) -> Any:
        outer = self

        class Part:
            i = 0 if state is None else int(state)  # type: ignore[call-overload]
            rest = False

            def poll(self) -> tuple[int, int] | None:
                self.rest = not self.rest
                if self.i >= outer.n or not self.rest:
                    return None  # one record per source turn
                time.sleep(outer.delay)
                self.i += 1
                return self.i - 1, self.i - 1

            def is_finished(self) -> bool:
                return self.i >= outer.n

            def snapshot(self) -> object:
                return self.i

            def collect(self) -> object:
                return self.i

        return Part()


def failure(pg: str, sink: PostgresSink, values: list[Any]) -> str:
    def build(p: Any) -> None:
        p.new_stream().source("n", IterSource(values)).sink("pg", sink)

    with job_fails_with(OperatorError) as info:
        run(build)
    return str(info.value)


def test_errors_name_the_sink_and_the_cause(pg: str) -> None:
    sql(pg, "CREATE TABLE t (a int, b text)")
    msg = failure(pg, PostgresSink(pg, "missing"), [(1, "x")])
    assert "'pg'" in msg and "'missing' does not exist" in msg
    msg = failure(pg, PostgresSink(pg, "t", row=lambda r: {"a": 1, "zzz": 2}), [1])
    assert "['zzz'] are not columns of 't'" in msg
    msg = failure(pg, PostgresSink(pg, "t"), [object()])
    assert "not a row" in msg and "row=" in msg
    msg = failure(pg, PostgresSink(pg, "t"), [(1, "x", 3)])
    assert "has 3 values, expected 2" in msg
    msg = failure(pg, PostgresSink(pg, "t", batch_size=1), [("nope", "x")])
    assert "writing 1 rows to 't' failed" in msg and "InvalidTextRepresentation" in msg
    bad_dsn = "postgresql://postgres@127.0.0.1:1/postgres"
    msg = failure(pg, PostgresSink(bad_dsn, "t", connect_timeout=2), [(1, "x")])
    assert "OperationalError" in msg
    with pytest.raises(ValueError, match="needs key_columns"):
        PostgresSink(pg, "t", mode="upsert")
    with pytest.raises(ValueError, match="mode must be"):
        PostgresSink(pg, "t", mode="twice")  # type: ignore[arg-type]


def test_a_server_without_prepared_transactions_is_a_clear_error() -> None:
    """PostgreSQL's default max_prepared_transactions = 0 refuses exactly_once up front."""
    from malstrom.testing._postgres import temporary_postgres

    with temporary_postgres(max_prepared=0) as dsn:
        sql(dsn, "CREATE TABLE t (a int)")
        msg = failure(dsn, PostgresSink(dsn, "t"), [(1,)])
        assert "max_prepared_transactions" in msg and "mode='upsert'" in msg
        sql(dsn, "CREATE TABLE u (a int PRIMARY KEY)")

        def build(p: Any) -> None:
            p.new_stream().source("n", IterSource([(1,)])).sink(
                "pg", PostgresSink(dsn, "u", mode="upsert", key_columns=["a"])
            )

        run(build)
        assert sql(dsn, "SELECT a FROM u") == [(1,)]
