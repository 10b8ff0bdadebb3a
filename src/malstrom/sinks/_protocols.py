"""What a sink is (DESIGN 3.5)."""

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

    Partitions that take part in two-phase commit also define ``commit(version)``, called once
    the snapshot version that covered their writes is committed. A partition may also offer
    ``sink_batch(records: RecordBatch)``, which the runtime then prefers: it gets the part's
    records of one batch at once, without a Record object per record.
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
    """A sink whose parts keep state across snapshots and restores."""

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
