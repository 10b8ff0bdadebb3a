"""The distributor's router: split a batch's columns by the worker that owns each record.

Routing runs once per record on every worker of a scaled-out job, so it has a C
implementation (``malstrom.keyed._croute``, built by ``setup.py`` when a compiler is at hand)
and this pure-Python one, which gives identical results. :data:`split` is the C one when it
imports, unless the environment sets ``MALSTROM_PURE_PYTHON=1`` (to compare the two, or to
rule the extension out).

``split(route, keys, values, timestamps, cache, workers)``: ``route`` holds the key each
record is routed by (often ``keys`` itself), ``cache`` maps a route key to its owner and
``workers`` lists the distinct destinations, in the order parts come back. The result:

- ``None`` when a route key is not in ``cache``: the caller places the batch's keys (which
  runs the partitioner and reports its errors) and calls again;
- a worker id when every record goes to that worker (the caller passes the batch on as it
  is, no copy);
- otherwise ``[(worker, keys, values, timestamps), ...]``: the non-empty parts (lists, record
  order kept), in the order of ``workers``; ``[]`` for an empty batch.

An unhashable route key raises ``TypeError``; an owner that is not among ``workers``, or
columns of different lengths, ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from itertools import compress
from typing import Any

__all__ = ["NATIVE", "Parts", "split", "split_py"]

Parts = list[tuple[int, list[Any], list[Any], list[Any]]]
"""The parts of a batch that goes to more than one worker."""

#: ``_SELECT[w]``: a bytes.translate table mapping byte ``w`` to 1 and every other byte to 0.
_SELECT = [bytes(i == w for i in range(256)) for w in range(256)]


def split_py(
    route: Sequence[Any],
    keys: Sequence[Any],
    values: Sequence[Any],
    timestamps: Sequence[Any],
    cache: Mapping[Any, int],
    workers: Sequence[int],
) -> int | Parts | None:
    """The router in Python (the contract: the module's docstring)."""
    n = len(values)
    if len(route) != n or len(keys) != n or len(timestamps) != n:
        raise ValueError(
            f"split: columns of different lengths (route {len(route)}, keys {len(keys)}, "
            f"values {n}, timestamps {len(timestamps)})"
        )
    if not workers:
        raise ValueError("split: no destinations")
    try:
        owners = list(map(cache.__getitem__, route))  # every key seen before: C speed
    except KeyError:
        return None
    # Worker ids 0..255 (the usual case): owners as bytes, so counting and the 0/1 mask of
    # each destination run at C speed (bytes.translate) instead of a map() per record.
    try:
        codes: bytearray | None = bytearray(owners)
    except (ValueError, TypeError):
        codes = None
    if codes is not None:
        counts = [codes.count(w) if 0 <= w < 256 else 0 for w in workers]
    else:
        counts = [owners.count(w) for w in workers]
    if sum(counts) != n:
        stray = next(o for o in owners if o not in workers)
        raise ValueError(f"split: owner {stray!r} is not one of the destinations")
    if not n:
        return []
    parts: Parts = []
    for w, count in zip(workers, counts):
        if count == n:
            return w
        if not count:
            continue
        mask: Sequence[Any] = (
            codes.translate(_SELECT[w]) if codes is not None else list(map(w.__eq__, owners))
        )
        parts.append(
            (
                w,
                list(compress(keys, mask)),
                list(compress(values, mask)),
                list(compress(timestamps, mask)),
            )
        )
    return parts


def _select() -> tuple[Callable[..., int | Parts | None], bool]:
    if os.environ.get("MALSTROM_PURE_PYTHON") == "1":
        return split_py, False
    try:
        from malstrom.keyed._croute import split as native
    except ImportError:  # not built (no compiler at install time): same results, slower
        return split_py, False
    return native, True


# split: the router this process uses; NATIVE: whether it is the C one.
split, NATIVE = _select()
