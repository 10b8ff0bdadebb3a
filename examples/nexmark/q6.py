"""Nexmark query 6: average selling price by seller.

What is the average selling price of each seller's last 10 closed auctions? Winning bids as
in :mod:`nexmark.q4` (highest bid of the auction's lifetime); "last" = the latest
``expires``, ties broken by auction id.

SQL::

    WITH winners AS (
        SELECT A.id, A.seller, A.expires, MAX(B.price) AS final
        FROM auction AS A INNER JOIN bid AS B ON A.id = B.auction
        WHERE B.date_time BETWEEN A.date_time AND A.expires
        GROUP BY A.id, A.seller, A.expires
    )
    SELECT seller, AVG(final) OVER (PARTITION BY seller ORDER BY expires, id
                                    ROWS BETWEEN 9 PRECEDING AND CURRENT ROW)
    FROM winners;

Dataflow: :func:`nexmark.q4.winning_bids` -> ``key_distribute`` by seller ->
``stateful_map`` keeping, per seller, the 10 latest winning bids by ``(expires, auction)``
and the number of auctions closed so far. Auctions close on the workers that own them, so a
seller's winners may arrive slightly out of ``expires`` order; keeping the 10 *latest by
that key* (not the last 10 to arrive) makes the seller's final state, and so its last
update, the same in every run and on any number of workers.

Output: ``(seller, average, auctions)`` after every closed auction with a winner: the
average price of the seller's latest (up to) 10 winning bids, and how many of the seller's
auctions have closed with a winner so far. The update with the most auctions is the last
window row of the SQL above.
"""

from __future__ import annotations

from bisect import insort
from functools import partial
from typing import Any

from malstrom import Stream, StreamProvider

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .q4 import Winner, winning_bids

__all__ = ["LAST", "build", "query"]

LAST = 10

# Per seller: (auctions closed so far, [(expires, auction, price), ...] latest LAST, sorted)
SellerState = tuple[int, list[tuple[int, int, int]]]


def seller_of(winner: Winner) -> int:
    """The seller of a winning bid's auction."""
    return winner[2]


def no_sales() -> SellerState:
    """A seller with no closed auctions yet."""
    return (0, [])


def moving_average(
    seller: Any, winner: Winner, state: SellerState
) -> tuple[tuple[int, float, int], SellerState]:
    """Adds a winning bid to the seller's latest ``LAST`` and averages them."""
    _category, price, seller_id, auction, expires = winner
    n, latest = state
    insort(latest, (expires, auction, price))
    if len(latest) > LAST:
        del latest[0]
    average = sum(p for _, _, p in latest) / len(latest)
    return (seller_id, average, n + 1), (n + 1, latest)


def query(events: Stream) -> Stream:
    """Winning bids, then a moving average of the latest 10 per seller."""
    return (
        winning_bids(events)
        .key_distribute("by-seller", seller_of)
        .stateful_map("average-per-seller", moving_average, initial=no_sales)
    )


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> q6 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=20_000))).execute()
