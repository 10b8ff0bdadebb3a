"""DirectorySource: the files of a directory, one part per file, each read exactly once; with
``watch`` it keeps picking up files that appear while the job runs."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Hashable
from typing import Any

from malstrom.formats import Format, Lines
from malstrom.sources._protocols import StatefulSource

__all__ = ["DirectorySource"]

log = logging.getLogger("malstrom.sources")

WATCHING = "<watching>"
"""The part that stands for "more files may come": it never produces and never ends, so a
watching source ends only when the job is stopped."""


class _Done:
    """A file read to its end: rebuilt without opening it (it may be gone by now)."""

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        return [], range(0)

    def is_finished(self) -> bool:
        return True

    def lag(self) -> int:
        return 0

    def snapshot(self) -> object:
        return "done"

    def collect(self) -> object:
        return "done"


class _Watching:
    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        return [], range(0)

    def is_finished(self) -> bool:
        return False

    def snapshot(self) -> object:
        return None

    def collect(self) -> object:
        return None


class _FilePart:
    """A file being read; its state becomes ``"done"`` once read to the end."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        return self._reader._poll_columns(n)

    def is_finished(self) -> bool:
        return self._reader.is_finished()

    def lag(self) -> int | None:
        """What the file holds after what was read (bytes; rows for Parquet)."""
        fn = getattr(self._reader, "lag", None)
        return None if fn is None else fn()

    def snapshot(self) -> object:
        return "done" if self._reader.is_finished() else self._reader.snapshot()

    def collect(self) -> object:
        done = self._reader.is_finished()
        state = self._reader.collect()
        return "done" if done else state


class DirectorySource(StatefulSource):
    """Reads every file of a directory whose name matches ``pattern``; one part per file
    (keyed by its name), each read exactly once across restarts and rescales.

    ``format`` says how files hold records (:mod:`malstrom.formats`, default plain lines);
    timestamps are record numbers within the file. Names starting with ``.`` or ``_`` are
    skipped (files being written: a writer should create a file under such a name, or
    elsewhere, and rename it into place when complete, as
    :class:`~malstrom.sinks.DirectorySink` does).

    ``watch=None`` reads the files present when the job starts, then the stream ends. With
    ``watch=S`` every worker lists the directory again every ``S`` seconds and reads the new
    files it owns; the stream never ends (stop the job to end it). A file must not change
    once it appeared. A file deleted after it was read is forgotten; one deleted before it was
    read is skipped with a warning.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: Format | None = None,
        *,
        pattern: str = "*",
        watch: float | None = None,
    ) -> None:
        super().__init__(self)
        self._dir = os.fspath(path)
        self._format = format if format is not None else Lines()
        if not isinstance(self._format, Format):
            raise TypeError(
                f"DirectorySource: format must be a malstrom.formats format, got {format!r}"
            )
        if watch is not None and not watch > 0:
            raise ValueError(f"DirectorySource: watch must be > 0 seconds, got {watch!r}")
        if not os.path.isdir(self._dir):
            raise NotADirectoryError(f"DirectorySource: {self._dir!r} is not a directory")
        self._pattern = pattern
        self._watch = watch
        if watch is not None:
            self.relist_interval = watch

    def list_parts(self) -> list[Hashable]:
        """The names of the matching files now (and, when watching, the watching part)."""
        names: list[Hashable] = []
        names += sorted(
            e.name
            for e in os.scandir(self._dir)
            if e.name[0] not in "._" and fnmatch.fnmatch(e.name, self._pattern) and e.is_file()
        )
        if self._watch is not None:
            names.append(WATCHING)
        return names

    def build_part(self, part: Any, state: object | None) -> Any:
        """Open file ``part`` at its snapshotted position (a file read to its end stays done)."""
        if part == WATCHING:
            return _Watching()
        if state == "done":
            return _Done()
        path = os.path.join(self._dir, part)
        try:
            return _FilePart(self._format._reader(path, state))
        except FileNotFoundError:
            log.warning("DirectorySource: %s vanished before it was read; skipped", path)
            return _Done()

    def __repr__(self) -> str:
        return f"DirectorySource({self._dir!r}, {self._format!r}, watch={self._watch!r})"
