"""What a source is: partitioned, polled, optionally stateful."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "StatefulSource",
    "StatefulSourceImpl",
    "StatefulSourcePartition",
    "StatelessSource",
    "StatelessSourceImpl",
    "StatelessSourcePartition",
]


@runtime_checkable
class StatelessSourcePartition(Protocol):
    """One part of a source, built on exactly one worker.

    Optional: ``wake_in() -> float | None``, the seconds until this part may have a record
    (None: it cannot tell). A worker whose parts all answer, and that has nothing else to do,
    sleeps until then instead of polling (an idle worker then costs next to no CPU);
    a record or message arriving from elsewhere wakes it sooner.

    Optional: ``lag() -> int | None``, what this part has not read yet, in whatever unit it
    counts (records for Kafka: high watermark minus position; bytes for text files; rows
    for Parquet); None when it cannot tell right now. It is asked about once a second, with
    the worker's metrics report, on the worker's loop thread, so it must be cheap and must not
    wait (use what the client has cached). It is served as ``malstrom_source_lag{part=...}``
    while the part is unfinished; a finished part has nothing left to read.
    """

    def poll(self) -> tuple[Any, Any] | None:
        """The next ``(value, timestamp)``, or None if nothing is ready now.

        Should not wait for data: return None and be polled again. A poll that blocks delays
        this worker's other work by up to the runtime's ``source_turn_budget`` (plus that
        poll), not longer.
        """
        ...

    def is_finished(self) -> bool:
        """True once this part will never produce again."""
        ...


@runtime_checkable
class StatefulSourcePartition(StatelessSourcePartition, Protocol):
    """A part whose position is snapshotted and restored (exactly-once replay)."""

    def snapshot(self) -> object:
        """State to persist at a barrier (e.g. an offset)."""
        ...

    def collect(self) -> object:
        """Final state when the part moves to another worker."""
        ...


class StatelessSourceImpl(Protocol):
    """A source without state: a moved or restarted part starts again from scratch.

    It may define ``relist_interval`` (seconds) to grow while it runs, as
    :class:`StatefulSourceImpl` describes.
    """

    def list_parts(self) -> list[Hashable]:
        """Every part of the source; must be the same on every worker."""
        ...

    def build_part(self, part: Any) -> StatelessSourcePartition:
        """Create the reader of one part."""
        ...


class StatefulSourceImpl(Protocol):
    """A source whose parts resume from their snapshotted state.

    Optional, for sources that grow while they run (Kafka partitions added to a topic, files
    added to a directory): ``relist_interval`` (seconds; every worker calls ``list_parts()``
    again at that interval and builds the new parts it owns; parts never shrink) and
    ``new_part_state(part) -> object``: the state a part gets when it appears after the job
    started (listed while running, or listed on a restore but absent from the snapshot), in
    place of ``None``, which stands for the first start of the job.
    """

    def list_parts(self) -> list[Hashable]:
        """Every part of the source; must be the same on every worker."""
        ...

    def build_part(self, part: Any, state: object | None) -> StatefulSourcePartition:
        """Create the reader of one part, resuming from ``state`` (None on a fresh start)."""
        ...


class StatelessSource:
    """Wraps a :class:`StatelessSourceImpl` for ``stream.source(name, StatelessSource(impl))``."""

    stateful = False

    def __init__(self, impl: StatelessSourceImpl) -> None:
        self.impl = impl

    def __repr__(self) -> str:
        return f"StatelessSource({self.impl!r})"


class StatefulSource:
    """Wraps a :class:`StatefulSourceImpl` for ``stream.source(name, StatefulSource(impl))``."""

    stateful = True

    def __init__(self, impl: StatefulSourceImpl) -> None:
        self.impl = impl

    def __repr__(self) -> str:
        return f"StatefulSource({self.impl!r})"
