"""PollingSource: call a function every N seconds; its results become records."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from malstrom.sources._protocols import StatefulSource
from malstrom.types import NoKey

__all__ = ["PollingSource"]


class _PollingPart:
    """Polls on a fixed grid ``start + k * interval`` (wall-clock seconds). ``_due`` is the
    next slot not yet delivered; it is the part's snapshot, so a restore polls that slot again
    (at once if it is past) and never before it is due."""

    def __init__(
        self,
        fn: Callable[[], Any],
        interval: float,
        max_polls: int | None,
        due: float,
        polls: int,
        clock: Callable[[], float],
    ) -> None:
        self._fn = fn
        self._interval = interval
        self._max = max_polls
        self._due = due
        self._polls = polls
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._call: Future[Any] | None = None

    def _poll_columns(self, n: int) -> tuple[list[Any], list[int]]:
        if self.is_finished():
            return [], []
        call = self._call
        if call is None:
            if self._clock() >= self._due:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="malstrom-poll")
                self._call = self._pool.submit(self._fn)
            return [], []
        if not call.done():
            return [], []
        self._call = None
        value = call.result()  # an exception from fn fails the job, naming the source
        slot = self._due
        self._polls += 1
        now = self._clock()
        nxt = slot + self._interval
        if nxt <= now:
            # This call also stands for the slots missed while it ran long or the job was
            # down (no burst of catch-up calls): next is the first slot still ahead.
            nxt = slot + self._interval * (math.floor((now - slot) / self._interval) + 1)
        self._due = nxt
        if self.is_finished():
            self._shutdown()
        if value is None:
            return [], []
        return [value], [int(slot * 1000)]

    def poll(self) -> tuple[Any, Any] | None:
        values, stamps = self._poll_columns(1)
        return (values[0], stamps[0]) if values else None

    def is_finished(self) -> bool:
        return self._max is not None and self._polls >= self._max

    def wake_in(self) -> float | None:
        """Seconds until the next slot is due (None while a call runs: keep polling)."""
        if self._call is not None:
            return None
        return max(0.0, self._due - self._clock())

    def snapshot(self) -> object:
        return {"due": self._due, "polls": self._polls}

    def collect(self) -> object:
        self._shutdown()  # a call still running is repeated by the new owner
        return self.snapshot()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._call = None


class PollingSource(StatefulSource):
    """Calls ``fn()`` every ``interval`` seconds; each call's return value becomes one record
    (keyed ``NoKey``; ``None`` means nothing this time; return a list and follow with
    ``flatten`` for many). The timestamp is the poll's scheduled time in epoch milliseconds.

    The first poll is at once; later ones follow the grid ``start + k * interval``. ``fn``
    runs on a background thread, so a slow API call never blocks the worker loop; polls never
    overlap. With ``max_polls`` the stream ends after that many polls.

    The time of the next poll is the part's snapshot: after a restore the source waits until
    that time (no early re-poll), or polls at once if it has passed (no lost poll; slots
    missed while the job was down are one poll, not a burst). Exactly-once here means: each
    scheduled poll's result is in the job's state and exactly-once sinks exactly once. A poll
    whose result was emitted after the last committed snapshot is repeated after a failure,
    so ``fn`` may be called more than once for a slot, and the repeated call may see newer
    data (an API is not a replayable log): make ``fn`` idempotent, or ask the API for data as
    of a time you pass in. ``clock`` is the wall clock in seconds (replace it in tests).
    """

    def __init__(
        self,
        fn: Callable[[], Any],
        interval: float,
        *,
        max_polls: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(self)
        if not callable(fn):
            raise TypeError(f"PollingSource: fn must be callable, got {fn!r}")
        if not interval > 0:
            raise ValueError(f"PollingSource: interval must be > 0 seconds, got {interval!r}")
        if max_polls is not None and max_polls < 0:
            raise ValueError(f"PollingSource: max_polls must be >= 0, got {max_polls!r}")
        self._fn = fn
        self._interval = float(interval)
        self._max = max_polls
        self._clock = clock

    def list_parts(self) -> list[Hashable]:
        """The single part, ``NoKey``."""
        return [NoKey]

    def build_part(self, part: Any, state: object | None) -> _PollingPart:
        """Start polling: at once on a fresh start, else at the snapshotted next slot."""
        if state is None:
            due, polls = self._clock(), 0
        else:
            st: dict[str, Any] = state  # type: ignore[assignment]
            due, polls = float(st["due"]), int(st["polls"])
        return _PollingPart(self._fn, self._interval, self._max, due, polls, self._clock)

    def __repr__(self) -> str:
        return f"PollingSource({self._fn!r}, {self._interval!r})"
