"""Which worker reads each part of a source whose parts are fixed when the job starts.

Rendezvous hashing per part (what keys get) spreads a handful of parts badly: 4 parts land
3:1 on 2 workers, 16 parts 7:5:4 on 3, so the busiest worker sets the pace and an added
worker adds little. Parts are few and every worker lists the same ones, so their owners can
be dealt out evenly instead: :func:`part_owners` gives every worker ``n // w`` or
``n // w + 1`` parts, and stays close to rendezvous so a rescale moves few parts.

Sources that grow while they run (``relist_interval``) keep plain rendezvous per part: the
even deal depends on the whole list, and workers learn new parts at different moments.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from malstrom.keyed.partitioners import _M64, _mix, key_group, stable_hash

__all__ = ["part_owners"]


def _ranking(part: Hashable, workers: Sequence[int]) -> list[int]:
    """``workers`` in the part's rendezvous order: first the one rendezvous_select picks."""
    g = _mix(key_group(part) + 0x9E3779B97F4A7C15)
    return sorted(workers, key=lambda w: _mix(g ^ (w * 0xD6E8FEB86659FD93 & _M64)), reverse=True)


def _order(t: tuple[int, str, Hashable]) -> tuple[int, str]:
    return t[0], t[1]


def part_owners(parts: Sequence[Hashable], workers: Sequence[int]) -> dict[Hashable, int]:
    """Every part's worker: each worker gets ``len(parts) // len(workers)`` parts or one more.

    Bounded-load rendezvous: parts are dealt in the order of their stable hashes, each to the
    first worker in its rendezvous order (the order :func:`rendezvous_select` picks from) that
    still has room: a lone part goes where rendezvous_select puts it. The same parts and
    workers give the same owners in every process, whatever order they are listed in.
    """
    if not workers:
        raise ValueError("part_owners needs at least one worker")
    low, extra = divmod(len(parts), len(workers))
    load = dict.fromkeys(workers, 0)
    full = 0  # workers holding low + 1 parts: at most `extra` of them
    owners: dict[Hashable, int] = {}
    for _, _, part in sorted(((stable_hash(p), repr(p), p) for p in parts), key=_order):
        for w in _ranking(part, workers):
            n = load[w]
            if n < low or (n == low and full < extra):
                if n == low:
                    full += 1
                load[w] = n + 1
                owners[part] = w
                break
    return owners
