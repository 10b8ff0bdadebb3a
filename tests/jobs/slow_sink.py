"""Backpressure jobs: a throttled source, one or two ``key_distribute`` hops, and a sink that
is ten times slower than the source on chosen workers until a given time (then fast, so the
job drains and ends).

Every record is ``(part, index, payload)``; each worker process's sink writes ``part index``
lines to its own file in WORKDIR, so a test can check that every record arrived exactly once
(:func:`check`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from malstrom import StatefulSource, StatelessSink, rendezvous_select

SLOWER = 10
"""The slow sink takes in one record per ``SLOWER`` records the source produces."""


POLL_MAX = 256
"""Records one poll returns at most (as a Kafka consumer's ``max.poll.records``)."""


class Part:
    """``total`` records at ``rate`` records/s (what is due when polled, up to ``POLL_MAX``)."""

    def __init__(self, part: int, nxt: int, total: int, rate: float, payload: int) -> None:
        self.part, self.nxt, self.total, self.rate = part, nxt, total, rate
        self.payload = payload
        self.start: float | None = None

    def poll(self) -> Any:
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, n: int) -> list[tuple[Any, int]]:
        now = time.monotonic()
        if self.start is None:
            self.start = now - self.nxt / self.rate
        stop = min(self.total, int((now - self.start) * self.rate), self.nxt + min(n, POLL_MAX))
        # Distinct bytes per record: pickle cannot share them between records.
        pad = self.payload // 8
        out = [
            ((self.part, i, (self.part * 1_000_000_007 + i).to_bytes(8, "big") * pad), i)
            for i in range(self.nxt, stop)
        ]
        self.nxt = max(self.nxt, stop)
        return out

    def is_finished(self) -> bool:
        return self.nxt >= self.total

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Parts:
    def __init__(self, parts: int, total: int, rate: float, payload: int) -> None:
        self.parts, self.total, self.rate, self.payload = parts, total, rate, payload

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None) -> Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return Part(part, nxt, self.total // self.parts, self.rate / self.parts, self.payload)


def to_middle(key: Any, workers: Sequence[int]) -> int:
    return workers[len(workers) // 2]


def to_last(key: Any, workers: Sequence[int]) -> int:
    return workers[-1]


class SlowSink:
    """Writes ``part index`` lines to WORKDIR/<pid>.txt; on the workers that own ``slow``
    keys (by ``owner``), it sleeps ``1 / rate`` seconds per record until ``time.time()``
    passes ``until``."""

    def __init__(
        self, workdir: str, owner: Any, slow: Sequence[int], workers: int, rate: float, until: float
    ) -> None:
        self.workdir = Path(workdir)
        self.owner, self.slow, self.workers, self.rate = owner, set(slow), workers, rate
        self.until = until
        self._file: Any = None
        self._slow_keys: dict[Any, bool] = {}

    def sink_batch(self, records: Any) -> None:
        if self._file is None:
            self._file = open(self.workdir / f"{os.getpid()}.txt", "a")  # noqa: SIM115
        workers = tuple(range(self.workers))
        slow = 0
        for key in records.keys:
            s = self._slow_keys.get(key)
            if s is None:
                s = self._slow_keys[key] = self.owner(key, workers) in self.slow
            slow += s
        if slow and time.time() < self.until:
            time.sleep(slow / self.rate)
        self._file.write("".join(f"{v[0]} {v[1]}\n" for v in records.values))
        self._file.flush()

    def sink(self, record: Any) -> None:
        raise AssertionError("sink_batch is used")


def build(
    provider: Any,
    workdir: str,
    *,
    workers: int,
    slow: Sequence[int],
    total: int,
    rate: float,
    slow_until: float,
    parts: int = 4,
    payload: int = 1024,
    hops: str = "one",
) -> None:
    """``hops``: "one" key_distribute; "relay": everything to the middle worker, then all to
    the last (the middle one forwards what its peers send); "both": two hops keyed
    differently (records cross between the workers twice, both ways)."""
    source = StatefulSource(Parts(parts, total, rate, payload))
    stream = provider.new_stream().source("numbers", source)
    if hops == "relay":
        stream = stream.key_distribute("hop1", lambda v: v[1] % 64, partitioner=to_middle)
        stream = stream.key_distribute("hop2", lambda v: v[1] % 61, partitioner=to_last)
        owner: Any = to_last
    elif hops == "both":
        stream = stream.key_distribute("hop1", lambda v: v[1] % 64)
        stream = stream.map("drop-payload", lambda v: (v[0], v[1], v[2][: len(v[2]) // 2]))
        stream = stream.key_distribute("hop2", lambda v: (v[1] // 64) % 61)
        owner = rendezvous_select
    else:
        stream = stream.key_distribute("by-index", lambda v: v[1] % 64)
        owner = rendezvous_select
    sink = SlowSink(workdir, owner, slow, workers, rate / SLOWER, slow_until)
    stream.sink("slow", StatelessSink(sink))


def check(workdir: str, parts: int, total: int) -> None:
    """Every record arrived exactly once."""
    got = []
    for f in Path(workdir).glob("*.txt"):
        got.extend(tuple(map(int, line.split())) for line in f.read_text().splitlines())
    per = total // parts
    want = [(p, i) for p in range(parts) for i in range(per)]
    assert len(got) == len(want), (len(got), len(want))
    assert sorted(got) == want
