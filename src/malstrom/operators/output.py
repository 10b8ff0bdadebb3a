"""The :class:`Output` that custom operators emit records through."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from malstrom.engine.batch import Batch

__all__ = ["Output"]

VO = TypeVar("VO")
_UNSET: Any = object()


class Output(Generic[VO]):
    """Collects what a custom operator emits; the framework ships it on as one batch.

    ``emit(value, key=..., timestamp=...)``: in ``on_data`` key and timestamp default to the
    current record's; in ``on_epoch`` the timestamp defaults to the epoch (a stateful operator
    must name the key); in ``on_schedule`` both are required.
    """

    __slots__ = ("_key", "_keys", "_operator", "_timestamps", "_ts", "_values")

    def __init__(self, operator: str) -> None:
        self._operator = operator
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._timestamps: list[Any] = []
        self._key: Any = _UNSET
        self._ts: Any = _UNSET

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

    # ----- the operator's side (operators in malstrom.operators call these; users do not) ------
    def _bind(self, key: Any = _UNSET, timestamp: Any = _UNSET) -> None:
        """The key and timestamp ``emit`` defaults to from now on (unset: it must be given)."""
        self._key = key
        self._ts = timestamp

    def _take(self) -> Batch | None:
        """What was emitted since the last take, as one batch (None if nothing)."""
        if not self._values:
            return None
        b = Batch(self._keys, self._values, self._timestamps)
        self._keys, self._values, self._timestamps = [], [], []
        return b
