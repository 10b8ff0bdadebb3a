"""A keyed event-time job for rescale tests: a partitioned, resumable, trickling source;
running counts per key (``stateful_map``), a tumbling count window per key, and a stateful
(part-keyed) sink, so source parts, keyed state, window state and sink parts all move.

``expected()`` is the oracle: per key the running counts must be exactly ``1..c_k`` (a lost,
repeated or split update breaks that), and every (key, window) count must fire once, whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from malstrom import StatefulSink, StatefulSource, StreamProvider
from malstrom.windows import Count, Tumbling

PARTS = 5
PER_PART = 3_000
KEYS = 23
WINDOW = 500
CHUNK = 40  # records per poll: the job runs for many worker turns
BOUND = 20 * CHUNK * PARTS  # a part moved by a rescale lags a few turns behind the others


def value(part: int, i: int) -> tuple[int, int]:
    """Record ``i`` of ``part``: (key, event time). Parts are interleaved in time."""
    return ((i * 7 + part * 3) % KEYS, i * PARTS + part)


class Part:
    def __init__(self, part: int, nxt: int) -> None:
        self.part, self.nxt = part, nxt

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[Any, int]]:
        stop = min(PER_PART, self.nxt + min(n, CHUNK))
        out = []
        for i in range(self.nxt, stop):
            v = value(self.part, i)
            out.append((v, v[1]))
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


class Recorder:
    """An exactly-once in-process sink: ``parts(key)`` parts, each appending to its own list;
    a part's state is its list's length, and a restored part cuts its list back to it (as a
    FileSink cuts its file), so after a crash each list holds every record once."""

    def __init__(self, parts: int = 1) -> None:
        self.n = parts
        self.lists: dict[int, list[Any]] = {}

    def assign_part(self, key: Any) -> int:
        return hash(key) % self.n if self.n > 1 else 0

    def build_part(self, part: int, state: object | None) -> _RecorderPart:
        out = self.lists.setdefault(part, [])
        del out[0 if state is None else int(state) :]  # type: ignore[call-overload]
        return _RecorderPart(out)

    @property
    def records(self) -> list[Any]:
        return [r for lst in self.lists.values() for r in lst]


class _RecorderPart:
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def sink(self, record: Any) -> None:
        self.out.append(record)

    def snapshot(self) -> object:
        return len(self.out)

    def collect(self) -> object:
        return len(self.out)


class Outputs:
    """Every output of the job, each an exactly-once :class:`Recorder`. ``lead``: the
    distributor's ``max_epoch_lead`` (epoch alignment), None for none."""

    lead: float | None = None

    def __init__(self) -> None:
        self.counts = Recorder()
        self.windows = Recorder()
        self.late = Recorder()
        self.parts = Recorder(3)  # records by key % 3: parts that move on a rescale


def make_build(out: Outputs) -> Callable[[StreamProvider], None]:
    def build(provider: StreamProvider) -> None:
        keyed = (
            provider.new_stream()
            .source("numbers", StatefulSource(Parts()))
            .assign_timestamps("ts", lambda v: v[1])
            .limit_out_of_orderness("time", BOUND)[0]
            .key_distribute("by-key", lambda v: v[0], max_epoch_lead=out.lead)
        )
        (
            keyed.stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int).sink(
                "counts", StatefulSink(out.counts)
            )
        )
        results, lates = keyed.window("win", Tumbling(WINDOW), Count())
        results.sink("windows", StatefulSink(out.windows))
        lates.sink("late", StatefulSink(out.late))
        keyed.map("one", lambda v: 1).sink("parts", StatefulSink(out.parts))

    return build


def all_values() -> list[tuple[int, int]]:
    return [value(p, i) for p in range(PARTS) for i in range(PER_PART)]


def expected() -> tuple[Counter[Any], Counter[Any]]:
    """(records per key, records per (key, window start))."""
    per_key: Counter[Any] = Counter()
    per_win: Counter[Any] = Counter()
    for k, t in all_values():
        per_key[k] += 1
        per_win[(k, t - t % WINDOW)] += 1
    return per_key, per_win


def check_no_repeats(out: Outputs) -> None:
    """No key has a running count twice (holds at any moment of a run)."""
    seen: set[Any] = set()
    for r in out.counts.records:
        assert (r.key, r.value) not in seen, r
        seen.add((r.key, r.value))


def check(out: Outputs) -> None:
    """Exactly-once everywhere (raises AssertionError with the first difference)."""
    per_key, per_win = expected()
    seen: dict[Any, list[int]] = {}
    for r in out.counts.records:
        seen.setdefault(r.key, []).append(r.value)
    for k, c in per_key.items():
        got = sorted(seen.get(k, []))
        assert got == list(range(1, c + 1)), (k, c, len(got), got[:5], got[-5:])
    assert set(seen) == set(per_key)
    fired: Counter[Any] = Counter()
    for r in out.windows.records:
        w = r.value
        fired[(r.key, w.start)] += 1
        assert w.value == per_win[(r.key, w.start)], (r, per_win[(r.key, w.start)])
        assert r.timestamp == w.end
    assert set(fired) == set(per_win), set(per_win) ^ set(fired)
    assert all(n == 1 for n in fired.values()), [kv for kv in fired.items() if kv[1] != 1][:5]
    assert out.late.records == [], out.late.records[:5]
    assert Counter(r.key for r in out.parts.records) == per_key


# ----- driving an in-process cluster through rescales and crashes ------------------------------


def run_rescaling(cluster: Any, steps: dict[int, int], max_turns: int = 50_000) -> None:
    """Step ``cluster`` (a ``LocalCluster``) to the end of its job, requesting a rescale to
    ``steps[turn]`` workers at those turns; fails if the job has not ended after
    ``max_turns`` (a rescale that never completes)."""
    n = 0
    while not cluster.ended and n < max_turns:
        if n in steps:
            cluster.coord.request_rescale(steps[n])
        n += 1
        cluster.step()
    assert cluster.ended, f"the job did not end in {max_turns} turns"


def crash_after_rescale_and_snapshot(
    build: Callable[[StreamProvider], None], restart_at: int
) -> None:
    """Run ``build`` on 2 workers, rescale to 3 at turn 5, snapshot at turn 20; at turn 30
    every worker is lost; restart from the snapshot on ``restart_at`` workers and run to the
    end."""
    from malstrom.snapshot import InMemoryPersistence
    from malstrom.testing import LocalCluster

    p = InMemoryPersistence()
    cluster = LocalCluster(build, 2, persistence=p)
    for turn in range(30):
        if turn == 5:
            cluster.coord.request_rescale(3)
        if turn == 20:
            cluster.coord.request_snapshot()
        cluster.step()
    assert p.committed_versions(), "no snapshot was committed"
    cluster = LocalCluster(build, restart_at, persistence=p)  # a crash, restarted
    while cluster.step():
        pass
