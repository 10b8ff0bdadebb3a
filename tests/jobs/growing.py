"""A job over a source whose parts grow while it runs: the part names are the words of
WORKDIR/parts.txt (re-listed every 50 ms); each part counts PER_PART values, slowly, and
finishes only once WORKDIR/end exists (so a test decides when the source may end). Values go
to exactly-once files, so tests can check every value was seen once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from malstrom import StatefulSource

PER_PART = 400
KEYS = 7


class Part:
    def __init__(self, base: int, nxt: int, delay: float, end: Path) -> None:
        self.base, self.nxt, self.delay, self.end = base, nxt, delay, end

    def poll(self) -> tuple[int, int] | None:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        if self.delay:
            time.sleep(self.delay)
        stop = min(PER_PART, self.nxt + min(n, 10))
        out = [(self.base + i, i) for i in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= PER_PART and self.end.exists()

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Growing:
    relist_interval = 0.05

    def __init__(self, workdir: str, delay: float) -> None:
        self.listing = Path(workdir) / "parts.txt"
        self.delay = delay
        self.new_parts: list[Any] = []

    def list_parts(self) -> list[int]:
        return [int(x) for x in self.listing.read_text().split()]

    def new_part_state(self, part: int) -> object:
        # A part that appeared after the start begins at 0, like a fresh one; recorded so
        # tests can see the hook ran (in a file: worker processes cannot report otherwise).
        with open(self.listing.with_name("new-parts.txt"), "a") as f:
            f.write(f"{part}\n")
        return 0

    def build_part(self, part: int, state: object | None) -> Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return Part(part * PER_PART, nxt, self.delay, self.listing.with_name("end"))


def build(provider: Any, workdir: str, delay: float = 0.01) -> None:
    from malstrom.sinks import FileSink

    (
        provider.new_stream()
        .source("numbers", StatefulSource(Growing(workdir, delay)))
        .key_distribute("by-key", lambda v: v % KEYS)
        .sink("values", FileSink(Path(workdir) / "values", per_key=True))
    )


def read_values(workdir: str) -> list[int]:
    out: list[int] = []
    for f in (Path(workdir) / "values").glob("*.txt"):
        out.extend(int(x) for x in f.read_text().split())
    return sorted(out)
