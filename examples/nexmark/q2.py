"""Nexmark query 2: selection.

Which bids are for one of a fixed set of auctions, and at what price? The set is "every
123rd auction id" (the Flink-community suite's choice; Beam's original uses
``auction % 123 == 0`` too, the Nexmark paper a short list of ids).

SQL::

    SELECT auction, price
    FROM bid
    WHERE MOD(auction, 123) = 0;

Output: ``(auction, price)`` per selected bid.
"""

from __future__ import annotations

from functools import partial

from malstrom import Stream, StreamProvider

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Bid, Event

__all__ = ["AUCTION_SKIP", "build", "query"]

AUCTION_SKIP = 123


def selected(event: Event) -> tuple[int, int] | None:
    """``(auction, price)`` of a bid on an auction id divisible by 123, else None."""
    if type(event) is Bid and event.auction % AUCTION_SKIP == 0:
        return (event.auction, event.price)
    return None


def query(events: Stream) -> Stream:
    """One ``filter_map``."""
    return events.filter_map("select-bids", selected)


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> q2 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=10_000))).execute()
