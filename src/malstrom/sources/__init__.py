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

For speed a partition may also offer ``poll_batch(max_records) -> list[(value, timestamp)]``
(return what is ready, up to ``max_records``).

``poll()`` should return None when nothing is ready rather than wait, but a part that blocks
does not stall the job: a worker's sources read for at most ``source_turn_budget`` seconds per
loop turn (a runtime setting, default 5 ms, shared by every part of every source; every part
gets at least one call per turn), then records, snapshot barriers, rescales and stops move on.
All parts of a source are asked for the same number of records, so they advance alike.
A ``poll_batch`` call cannot be interrupted, so the worker learns how long
a part's calls take and asks for as many records as fit the time left (a call that costs the
same whatever it asks for keeps getting full batches); ``poll()`` parts are polled with a look
at the clock every few polls, after every poll once one has blocked. A part that turns slow in
the middle of one large call holds that turn for the call.
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
