"""Built-in sinks: StdOutSink, ListSink, FileSink."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Hashable
from typing import Any, TextIO

from malstrom.formats import Format, Lines
from malstrom.sinks._protocols import RecordBatch, StatefulSink, StatelessSink
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


class _FilePart:
    def __init__(self, path: str, state: object | None, value: Any, format: Format) -> None:
        self._value = value
        self._path = path
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        f = open(path, "a+b")  # noqa: SIM115 - the part owns the file
        if state is not None:
            # Restore: drop what was written after the snapshot we resume from, so every record
            # appears exactly once in the file however often the job restarts.
            f.truncate(int(state))  # type: ignore[call-overload]
        else:
            # No snapshot holds this part: nothing in the file is committed output of this job
            # (e.g. a run that crashed before its first snapshot), so start it empty.
            f.truncate(0)
        f.seek(0, os.SEEK_END)
        self._f = f
        self._writer = format._writer(f, path, f.tell() > 0)
        self._buf: list[Any] = []

    def sink(self, record: Record) -> None:
        buf = self._buf
        buf.append(self._value(record))
        if len(buf) >= 1024:
            self._buf = []
            self._writer.write(buf)

    def sink_batch(self, records: RecordBatch) -> None:
        buf = self._buf
        if self._value is _value:
            buf += records.values
        else:
            buf += map(self._value, records)
        if len(buf) >= 1024:
            self._buf = []
            self._writer.write(buf)

    def snapshot(self) -> object:
        if self._buf:
            buf, self._buf = self._buf, []
            self._writer.write(buf)
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def collect(self) -> object:
        pos = self.snapshot()
        self._f.close()
        return pos


class FileSink(StatefulSink):
    """Writes the records to a file, one record after the other, exactly-once.

    ``format`` says how (:mod:`malstrom.formats`): by default one line per record,
    ``str(value)``; ``Csv()`` (a header row first, then one row per dict or sequence) and
    ``JsonLines()`` also append. ``fmt(record)`` gives what is written for a record (default:
    its value). With ``per_key=True`` each key gets its own file ``<path>/<key><suffix>``
    (``.txt``, ``.csv``, ``.jsonl``); otherwise all records go to the single file ``path``.

    The file's length is snapshotted; on restore the file is cut back to that length before
    writing resumes, so after any crash and restart the file holds every record exactly once.
    A part not covered by a snapshot (a fresh start) starts with an empty file. Readers of the
    file may see records that a crash later takes back: for output published only once its
    snapshot commits (and for Parquet), use :class:`DirectorySink`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: Any = None,
        per_key: bool = False,
        *,
        format: Format | None = None,
    ):
        super().__init__(self)
        self._path = os.fspath(path)
        self._format = format if format is not None else Lines()
        if not isinstance(self._format, Format):
            raise TypeError(f"FileSink: format must be a malstrom.formats format, got {format!r}")
        if not self._format.appendable:
            raise ValueError(
                f"FileSink appends to a file and cuts it back on restore, which {self._format!r} "
                "files do not allow: use DirectorySink, which writes a new part file per snapshot"
            )
        self._fmt = fmt or _value
        self._per_key = per_key

    def assign_part(self, key: Any) -> Hashable:
        """The file a record with ``key`` goes to."""
        if self._per_key:
            return os.path.join(self._path, f"{key}{self._format.suffix}")
        return self._path

    def build_part(self, part: Any, state: object | None) -> _FilePart:
        """Open the file, cut back to the snapshotted length (empty on a fresh start)."""
        return _FilePart(part, state, self._fmt, self._format)


def _value(record: Record) -> Any:
    return record.value
