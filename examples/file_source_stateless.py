"""Writing your own stateless source: read text files, one part per file.

A source is partitioned: ``list_parts()`` names every part (here one per file path; every
worker must list the same parts), and ``build_part(part)`` creates the reader of one part on
the worker that owns it. A partition's ``poll()`` returns ``(value, timestamp)`` or ``None``
when nothing is ready (it must never block), and ``is_finished()`` tells when it is done.
Records are keyed by their part, so every line here is keyed by its file's path and stamped
with its line number.

Being stateless, a part that restarts or moves to another worker reads its file again from
the start; ``file_source_stateful.py`` remembers its position instead.

The example first writes two small input files (if they are missing) and prints every line
read as ``file:line: text``.

Usage: ``python examples/file_source_stateless.py [DATA_DIR]`` (default: a directory in the
system's temp dir).
"""

import functools
import os
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TextIO

from malstrom import OperatorContext, Record, SingleThreadRuntime, StatelessSource, StreamProvider

DEFAULT_DIR = Path(tempfile.gettempdir()) / "malstrom-examples" / "file-source-stateless"

SAMPLE_FILES = {
    "first.txt": ["Look", "ma'", "I'm", "streaming"],
    "second.txt": ["from", "two", "files"],
}


def ensure_input_files(directory: Path) -> list[str]:
    """Write the sample input files unless they exist; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, lines in SAMPLE_FILES.items():
        path = directory / name
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{line}\n" for line in lines))
            os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
        paths.append(str(path))
    return paths


class FileSourcePartition:
    """Reads the lines of one file; the timestamp is the line number."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: TextIO | None = None
        self.line_no = 0
        self.finished = False

    def poll(self) -> tuple[str, int] | None:
        if self.finished:
            return None
        if self.file is None:
            self.file = open(self.path)  # noqa: SIM115 - open lazily, on the first poll
        line = self.file.readline()
        if not line:
            self.file.close()
            self.finished = True
            return None
        out = (line.rstrip("\n"), self.line_no)
        self.line_no += 1
        return out

    def is_finished(self) -> bool:
        return self.finished


class LineFileSource:
    """One part per file path."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def list_parts(self) -> list[Hashable]:
        return list(self.paths)

    def build_part(self, part: Any) -> FileSourcePartition:
        return FileSourcePartition(part)


def print_line(record: Record, _ctx: OperatorContext) -> None:
    print(f"{Path(record.key).name}:{record.timestamp}: {record.value}")


def build(provider: StreamProvider, data_dir: Path = DEFAULT_DIR) -> None:
    paths = ensure_input_files(Path(data_dir))
    (
        provider.new_stream()
        .source("files", StatelessSource(LineFileSource(paths)))
        .inspect("print", print_line)
    )


if __name__ == "__main__":
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    SingleThreadRuntime(functools.partial(build, data_dir=data)).execute()
