"""Nexmark (examples/nexmark): the generator, and every query checked against DuckDB SQL.

The same seeded events are generated twice: by the plain generator loop, written to CSV files
and loaded into DuckDB tables ``person``, ``auction`` and ``bid``; and by the partitioned
source inside malstrom jobs. Each query's output must equal (as a multiset) the rows of the
query's SQL over those tables.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from malstrom import MultiProcessRuntime, SingleThreadRuntime, StreamProvider
from malstrom.sinks import FileSink, ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.testing import run_local_cluster

duckdb = pytest.importorskip("duckdb")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from nexmark import common, q0, q1, q2, q3, q4, q5, q6, q7, q8  # noqa: E402
from nexmark.generator import (  # noqa: E402
    EventFactory,
    GeneratorConfig,
    NexmarkSource,
    generate,
)
from nexmark.model import Auction, Bid, Person  # noqa: E402

N_EVENTS = 40_000
# 1000 events per second of event time: 40 s, enough windows for q5 (10 s / 2 s), q7 and q8.
CONFIG = GeneratorConfig(seed=42, max_events=N_EVENTS, events_per_second=1000)
PARTS = 3
Q7_SIZE = 2_000
Q8_SIZE = 2_000
Q5_SIZE, Q5_SLIDE = 10_000, 2_000


# ----------------------------------------------------------------------------------------------
# DuckDB over the same events
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events() -> list[Any]:
    return list(generate(CONFIG))


COLUMN_TYPES = {"int": "BIGINT", "str": "VARCHAR"}  # the model's field annotations


@pytest.fixture(scope="module")
def db(events: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An in-memory DuckDB with tables person, auction and bid (columns = dataclass fields)."""
    tmp = tmp_path_factory.mktemp("nexmark")
    con = duckdb.connect()
    for cls, table in ((Person, "person"), (Auction, "auction"), (Bid, "bid")):
        fields = dataclasses.fields(cls)
        path = tmp / f"{table}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([fl.name for fl in fields])
            w.writerows(dataclasses.astuple(e) for e in events if type(e) is cls)
        columns = ", ".join(f"'{fl.name}': '{COLUMN_TYPES[str(fl.type)]}'" for fl in fields)
        # nullstr: an empty field is the empty string (``extra``), not NULL.
        con.execute(
            f"CREATE TABLE {table} AS SELECT * FROM read_csv('{path}', header = true, "
            f"nullstr = '\\N', columns = {{{columns}}})"
        )
    return con


def sql(db: Any, query: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(row) for row in db.execute(query).fetchall())


# ----------------------------------------------------------------------------------------------
# Running the queries
# ----------------------------------------------------------------------------------------------
def run_single(build: Callable[..., None], parts: int = PARTS, **params: Any) -> list[Any]:
    """Runs ``build`` on SingleThreadRuntime; returns the result values (none may be late)."""
    out, late = ListSink(), ListSink()
    SingleThreadRuntime(
        functools.partial(build, config=CONFIG, parts=parts, sink=out, late_sink=late, **params)
    ).execute()
    assert late.records == []
    return out.values


def run_cluster(build: Callable[..., None], workers: int = 2, **params: Any) -> list[Any]:
    """The same on ``workers`` in-process workers (key routing, epoch merging, barriers)."""
    out, late = ListSink(), ListSink()
    run_local_cluster(
        functools.partial(
            build, config=CONFIG, parts=2 * workers, sink=out, late_sink=late, **params
        ),
        workers,
    )
    assert late.records == []
    return out.values


def as_rows(values: list[Any]) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(v) for v in values)


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------
def drain(part: Any, sizes: Iterator[int] | None = None) -> list[Any]:
    out = []
    while not part.is_finished():
        got = part.poll_batch(next(sizes) if sizes is not None else 1000)
        out.extend(got)
    return out


def test_proportions_1_3_46_and_ids(events: list[Any]) -> None:
    kinds = Counter(type(e) for e in events)
    assert kinds == {Person: N_EVENTS // 50, Auction: 3 * N_EVENTS // 50, Bid: 46 * N_EVENTS // 50}
    people = [e.id for e in events if type(e) is Person]
    auctions = [e.id for e in events if type(e) is Auction]
    assert people == list(range(1000, 1000 + len(people)))
    assert auctions == list(range(1000, 1000 + len(auctions)))
    assert [e.date_time for e in events] == [CONFIG.timestamp(i) for i in range(N_EVENTS)]
    assert all(e.date_time < e.expires for e in events if type(e) is Auction)
    assert {e.category for e in events if type(e) is Auction} == set(range(10, 15))


def test_hot_auctions_bidders_and_sellers(events: list[Any]) -> None:
    bids = [e for e in events if type(e) is Bid]
    auctions = [e for e in events if type(e) is Auction]
    # Hot auctions/bidders/sellers are the first (bidders: second) of each group of 100 ids.
    hot_auction = sum(b.auction % 100 == 0 for b in bids) / len(bids)
    hot_bidder = sum(b.bidder % 100 == 1 for b in bids) / len(bids)
    hot_seller = sum(a.seller % 100 == 0 for a in auctions) / len(auctions)
    assert 0.49 < hot_auction < 0.55  # 1 - 1/2, plus random picks that hit a hot one
    assert 0.74 < hot_bidder < 0.78  # 1 - 1/4, plus a little
    assert 0.72 < hot_seller < 0.80  # 1 - 1/4, plus a little (2,400 auctions: noisier)
    # Bids and auctions may refer to ids whose own event comes later (Beam's "lead").
    last_auction = max(a.id for a in auctions)
    assert sum(b.auction > last_auction for b in bids[-2000:]) > 0


def test_same_events_whatever_the_parts() -> None:
    cfg = GeneratorConfig(seed=7, max_events=5_003)  # not a multiple of the part counts
    want = list(generate(cfg))
    factory = EventFactory(cfg)
    assert [e for e, _ in factory.batch(range(5_003))] == want  # inlined bids == factory(i)
    for parts in (1, 3, 8):
        source = NexmarkSource(cfg, parts, batch=100)
        by_id: dict[int, Any] = {}
        for p in source.list_parts():
            got = drain(source.build_part(p, None))
            for j, (event, ts) in enumerate(got):
                assert ts == event.date_time
                by_id[p + j * parts] = event
        assert [by_id[i] for i in range(len(want))] == want
    assert list(generate(GeneratorConfig(seed=8, max_events=500))) != want[:500]


def test_part_resumes_exactly_from_its_snapshot() -> None:
    cfg = GeneratorConfig(seed=3, max_events=10_000)
    source = NexmarkSource(cfg, 4, batch=64)
    whole = drain(source.build_part(2, None))
    assert len(whole) == 2_500
    part = source.build_part(2, None)
    first = part.poll_batch(1000) + part.poll_batch(7) + [part.poll()]
    assert len(first) == 64 + 7 + 1
    state = part.snapshot()
    assert state == part.collect() == 72
    rest = drain(source.build_part(2, state), iter([5, 300, 1] * 1000))
    assert first + rest == whole
    assert source.build_part(2, 2_500).is_finished()


class FailOnce:
    """Raises once, at the ``at``-th record of the first run in this process."""

    failed: set[str] = set()

    def __init__(self, token: str, at: int) -> None:
        self.token, self.at, self.n = token, at, 0

    def __call__(self, value: Any) -> Any:
        self.n += 1
        if self.n == self.at and self.token not in FailOnce.failed:
            FailOnce.failed.add(self.token)
            raise RuntimeError("injected failure")
        return value


def count_kinds(key: Any, event: Any, n: int) -> tuple[tuple[str, int], int]:
    return (type(event).__name__, n + 1), n + 1


def build_counts(provider: StreamProvider, *, out: ListSink, fail: FailOnce) -> None:
    (
        common.event_stream(provider, GeneratorConfig(seed=5, max_events=20_000), parts=3)
        .map("fail-once", fail)
        .key_distribute("by-kind", lambda e: type(e).__name__)
        .stateful_map("count", count_kinds, initial=int)
        .sink("out", out)
    )


def test_job_resumes_from_snapshot_with_exact_counts() -> None:
    persistence = InMemoryPersistence()
    out = ListSink()
    build = functools.partial(build_counts, out=out, fail=FailOnce("resume", 15_000))
    runtime = SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.001)
    with pytest.raises(Exception, match="injected failure"):
        runtime.execute()
    before = len(out.records)
    assert 0 < before < 15_000
    SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.001).execute()
    final: dict[str, int] = {}
    for kind, n in out.values[before:]:
        final[kind] = n
    # Every event counted exactly once although the source restarted from a snapshot.
    assert final == {"Person": 400, "Auction": 1_200, "Bid": 18_400}


# ----------------------------------------------------------------------------------------------
# The queries vs DuckDB
# ----------------------------------------------------------------------------------------------
def test_q0_passthrough(db: Any) -> None:
    got = run_single(q0.build)
    for cls, table in ((Person, "person"), (Auction, "auction"), (Bid, "bid")):
        rows = Counter(dataclasses.astuple(e) for e in got if type(e) is cls)
        assert rows == sql(db, f"SELECT * FROM {table}")
    assert len(got) == N_EVENTS


def test_q1_currency_conversion(db: Any) -> None:
    got = as_rows(run_single(q1.build))
    want = sql(db, "SELECT auction, bidder, price::DOUBLE * 0.908::DOUBLE, date_time FROM bid")
    assert got == want
    assert sum(want.values()) == 46 * N_EVENTS // 50


def test_q2_selection(db: Any) -> None:
    got = as_rows(run_single(q2.build))
    want = sql(db, "SELECT auction, price FROM bid WHERE auction % 123 = 0")
    assert got == want
    assert sum(want.values()) > 20


Q3_SQL = """
    SELECT P.name, P.city, P.state, A.id
    FROM auction AS A JOIN person AS P ON A.seller = P.id
    WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')
"""


def test_q3_local_item_suggestion(db: Any) -> None:
    got = as_rows(run_single(q3.build))
    want = sql(db, Q3_SQL)
    assert got == want
    assert sum(want.values()) > 100


Q4_SQL = """
    SELECT category, SUM(final), COUNT(*)
    FROM (
        SELECT A.id, A.category, MAX(B.price) AS final
        FROM auction AS A JOIN bid AS B ON A.id = B.auction
        WHERE B.date_time BETWEEN A.date_time AND A.expires
        GROUP BY A.id, A.category
    )
    GROUP BY category
"""


def last_updates(values: list[Any]) -> Counter[tuple[Any, ...]]:
    """The last update per key (category, seller): the one counting the most auctions."""
    last: dict[int, tuple[int, float, int]] = {}
    for category, average, n in values:
        if category not in last or n > last[category][2]:
            last[category] = (category, average, n)
    return Counter(last.values())


def q4_want(db: Any) -> Counter[tuple[Any, ...]]:
    return Counter((c, total / n, n) for (c, total, n) in sql(db, Q4_SQL))


def test_q4_average_price_per_category(db: Any) -> None:
    values = run_single(q4.build)
    want = q4_want(db)
    assert last_updates(values) == want
    assert len(values) == sum(n for _, _, n in want)  # one update per closed auction
    assert len(want) == 5


def test_q4_on_two_workers(db: Any) -> None:
    assert last_updates(run_cluster(q4.build)) == q4_want(db)


def test_q4_keeps_early_bids_until_the_epoch_passes_the_newest() -> None:
    """One timer serves an auction's early bids: when it fires with a newer early bid
    waiting, it moves there instead of dropping them (the auction may still come)."""
    from malstrom.testing import TimedSource

    auction = Auction(7, "item", "", 1, 1, date_time=20, expires=40, seller=3, category=11)
    items = [
        ((7, 10, 5), 10),  # early: the auction is not here yet; its timer is at 10
        ((7, 30, 9), 30),  # early and newer; the epoch (30 - 15) fires the timer at 10
        (auction, 20),  # not late (epoch 15): counts the bid at 30, not the one at 10
        ((8, 31, 4), 31),  # an auction that never comes: its bid is dropped, no output
    ]
    sink = ListSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("src", TimedSource(items))
            .limit_out_of_orderness("time", 15)[0]
            .key_distribute("by-auction", q4.auction_id)
            .stateful_op("winning", q4.WinningBid())
            .sink("out", sink)
        )

    SingleThreadRuntime(build).execute()
    assert [r.value for r in sink.records] == [(11, 9, 3, 7, 40)]


def run_on_worker_processes(query: str, tmp_path: Path, **params: Any) -> list[Any]:
    """``query`` on two worker processes (file sinks: worker processes cannot append to a
    ListSink of this process); its result values, after checking nothing was late."""
    out, late = tmp_path / f"{query}.txt", tmp_path / "late.txt"
    MultiProcessRuntime(
        functools.partial(build_to_file, query=query, out=str(out), late=str(late), params=params),
        parallelism=2,
        max_restarts=0,
    ).execute()
    assert not late.exists() or late.read_text() == ""
    return [ast.literal_eval(line) for line in out.read_text().splitlines()]


def build_to_file(
    provider: StreamProvider, *, query: str, out: str, late: str, params: dict[str, Any]
) -> None:
    """The query named ``query`` with file sinks (module level: worker processes import it)."""
    {"q4": q4, "q7": q7, "q8": q8}[query].build(
        provider,
        config=CONFIG,
        parts=4,
        sink=FileSink(out, fmt=lambda r: repr(r.value)),
        late_sink=FileSink(late, fmt=lambda r: repr(r.value)),
        **params,
    )


def test_q4_on_two_worker_processes(db: Any, tmp_path: Path) -> None:
    """Auctions close by event-time timers: across processes, every one closes once."""
    values = run_on_worker_processes("q4", tmp_path)
    want = q4_want(db)
    assert last_updates(values) == want
    assert len(values) == sum(n for _, _, n in want)  # one update per closed auction


Q6_SQL = """
    WITH winners AS (
        SELECT A.id, A.seller, A.expires, MAX(B.price) AS final
        FROM auction AS A JOIN bid AS B ON A.id = B.auction
        WHERE B.date_time BETWEEN A.date_time AND A.expires
        GROUP BY A.id, A.seller, A.expires
    ), ranked AS (
        SELECT seller, final,
               ROW_NUMBER() OVER (PARTITION BY seller ORDER BY expires DESC, id DESC) AS rn,
               COUNT(*) OVER (PARTITION BY seller) AS n
        FROM winners
    )
    SELECT seller, SUM(final), COUNT(*), MAX(n) FROM ranked WHERE rn <= 10 GROUP BY seller
"""


def q6_want(db: Any) -> Counter[tuple[Any, ...]]:
    return Counter((s, total / k, n) for (s, total, k, n) in sql(db, Q6_SQL))


def test_q6_average_price_per_seller(db: Any) -> None:
    values = run_single(q6.build)
    want = q6_want(db)
    assert last_updates(values) == want  # per seller: the update counting the most auctions
    assert len(values) == sum(n for _, _, n in want)
    assert len(want) > 100


def test_q6_on_two_workers(db: Any) -> None:
    assert last_updates(run_cluster(q6.build)) == q6_want(db)


Q5_SQL = f"""
    WITH windows AS (
        SELECT auction, (date_time // {Q5_SLIDE} - k) * {Q5_SLIDE} AS start
        FROM bid, range(0, {Q5_SIZE // Q5_SLIDE}) AS t(k)
    ), counts AS (
        SELECT start, auction, COUNT(*) AS num FROM windows GROUP BY start, auction
    ), most AS (
        SELECT start, MAX(num) AS num FROM counts GROUP BY start
    )
    SELECT start, start + {Q5_SIZE}, auction, num FROM counts JOIN most USING (start, num)
"""


def test_q5_hot_items(db: Any) -> None:
    got = as_rows(run_single(q5.build, size=Q5_SIZE, slide=Q5_SLIDE))
    want = sql(db, Q5_SQL)
    assert got == want
    assert len({start for start, *_ in want}) >= 20


def test_q5_on_two_workers(db: Any) -> None:
    assert as_rows(run_cluster(q5.build, size=Q5_SIZE, slide=Q5_SLIDE)) == sql(db, Q5_SQL)


Q7_SQL = f"""
    WITH windowed AS (
        SELECT *, date_time // {Q7_SIZE} * {Q7_SIZE} AS start FROM bid
    ), highest AS (
        SELECT start, MAX(price) AS price FROM windowed GROUP BY start
    )
    SELECT start, start + {Q7_SIZE}, auction, bidder, price, date_time
    FROM windowed JOIN highest USING (start, price)
"""


def test_q7_highest_bid(db: Any) -> None:
    got = as_rows(run_single(q7.build, size=Q7_SIZE))
    want = sql(db, Q7_SQL)
    assert got == want
    assert len(want) >= N_EVENTS // 1000 // (Q7_SIZE // 1000)


def test_q7_on_two_worker_processes(db: Any, tmp_path: Path) -> None:
    """The per-part maxima are computed where each part is read, then merged per window."""
    got = Counter(run_on_worker_processes("q7", tmp_path, size=Q7_SIZE))
    assert got == sql(db, Q7_SQL)


Q8_SQL = f"""
    SELECT DISTINCT P.id, P.name, P.date_time // {Q8_SIZE} * {Q8_SIZE}
    FROM person AS P JOIN auction AS A
      ON P.id = A.seller AND P.date_time // {Q8_SIZE} = A.date_time // {Q8_SIZE}
"""


def test_q8_new_users(db: Any) -> None:
    got = as_rows(run_single(q8.build, size=Q8_SIZE))
    want = sql(db, Q8_SQL)
    assert got == want
    assert sum(want.values()) > 20


def test_q8_on_two_worker_processes(db: Any, tmp_path: Path) -> None:
    got = Counter(run_on_worker_processes("q8", tmp_path, size=Q8_SIZE))
    assert got == sql(db, Q8_SQL)
