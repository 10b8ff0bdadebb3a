"""Pieces the multi-process benchmarks share (distributed.py, scaleout.py): the tail of a
source part that counts its position, and a sink that keeps its totals in a file.

Module level, like the benchmarks' own sources and sinks: the worker processes import them.
"""

from __future__ import annotations

import os
from typing import Any


class PositionPart:
    """A source part's protocol around ``poll_batch``: it has emitted ``pos`` of its
    ``total`` records, and its position is its state. Subclasses set both and define
    ``poll_batch(n)``."""

    __slots__ = ()  # subclasses may keep theirs
    pos: int
    total: int

    def poll_batch(self, n: int) -> list[Any]:
        raise NotImplementedError

    def poll(self) -> Any | None:
        items = self.poll_batch(1)
        return items[0] if items else None

    def is_finished(self) -> bool:
        return self.pos >= self.total

    def snapshot(self) -> object:
        return self.pos

    def collect(self) -> object:
        return self.pos


class FileTotalsSink:
    """A sink that keeps its totals in a file of its own in ``outdir`` (``sink-PID-ID``).

    Subclasses define ``sink_batch`` and call :meth:`write_totals` after every batch: the
    file is rewritten in place (one ``pwrite``, ~2 us), since worker processes end with
    ``os._exit`` and there is no later moment to write it.
    """

    def __init__(self, outdir: str) -> None:
        self.outdir = outdir
        self.fd: int | None = None

    def sink(self, record: Any) -> None:
        self.sink_batch([record.value])

    def sink_batch(self, records: Any) -> None:
        raise NotImplementedError

    def write_totals(self, line: str, width: int) -> None:
        """Rewrite the file with ``line`` padded to ``width`` characters."""
        if self.fd is None:
            name = f"sink-{os.getpid()}-{id(self):x}"
            self.fd = os.open(os.path.join(self.outdir, name), os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self.fd, line.ljust(width).encode(), 0)


class FileCountSink(FileTotalsSink):
    """Counts records and sums their values; keeps the totals in a file of its own."""

    def __init__(self, outdir: str) -> None:
        super().__init__(outdir)
        self.n = 0
        self.s = 0

    def sink_batch(self, records: Any) -> None:
        values = getattr(records, "values", records)
        self.n += len(values)
        self.s += sum(values)
        self.write_totals(f"{self.n} {self.s}\n", 48)
