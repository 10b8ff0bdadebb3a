"""IterSource: a finite or infinite Python iterable as a one-part stateful source."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from itertools import islice
from typing import Any

from malstrom.sources._protocols import StatefulSource
from malstrom.types import NoKey

__all__ = ["IterSource"]


class _IterPartition:
    __slots__ = ("_count", "_done", "_it")

    def __init__(self, it: Iterator[Any], skip: int) -> None:
        self._it = it
        self._count = 0
        self._done = False
        if skip:
            # Resume: iterate again and skip what was consumed before the snapshot.
            n = sum(1 for _ in islice(it, skip))
            if n < skip:
                # Replaying fewer items than were consumed would silently lose records.
                raise ValueError(
                    f"IterSource cannot resume: {skip} items were consumed before the snapshot "
                    f"but the iterable yields only {n} now; pass a re-iterable (list, range...) "
                    "or a factory returning a fresh iterator"
                )
            self._count = n

    def poll(self) -> tuple[Any, Any] | None:
        if self._done:
            return None
        try:
            v = next(self._it)
        except StopIteration:
            self._done = True
            return None
        t = self._count
        self._count += 1
        return v, t

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        if self._done:
            return [], range(0)
        values = list(islice(self._it, n))
        if len(values) < n:
            self._done = True
        start = self._count
        self._count = start + len(values)
        return values, range(start, self._count)

    def is_finished(self) -> bool:
        return self._done

    def snapshot(self) -> object:
        return self._count

    def collect(self) -> object:
        return self._count


class IterSource(StatefulSource):
    """Emits the items of an iterable, keyed ``NoKey``, with timestamps ``0, 1, 2, ...``.

    Pass the iterable itself, or a zero-argument factory (needed for one-shot iterators that
    must be re-created on restore). It is stateful: after a restore it iterates again and skips
    what was already consumed, so the iterable must yield the same items in the same order.
    It emits no epoch before ``Epoch(MAX)`` at its end.

    A generator may be slow (waiting on a feed): the worker takes items in runs sized by how
    long recent items took, so output and snapshots move every loop turn. A run cannot be
    interrupted, though: a generator that is fast and then stalls in the middle of a run holds
    that turn until the run ends (at most 2048 items).
    """

    def __init__(self, iterable: Iterable[Any] | Callable[[], Iterable[Any]]) -> None:
        super().__init__(self)
        self._iterable = iterable

    def list_parts(self) -> list[Hashable]:
        """The single part, ``NoKey``."""
        return [NoKey]

    def build_part(self, part: Any, state: object | None) -> _IterPartition:
        """Iterate afresh, skipping the ``state`` items consumed before the snapshot."""
        src = self._iterable
        it = iter(src() if callable(src) and not isinstance(src, Iterable) else src)
        return _IterPartition(it, int(state) if state is not None else 0)  # type: ignore[call-overload]

    def size(self) -> int | None:
        """How many items the source emits in all, when the iterable knows (``len``): the
        progress of ``malstrom run`` shows the percentage done."""
        src = self._iterable
        try:
            return len(src)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __repr__(self) -> str:
        return "IterSource(...)"
