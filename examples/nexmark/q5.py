"""Nexmark query 5: hot items.

Which auctions got the most bids in the last period? Every ``slide`` (2 s), over the last
``size`` (10 s): the auction(s) with the highest number of bids, ties included.

SQL (``HOP`` = sliding windows of 10 s starting every 2 s)::

    WITH counts AS (
        SELECT auction, COUNT(*) AS num,
               HOP_START(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS starttime,
               HOP_END(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS endtime
        FROM bid
        GROUP BY auction, HOP(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
    )
    SELECT C.starttime, C.endtime, C.auction, C.num
    FROM counts AS C
    WHERE C.num = (SELECT MAX(num) FROM counts AS M
                   WHERE M.starttime = C.starttime AND M.endtime = C.endtime);

Dataflow:

1. bids, cut down to their auction id (a small int is all that crosses processes) ->
   ``key_distribute`` by auction -> ``window(Sliding(size, slide), Count())``: bids per
   auction and window, each result at the window's end;
2. a ``stateless_op`` puts the auction (the record's key) into the value, then
   ``key_distribute`` by window end -> ``window(Tumbling(slide), MostBids())``: a result of
   the sliding window ``[s, e)`` has timestamp ``e``, so it lands in the tumbling window
   ``[e, e + slide)`` (``size`` must be a multiple of ``slide``), which gathers every
   auction's count for ``[s, e)`` (one key per sliding window) and keeps the largest ones. It
   fires once the epoch passes ``e + slide``: the cascade adds one ``slide`` of latency.

Output: ``(start, end, auction, bids)`` for each auction with the most bids in the window
``[start, end)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from malstrom import Output, Record, StatelessLogic, Stream, StreamProvider
from malstrom.windows import Count, Sliding, Tumbling, WindowResult

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Bid, Event

__all__ = ["MostBids", "build", "query"]

SIZE = 10_000  # ms
SLIDE = 2_000  # ms

Hot = tuple[int, int, int, int]  # (start, end, auction, bids)


def bid_auction(event: Event) -> int | None:
    """The auction of a bid; None for other events."""
    return event.auction if type(event) is Bid else None


def itself(auction: int) -> int:
    """The key of an auction id: the id."""
    return auction


class WithAuction(StatelessLogic):
    """``WindowResult(start, end, bids)`` keyed by auction -> ``(start, end, auction, bids)``."""

    def on_data(self, record: Record, output: Output[Any]) -> None:
        w = record.value
        output.emit((w.start, w.end, record.key, w.value))


def window_end(hot: Hot) -> int:
    """The end of the sliding window a count belongs to."""
    return hot[1]


class MostBids:
    """Aggregator: the ``(start, end, auction, bids)`` items with the largest ``bids``."""

    def create(self) -> list[Any]:
        """No items: ``[largest bids, items with that many]``."""
        return [0, []]

    def add(self, acc: list[Any], item: Hot) -> list[Any]:
        """Keeps ``item`` if it has at least as many bids as the best so far."""
        n = item[3]
        if n > acc[0]:
            acc[0] = n
            acc[1] = [item]
        elif n == acc[0]:
            acc[1].append(item)
        return acc

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        """The better of two accumulators (both items lists on a tie)."""
        if a[0] == b[0]:
            return [a[0], a[1] + b[1]]
        return a if a[0] > b[0] else b

    def result(self, acc: list[Any]) -> list[Hot]:
        """The hottest auctions (a copy)."""
        return list(acc[1])


def hottest_items(result: WindowResult) -> list[Hot]:
    """The items of a ``MostBids`` window."""
    return result.value


def query(events: Stream, size: int = SIZE, slide: int = SLIDE) -> Stream:
    """Bids per auction per sliding window, then the maximum per window."""
    if size % slide:
        raise ValueError(f"q5: size ({size}) must be a multiple of slide ({slide})")
    counts, _ = (
        events.filter_map("bid-auctions", bid_auction)
        .key_distribute("by-auction", itself)
        .window("bids-per-auction", Sliding(size, slide), Count())
    )
    hottest, _ = (
        counts.stateless_op("with-auction", WithAuction())
        .key_distribute("by-window", window_end)
        .window("hottest", Tumbling(slide), MostBids())
    )
    return hottest.flat_map("hot-items", hottest_items)


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
    size: int = SIZE,
    slide: int = SLIDE,
) -> None:
    """The job: generated events -> q5 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink, size=size, slide=slide)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=200_000))).execute()
