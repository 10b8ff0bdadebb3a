"""A job whose wiring is wrong (an operator name used twice): it must fail once, before any
worker process starts, never be retried."""

from __future__ import annotations

from typing import Any

from malstrom.sources import IterSource


def build(provider: Any) -> None:
    s = provider.new_stream().source("numbers", IterSource(range(10)))
    s.map("twice", lambda v: v).map("twice", lambda v: v)
