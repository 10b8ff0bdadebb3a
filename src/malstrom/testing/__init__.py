"""Helpers for testing your own dataflows.

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
from malstrom.sources import IterSource
from malstrom.stream import Stream, StreamProvider
from malstrom.types import Record

__all__ = ["run_pipeline"]


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
