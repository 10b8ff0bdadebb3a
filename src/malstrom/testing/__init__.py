"""Helpers for testing your own dataflows.

:class:`LocalCluster` (and :func:`run_local_cluster`) run a job on several workers and their
coordinator in one thread, deterministically: key routing, barrier alignment across workers,
epoch merging, snapshots, restores and rescales at any parallelism, without processes. An
error in a worker's turn (an ``OperatorError``) propagates as it is; a failure the coordinator
detects raises ``JobFailed``::

    from malstrom.testing import run_local_cluster

    coordinator = run_local_cluster(build, 3)  # three workers, to completion

:func:`run_pipeline` feeds values through a chain of operators on the single-thread runtime
and returns what came out, so a unit test of your operators is one line::

    from malstrom.testing import run_pipeline

    def test_doubles() -> None:
        out = run_pipeline([1, 2, 3], lambda s: s.map("double", lambda x: x * 2))
        assert [r.value for r in out] == [2, 4, 6]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from malstrom.runtime._single import SingleThreadRuntime
from malstrom.sinks import ListSink
from malstrom.snapshot._backend import Persistence
from malstrom.sources import IterSource, StatefulSource
from malstrom.stream import Stream, StreamProvider
from malstrom.testing._cluster import LocalCluster, run_local_cluster
from malstrom.types import NoKey, Record

__all__ = ["LocalCluster", "TimedSource", "run_local_cluster", "run_pipeline"]


class _TimedPart:
    __slots__ = ("batch_size", "i", "items")

    def __init__(self, items: list[tuple[Any, Any]], start: int, batch_size: int) -> None:
        self.items = items
        self.i = start
        self.batch_size = batch_size

    def poll(self) -> tuple[Any, Any] | None:
        got = self.poll_batch(1)
        return got[0] if got else None

    def poll_batch(self, n: int) -> list[tuple[Any, Any]]:
        stop = min(len(self.items), self.i + min(n, self.batch_size))
        out = self.items[self.i : stop]
        self.i = stop
        return out

    def is_finished(self) -> bool:
        return self.i >= len(self.items)

    def snapshot(self) -> object:
        return self.i

    def collect(self) -> object:
        return self.i


class TimedSource(StatefulSource):
    """A source of ``(value, timestamp)`` pairs, ``batch_size`` records per batch.

    With the default ``batch_size=1`` every record travels alone, so operators see every
    epoch a generator emits (the engine may skip an epoch when a larger one follows in the
    same batch). One part, keyed ``NoKey``; resumable from snapshots like IterSource.
    """

    def __init__(self, items: Iterable[tuple[Any, Any]], batch_size: int = 1) -> None:
        super().__init__(self)
        self._items = list(items)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._batch_size = batch_size

    def list_parts(self) -> list[Any]:
        """The single part, ``NoKey``."""
        return [NoKey]

    def build_part(self, part: Any, state: object | None) -> _TimedPart:
        """Start at the snapshotted index (0 on a fresh start)."""
        start = 0 if state is None else int(state)  # type: ignore[call-overload]
        return _TimedPart(self._items, start, self._batch_size)


def run_pipeline(
    values: Iterable[Any],
    pipeline: Callable[[Stream], Stream],
    *,
    persistence: Persistence | None = None,
    snapshot_interval: float | None = None,
) -> list[Record]:
    """Run ``pipeline`` over ``IterSource(values)`` to completion and return its output records.

    ``pipeline`` receives the source stream (operator name ``"source"``) and returns the stream
    to collect. Values are materialized first, so a generator is fine.
    """
    items = list(values)
    sink = ListSink()

    def build(provider: StreamProvider) -> None:
        out = pipeline(provider.new_stream().source("source", IterSource(items)))
        if not isinstance(out, Stream):
            raise TypeError(f"pipeline must return a Stream, got {out!r}")
        out.sink("collect", sink)

    runtime = SingleThreadRuntime(
        build, persistence=persistence, snapshot_interval=snapshot_interval
    )
    runtime.execute()
    return sink.records
