"""Writing your own stateful sink: numbered lines, one file per key, exactly once.

A stateful sink is partitioned: ``assign_part(key)`` names the part a record goes to (here
the file ``<directory>/<key>.txt``), ``build_part(part, state)`` opens it, and each partition
has ``sink(record)``, ``snapshot()`` (state persisted at every snapshot barrier) and
``collect()`` (its final state when the part moves to another worker on rescale).

``NumberedFileSink`` prefixes every line with a per-file line number. Its partition state is
``(next_line_number, byte_length)``: when a job restarts from a snapshot, the part is rebuilt
with that state, cuts the file back to the snapshotted length (dropping lines written after
the snapshot) and continues numbering from there, so every record ends up in the file exactly
once. A part built without state starts its file afresh, so running the example again
rewrites the same files. (The built-in :class:`malstrom.sinks.FileSink` works the same way,
without the line numbers.)

The numbers 0..49 are keyed by ``value % 5`` and written to ``0.txt`` .. ``4.txt``; each file
gets ten numbered lines (``0.txt``: ``0 0``, ``1 5``, ..., ``9 45``). The files are printed
after the job.

Usage: ``python examples/file_sink_stateful.py [OUTPUT_DIR]`` (default: a directory in the
system's temp dir).
"""

import functools
import os
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any, BinaryIO

from malstrom import Record, SingleThreadRuntime, StatefulSink, StreamProvider
from malstrom.sources import IterSource

DEFAULT_DIR = Path(tempfile.gettempdir()) / "malstrom-examples" / "file-sink-stateful"


class NumberedFilePartition:
    def __init__(self, path: str, state: tuple[int, int] | None) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.file: BinaryIO
        if state is None:
            self.file = open(path, "wb")  # noqa: SIM115 - fresh start: an empty file
            self.next_line = 0
        else:
            self.next_line, length = state
            self.file = open(path, "r+b")  # noqa: SIM115 - restore: resume after the snapshot
            self.file.truncate(length)
            self.file.seek(length)

    def sink(self, record: Record) -> None:
        self.file.write(f"{self.next_line} {record.value}\n".encode())
        self.next_line += 1

    def snapshot(self) -> tuple[int, int]:
        self.file.flush()
        os.fsync(self.file.fileno())
        return (self.next_line, self.file.tell())

    def collect(self) -> tuple[int, int]:
        state = self.snapshot()
        self.file.close()
        return state


class NumberedFileSink:
    """Writes ``record.value`` with a line number to ``<directory>/<record.key>.txt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def assign_part(self, key: Any) -> Hashable:
        return str(self.directory / f"{key}.txt")

    def build_part(self, part: Any, state: Any) -> NumberedFilePartition:
        return NumberedFilePartition(part, None if state is None else tuple(state))


def build(provider: StreamProvider, out_dir: Path = DEFAULT_DIR) -> None:
    (
        provider.new_stream()
        .source("number", IterSource(range(50)))
        .key_distribute("key-by-mod", lambda v: str(v % 5))
        .map("int-to-string", str)
        .sink("file-sink", StatefulSink(NumberedFileSink(Path(out_dir))))
    )


def print_files(directory: Path) -> None:
    for path in sorted(directory.glob("*.txt")):
        print(f"{path.name}: {path.read_text().splitlines()}")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    SingleThreadRuntime(functools.partial(build, out_dir=out)).execute()
    print_files(out)
