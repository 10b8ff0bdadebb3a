"""Counters users register from their own functions (see :func:`malstrom.observe.counter`).

A worker runs one operator at a time on its loop thread; the instrumented ``drain``/``poll``
note which (``CURRENT``), so a counter incremented inside a user function is labelled with
the operator that called it.
"""

from __future__ import annotations

import threading

__all__ = ["CURRENT", "Counter", "counter", "snapshot"]

CURRENT: list[str] = [""]
"""The operator the worker loop runs now (set by the instrumented drain/poll)."""

_lock = threading.Lock()
_counters: dict[tuple[str, str], Counter] = {}


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


def _check_name(name: str) -> None:
    ok = isinstance(name, str) and name and (name[0].isalpha() or name[0] == "_")
    if not ok or not all(ch.isalnum() or ch == "_" for ch in name):
        raise ValueError(
            f"counter name {name!r}: use letters, digits and '_' (a Prometheus metric name)"
        )


def counter(name: str, description: str = "") -> Counter:
    """The counter ``name`` of the operator running now (created on first use).

    Call it from a user function (``map``, ``stateful_map``, a sink...) and keep the result
    for the next call, or call it every time (a dict lookup). Its value is reported with the
    worker's heartbeat and served as ``malstrom_user_<name>_total{operator=...}``.
    """
    _check_name(name)
    key = (CURRENT[0], name)
    c = _counters.get(key)
    if c is None:
        with _lock:
            c = _counters.setdefault(key, Counter(description))
    return c


def snapshot() -> dict[str, list[tuple[str, float, str]]]:
    """Every counter's value: ``{name: [(operator, value, description), ...]}``."""
    out: dict[str, list[tuple[str, float, str]]] = {}
    for (op, name), c in list(_counters.items()):
        out.setdefault(name, []).append((op, c.value, c.description))
    return out
