"""An endless keyed event-time job for the observability tests: parts that trickle records
stamped with the wall clock (so event-time lag is real) and tell their lag (0: caught up),
keyed running counts, a user counter, a warning logged from a user function (once per
part), and a sink that drops what it gets. It runs until stopped."""

from __future__ import annotations

import logging
import time
from typing import Any

from malstrom import StatefulSource, StatelessSink, StreamProvider
from malstrom.observe import counter

PARTS = 4
PER_POLL = 25


class Part:
    def __init__(self, part: int, nxt: int) -> None:
        self.part, self.nxt = part, nxt

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[Any, float]]:
        time.sleep(0.002)  # a trickle: the job keeps running for the test
        now = time.time()
        out = [((self.part, self.nxt + i, now), now) for i in range(min(n, PER_POLL))]
        self.nxt += len(out)
        return out

    def is_finished(self) -> bool:
        return False

    def lag(self) -> int:
        return 0  # a trickle is always caught up

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


log = logging.getLogger("observe_job")


def tag(v: tuple[int, int, float]) -> tuple[int, int, float]:
    if v[1] == 3:
        log.warning("record 3 of part %d seen", v[0])  # names job, worker and operator
    if v[1] % 2 == 0:
        counter("even_records", "records with an even sequence number").inc()
    return v


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("trickle", StatefulSource(Parts()))
        .assign_timestamps("stamp", lambda v: v[2])
        .limit_out_of_orderness("in-order", 0.5)[0]
        .map("tag", tag)
        .key_distribute("by-seq", lambda v: v[1] % 17)
        .stateful_map("count", lambda k, v, s: (s + 1, s + 1), initial=int)
        .sink("drop", StatelessSink(Drop()))
    )
