"""FileSource: text files as a partitioned, resumable source (one part per file)."""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Sequence
from typing import Any, BinaryIO

from malstrom.sources._protocols import StatefulSource

__all__ = ["FileSource"]


class _FilePartition:
    def __init__(self, path: str, offset: int, line: int, encoding: str) -> None:
        self._f: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - lives as long as the part
        if offset:
            if not self._f.seekable():
                self._f.close()
                raise ValueError(
                    f"FileSource cannot resume {path!r} at byte {offset}: it is not seekable "
                    "(a pipe?); what was read before the snapshot cannot be read again"
                )
            self._f.seek(offset)
        self._offset = offset
        self._line = line
        self._encoding = encoding

    def poll(self) -> tuple[Any, Any] | None:
        values, stamps = self._poll_columns(1)
        return (values[0], stamps[0]) if values else None

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        f = self._f
        if f is None:
            return [], range(0)
        values: list[str] = []
        offset = self._offset
        enc = self._encoding
        for _ in range(n):
            raw = f.readline()
            if not raw:
                f.close()
                self._f = None
                break
            if not raw.endswith(b"\n"):
                # A partial last line (file still being written): take it only at EOF for good.
                offset += len(raw)
                values.append(raw.decode(enc))
                continue
            offset += len(raw)
            values.append(raw[:-1].decode(enc).removesuffix("\r"))
        start = self._line
        self._line = start + len(values)
        self._offset = offset
        return values, range(start, self._line)

    def is_finished(self) -> bool:
        return self._f is None

    def snapshot(self) -> object:
        return (self._offset, self._line)

    def collect(self) -> object:
        if self._f is not None:
            self._f.close()
            self._f = None
        return (self._offset, self._line)


class FileSource(StatefulSource):
    """Reads text files line by line; one part per file, keyed by the file's path.

    ``paths`` is a path, a glob pattern, or a list of them. Values are the lines without their
    line ending; timestamps are line numbers (0-based). A part's snapshot is its byte offset,
    so after a restore each file resumes exactly where the last committed snapshot left it.

    A path may also be a named pipe (FIFO): lines are taken as the writer sends them (a read
    waits for the next line, and the worker sizes its reads so that this holds a loop turn
    for about its time budget), and the part ends when the writer closes. A pipe cannot be
    read again, so a job restored from a snapshot taken after some of it was read refuses to
    resume that part.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        encoding: str = "utf-8",
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
        self._encoding = encoding

    def list_parts(self) -> list[Hashable]:
        """One part per file, by path."""
        return list(self._paths)

    def build_part(self, part: Any, state: object | None) -> _FilePartition:
        """Open ``part`` and seek to the snapshotted byte offset (0 on a fresh start)."""
        offset, line = (0, 0) if state is None else tuple(state)  # type: ignore[arg-type]
        return _FilePartition(part, offset, line, self._encoding)

    def __repr__(self) -> str:
        return f"FileSource({self._paths!r})"
