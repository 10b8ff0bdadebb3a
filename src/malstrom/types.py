"""Records, keys and time: the values every stream carries.

A record is ``Record(key, value, timestamp)``. Unkeyed streams use the :data:`NoKey` key.
Timestamps may be any totally ordered values (ints, floats, datetimes, strings, tuples...);
:data:`MAX` and :data:`MIN` compare above and below all of them, and ``Epoch(MAX)`` ends a stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

__all__ = ["MAX", "MIN", "NoKey", "Partitioner", "Record", "WorkerId"]

WorkerId = int
"""Workers are numbered ``0, 1, 2, ...`` within a job."""

Partitioner = Callable[[Any, Sequence[int]], int]
"""``partitioner(key, workers)``: the worker of ``workers`` that owns ``key`` (its owner);
deterministic, the same in every process."""


class _NoKeyType:
    """Type of :data:`NoKey`, the single key of unkeyed streams."""

    __slots__ = ()
    _instance: _NoKeyType | None = None

    def __new__(cls) -> _NoKeyType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NoKey"

    def __reduce__(self) -> str:
        return "NoKey"

    def __hash__(self) -> int:
        return 0x6E6F6B6579  # fixed, so dict order is the same in every process

    def __eq__(self, other: object) -> bool:
        return other is self


NoKey: Final = _NoKeyType()
"""The key of records on an unkeyed stream (sources key records by part; IterSource uses NoKey)."""


class _Extreme:
    """A time sentinel that compares above (MAX) or below (MIN) every timestamp."""

    __slots__ = ("_name", "_sign")

    def __init__(self, name: str, sign: int) -> None:
        self._name = name
        self._sign = sign

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name

    def __hash__(self) -> int:
        return hash(self._name)

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def __lt__(self, other: object) -> bool:
        return self._sign < 0 and other is not self

    def __le__(self, other: object) -> bool:
        return self._sign < 0 or other is self

    def __gt__(self, other: object) -> bool:
        return self._sign > 0 and other is not self

    def __ge__(self, other: object) -> bool:
        return self._sign > 0 or other is self

    # Arithmetic saturates: MAX - bound is still MAX, so out-of-orderness bounds and
    # window ends computed from MAX stay MAX.
    def __add__(self, other: Any) -> _Extreme:
        return self

    __radd__ = __add__

    def __sub__(self, other: Any) -> _Extreme:
        return self

    def __rsub__(self, other: Any) -> _Extreme:
        return MIN if self is MAX else MAX


MAX: Final = _Extreme("MAX", 1)
"""Greater than every timestamp. ``Epoch(MAX)`` marks the end of a stream."""

MIN: Final = _Extreme("MIN", -1)
"""Smaller than every timestamp."""


class Record(NamedTuple):
    """One element of a stream: a key, a value and an event-time timestamp."""

    key: Any
    value: Any
    timestamp: Any
