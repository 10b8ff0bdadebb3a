"""A multi-process job for the PostgreSQL fault tests: keyed running sums over a partitioned,
slow, resumable source; every update goes exactly-once into table ``updates`` (k, v, s) and
the running totals are upserted into ``totals`` (k primary key, total)."""

from __future__ import annotations

import time
from typing import Any

from malstrom import StatefulSource

PARTS = 4
PER_PART = 2_500
KEYS = 13

SCHEMA = [
    "CREATE TABLE updates (k int NOT NULL, v int NOT NULL, s bigint NOT NULL)",
    "CREATE TABLE totals (k int PRIMARY KEY, total bigint NOT NULL)",
]


class Part:
    def __init__(self, base: int, nxt: int, delay: float) -> None:
        self.base, self.nxt, self.delay = base, nxt, delay

    def poll(self) -> tuple[int, int] | None:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        if self.delay:
            time.sleep(self.delay)
        stop = min(PER_PART, self.nxt + min(n, 50))
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
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        return Part(part * PER_PART, 0 if state is None else int(state), self.delay)  # type: ignore[call-overload]


def build(provider: Any, dsn: str, delay: float = 0.01) -> None:
    from malstrom.connectors.postgres import PostgresSink

    sums = (
        provider.new_stream()
        .source("numbers", StatefulSource(Parts(delay)))
        .key_distribute("by-key", lambda v: v % KEYS)
        .stateful_map("running", lambda k, v, s: ((k, v, s + v), s + v), initial=int)
    )
    sums.sink("updates", PostgresSink(dsn, "updates", parts=4))
    sums.map("total", lambda u: {"k": u[0], "total": u[2]}).sink(
        "totals", PostgresSink(dsn, "totals", mode="upsert", key_columns=["k"], parts=3)
    )


def expected_totals() -> dict[int, int]:
    out = dict.fromkeys(range(KEYS), 0)
    for v in range(PARTS * PER_PART):
        out[v % KEYS] += v
    return out


def check(dsn: str) -> None:
    """Every value exactly once; per key the running sums are the prefix sums of its values
    (no update applied twice); the upserted totals are final."""
    import psycopg

    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT k, v, s FROM updates ORDER BY k, s").fetchall()
        totals = dict(c.execute("SELECT k, total FROM totals").fetchall())
        prepared = c.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall()
    assert sorted(v for _, v, _ in rows) == list(range(PARTS * PER_PART))
    running: dict[int, int] = {}
    for k, v, s in rows:
        assert k == v % KEYS
        running[k] = running.get(k, 0) + v
        assert s == running[k], (k, v, s)
    assert totals == expected_totals()
    assert prepared == []
