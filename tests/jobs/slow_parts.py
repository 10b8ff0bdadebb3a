"""A multi-process job whose source parts block: every ``poll()`` sleeps ``delay`` seconds
(a slow API, a pipe, a client with a read timeout) before returning one record.

Keyed running sums into exactly-once per-key files (as in ``mp_sums``), plus a sink right
after the source that fails the job if a source batch holds more than ``max_batch`` records
(how a test sees that the turn budget reached the worker processes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from malstrom import MAX, StatefulLogic, StatefulSource, StatelessSink

PARTS = 3
KEYS = 7


class Part:
    def __init__(self, base: int, nxt: int, count: int, delay: float) -> None:
        self.base, self.nxt, self.count, self.delay = base, nxt, count, delay

    def poll(self) -> tuple[int, int] | None:
        if self.nxt >= self.count:
            return None
        time.sleep(self.delay)
        i = self.nxt
        self.nxt += 1
        return self.base + i, i

    def is_finished(self) -> bool:
        return self.nxt >= self.count

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Parts:
    def __init__(self, count: int, delay: float) -> None:
        self.count, self.delay = count, delay

    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return Part(part * self.count, nxt, self.count, self.delay)


class Totals(StatefulLogic[Any, int, int, str]):
    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + record.value

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k in sorted(states):
                output.emit(f"{k} {states[k]}", key=k)


class BatchCheck:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def sink(self, record: Any) -> None:
        pass

    def sink_batch(self, batch: Any) -> None:
        if self.limit is not None and len(batch) > self.limit:
            raise ValueError(f"a source batch of {len(batch)} records (limit {self.limit})")


def build(
    provider: Any,
    workdir: str,
    count: int,
    delay: float = 0.001,
    max_batch: int | None = None,
) -> None:
    from malstrom.sinks import FileSink

    work = Path(workdir)
    numbers = provider.new_stream().source("numbers", StatefulSource(Parts(count, delay)))
    numbers.sink("batch-check", StatelessSink(BatchCheck(max_batch)))
    keyed = numbers.key_distribute("by-key", lambda v: v % KEYS)
    a, b = keyed.cloned("fan", 2)
    (
        a.stateful_map("running", lambda k, v, s: (f"{k} {v} {s + v}", s + v), initial=int).sink(
            "updates", FileSink(work / "updates", per_key=True)
        )
    )
    b.stateful_op("totals", Totals()).sink("totals-file", FileSink(work / "totals", per_key=True))


def check(workdir: str, count: int) -> None:
    """Every record counted exactly once (raises AssertionError on the first difference)."""
    work = Path(workdir)
    sums = [0] * KEYS
    per_key = [0] * KEYS
    for v in range(PARTS * count):
        sums[v % KEYS] += v
        per_key[v % KEYS] += 1
    totals = {}
    for f in (work / "totals").glob("*.txt"):
        lines = f.read_text().splitlines()
        assert len(lines) == 1, (f, lines)
        totals[f.stem] = lines[0]
    assert totals == {str(k): f"{k} {sums[k]}" for k in range(KEYS)}
    for f in (work / "updates").glob("*.txt"):
        total = 0
        lines = f.read_text().splitlines()
        assert len(lines) == per_key[int(f.stem)], (f, len(lines))
        for line in lines:
            _, v, s = line.split()
            total += int(v)
            assert int(s) == total, (f, line)
