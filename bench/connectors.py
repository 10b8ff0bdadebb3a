#!/usr/bin/env python
"""Connector throughput: PostgresSink and the file formats vs plain loops doing the same work.

    .venv/bin/python bench/connectors.py            # full: 5 rounds
    .venv/bin/python bench/connectors.py --quick    # 3 rounds, inputs 1/5 the size
    .venv/bin/python bench/connectors.py --only pg  # one part: pg or files (repeatable)

PostgreSQL (a throw-away server from the Debian package, fsync on, as deployed):

  eo-1 / eo-8  SingleThreadRuntime: IterSource(rows) -> key_local(k) -> PostgresSink
               (exactly_once, parts=1 / 8, snapshot every second)
               vs plain: one connection, COPY in batches of 5000 inside one transaction,
               PREPARE TRANSACTION + COMMIT PREPARED at the end
  ups-1        the same into a keyed table with PostgresSink(mode="upsert", parts=1)
               vs plain: batches of 5000 deduplicated by key, COPY into a temporary table,
               INSERT ... SELECT ... ON CONFLICT DO UPDATE, COMMIT (what the sink does)
               and vs plain executemany(INSERT ... ON CONFLICT DO UPDATE) per batch

Files (local disk, page cache warm): FileSource(format) -> counting sink vs the plain reader
(csv.DictReader + the same type conversion, json.loads per line, pyarrow iter_batches +
to_pylist, iterating a file's lines), and IterSource(rows) -> FileSink / DirectorySink(format)
vs the plain writer (csv.DictWriter, json.dumps per row, pyarrow ParquetWriter).

Every round runs the framework then the plain loop; rows/s are medians over rounds, the ratio
is the median of the per-round ratios framework / plain. The framework time is the whole
``execute()`` (graph build, the final snapshot, the commit).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from malstrom import SingleThreadRuntime, StatelessSink, StreamProvider  # noqa: E402
from malstrom.formats import Csv, Format, JsonLines, Lines, Parquet  # noqa: E402
from malstrom.sinks import DirectorySink, FileSink  # noqa: E402
from malstrom.snapshot import InMemoryPersistence  # noqa: E402
from malstrom.sources import FileSource, IterSource  # noqa: E402

Result = tuple[float, int]  # seconds, rows (checked against the expected count)


class CountSink:
    def __init__(self) -> None:
        self.n = 0

    def sink(self, record: Any) -> None:
        self.n += 1

    def sink_batch(self, records: Any) -> None:
        self.n += len(records)


def execute(build: Callable[[StreamProvider], None], **kw: Any) -> float:
    t0 = time.perf_counter()
    SingleThreadRuntime(build, **kw).execute()
    return time.perf_counter() - t0


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(title: str, rows: int, cases: dict[str, list[tuple[Result, Result]]]) -> None:
    print(f"\n{title} ({rows:,} rows; {load()})")
    print(f"{'case':<22}{'framework rows/s':>18}{'plain rows/s':>15}{'ratio':>8}   per round")
    for name, runs in cases.items():
        fw = statistics.median(rows / f for (f, _), _ in runs)
        pl = statistics.median(rows / p for _, (p, _) in runs)
        ratios = [p / f for (f, _), (p, _) in runs]
        per = " ".join(f"{r:.2f}" for r in ratios)
        print(f"{name:<22}{fw:>18,.0f}{pl:>15,.0f}{statistics.median(ratios):>8.2f}   {per}")


# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------
def pg_rows(n: int, keys: int) -> list[tuple[int, int, str]]:
    return [(i % keys, i, f"label {i}") for i in range(n)]


def pg_bench(n: int, rounds: int) -> None:
    import psycopg
    from psycopg import sql

    from malstrom.connectors.postgres import PostgresSink
    from malstrom.testing._postgres import temporary_postgres

    rows = pg_rows(n, 10_000)
    with temporary_postgres(durable=True) as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE ev (k int, v bigint, s text)")
            c.execute("CREATE TABLE up (k int PRIMARY KEY, v bigint, s text)")

        def count(table: str, reset: bool = True) -> int:
            with psycopg.connect(dsn, autocommit=True) as c:
                got = c.execute(f"SELECT count(*) FROM {table}").fetchone()
                if reset:
                    c.execute(f"TRUNCATE {table}")
            return int(got[0]) if got else 0

        def fw(table: str, **kw: Any) -> Result:
            sink = PostgresSink(dsn, table, **kw)

            def build(p: StreamProvider) -> None:
                (
                    p.new_stream()
                    .source("rows", IterSource(rows))
                    .key_local("k", lambda r: r[0])
                    .sink("pg", sink)
                )

            secs = execute(build, persistence=InMemoryPersistence(), snapshot_interval=1.0)
            return secs, count(table)

        def plain_copy() -> Result:
            t0 = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("BEGIN")
                for i in range(0, len(rows), 5000):
                    with c.cursor().copy("COPY ev (k, v, s) FROM STDIN") as cp:
                        for r in rows[i : i + 5000]:
                            cp.write_row(r)
                c.execute("PREPARE TRANSACTION 'bench'")
                c.execute("COMMIT PREPARED 'bench'")
            return time.perf_counter() - t0, count("ev")

        upsert = (
            "INSERT INTO up (k, v, s) {} "
            "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, s = EXCLUDED.s"
        )

        def dedup(batch: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
            return list({r[0]: r for r in batch}.values())

        def plain_staged() -> Result:
            t0 = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(
                    "CREATE TEMP TABLE stage (LIKE up INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                for i in range(0, len(rows), 5000):
                    with c.transaction():
                        with c.cursor().copy("COPY stage (k, v, s) FROM STDIN") as cp:
                            for r in dedup(rows[i : i + 5000]):
                                cp.write_row(r)
                        c.execute(sql.SQL(upsert.format("SELECT k, v, s FROM stage")))
            return time.perf_counter() - t0, count("up")

        def plain_executemany() -> Result:
            t0 = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as c:
                stmt = sql.SQL(upsert.format("VALUES (%s, %s, %s)"))
                for i in range(0, len(rows), 5000):
                    with c.transaction():
                        c.cursor().executemany(stmt, dedup(rows[i : i + 5000]))
            return time.perf_counter() - t0, count("up")

        names = ("eo-1 vs COPY", "eo-8 vs COPY", "ups-1 vs staged", "ups-1 vs executemany")
        cases: dict[str, list[tuple[Result, Result]]] = {k: [] for k in names}
        for _ in range(rounds):
            cases["eo-1 vs COPY"].append((fw("ev", parts=1), plain_copy()))
            cases["eo-8 vs COPY"].append((fw("ev", parts=8), plain_copy()))
            up = fw("up", mode="upsert", key_columns=["k"], parts=1)
            cases["ups-1 vs staged"].append((up, plain_staged()))
            up = fw("up", mode="upsert", key_columns=["k"], parts=1)
            cases["ups-1 vs executemany"].append((up, plain_executemany()))
        for runs in cases.values():
            for (_, a), (_, b) in runs:
                want = n if a == b == n else 10_000
                if not (a == b == want):
                    sys.exit(f"row counts disagree: framework {a}, plain {b}, expected {want}")
        report("PostgreSQL sink", n, cases)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def file_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"name {i % 977}", "amount": i * 0.25} for i in range(n)]


TYPES = {"id": int, "amount": float}


def fw_read(path: Path, fmt: Format) -> Result:
    sink = CountSink()

    def build(p: StreamProvider) -> None:
        p.new_stream().source("f", FileSource(path, format=fmt)).sink("n", StatelessSink(sink))

    return execute(build), sink.n


def plain_read(path: Path, kind: str) -> Result:
    t0 = time.perf_counter()
    n = 0
    if kind == "csv":
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                row["id"] = int(row["id"])
                row["amount"] = float(row["amount"])
                n += 1
    elif kind == "jsonl":
        with open(path, "rb") as f:
            for line in f:
                json.loads(line)
                n += 1
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            n += len(batch.to_pylist())
    else:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line.rstrip("\n")
                n += 1
    return time.perf_counter() - t0, n


def fw_write(rows: list[Any], out: Path, kind: str) -> Result:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    sink: Any
    if kind == "parquet":
        sink = DirectorySink(out, Parquet(), parts=1)
    else:
        fmt = {"csv": Csv(), "jsonl": JsonLines(), "lines": Lines()}[kind]
        sink = FileSink(out, format=fmt)

    def build(p: StreamProvider) -> None:
        p.new_stream().source("rows", IterSource(rows)).sink("out", sink)

    secs = execute(build)
    return secs, count_written(out, kind)


def plain_write(rows: list[Any], out: Path, kind: str) -> Result:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    t0 = time.perf_counter()
    if kind == "csv":
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
    elif kind == "jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        with open(out, "wb") as f:
            for i in range(0, len(rows), 1024):
                f.write("".join([dumps(r) + "\n" for r in rows[i : i + 1024]]).encode())
            f.flush()
            os.fsync(f.fileno())
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out.mkdir()
        with open(out / "plain.parquet", "wb") as f:
            writer = None
            for i in range(0, len(rows), 8192):
                t = pa.Table.from_pylist(rows[i : i + 8192])
                if writer is None:
                    writer = pq.ParquetWriter(f, t.schema, compression="zstd")
                writer.write_table(t)
            assert writer is not None
            writer.close()
            f.flush()
            os.fsync(f.fileno())
    else:
        with open(out, "w") as f:
            for i in range(0, len(rows), 1024):
                f.write("".join([f"{r}\n" for r in rows[i : i + 1024]]))
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - t0, count_written(out, kind)


def count_written(out: Path, kind: str) -> int:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))
    lines = out.read_bytes().count(b"\n")
    return lines - 1 if kind == "csv" else lines


def files_bench(n: int, rounds: int) -> None:
    rows = file_rows(n)
    d = Path(tempfile.mkdtemp(prefix="malstrom-bench-"))
    try:
        inputs = {
            "csv": (d / "in.csv", Csv(types=TYPES)),
            "jsonl": (d / "in.jsonl", JsonLines()),
            "parquet": (d / "in.parquet", Parquet()),
            "lines": (d / "in.txt", Lines()),
        }
        for kind, (path, _) in inputs.items():
            plain_write(rows if kind != "lines" else [r["name"] for r in rows], path, kind)
            if kind == "parquet":
                (path / "plain.parquet").rename(d / "tmp.parquet")
                path.rmdir()
                (d / "tmp.parquet").rename(path)
        reads: dict[str, list[tuple[Result, Result]]] = {f"read {k}": [] for k in inputs}
        writes: dict[str, list[tuple[Result, Result]]] = {
            f"write {k}": [] for k in ("csv", "jsonl", "parquet")
        }
        for _ in range(rounds):
            for kind, (path, fmt) in inputs.items():
                reads[f"read {kind}"].append((fw_read(path, fmt), plain_read(path, kind)))
            for kind in ("csv", "jsonl", "parquet"):
                fw = fw_write(rows, d / f"fw-{kind}", kind)
                writes[f"write {kind}"].append((fw, plain_write(rows, d / f"pl-{kind}", kind)))
        for cases in (reads, writes):
            for runs in cases.values():
                for (_, a), (_, b) in runs:
                    if not a == b == n:
                        sys.exit(f"row counts disagree: framework {a}, plain {b}, expected {n}")
        report("File formats: read", n, reads)
        report("File formats: write", n, writes)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", choices=["pg", "files"])
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    scale = 5 if args.quick else 1
    only = set(args.only or ["pg", "files"])
    print(f"connectors bench: {rounds} rounds; {load()}; {os.cpu_count()} CPUs")
    if "pg" in only:
        pg_bench(300_000 // scale, rounds)
    if "files" in only:
        files_bench(500_000 // scale, rounds)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
