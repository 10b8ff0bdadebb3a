"""Writing your own stateless sink: one file per key.

A stateless sink is any object with ``sink(record)`` (or ``sink_batch(records)``), wrapped in
:class:`~malstrom.StatelessSink`. ``DirectorySink`` writes each record's value as a line to
``<directory>/<key>.txt``. The numbers 0..4 are keyed by their own value, so the job writes
five files ``0.txt`` .. ``4.txt`` holding one line each, then prints them.

A stateless sink keeps nothing in snapshots, so it cannot undo what it wrote after the last
snapshot when a job restarts: use a stateful sink (``file_sink_stateful.py``, or the built-in
:class:`malstrom.sinks.FileSink`) for files that must hold every record exactly once.
This one truncates each file when it first writes to it, so running the example again
rewrites the same files.

Usage: ``python examples/file_sink_stateless.py [OUTPUT_DIR]`` (default: a directory in the
system's temp dir).
"""

import functools
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from malstrom import Record, SingleThreadRuntime, StatelessSink, StreamProvider
from malstrom.sources import IterSource

DEFAULT_DIR = Path(tempfile.gettempdir()) / "malstrom-examples" / "file-sink-stateless"


class DirectorySink:
    """Writes ``record.value`` as a line to ``<directory>/<record.key>.txt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[object, TextIO] = {}

    def sink(self, record: Record) -> None:
        f = self.files.get(record.key)
        if f is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # "w": start the file afresh the first time this job writes to it.
            f = self.files[record.key] = open(self.directory / f"{record.key}.txt", "w")  # noqa: SIM115
        f.write(f"{record.value}\n")
        f.flush()


def build(provider: StreamProvider, out_dir: Path = DEFAULT_DIR) -> None:
    (
        provider.new_stream()
        .source("number", IterSource(range(5)))
        .key_distribute("key-by-value", str)
        .map("int-to-string", str)
        .sink("file-sink", StatelessSink(DirectorySink(Path(out_dir))))
    )


def print_files(directory: Path) -> None:
    for path in sorted(directory.glob("*.txt")):
        print(f"{path.name}: {path.read_text().splitlines()}")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    SingleThreadRuntime(functools.partial(build, out_dir=out)).execute()
    print_files(out)
