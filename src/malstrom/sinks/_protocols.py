"""What a sink is: protocols for stateless and stateful (partitioned) sinks."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any, Protocol, overload

from malstrom.runtime._engine import make_record
from malstrom.types import Record

__all__ = [
    "RecordBatch",
    "StatefulSink",
    "StatefulSinkImpl",
    "StatefulSinkPartition",
    "StatelessSink",
    "StatelessSinkImpl",
]


class RecordBatch(Sequence[Record]):
    """The records handed to ``sink_batch``: a read-only sequence over columnar data.

    Records are made only as they are read, so a sink that just counts, or that writes the
    columns :attr:`keys`, :attr:`values` and :attr:`timestamps` directly, makes no
    per-record objects at all.
    """

    __slots__ = ("keys", "timestamps", "values")

    def __init__(self, keys: Sequence[Any], values: Sequence[Any], timestamps: Sequence[Any]):
        self.keys = keys
        self.values = values
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Record]:
        return map(make_record, zip(self.keys, self.values, self.timestamps))

    @overload
    def __getitem__(self, i: int) -> Record: ...

    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Record(self.keys[i], self.values[i], self.timestamps[i])

    def __repr__(self) -> str:
        return f"RecordBatch({len(self)} records)"


class StatelessSinkImpl(Protocol):
    """Receives records; may also offer ``sink_batch(records: RecordBatch)``, preferred."""

    def sink(self, record: Record) -> None:
        """Write one record."""
        ...


class StatefulSinkPartition(Protocol):
    """One part of a stateful sink, living on exactly one worker.

    Optional methods: partitions that take part in two-phase commit define
    ``commit(version)``, called once the snapshot version that covered their writes is
    committed. ``abort()`` is called when the worker's job attempt is over (it failed or was
    aborted): drop buffered output without writing or publishing it; the part is not used
    again (a later attempt rebuilds it from the last committed snapshot). A partition may also
    offer ``sink_batch(records: RecordBatch)``, which the runtime then prefers: it gets the
    part's records of one batch at once, without a Record object per record.
    """

    def sink(self, record: Record) -> None:
        """Write one record."""
        ...

    def snapshot(self) -> object:
        """State to persist at a barrier."""
        ...

    def collect(self) -> object:
        """Final state when the part moves to another worker."""
        ...


class StatefulSinkImpl(Protocol):
    """A sink whose parts keep state across snapshots and restores.

    It may also define ``bind_operator(name: str)``: called once per worker, before any part
    is built, with the sink operator's name (stable across restarts: a base for external ids
    such as Kafka transactional ids).

    Optional: ``begin_attempt(attempt: int)`` is called on each worker before any part is
    built, with the id of the job attempt (ids grow from one attempt to the next). A worker of
    a failed attempt may live on for a while; the engine stops calling its parts once it
    knows, but only the system written to can refuse a write that was already under way. A
    sink writing to a system that can fence writers (a lock, a transactional producer's
    epoch, a conditional write) should use the id for that, as ``FileSink`` does.
    """

    def assign_part(self, key: Any) -> Hashable:
        """The part a record with this key goes to (deterministic)."""
        ...

    def build_part(self, part: Any, state: object | None) -> StatefulSinkPartition:
        """Create (or, with ``state``, restore) one part."""
        ...


class StatelessSink:
    """Wraps a :class:`StatelessSinkImpl` for ``stream.sink(name, StatelessSink(impl))``."""

    stateful = False

    def __init__(self, impl: StatelessSinkImpl) -> None:
        self.impl = impl


class StatefulSink:
    """Wraps a :class:`StatefulSinkImpl` for ``stream.sink(name, StatefulSink(impl))``."""

    stateful = True

    def __init__(self, impl: StatefulSinkImpl) -> None:
        self.impl = impl
