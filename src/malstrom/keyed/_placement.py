"""Key placement: which worker owns each key under one worker set.

A distributor routes every record by its key's owner, so owner lookups sit on the hot path.
:class:`KeyPlacement` keeps what makes them cheap together: the worker set, the default
partitioner's owner per key group (one table lookup per key instead of a rendezvous over
every worker) and a cache, so the partitioner runs once per distinct key. Lookups are batched
(:meth:`KeyPlacement.owners`: one call per batch, not one per record) and
:meth:`KeyPlacement.split` splits a batch's columns by owner in one pass (in C when the
extension is built: :mod:`malstrom.keyed._route`). A rescale builds the
placement of the new worker set and the distributor adopts it, cache and all, when the cycle
ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from malstrom._repr import short_repr
from malstrom.errors import OperatorError
from malstrom.keyed import _route
from malstrom.keyed.partitioners import group_table, key_group, rendezvous_select
from malstrom.types import Partitioner

__all__ = ["KeyPlacement", "place"]

CACHE_LIMIT = 500_000
"""Cached owners beyond which the cache starts over (keys of a long run are not kept forever)."""


def place(
    partitioner: Partitioner,
    key: Any,
    workers: Sequence[int],
    operator: str,
    by_group: Sequence[int] | None = None,
) -> int:
    """``partitioner(key, workers)`` (a table lookup when ``by_group`` holds the default
    partitioner's owner per key group), with errors that name the operator and the key."""
    try:
        w = by_group[key_group(key)] if by_group is not None else partitioner(key, workers)
    except Exception as e:
        raise OperatorError(operator, f"partitioner failed for key {short_repr(key)}: {e}") from e
    if w not in workers:
        raise OperatorError(
            operator,
            f"partitioner returned worker {w!r} for key {short_repr(key)}, "
            f"which is not one of the workers {list(workers)}",
        )
    return w


class KeyPlacement:
    """The owners of keys under the worker set ``workers``, seen from worker ``me``.

    ``remotes``: the other workers of the set."""

    __slots__ = (
        "_by_group",
        "_cache",
        "me",
        "operator",
        "partitioner",
        "remotes",
        "workers",
    )

    def __init__(
        self, partitioner: Partitioner, workers: Sequence[int], me: int, operator: str
    ) -> None:
        self.partitioner = partitioner
        self.workers = tuple(workers)
        self.me = me
        self.operator = operator
        self.remotes = [w for w in self.workers if w != me]
        default = partitioner is rendezvous_select and bool(self.workers)
        self._by_group = group_table(self.workers) if default else None
        self._cache: dict[Any, int] = {}

    def owner(self, key: Any) -> int:
        """The worker that owns ``key``."""
        cache = self._cache
        w = cache.get(key)
        if w is None:
            w = cache[key] = place(
                self.partitioner, key, self.workers, self.operator, self._by_group
            )
        return w

    def owners(self, keys: Sequence[Any]) -> list[int]:
        """The workers that own ``keys``, in order: one call per batch."""
        cache = self._cache
        try:
            return list(map(cache.__getitem__, keys))  # every key seen before: C speed
        except KeyError:
            pass
        except TypeError as e:
            raise OperatorError(self.operator, f"keys must be hashable: {e}") from e
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        partitioner, workers, operator, by_group = (
            self.partitioner,
            self.workers,
            self.operator,
            self._by_group,
        )
        for k in keys:
            if k not in cache:
                cache[k] = place(partitioner, k, workers, operator, by_group)
        return [cache[k] for k in keys]

    def split(
        self,
        route: Sequence[Any],
        keys: Sequence[Any],
        values: Sequence[Any],
        stamps: Sequence[Any],
    ) -> int | _route.Parts:
        """The columns split by the owner of each ``route`` key: a worker id when every record
        goes there, else the non-empty parts as ``(worker, keys, values, timestamps)`` in the
        order of :attr:`workers` (``[]`` for no records)."""
        split, cache, workers = _route.split, self._cache, self.workers
        try:
            parts = split(route, keys, values, stamps, cache, workers)
            if parts is None:  # a key not seen before: place the batch's keys, then again
                self.owners(route)
                parts = split(route, keys, values, stamps, cache, workers)
        except TypeError as e:
            raise OperatorError(self.operator, f"keys must be hashable: {e}") from e
        assert parts is not None  # owners() just placed every key
        return parts
