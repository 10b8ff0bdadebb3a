"""Counters and histograms users register from their own functions (see
:func:`malstrom.observe.counter` and :func:`malstrom.observe.histogram`).

A worker runs one operator at a time on its loop thread and notes which in ``CURRENT``
before it drains, polls or schedules it, so a metric used inside a user function is
labelled with the operator that called it.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

__all__ = [
    "CURRENT",
    "DEFAULT_BUCKETS",
    "LOOP_THREAD",
    "Counter",
    "Histogram",
    "counter",
    "histogram",
    "histograms",
    "reset",
    "snapshot",
]

CURRENT: list[str] = [""]
"""The operator the worker loop runs now ("" between operators)."""

LOOP_THREAD: list[int | None] = [None]
"""The thread that runs the worker loop (``threading.get_ident()``): CURRENT is its."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds of :func:`histogram`'s buckets unless told (Prometheus' defaults: seconds)."""

_lock = threading.Lock()
_counters: dict[tuple[str, str], Counter] = {}
_histograms: dict[tuple[str, str], Histogram] = {}
_bounds: dict[str, tuple[float, ...]] = {}  # histogram name -> its bucket bounds


class Counter:
    """A monotonically increasing count, per worker and operator."""

    __slots__ = ("description", "value")

    def __init__(self, description: str) -> None:
        self.value = 0.0
        self.description = description

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount!r})")
        self.value += amount


class Histogram:
    """A distribution of observed values, per worker and operator: how many fell at or below
    each bucket bound, their count and their sum."""

    __slots__ = ("bounds", "buckets", "count", "description", "sum")

    def __init__(self, description: str, bounds: tuple[float, ...]) -> None:
        self.description = description
        self.bounds = bounds
        #: Observations per bucket (not cumulative); the last one is above every bound.
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is >= it."""
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value


def _check_name(name: str, kind: str) -> None:
    ok = isinstance(name, str) and name and (name[0].isalpha() or name[0] == "_")
    if not ok or not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(
            f"{kind} name {name!r}: use letters, digits and '_' (a Prometheus metric name)"
        )


def counter(name: str, description: str = "") -> Counter:
    """The counter ``name`` of the operator running now (created on first use).

    Call it from a user function (``map``, ``stateful_map``, a sink...) and keep the result
    for the next call, or call it every time (a dict lookup). Its value is reported with the
    worker's heartbeat and served as ``malstrom_user_<name>_total{operator=...}``.
    """
    key = (CURRENT[0], name)
    c = _counters.get(key)
    if c is None:
        _check_name(name, "counter")
        with _lock:
            if any(n == name for _, n in _histograms):
                raise ValueError(f"counter {name!r}: the name is taken by a histogram")
            c = _counters.setdefault(key, Counter(description))
    return c


def histogram(
    name: str, description: str = "", buckets: Sequence[float] = DEFAULT_BUCKETS
) -> Histogram:
    """The histogram ``name`` of the operator running now (created on first use).

    ``buckets`` are the upper bounds of its buckets, increasing (default:
    :data:`DEFAULT_BUCKETS`, meant for seconds); every use of one name must give the same.
    Call ``.observe(value)`` on it from a user function; it is reported with the worker's
    heartbeat and served as the Prometheus histogram ``malstrom_user_<name>`` (``_bucket``,
    ``_sum``, ``_count``) labelled ``job``, ``worker``, ``operator``.
    """
    key = (CURRENT[0], name)
    h = _histograms.get(key)
    if h is None or (buckets is not DEFAULT_BUCKETS and tuple(buckets) != h.bounds):
        _check_name(name, "histogram")
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"histogram {name!r}: buckets must be finite numbers: {buckets!r}")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"histogram {name!r}: buckets must increase: {buckets!r}")
        with _lock:
            known = _bounds.setdefault(name, bounds)
            if known != bounds:
                raise ValueError(
                    f"histogram {name!r}: buckets {list(bounds)} differ from the "
                    f"{list(known)} it was first made with"
                )
            if any(n == name for _, n in _counters):
                raise ValueError(f"histogram {name!r}: the name is taken by a counter")
            h = _histograms.setdefault(key, Histogram(description, bounds))
    return h


def reset() -> None:
    """Set every counter and histogram back to zero (a worker starts a new job attempt:
    the coordinator counts its reports from zero). Objects users kept stay valid."""
    with _lock:
        for c in _counters.values():
            c.value = 0.0
        for h in _histograms.values():
            h.buckets = [0] * len(h.buckets)
            h.count = 0
            h.sum = 0.0


def snapshot() -> dict[str, list[tuple[str, float, str]]]:
    """Every counter's value: ``{name: [(operator, value, description), ...]}``."""
    out: dict[str, list[tuple[str, float, str]]] = {}
    for (op, name), c in list(_counters.items()):
        out.setdefault(name, []).append((op, c.value, c.description))
    return out


def histograms() -> dict[str, list[tuple[str, list[float], list[int], float, int, str]]]:
    """Every histogram: ``{name: [(operator, bounds, buckets, sum, count, description)]}``."""
    out: dict[str, list[tuple[str, list[float], list[int], float, int, str]]] = {}
    for (op, name), h in list(_histograms.items()):
        out.setdefault(name, []).append(
            (op, list(h.bounds), list(h.buckets), h.sum, h.count, h.description)
        )
    return out
