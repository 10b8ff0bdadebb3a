"""Event time: assign_timestamps, generate_epochs and limit_out_of_orderness.

Epochs are generated per record but emitted once per input batch: when a larger epoch follows
in the same batch the smaller one is skipped (as every emitted epoch is still a valid promise).
Records are classified on time / late against the epoch as it stood just before each record,
exactly as if every epoch had been emitted.

A generator after ``key_distribute`` sees a rescale: while keys move to this worker, their
records are held back and arrive after newer records of the keys that stayed. So from the
rescale's start (``Interrogate``) until those held records have passed (``Released``) the
generator is frozen: it classifies every record against the epoch it had emitted when the
rescale started (raised only by upstream epochs) and emits the epoch it generated meanwhile
once the held records are through. A rescale thus turns no record late that would be on time
had the keys stayed where they were (for input whose disorder is within the bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from malstrom._repr import short_repr
from malstrom.engine.batch import Batch
from malstrom.engine.context import BuildContext
from malstrom.engine.messages import IDLE
from malstrom.engine.operator import Operator
from malstrom.engine.user_code import map_values, user_error
from malstrom.errors import OperatorError
from malstrom.operators.windows import restore_frontier
from malstrom.types import MAX, MIN, Record

__all__ = ["AssignTimestampsOp", "GenerateEpochsOp"]


class AssignTimestampsOp(Operator):
    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self.fn = fn

    def on_batch(self, batch: Batch, port: int) -> None:
        stamps = map_values(self.name, self.fn, batch)
        self.emit(Batch(batch.keys, batch.values, stamps))

    def on_epoch(self, ts: Any) -> None:
        # Upstream epochs speak of the old timestamps; only the end of stream carries over,
        # and MIN (it promises nothing in any time domain: an idle input is active again).
        if ts is MAX or ts is MIN:
            self.emit_epoch(ts)


class _GeneratorFailed(Exception):
    """The user's epoch generator raised (told apart from comparison errors)."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause


class GenerateEpochsOp(Operator):
    """Ports: 0 = on time, 1 = late. ``bound`` set = limit_out_of_orderness fast path."""

    def __init__(
        self,
        name: str,
        gen: Callable[[Record, Any], Any] | None,
        bound: Any,
        ctx: BuildContext,
        idle_timeout: float | None = None,
    ) -> None:
        super().__init__(name)
        self.gen = gen
        self.bound = bound
        self.set_ports(2)
        self.idle_timeout = idle_timeout
        self.wants_schedule = idle_timeout is not None
        self._last_record = time.monotonic()
        self._idle = False  # idle by its own timeout
        # The last epoch out was IDLE (its own timeout's, or its input's): downstream merges
        # leave this worker out until an epoch brings it back, so none may follow records.
        self._out_idle = False
        self._moving: int | None = None  # the rescale version while frozen
        self._gathered: Any = None  # the epoch generated while frozen (None: none)
        # At another parallelism: the most conservative promise any worker made.
        self.prev: Any = restore_frontier(ctx, name)

    def snapshot(self, writer: Any) -> None:
        writer.put_worker(self.name, self.prev)

    def schedule(self) -> None:
        """Mark the output idle once no record came for ``idle_timeout`` seconds."""
        if self._idle or self.ended or self.idle_timeout is None:
            return
        if time.monotonic() - self._last_record >= self.idle_timeout:
            self._idle = True
            self.emit_epoch(IDLE)

    def wake_at(self, now: float) -> float | None:
        if self._idle or self.ended or self.idle_timeout is None:
            return None  # records arriving wake the worker
        return self._last_record + self.idle_timeout

    def keys_moving(self, version: int) -> None:
        if self._moving is None:
            self._moving = version
            self._gathered = None

    def keys_moved(self, version: int) -> None:
        if self._moving is None or version < self._moving:
            return
        self._moving = None
        g, self._gathered = self._gathered, None
        prev = self.prev
        if g is not None and (prev is None or g > prev):
            self.prev = g
            self.emit_epoch(g)

    def rescale_done(self, version: int) -> bool:
        return self._moving is None

    def backpressured(self) -> None:
        """Time the worker spends holding its intakes does not count as an idle input: else
        other workers' event time would run ahead of the records held back here."""
        if not self._idle:
            self._last_record = time.monotonic()

    def emit_epoch(self, ts: Any) -> None:
        self._out_idle = ts is IDLE
        super().emit_epoch(ts)

    def _wake_output(self) -> None:
        """Active again after an idle output: the epoch it stood at (MIN if none) first, so
        that merges downstream count this worker again before its records arrive."""
        self.emit_epoch(self.prev if self.prev is not None else MIN)

    def on_batch(self, batch: Batch, port: int) -> None:
        if self.wants_schedule:
            self._last_record = time.monotonic()
            self._idle = False
        if self._out_idle:
            self._wake_output()
        if self._moving is not None:
            self._on_batch_frozen(batch)
            return
        prev = start = self.prev
        mask: list[bool] = []
        append = mask.append
        i = 0
        try:
            if self.gen is None:
                bound = self.bound
                for t in batch.timestamps:
                    append(prev is None or t > prev)
                    c = t - bound
                    if prev is None or c > prev:
                        prev = c
                    i += 1
            else:
                gen = self.gen
                for rec in batch.iter_records():
                    append(prev is None or rec[2] > prev)
                    try:
                        c = gen(rec, prev)
                    except Exception as e:
                        raise _GeneratorFailed(e) from e
                    if c is not None and (prev is None or c > prev):
                        prev = c
                    i += 1
        except Exception as e:
            cause = e.cause if isinstance(e, _GeneratorFailed) else e
            raise self._failure(e, batch, i, prev) from cause
        self._emit_split(batch, mask)
        if prev is not start:
            self.prev = prev
            self.emit_epoch(prev)

    def _on_batch_frozen(self, batch: Batch) -> None:
        """During a rescale: classify against the frozen epoch, gather the next one."""
        f = self.prev
        g = self._gathered
        mask: list[bool] = []
        append = mask.append
        i = 0
        try:
            if self.gen is None:
                bound = self.bound
                for t in batch.timestamps:
                    append(f is None or t > f)
                    c = t - bound
                    if g is None or c > g:
                        g = c
                    i += 1
            else:
                gen = self.gen
                for rec in batch.iter_records():
                    append(f is None or rec[2] > f)
                    cur = f if g is None or (f is not None and f > g) else g
                    try:
                        c = gen(rec, cur)
                    except Exception as e:
                        raise _GeneratorFailed(e) from e
                    if c is not None and (g is None or c > g):
                        g = c
                    i += 1
        except Exception as e:
            cause = e.cause if isinstance(e, _GeneratorFailed) else e
            raise self._failure(e, batch, i, f) from cause
        self._gathered = g
        self._emit_split(batch, mask)

    def _emit_split(self, batch: Batch, mask: list[bool]) -> None:
        """On-time records (``mask``) to output 0, late ones to output 1."""
        if all(mask):
            self.emit_to(0, batch)
        else:
            self.emit_to(0, batch.select(mask))
            self.emit_to(1, batch.select([not m for m in mask]))

    def _failure(self, e: Exception, batch: Batch, i: int, epoch: Any) -> Exception:
        """The error to raise for record ``i`` of ``batch``, compared against ``epoch``."""
        if isinstance(e, _GeneratorFailed):
            return user_error(self.name, e.cause, batch.record(i))
        if isinstance(e, TypeError):
            return OperatorError(
                self.name,
                f"incomparable timestamps: {short_repr(batch.timestamps[i])} vs epoch "
                f"{short_repr(epoch)} ({e})",
                batch.record(i),
            )
        return user_error(self.name, e, batch.record(i))

    def on_epoch(self, ts: Any) -> None:
        prev = self.prev
        if prev is None or ts > prev:
            self.prev = ts
            self.emit_epoch(ts)
        elif self._out_idle:
            # The input is active again (MIN after IDLE, say: a source took over a moved
            # part) but promises less than this generator did: its own epoch says so.
            self._wake_output()
