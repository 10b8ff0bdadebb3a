"""An endless job, the example of the command line and of the Kubernetes manifests.

A resumable event stream counted per key: each of 8 source parts emits 200 events a second;
each event moves to the worker owning its key, where a running count per key is kept
(snapshotted, so it survives restarts, rescales and suspends exactly once). Every 1,000th
count of a key is logged.

    malstrom run examples/events.py:build -w 2 --persistence snap --snapshot-interval 5

Ctrl-C stops it with a final snapshot; the next run resumes from it.
"""

from __future__ import annotations

import time
from typing import Any

from malstrom import OperatorContext, Record, StatefulSource, StreamProvider

PARTS = 8
KEYS = 64


class Part:
    """One endless part: event ``i`` of part ``p`` is ``p + PARTS * i``; resumes at its
    position."""

    def __init__(self, part: int, position: int) -> None:
        self.part, self.position = part, position

    def poll(self) -> tuple[int, int] | None:
        batch = self.poll_batch(1)
        return batch[0] if batch else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        """(event, timestamp) pairs: 10 every 50 ms (200 events a second per part)."""
        time.sleep(0.05)
        start = self.position
        self.position += 10
        return [(self.part + PARTS * i, i) for i in range(start, self.position)]

    def is_finished(self) -> bool:
        return False

    def snapshot(self) -> int:
        return self.position

    def collect(self) -> int:
        return self.position


class Parts:
    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: Any) -> Part:
        return Part(part, 0 if state is None else int(state))


def log_every_1000th(record: Record, ctx: OperatorContext) -> None:
    key, count = record.value
    if count % 1_000 == 0:
        print(f"worker {ctx.worker_id}: key {key} reached {count:,}", flush=True)


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("events", StatefulSource(Parts()))
        .key_distribute("by-key", lambda event: event % KEYS)
        .stateful_map("count", lambda key, event, n: ((key, n + 1), n + 1), initial=int)
        .inspect("log", log_every_1000th)
    )
