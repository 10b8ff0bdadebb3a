"""FileSource: files as a partitioned, resumable source (one part per file)."""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Sequence
from typing import Any

from malstrom.formats import Format, Lines
from malstrom.sources._protocols import StatefulSource

__all__ = ["FileSource"]


def file_format(format: Format | None, encoding: str, who: str) -> Format:
    """The format to use: ``format``, else plain lines in ``encoding``."""
    if format is None:
        return Lines(encoding)
    if not isinstance(format, Format):
        raise TypeError(
            f"{who}: format must be a malstrom.formats format (Lines(), Csv(), JsonLines(), "
            f"Parquet()), got {format!r}"
        )
    if encoding != "utf-8":
        raise ValueError(f"{who}: give the encoding to the format, e.g. Csv(encoding=...)")
    return format


class FileSource(StatefulSource):
    """Reads files record by record; one part per file, keyed by the file's path.

    ``paths`` is a path, a glob pattern, or a list of them. ``format`` says how a file holds
    records (:mod:`malstrom.formats`): by default plain text lines (values are the lines
    without their line ending); ``Csv()`` gives a dict per row (the header row is not a
    record), ``JsonLines()`` the parsed values, ``Parquet()`` a dict of typed columns per row.
    Timestamps are record numbers within the file (0-based). A part's snapshot is its
    position (a byte offset; a row count for Parquet), so after a restore each file resumes
    exactly where the last committed snapshot left it.

    A path may also be a named pipe (FIFO), read as text lines: lines are taken as the writer
    sends them (a read waits for the next line, and the worker sizes its reads so that this
    holds a loop turn for about its time budget), and the part ends when the writer closes. A
    pipe cannot be read again, so a job restored from a snapshot taken after some of it was
    read refuses to resume that part.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        encoding: str = "utf-8",
        *,
        format: Format | None = None,
    ) -> None:
        super().__init__(self)
        items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        found: list[str] = []
        for p in items:
            p = os.fspath(p)
            matches = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
            found.extend(matches)
        if not found:
            raise FileNotFoundError(f"FileSource: no file matches {paths!r}")
        self._paths = found
        self._format = file_format(format, encoding, "FileSource")

    def list_parts(self) -> list[Hashable]:
        """One part per file, by path."""
        return list(self._paths)

    def build_part(self, part: Any, state: object | None) -> Any:
        """Open ``part`` and resume at the snapshotted position (the start on a fresh start)."""
        return self._format._reader(part, state)

    def __repr__(self) -> str:
        return f"FileSource({self._paths!r}, format={self._format!r})"
