"""Sources: where records come from.

A source is partitioned into *parts*; each part is read on exactly one worker, and records
are keyed by their part. Wrap your own implementation with :class:`StatefulSource` (parts
resume from snapshotted state: exactly-once replay) or :class:`StatelessSource`; or use a
built-in: :class:`IterSource` for any Python iterable, :class:`FileSource` for text files.

For speed a partition may also offer ``poll_batch(max_records) -> list[(value, timestamp)]``.
"""

from malstrom.sources._file import FileSource
from malstrom.sources._iter import IterSource
from malstrom.sources._protocols import (
    StatefulSource,
    StatefulSourceImpl,
    StatefulSourcePartition,
    StatelessSource,
    StatelessSourceImpl,
    StatelessSourcePartition,
)

__all__ = [
    "FileSource",
    "IterSource",
    "StatefulSource",
    "StatefulSourceImpl",
    "StatefulSourcePartition",
    "StatelessSource",
    "StatelessSourceImpl",
    "StatelessSourcePartition",
]
