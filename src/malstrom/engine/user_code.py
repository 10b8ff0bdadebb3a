"""Running user code inside operators: errors that name the operator and the record, and
C-speed maps over a batch that still say which record failed."""

from __future__ import annotations

from operator import length_hint
from typing import Any

from malstrom.engine.batch import Batch
from malstrom.errors import OperatorError
from malstrom.types import Record

__all__ = ["batch_error", "failed_index", "map_values", "user_error"]


def failed_index(seq: Any, it: Any) -> int | None:
    """Index of the element a C-level ``map(fn, it)`` over ``seq`` was processing when it raised."""
    try:
        i = len(seq) - length_hint(it, -1) - 1
    except TypeError:
        return None
    return i if 0 <= i < len(seq) else None


def user_error(op: str, exc: BaseException, record: Record | None = None) -> OperatorError:
    """Wrap an exception from user code; the caller raises it ``from exc``."""
    return OperatorError(op, f"{type(exc).__name__}: {exc}", record)


def map_values(op: str, fn: Any, batch: Batch) -> list[Any]:
    """``[fn(v) for v in batch.values]`` at C speed; a failure names the record it failed on."""
    it = iter(batch.values)
    try:
        out = list(map(fn, it))
    except Exception as e:
        raise batch_error(op, e, batch, it) from e
    if len(out) != len(batch.values):
        # A StopIteration from user code ends map() early instead of propagating.
        i = len(out)
        raise user_error(op, RuntimeError("raised StopIteration"), batch.record(i))
    return out


def batch_error(op: str, exc: BaseException, batch: Batch, it: Any) -> OperatorError:
    """Wrap an exception raised inside ``map(fn, it)`` over ``batch.values``."""
    i = failed_index(batch.values, it)
    return user_error(op, exc, batch.record(i) if i is not None else None)
