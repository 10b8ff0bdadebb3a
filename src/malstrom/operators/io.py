"""The operators that drive sources and sinks."""

from __future__ import annotations

from itertools import repeat
from typing import Any

from malstrom._errors import OperatorError
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators._util import user_error
from malstrom.runtime._engine import Barrier, Batch, BuildContext, Operator, make_record
from malstrom.sinks._protocols import RecordBatch, StatelessSinkImpl
from malstrom.sources._protocols import StatefulSource, StatelessSource
from malstrom.types import MAX

__all__ = ["BATCH_SIZE", "EmptyRootOp", "SourceOp", "StatefulSinkOp", "StatelessSinkOp"]

BATCH_SIZE = 2048
"""Records a source part may produce per poll: large enough to amortize per-batch costs."""


class EmptyRootOp(Operator):
    """The root of a stream that has no source: it ends at once."""

    is_source = True

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__("::empty")

    def poll(self) -> bool:
        if not self.done:
            self.emit_epoch(MAX)
            return True
        return False


class _Part:
    """A built partition and how to read it fast."""

    __slots__ = ("finished", "key", "part", "read")

    def __init__(self, key: Any, part: Any) -> None:
        self.key = key
        self.part = part
        self.finished = False
        cols = getattr(part, "_poll_columns", None)
        if cols is not None:
            self.read = cols
        elif hasattr(part, "poll_batch"):
            self.read = self._via_batch
        else:
            self.read = self._via_poll

    def _via_batch(self, n: int) -> tuple[Any, Any]:
        items = self.part.poll_batch(n)
        if not items:
            return (), ()
        return [i[0] for i in items], [i[1] for i in items]

    def _via_poll(self, n: int) -> tuple[Any, Any]:
        poll = self.part.poll
        values: list[Any] = []
        stamps: list[Any] = []
        for _ in range(n):
            item = poll()
            if item is None:
                break
            values.append(item[0])
            stamps.append(item[1])
        return values, stamps


class SourceOp(Operator):
    """Builds the parts this worker owns, polls them, emits ``Epoch(MAX)`` when all finish."""

    is_source = True

    def __init__(self, name: str, source: StatefulSource | StatelessSource, ctx: BuildContext):
        super().__init__(name)
        self.impl = source.impl
        self.stateful = source.stateful
        try:
            parts = list(self.impl.list_parts())
        except Exception as e:
            raise user_error(name, e) from e
        if len(set(parts)) != len(parts):
            raise OperatorError(name, f"list_parts() returned duplicate parts: {parts!r}")
        me, workers = ctx.worker_id, ctx.worker_set
        mine = [p for p in parts if rendezvous_select(p, workers) == me]
        restored = dict(ctx.restore_keyed(name, rendezvous_select)) if self.stateful else {}
        self.parts: list[_Part] = []
        for p in mine:
            try:
                if self.stateful:
                    built = self.impl.build_part(p, restored.get(p))  # type: ignore[call-arg]
                else:
                    built = self.impl.build_part(p)  # type: ignore[call-arg]
            except Exception as e:
                raise user_error(name, e) from e
            self.parts.append(_Part(p, built))

    def poll(self) -> bool:
        if self.done:
            return False
        produced = False
        active = 0
        for p in self.parts:
            if p.finished:
                continue
            try:
                values, stamps = p.read(BATCH_SIZE)
                finished = p.part.is_finished()
            except Exception as e:
                raise OperatorError(
                    self.name, f"source part {p.key!r} failed: {type(e).__name__}: {e}"
                ) from e
            if values:
                produced = True
                self.emit(Batch(list(repeat(p.key, len(values))), values, stamps))
            if finished:
                p.finished = True
            else:
                active += 1
        if not active:
            self.emit_epoch(MAX)
            return True
        return produced

    def snapshot(self, writer: Any) -> None:
        if self.stateful:
            states = {}
            for p in self.parts:
                try:
                    states[p.key] = p.part.snapshot()
                except Exception as e:
                    raise user_error(self.name, e) from e
            writer.put_keyed(self.name, states)


class StatelessSinkOp(Operator):
    def __init__(self, name: str, impl: StatelessSinkImpl) -> None:
        super().__init__(name)
        self.impl = impl
        self.batch_fn = getattr(impl, "sink_batch", None)

    def on_batch(self, batch: Batch, port: int) -> None:
        rec = None
        try:
            if self.batch_fn is not None:
                self.batch_fn(RecordBatch(batch.keys, batch.values, batch.timestamps))
            else:
                sink = self.impl.sink
                for rec in batch.iter_records():
                    sink(rec)
        except Exception as e:
            raise user_error(self.name, e, rec) from e

    def on_epoch(self, ts: Any) -> None:
        if ts is MAX:
            self.done = True


class StatefulSinkOp(Operator):
    """Routes each record to its part (``assign_part(key)``); parts snapshot and restore."""

    def __init__(self, name: str, impl: Any, ctx: BuildContext) -> None:
        super().__init__(name)
        self.impl = impl
        self.parts: dict[Any, Any] = {}
        self._assigned: dict[Any, Any] = {}
        # Restore eagerly, so a part can roll back output written after its snapshot even if
        # no record for it ever arrives again.
        for part, state in ctx.restore_keyed(name, rendezvous_select):
            self.parts[part] = self._build(part, state)

    def _build(self, part: Any, state: Any) -> Any:
        try:
            return self.impl.build_part(part, state)
        except Exception as e:
            raise OperatorError(
                self.name, f"building sink part {part!r} failed: {type(e).__name__}: {e}"
            ) from e

    def on_batch(self, batch: Batch, port: int) -> None:
        parts = self.parts
        assigned = self._assigned
        assign = self.impl.assign_part
        k = v = t = None
        try:
            for k, v, t in zip(batch.keys, batch.values, batch.timestamps):
                part = assigned.get(k)
                if part is None:
                    part = assigned[k] = assign(k)
                p = parts.get(part)
                if p is None:
                    p = parts[part] = self._build(part, None)
                p.sink(make_record((k, v, t)))
        except OperatorError:
            raise
        except Exception as e:
            raise user_error(self.name, e, make_record((k, v, t))) from e
        if len(assigned) > 100_000:
            assigned.clear()

    def on_epoch(self, ts: Any) -> None:
        if ts is MAX:
            self.done = True

    def on_barrier(self, barrier: Barrier) -> None:
        states = {}
        for key, p in self.parts.items():
            try:
                states[key] = p.snapshot()
            except Exception as e:
                raise user_error(self.name, e) from e
        barrier.writer.put_keyed(self.name, states)
        self.forward(barrier)

    def on_committed(self, version: int) -> None:
        for p in self.parts.values():
            commit = getattr(p, "commit", None)
            if commit is not None:
                try:
                    commit(version)
                except Exception as e:
                    raise user_error(self.name, e) from e
