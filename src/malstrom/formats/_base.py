"""What a file format is to the file sources and sinks: a reader of one file that resumes
from a small state, and a writer that appends batches of values to an open file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

__all__ = ["FileReader", "FileWriter", "Format"]


class FileReader(Protocol):
    """Reads one file as a source part (it is one): columns of values and timestamps."""

    def _poll_columns(self, n: int) -> tuple[list[Any], range]: ...

    def is_finished(self) -> bool: ...

    def snapshot(self) -> object: ...

    def collect(self) -> object: ...

    def close(self) -> None: ...


class FileWriter(Protocol):
    """Writes values to one open file."""

    def write(self, values: Sequence[Any]) -> None: ...

    def finish(self) -> None:
        """Complete the file (e.g. a Parquet footer); the caller then syncs and closes it."""
        ...


class Format:
    """A file format for :class:`~malstrom.sources.FileSource`,
    :class:`~malstrom.sources.DirectorySource`, :class:`~malstrom.sinks.FileSink` and
    :class:`~malstrom.sinks.DirectorySink`.

    The built-ins are :class:`~malstrom.formats.Lines`, :class:`~malstrom.formats.Csv`,
    :class:`~malstrom.formats.JsonLines` and :class:`~malstrom.formats.Parquet`.
    """

    suffix: str = ""
    """File name suffix (with its dot) of files this format writes."""
    appendable: bool = True
    """Whether a file can be appended to and cut back to an earlier length (text formats);
    :class:`~malstrom.sinks.FileSink` needs this, :class:`~malstrom.sinks.DirectorySink`
    does not."""

    def _reader(self, path: str, state: object | None) -> FileReader:
        raise NotImplementedError

    def _writer(self, f: BinaryIO, path: str, has_content: bool) -> FileWriter:
        raise NotImplementedError
