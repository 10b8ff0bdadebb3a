"""Sinks: where records go.

Use a built-in or wrap your own. Built-ins:

- :class:`StdOutSink`: prints records; :class:`ListSink`: collects them (in-process tests).
- :class:`FileSink`: one file (or one per key), exactly-once by cutting the file back to the
  snapshot on restore; formats from :mod:`malstrom.formats` (lines, CSV, JSON Lines).
- :class:`DirectorySink`: part files in a directory, each published (renamed into place)
  when the snapshot covering it commits; any format, Parquet included.

Connectors to external systems live in :mod:`malstrom.connectors`. Your own sink:
:class:`StatelessSink` for a plain ``sink(record)`` (``sink_batch(records)`` preferred when
present), :class:`StatefulSink` for partitioned sinks whose parts snapshot and restore their
state and may implement ``commit(version)`` for two-phase commit.
"""

from malstrom.sinks._builtin import FileSink, ListSink, StdOutSink
from malstrom.sinks._directory import DirectorySink
from malstrom.sinks._protocols import (
    RecordBatch,
    StatefulSink,
    StatefulSinkImpl,
    StatefulSinkPartition,
    StatelessSink,
    StatelessSinkImpl,
)

__all__ = [
    "DirectorySink",
    "FileSink",
    "ListSink",
    "RecordBatch",
    "StatefulSink",
    "StatefulSinkImpl",
    "StatefulSinkPartition",
    "StatelessSink",
    "StatelessSinkImpl",
    "StdOutSink",
]
