"""What a sink is (DESIGN 3.5)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from malstrom.types import Record

__all__ = [
    "StatefulSink",
    "StatefulSinkImpl",
    "StatefulSinkPartition",
    "StatelessSink",
    "StatelessSinkImpl",
]


class StatelessSinkImpl(Protocol):
    """Receives records; may also offer ``sink_batch(records)``, which is preferred."""

    def sink(self, record: Record) -> None:
        """Write one record."""
        ...


class StatefulSinkPartition(Protocol):
    """One part of a stateful sink, living on exactly one worker.

    Partitions that take part in two-phase commit also define ``commit(version)``, called once
    the snapshot version that covered their writes is committed.
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
