"""Sources: where records come from.

A source is partitioned into *parts*; each part is read on exactly one worker, and records
are keyed by their part. Wrap your own implementation with :class:`StatefulSource` (parts
resume from snapshotted state: exactly-once replay) or :class:`StatelessSource`; or use a
built-in:

- :class:`IterSource`: any Python iterable (one part).
- :class:`FileSource`: files (one part per file) in a format of :mod:`malstrom.formats`
  (text lines, CSV, JSON Lines, Parquet), resuming at the snapshotted position.
- :class:`DirectorySource`: the files of a directory, optionally watching for new ones.
- :class:`StdInSource`: the lines of standard input (not replayable: at-most-once on failure).
- :class:`PollingSource`: calls a function every N seconds.

Connectors to external systems live in :mod:`malstrom.connectors`.

For speed a partition may also offer ``poll_batch(max_records) -> list[(value, timestamp)]``.
"""

from malstrom.sources._directory import DirectorySource
from malstrom.sources._file import FileSource
from malstrom.sources._iter import IterSource
from malstrom.sources._polling import PollingSource
from malstrom.sources._protocols import (
    StatefulSource,
    StatefulSourceImpl,
    StatefulSourcePartition,
    StatelessSource,
    StatelessSourceImpl,
    StatelessSourcePartition,
)
from malstrom.sources._stdin import StdInSource

__all__ = [
    "DirectorySource",
    "FileSource",
    "IterSource",
    "PollingSource",
    "StatefulSource",
    "StatefulSourceImpl",
    "StatefulSourcePartition",
    "StatelessSource",
    "StatelessSourceImpl",
    "StatelessSourcePartition",
    "StdInSource",
]
