"""The :class:`Output` that custom operators emit records through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from malstrom.engine.batch import Batch

__all__ = ["Output"]

VO = TypeVar("VO")
_UNSET: Any = object()


class Output(Generic[VO]):
    """Collects what a custom operator emits; the framework ships it on as one batch.

    ``emit(value, key=..., timestamp=...)``: in ``on_data`` key and timestamp default to the
    current record's; in ``on_epoch`` the timestamp defaults to the epoch (a stateful operator
    must name the key); in ``on_schedule`` both are required. In ``on_timer`` they default to
    the timer's key and time.

    ``set_timer(timestamp, key=...)``: in a ``stateful_op`` whose logic defines ``on_timer``,
    call ``on_timer`` for the key once an epoch reaches ``timestamp`` (see
    :class:`~malstrom.StatefulLogic`).
    """

    __slots__ = ("_key", "_keys", "_operator", "_set_timer", "_timestamps", "_ts", "_values")

    def __init__(self, operator: str) -> None:
        self._operator = operator
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._timestamps: list[Any] = []
        self._key: Any = _UNSET
        self._ts: Any = _UNSET
        self._set_timer: Any = None  # (key, timestamp) -> None, where timers are kept

    def emit(self, value: VO, key: Any = _UNSET, timestamp: Any = _UNSET) -> None:
        """Send ``value`` downstream."""
        if key is _UNSET:
            key = self._key
            if key is _UNSET:
                raise TypeError(
                    f"operator {self._operator!r}: Output.emit needs key= here "
                    "(there is no current record to take it from)"
                )
        if timestamp is _UNSET:
            timestamp = self._ts
            if timestamp is _UNSET:
                raise TypeError(
                    f"operator {self._operator!r}: Output.emit needs timestamp= here "
                    "(there is no current record or epoch to take it from)"
                )
        self._keys.append(key)
        self._values.append(value)
        self._timestamps.append(timestamp)

    def set_timer(self, timestamp: Any, key: Any = _UNSET) -> None:
        """Have ``on_timer`` called for ``key`` (default: the current record's or timer's key)
        once an epoch reaches ``timestamp``. A key's timers are part of its state: they are
        snapshotted and move with it on a rescale. Setting one twice sets it once."""
        add = self._set_timer
        if add is None:
            raise TypeError(
                f"operator {self._operator!r}: Output.set_timer needs a stateful_op whose "
                "logic defines on_timer"
            )
        if key is _UNSET:
            key = self._key
            if key is _UNSET:
                raise TypeError(
                    f"operator {self._operator!r}: Output.set_timer needs key= here "
                    "(there is no current record or timer to take it from)"
                )
        add(key, timestamp)

    # ----- the operator's side (operators in malstrom.operators call these; users do not) ------
    def _bind(self, key: Any = _UNSET, timestamp: Any = _UNSET) -> None:
        """The key and timestamp ``emit`` defaults to from now on (unset: it must be given)."""
        self._key = key
        self._ts = timestamp

    def _flush(self, emit: Callable[[Batch], None]) -> None:
        """Pass what was emitted since the last flush to ``emit`` as one batch (if any)."""
        if not self._values:
            return
        b = Batch(self._keys, self._values, self._timestamps)
        self._keys, self._values, self._timestamps = [], [], []
        emit(b)
