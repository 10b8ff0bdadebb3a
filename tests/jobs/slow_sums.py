"""A job for fault tests: keyed running sums over a slow, resumable source.

    python slow_sums.py WORKDIR

Writes every update to WORKDIR/updates.txt and the final per-key sums to WORKDIR/totals.txt
(both FileSinks: exactly-once across restarts); snapshots to WORKDIR/snap every 20 ms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from malstrom import MAX, SingleThreadRuntime, StatefulLogic, StatefulSource
from malstrom.sinks import FileSink
from malstrom.snapshot import LocalDiskPersistence

N = 20_000
KEYS = 13


class SlowPart:
    def __init__(self, nxt: int) -> None:
        self.nxt = nxt

    def poll(self) -> tuple[int, int] | None:
        batch = self.poll_batch(1)
        return batch[0] if batch else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        time.sleep(0.002)
        stop = min(N, self.nxt + min(n, 50))
        out = [(v, v) for v in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= N

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Numbers:
    def list_parts(self) -> list[str]:
        return ["all"]

    def build_part(self, part: str, state: object | None) -> SlowPart:
        return SlowPart(0 if state is None else int(state))  # type: ignore[call-overload]


class Totals(StatefulLogic[Any, int, int, str]):
    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + record.value

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k in sorted(states):
                output.emit(f"{k} {states[k]}", key=k)


def make_build(work: Path) -> Any:
    def build(provider: Any) -> None:
        keyed = (
            provider.new_stream()
            .source("numbers", StatefulSource(Numbers()))
            .key_distribute("by-key", lambda v: v % KEYS)
        )
        a, b = keyed.cloned("fan", 2)
        (
            a.stateful_map(
                "running", lambda k, v, s: (f"{k} {v} {s + v}", s + v), initial=int
            ).sink("updates", FileSink(work / "updates.txt"))
        )
        b.stateful_op("totals", Totals()).sink("totals-file", FileSink(work / "totals.txt"))

    return build


def main() -> None:
    work = Path(sys.argv[1])
    SingleThreadRuntime(
        make_build(work), persistence=LocalDiskPersistence(work / "snap"), snapshot_interval=0.02
    ).execute()


if __name__ == "__main__":
    main()
