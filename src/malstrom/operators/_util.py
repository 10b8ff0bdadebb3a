"""Shared helpers for operators: user-error wrapping and the Output collector."""

from __future__ import annotations

from operator import length_hint
from typing import Any

from malstrom._errors import OperatorError
from malstrom.runtime._engine import Batch
from malstrom.types import Record

__all__ = ["failed_index", "user_error"]


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


def batch_error(op: str, exc: BaseException, batch: Batch, it: Any) -> OperatorError:
    """Wrap an exception raised inside ``map(fn, it)`` over ``batch.values``."""
    i = failed_index(batch.values, it)
    return user_error(op, exc, batch.record(i) if i is not None else None)
