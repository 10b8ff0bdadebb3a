"""A job with known counts for end-to-end metrics tests: PARTS parts of PER_PART numbers
each, even numbers counted by key. After its numbers a part stays open (idle, not finished),
so the job runs until stopped and its totals can be scraped. Parts tell their lag; the
filter counts and measures what it keeps (user counter and histogram) and warns once."""

from __future__ import annotations

import logging
from typing import Any

from malstrom import StatefulSource, StatelessSink, StreamProvider
from malstrom.observe import counter, histogram

PARTS = 4
PER_PART = 500
KEYS = 5

log = logging.getLogger("counted_app")


class Part:
    def __init__(self, part: int, nxt: int) -> None:
        self.part, self.nxt = part, nxt

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        stop = min(PER_PART, self.nxt + min(n, 50))
        out = [(self.part * PER_PART + i, i) for i in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return False  # open until the job is stopped

    def wake_in(self) -> float | None:
        return 0.5 if self.nxt >= PER_PART else None

    def lag(self) -> int:
        return PER_PART - self.nxt

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Parts:
    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        return Part(part, 0 if state is None else int(state))  # type: ignore[call-overload]


class Drop:
    def sink(self, record: Any) -> None:
        pass


def even(v: int) -> bool:
    if v % 2:
        return False
    if v == 10:
        log.warning("kept %d", v)  # names job, worker and operator
    counter("evens", "even numbers kept").inc()
    histogram("kept_values", "values kept", buckets=(100, 1000)).observe(v)
    return True


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("numbers", StatefulSource(Parts()))
        .filter("even", even)
        .key_distribute("by-key", lambda v: v % KEYS)
        .stateful_map("sum", lambda k, v, s: (s + v, s + v), initial=int)
        .sink("out", StatelessSink(Drop()))
    )
