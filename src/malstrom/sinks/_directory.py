"""DirectorySink: part files in a directory, each published when the snapshot that covers it
commits (two-phase commit on a file system: write hidden, rename in ``commit``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Hashable
from typing import Any, BinaryIO

from malstrom.formats import Format, Lines
from malstrom.keyed.partitioners import stable_hash
from malstrom.sinks._protocols import RecordBatch, StatefulSink
from malstrom.types import Record

__all__ = ["DirectorySink"]

_HIDDEN_SUFFIX = ".inprogress"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirPart:
    """One part: a file in progress, and closed files waiting for their snapshot to commit.

    A closed file is *armed* once a barrier has passed after it was closed: that barrier's
    snapshot lists it, so the part may publish it when a snapshot commits. Files handed over
    by a rescale arrive unarmed (no snapshot of this owner lists them yet).
    """

    def __init__(
        self, directory: str, part: int, state: Any, format: Format, buffer_rows: int
    ) -> None:
        self._dir = directory
        self._part = part
        self._format = format
        self._buffer_rows = buffer_rows
        self._token = secrets.token_hex(4)  # this build's files: never a name of another build
        self._seq = 0
        self._f: BinaryIO | None = None
        self._writer: Any = None
        self._name = ""
        self._buf: list[Any] = []
        os.makedirs(directory, exist_ok=True)
        if state is not None and state.get("moving"):
            # Handed over by a rescale: these files belong to the running attempt.
            self._armed: list[str] = []
            self._unarmed: list[str] = list(state["pending"])
        else:
            self._armed, self._unarmed = [], []
            self._recover(list(state["pending"]) if state is not None else [])

    def _prefix(self) -> str:
        return f".part-{self._part:04d}-"

    def _recover(self, committed: list[str]) -> None:
        """Publish the files the restored snapshot lists; delete every other hidden file of
        this part (written after that snapshot, by this or a failed attempt)."""
        keep = set(committed)
        prefix = self._prefix()
        for name in os.listdir(self._dir):
            if name.startswith(prefix) and name.endswith(_HIDDEN_SUFFIX) and name not in keep:
                os.unlink(os.path.join(self._dir, name))
        self._publish(committed)

    def _publish(self, names: list[str]) -> None:
        if not names:
            return
        for name in names:
            src = os.path.join(self._dir, name)
            dst = os.path.join(self._dir, _published(name))
            try:
                os.replace(src, dst)
            except FileNotFoundError:
                if not os.path.exists(dst):
                    raise RuntimeError(
                        f"DirectorySink: part file {src} of a committed snapshot is gone (and "
                        f"was never published as {dst}): was the directory changed by hand, or "
                        "does another job write into it?"
                    ) from None
        _fsync_dir(self._dir)

    def sink(self, record: Record) -> None:
        buf = self._buf
        buf.append(record.value)
        if len(buf) >= self._buffer_rows:
            self._write()

    def sink_batch(self, records: RecordBatch) -> None:
        buf = self._buf
        buf += records.values
        if len(buf) >= self._buffer_rows:
            self._write()

    def _write(self) -> None:
        buf, self._buf = self._buf, []
        if self._f is None:
            self._name = f"{self._prefix()}{self._token}-{self._seq:06d}{self._format.suffix}"
            self._name += _HIDDEN_SUFFIX
            self._seq += 1
            self._f = open(os.path.join(self._dir, self._name), "wb")  # noqa: SIM115
            self._writer = self._format._writer(self._f, self._name, False)
        self._writer.write(buf)

    def _close_file(self) -> None:
        if self._buf:
            self._write()
        f = self._f
        if f is None:
            return
        self._writer.finish()
        if not f.closed:  # a format's writer may close the file it was given
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self._f = self._writer = None
        self._unarmed.append(self._name)

    def snapshot(self) -> object:
        self._close_file()
        self._armed += self._unarmed
        self._unarmed = []
        return {"pending": list(self._armed)}

    def commit(self, version: int) -> None:
        armed, self._armed = self._armed, []
        self._publish(armed)

    def collect(self) -> object:
        self._close_file()
        return {"pending": self._armed + self._unarmed, "moving": True}


def _published(hidden: str) -> str:
    return hidden[1 : -len(_HIDDEN_SUFFIX)]


class DirectorySink(StatefulSink):
    """Writes records into part files in a directory; a file appears (under its final name)
    only once the snapshot that covers its records commits, so readers of the directory never
    see a record twice or one that a crash takes back.

    Records go to ``parts`` parts by their key (so a key's records stay in order within one
    part); each part writes a new file ``part-<part>-<id>-<n><suffix>`` per snapshot interval
    in which it received records, in the given ``format`` (:mod:`malstrom.formats`, default
    plain lines). While being written a file is hidden (``.part-...inprogress``). On restore,
    the files the snapshot covers are published and every other hidden file of the part is
    deleted: the records they held are replayed. One job per directory. Without snapshots
    (``snapshot_interval=None``) each part writes one file, published when the job completes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: Format | None = None,
        *,
        parts: int = 8,
    ) -> None:
        super().__init__(self)
        if not isinstance(parts, int) or parts < 1:
            raise ValueError(f"DirectorySink: parts must be an int >= 1, got {parts!r}")
        self._dir = os.fspath(path)
        self._format = format if format is not None else Lines()
        if not isinstance(self._format, Format):
            raise TypeError(
                f"DirectorySink: format must be a malstrom.formats format, got {format!r}"
            )
        self._parts = parts
        self._buffer_rows = int(getattr(self._format, "batch_rows", 1024))

    def assign_part(self, key: Any) -> Hashable:
        """The part (0 .. parts-1) a record with ``key`` goes to."""
        return stable_hash(key) % self._parts

    def build_part(self, part: Any, state: object | None) -> _DirPart:
        """Open part ``part``; with a snapshot's state, publish what it covers first."""
        return _DirPart(self._dir, int(part), state, self._format, self._buffer_rows)

    def __repr__(self) -> str:
        return f"DirectorySink({self._dir!r}, {self._format!r}, parts={self._parts})"
