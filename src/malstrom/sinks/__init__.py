"""Sinks: where records go.

Use a built-in (:class:`StdOutSink`, :class:`ListSink`, :class:`FileSink`) or wrap your own:
:class:`StatelessSink` for a plain ``sink(record)`` (``sink_batch(records)`` preferred when
present), :class:`StatefulSink` for partitioned sinks whose parts snapshot and restore their
state and may implement ``commit(version)`` for two-phase commit.
"""

from malstrom.sinks._builtin import FileSink, ListSink, StdOutSink
from malstrom.sinks._protocols import (
    RecordBatch,
    StatefulSink,
    StatefulSinkImpl,
    StatefulSinkPartition,
    StatelessSink,
    StatelessSinkImpl,
)

__all__ = [
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
