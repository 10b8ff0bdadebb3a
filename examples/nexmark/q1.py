"""Nexmark query 1: currency conversion.

What are the bid prices in euros? Every bid, its price (US cents) converted to euro cents at
a fixed rate of 0.908.

SQL::

    SELECT auction, bidder, 0.908 * price AS price, date_time
    FROM bid;

Output: ``(auction, bidder, price_eur, date_time)`` per bid, ``price_eur`` a float
(``price * 0.908``, one IEEE double multiplication, as SQL's ``price::DOUBLE * 0.908``).
"""

from __future__ import annotations

from functools import partial

from malstrom import Stream, StreamProvider

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Bid, Event

__all__ = ["DOLLAR_TO_EURO", "build", "query"]

DOLLAR_TO_EURO = 0.908


def in_euros(event: Event) -> tuple[int, int, float, int] | None:
    """A bid as ``(auction, bidder, price in euro cents, date_time)``; None for other events."""
    if type(event) is not Bid:
        return None
    return (event.auction, event.bidder, event.price * DOLLAR_TO_EURO, event.date_time)


def query(events: Stream) -> Stream:
    """One ``filter_map``: bids only, converted."""
    return events.filter_map("bids-in-euros", in_euros)


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> q1 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=100))).execute()
