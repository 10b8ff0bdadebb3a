"""Nexmark query 4: average closing price per category.

What is the average winning price of the auctions of each category? An auction's winning
price is its highest bid placed while it was open, ``date_time <= bid.date_time <=
expires``; auctions without such a bid have no winner. (Beam's version also requires the
price to reach the reserve; this one follows the Flink-community SQL, which does not.)

SQL::

    SELECT Q.category, AVG(Q.final) AS average, COUNT(*) AS auctions
    FROM (
        SELECT A.id, A.category, MAX(B.price) AS final
        FROM auction AS A INNER JOIN bid AS B ON A.id = B.auction
        WHERE B.date_time BETWEEN A.date_time AND A.expires
        GROUP BY A.id, A.category
    ) AS Q
    GROUP BY Q.category;

Dataflow:

1. auctions, and bids cut down to ``(auction, date_time, price)`` tuples (only what the
   query needs crosses processes and waits in state) -> ``key_distribute`` by
   auction id -> ``stateful_op`` (:class:`WinningBid`): an auction's state holds its
   lifetime, category, seller and best price so far, and an event-time timer at
   ``expires``. When an epoch reaches it no bid of its lifetime can still come, so the
   auction closes: it emits a :data:`Winner` ``(category, price, seller, auction, expires)``
   for its winning bid (timestamp = ``expires``; auctions closed by one epoch in order of
   ``expires``) and its state is deleted. Bids that arrive before their auction are kept
   until the epoch passes the newest of them: after that, any auction still to come starts
   later than all of them, so none can count. One timer serves them: set at the first early
   bid, it moves to the newest when it fires (a timer per early bid cost a heap push and a
   firing each, and at 2 workers, where an auction crosses to its owner while its bids are
   read where they are generated, a third of the bids or more come early). Bids for an
   auction that has already closed take the same path: its state is gone, and they are
   dropped a little later.
2. winning bids -> ``key_distribute`` by category -> ``stateful_map``: a running sum and
   count per category; every closed auction updates its category's average.

Output: ``(category, average, auctions)`` after every closed auction with a winner: the
category's average winning price (``total / auctions``, a float) over the ``auctions``
auctions closed so far. The last update of a category (the most auctions) is the SQL row.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from malstrom import Output, Record, StatefulLogic, Stream, StreamProvider

from .common import ALIGNMENT, DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Auction, Bid, Event

__all__ = ["Winner", "WinningBid", "build", "query", "winning_bids"]

# State of an auction id in WinningBid, a list:
#   [OPEN, date_time, expires, category, best price or None, seller]  the auction has been seen
#   [EARLY, newest date_time, [(date_time, price), ...]]       bids seen before their auction
OPEN = 0
EARLY = 1


BidTuple = tuple[int, int, int]  # (auction, date_time, price)
Winner = tuple[int, int, int, int, int]
"""An auction's winning bid: ``(category, price, seller, auction, expires)``."""


def auction_or_bid(event: Event) -> Auction | BidTuple | None:
    """Auctions as they are, bids as ``(auction, date_time, price)``; None for people."""
    if type(event) is Bid:
        return (event.auction, event.date_time, event.price)
    return event if type(event) is Auction else None


def auction_id(item: Auction | BidTuple) -> int:
    """The auction an auction or a bid is about."""
    return item.id if type(item) is Auction else item[0]  # type: ignore[index]


class WinningBid(StatefulLogic[int, Any, list[Any], Winner]):
    """Per auction: the highest bid of its lifetime, emitted once the auction has closed.

    Closing is driven by event-time timers: an auction sets one at its ``expires``, early
    bids one at the newest of them; each epoch visits only the auctions whose timers it
    reached, not every open auction."""

    def on_data(
        self, record: Record, state: list[Any] | None, output: Output[Winner]
    ) -> list[Any] | None:
        event = record.value
        if type(event) is Auction:
            start, end = event.date_time, event.expires
            best = None
            if state is not None:  # bids that arrived before their auction
                prices = [price for ts, price in state[2] if start <= ts <= end]
                best = max(prices) if prices else None
            output.set_timer(end)
            return [OPEN, start, end, event.category, best, event.seller]
        _, ts, price = event  # a bid
        if state is None:
            output.set_timer(ts)
            return [EARLY, ts, [(ts, price)]]
        if state[0] is OPEN:
            if state[1] <= ts <= state[2] and (state[4] is None or price > state[4]):
                state[4] = price
        else:
            state[2].append((ts, price))
            if ts > state[1]:
                state[1] = ts  # the timer set for the first early bid moves here when it fires
        return state

    def on_timer(
        self, timestamp: Any, key: int, state: list[Any] | None, output: Output[Winner]
    ) -> list[Any] | None:
        if state is None:
            return None
        if state[0] is OPEN:
            if state[2] > timestamp:
                return state  # an early bid's timer; the auction closes at its own
            # Closed: no bid of its lifetime can still arrive (emitted at ``expires``).
            if state[4] is not None:
                output.emit((state[3], state[4], state[5], key, state[2]))
            return None
        # Early bids: once the epoch passes the newest, any auction still to come starts
        # after all of them, so none can count.
        if state[1] > timestamp:  # early bids newer than this timer came: wait for them
            output.set_timer(state[1])
            return state
        return None


def running_average(
    category: Any, winner: Winner, state: tuple[int, int]
) -> tuple[tuple[int, float, int], tuple[int, int]]:
    """Adds one winning price to the category's ``(total, auctions)``."""
    total, n = state
    total += winner[1]
    n += 1
    return (winner[0], total / n, n), (total, n)


def zero() -> tuple[int, int]:
    """No auctions yet."""
    return (0, 0)


def category_of(winner: Winner) -> int:
    """A winning bid's category."""
    return winner[0]


def winning_bids(events: Stream) -> Stream:
    """Every auction's :data:`Winner` (if it has one), at the auction's ``expires``.

    The distributor aligns epochs (``max_epoch_lead``): replaying the stream on several
    workers, one worker's sources may run seconds of event time ahead of another's (measured
    on two workers: 2.8 s at the median, 5.5 s at p90). Auctions close at the slowest worker's
    epoch, so every auction and bid read ahead stays open in this operator's state (timers
    keep the cost per epoch to the auctions closing, but not the memory). Aligned, the worker
    ahead waits for the others instead.
    """
    return (
        events.filter_map("auctions-and-bids", auction_or_bid)
        .key_distribute("by-auction", auction_id, max_epoch_lead=ALIGNMENT)
        .stateful_op("winning-bids", WinningBid())
    )


def query(events: Stream) -> Stream:
    """Winning bids, then a running average per category."""
    return (
        winning_bids(events)
        .key_distribute("by-category", category_of)
        .stateful_map("average-per-category", running_average, initial=zero)
    )


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> q4 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=10_000))).execute()
