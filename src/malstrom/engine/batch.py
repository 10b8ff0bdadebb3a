"""Records in columns: :class:`Batch` (what travels between operators) and :func:`make_record`.

Records travel as columnar batches (three parallel sequences) so that operators run C-speed
loops (``map``, ``itertools.compress``) instead of building an object per record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import compress, repeat
from typing import Any

from malstrom.engine.packing import pack, unpack_column
from malstrom.types import Record

__all__ = ["Batch", "make_record"]

make_record: Callable[[tuple[Any, Any, Any]], Record] = partial(tuple.__new__, Record)
"""Build a Record from a ``(key, value, timestamp)`` tuple at C speed."""


class Batch:
    """A run of records in columns. Batches are never mutated once emitted (they may be shared)."""

    __slots__ = ("keys", "timestamps", "values")

    def __init__(self, keys: Sequence[Any], values: Sequence[Any], timestamps: Sequence[Any]):
        self.keys = keys
        self.values = values
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.values)

    def __reduce__(self) -> tuple[Any, ...]:
        # A batch is pickled when it crosses to another worker: plain values skip pickle's
        # memo, records that are dicts or instances of user classes travel as field columns,
        # a column holding the keys refers to them, and one holding a single object (the
        # timestamps, often) travels once (see malstrom.engine.packing).
        keys = self.keys
        return (_from_wire, (pack(keys), pack(self.values, keys), pack(self.timestamps)))

    def records(self) -> list[Record]:
        return list(map(make_record, zip(self.keys, self.values, self.timestamps)))

    def iter_records(self) -> Iterator[Record]:
        """Records one at a time: each is freed before the next is made (no GC pressure)."""
        return map(make_record, zip(self.keys, self.values, self.timestamps))

    def record(self, i: int) -> Record:
        return Record(self.keys[i], self.values[i], self.timestamps[i])

    def select(self, mask: Iterable[Any]) -> Batch:
        """The records where ``mask`` is true (``itertools.compress`` on each column)."""
        if not isinstance(mask, list | bytes):
            mask = list(mask)
        return Batch(
            list(compress(self.keys, mask)),
            list(compress(self.values, mask)),
            list(compress(self.timestamps, mask)),
        )

    def take(self, indices: Sequence[int]) -> Batch:
        """The records at ``indices``, in that order."""
        keys, values, stamps = self.keys, self.values, self.timestamps
        return Batch(
            [keys[i] for i in indices], [values[i] for i in indices], [stamps[i] for i in indices]
        )

    @staticmethod
    def same_key(key: Any, values: Sequence[Any], timestamps: Sequence[Any]) -> Batch:
        return Batch(list(repeat(key, len(values))), values, timestamps)


def _from_wire(keys: Any, values: Any, timestamps: Any) -> Batch:
    """A pickled :class:`Batch`, rebuilt (its columns unpacked)."""
    keys = unpack_column(keys, keys=True)
    return Batch(keys, unpack_column(values, keys), unpack_column(timestamps))
