"""A multi-process job whose source parts block: every ``poll()`` sleeps ``delay`` seconds
(a slow API, a pipe, a client with a read timeout) before returning one record.

Each part produces ``count`` records; with ``count=None`` it runs until a test writes the end
position into ``WORKDIR/end`` (:func:`end_at`), so a test decides how long the job lives.

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
    def __init__(self, base: int, nxt: int, count: int | None, delay: float, end: Path) -> None:
        self.base, self.nxt, self.count, self.delay, self.end = base, nxt, count, delay, end
        self._checked = 0.0

    def _limit(self) -> float:
        if self.count is not None:
            return self.count
        now = time.monotonic()
        if now - self._checked > 0.05:
            self._checked = now
            try:
                self.count = int(self.end.read_text())
            except (OSError, ValueError):
                pass
        return self.count if self.count is not None else float("inf")

    def poll(self) -> tuple[int, int] | None:
        if self.nxt >= self._limit():
            return None
        time.sleep(self.delay)
        i = self.nxt
        self.nxt += 1
        return self.base + i, i

    def is_finished(self) -> bool:
        return self.nxt >= self._limit()

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


SPAN = 10**9  # values of part p: p * SPAN + i


class Parts:
    def __init__(self, count: int | None, delay: float, end: Path) -> None:
        self.count, self.delay, self.end = count, delay, end

    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return Part(part * SPAN, nxt, self.count, self.delay, self.end)


def end_at(workdir: str, count: int) -> None:
    """Every part of a ``count=None`` job ends after ``count`` records (must be at least what
    each has produced already)."""
    tmp = Path(workdir) / "end.tmp"
    tmp.write_text(str(count))
    tmp.replace(Path(workdir) / "end")


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
    count: int | None,
    delay: float = 0.001,
    max_batch: int | None = None,
) -> None:
    from malstrom.sinks import FileSink

    work = Path(workdir)
    parts = Parts(count, delay, work / "end")
    numbers = provider.new_stream().source("numbers", StatefulSource(parts))
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
    for p in range(PARTS):
        for v in range(p * SPAN, p * SPAN + count):
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
