"""Built-in sinks: StdOutSink, ListSink, FileSink (in its own module)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO

from malstrom.sinks._file import FileSink
from malstrom.sinks._protocols import RecordBatch, StatelessSink
from malstrom.types import Record

__all__ = ["FileSink", "ListSink", "StdOutSink"]


class StdOutSink(StatelessSink):
    """Prints every record, one per line: ``Record(key=NoKey, value='LOOK', timestamp=0)``."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__(self)
        self._file = file

    def sink(self, record: Record) -> None:
        """Print one record."""
        print(record, file=self._file or sys.stdout)

    def sink_batch(self, records: RecordBatch) -> None:
        """Print a batch of records with one write."""
        f = self._file or sys.stdout
        f.write("".join(f"{r}\n" for r in records))
        f.flush()


class ListSink(StatelessSink):
    """Collects records in :attr:`records` (in-process runtimes; for tests and notebooks).

    Worker processes cannot append to a list in the process that made the sink, so using it
    in another process is an error rather than a silent loss: use a FileSink (or your own sink)
    with MultiProcessRuntime.
    """

    def __init__(self) -> None:
        super().__init__(self)
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "ListSink collects into a list of the process that created it, and this is "
                "another process (a MultiProcessRuntime worker): its records would be lost. "
                "Use FileSink or your own sink with multi-process runtimes"
            )

    def sink(self, record: Record) -> None:
        """Append one record."""
        self._check_process()
        with self._lock:
            self.records.append(record)

    def sink_batch(self, records: RecordBatch) -> None:
        """Append a batch of records."""
        self._check_process()
        with self._lock:
            self.records.extend(records)

    @property
    def values(self) -> list[Any]:
        """Just the values, in arrival order."""
        return [r.value for r in self.records]
