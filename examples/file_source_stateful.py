"""Writing your own stateful source: read text files and remember the position.

Like ``file_source_stateless.py`` (one part per file, records keyed by the file's path and
stamped with their line number), but each partition also has state: the number of the next
line to read. ``snapshot()`` returns it at every snapshot barrier and ``collect()`` when the
part moves to another worker; ``build_part(part, state)`` receives it back (``None`` on a
fresh start) and skips the lines already read. So a job restarted from a snapshot, or a part
moved by a rescale, continues where it stopped instead of reading its file again. The
built-in :class:`malstrom.sources.FileSource` does the same with byte offsets.

The example first writes two small input files (if they are missing) and prints every line
read as ``file:line: text``.

Usage: ``python examples/file_source_stateful.py [DATA_DIR]`` (default: a directory in the
system's temp dir).
"""

import functools
import os
import sys
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TextIO

from malstrom import OperatorContext, Record, SingleThreadRuntime, StatefulSource, StreamProvider

DEFAULT_DIR = Path(tempfile.gettempdir()) / "malstrom-examples" / "file-source-stateful"

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
    """Reads the lines of one file from ``next_line`` on; the timestamp is the line number."""

    def __init__(self, path: str, next_line: int) -> None:
        self.path = path
        self.next_line = next_line
        self.file: TextIO | None = None
        self.finished = False

    def poll(self) -> tuple[str, int] | None:
        if self.finished:
            return None
        if self.file is None:
            # Open lazily and skip the lines read before the snapshot we resume from.
            self.file = open(self.path)  # noqa: SIM115 - lives as long as the partition
            for _ in range(self.next_line):
                self.file.readline()
        line = self.file.readline()
        if not line:
            self.file.close()
            self.finished = True
            return None
        out = (line.rstrip("\n"), self.next_line)
        self.next_line += 1
        return out

    def is_finished(self) -> bool:
        return self.finished

    def snapshot(self) -> int:
        return self.next_line

    def collect(self) -> int:
        if self.file is not None and not self.file.closed:
            self.file.close()
        return self.next_line


class LineFileSource:
    """One part per file path; a part's state is the number of its next line."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def list_parts(self) -> list[Hashable]:
        return list(self.paths)

    def build_part(self, part: Any, state: Any) -> FileSourcePartition:
        return FileSourcePartition(part, int(state or 0))


def print_line(record: Record, _ctx: OperatorContext) -> None:
    print(f"{Path(record.key).name}:{record.timestamp}: {record.value}")


def build(provider: StreamProvider, data_dir: Path = DEFAULT_DIR) -> None:
    paths = ensure_input_files(Path(data_dir))
    (
        provider.new_stream()
        .source("files", StatefulSource(LineFileSource(paths)))
        .inspect("print", print_line)
    )


if __name__ == "__main__":
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    SingleThreadRuntime(functools.partial(build, data_dir=data)).execute()
