"""Stable key hashing and the default partitioner.

Python's ``hash()`` is randomized per process, so routing uses its own 64-bit hash of a
canonical byte encoding of the key. Keys hash into :data:`KEY_GROUPS` groups; rendezvous
(highest-random-weight) hashing assigns groups to workers. Snapshots store keyed state by
group, so a worker restoring at another parallelism reads only the groups it now owns.
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import msgpack
import xxhash

from malstrom.types import NoKey, Partitioner

__all__ = [
    "KEY_GROUPS",
    "Partitioner",
    "group_owner",
    "group_table",
    "key_group",
    "rendezvous_select",
    "stable_hash",
]

KEY_GROUPS = 1024
"""Number of key groups: the unit in which keyed state is stored and moved."""

_M64 = 0xFFFFFFFFFFFFFFFF
_xxh = xxhash.xxh3_64_intdigest


def _default(obj: Any) -> Any:
    if obj is NoKey:
        return msgpack.ExtType(1, b"")
    if isinstance(obj, int):  # beyond msgpack's 64-bit range (e.g. inside a tuple)
        return msgpack.ExtType(4, str(obj).encode())
    if isinstance(obj, datetime.datetime | datetime.date | datetime.time):
        return msgpack.ExtType(2, obj.isoformat().encode())
    if isinstance(obj, frozenset | set):
        return msgpack.ExtType(3, b"".join(sorted(_encode(x) for x in obj)))
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise TypeError(
        f"cannot hash a key of type {type(obj).__name__} stably across processes; "
        "use str, int, float, bool, bytes, None, datetime or tuples of these as keys"
    )


def _encode(key: Any) -> bytes:
    return msgpack.packb(key, default=_default, use_bin_type=True, strict_types=False)


def stable_hash(key: Hashable) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and Python version."""
    t = type(key)
    if t is str:
        return _xxh(b"s" + key.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
    if t is int or t is bool:
        # True == 1 and False == 0 in a dict, so they must land on the same worker.
        return _xxh(b"i" + str(int(key)).encode())  # type: ignore[call-overload]
    if t is float and key.is_integer():  # type: ignore[attr-defined]
        # 1.0 == 1 in a dict, so both must land on the same worker.
        return _xxh(b"i" + str(int(key)).encode())  # type: ignore[call-overload]
    return _xxh(b"m" + _encode(key))


def key_group(key: Hashable) -> int:
    """The key group of ``key`` (``0 <= group < KEY_GROUPS``)."""
    return stable_hash(key) % KEY_GROUPS


def _mix(x: int) -> int:
    # splitmix64 finalizer: a strong, stable bit mixer.
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def group_owner(group: int, workers: Sequence[int]) -> int:
    """The worker that owns key group ``group`` under rendezvous hashing."""
    if not workers:
        raise ValueError("rendezvous_select needs at least one worker")
    best = -1
    owner = workers[0]
    g = _mix(group + 0x9E3779B97F4A7C15)
    for w in workers:
        score = _mix(g ^ (w * 0xD6E8FEB86659FD93 & _M64))
        if score > best:
            best = score
            owner = w
    return owner


@lru_cache(maxsize=8)
def group_table(workers: tuple[int, ...]) -> tuple[int, ...]:
    """The owner of every key group under rendezvous hashing over ``workers``.

    Shared by every distributor of a process during a rescale (one table per worker set,
    not one per distributor: a job has one distributor per ``key_distribute`` and per
    stateful sink)."""
    return tuple(group_owner(g, workers) for g in range(KEY_GROUPS))


def rendezvous_select(key: Hashable, workers: Sequence[int]) -> int:
    """The default partitioner: rendezvous hashing of the key's group over ``workers``.

    Deterministic across processes and versions. When the worker set changes, only keys whose
    group's winner changed move: adding a worker moves about ``1/n`` of the keys, all to it.
    """
    return group_owner(key_group(key), workers)
