"""Nexmark query 7: highest bid.

What are the highest bids of each period? For every tumbling window of ``size`` (10 s), the
bid(s) with the highest price, ties included.

SQL (``TUMBLE`` = tumbling windows of 10 s)::

    WITH windowed AS (
        SELECT *, TUMBLE_START(date_time, INTERVAL '10' SECOND) AS starttime
        FROM bid
    )
    SELECT W.starttime, W.starttime + INTERVAL '10' SECOND AS endtime,
           W.auction, W.bidder, W.price, W.date_time
    FROM windowed AS W
    WHERE W.price = (SELECT MAX(price) FROM windowed AS M WHERE M.starttime = W.starttime);

Dataflow, in two phases (a local and a global aggregate, as Flink's two-phase aggregation
does it), so that the bids never cross workers:

1. bids, cut down to ``(price, auction, bidder, date_time)`` tuples ->
   ``window(Tumbling(size), HighestBids())`` on the stream as the source keys it, by source
   part: the highest bids per part and window, computed where the part is read (a keyed
   operator straight after a source keeps each part's records on their worker), emitted
   when the window closes (timestamp = end);
2. -> ``key_distribute`` by window end -> ``stateful_op`` (:class:`HighestPerWindow`): merges
   the per-part maxima of one window (one small record per part and window crosses). A
   window's per-part results are all emitted before the epoch that closed it is forwarded,
   so when that epoch reaches this operator the window is complete:
   :meth:`HighestPerWindow.on_epoch` emits it at once (no extra latency, unlike a second
   cascaded window) and deletes its state.

Keyed by auction instead (the shape of the query before this one: every bid crossed to its
auction's worker), two workers ran it at 1.18x of one (1M events, paired runs).

Output: ``(start, end, auction, bidder, price, date_time)`` for each highest bid of the
window ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from functools import partial
from typing import Any

from malstrom import Output, Record, StatefulLogic, Stream, StreamProvider
from malstrom.windows import Tumbling, WindowResult

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Bid, Event

__all__ = ["HighestBids", "HighestPerWindow", "build", "query"]

SIZE = 10_000  # ms

Highest = tuple[int, int, int, int, int, int]  # (start, end, auction, bidder, price, date_time)
BidTuple = tuple[int, int, int, int]  # (price, auction, bidder, date_time)


def bid_tuple(event: Event) -> BidTuple | None:
    """A bid as ``(price, auction, bidder, date_time)``; None for other events."""
    if type(event) is Bid:
        return (event.price, event.auction, event.bidder, event.date_time)
    return None


class HighestBids:
    """Aggregator: the bids with the highest price (``[price, bids]``)."""

    def create(self) -> list[Any]:
        """No bids yet."""
        return [-1, []]

    def add(self, acc: list[Any], bid: BidTuple) -> list[Any]:
        """Keeps ``bid`` if its price is at least the highest so far."""
        price = bid[0]
        if price > acc[0]:
            acc[0] = price
            acc[1] = [bid]
        elif price == acc[0]:
            acc[1].append(bid)
        return acc

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        """The higher of two accumulators (both lists on a tie)."""
        if a[0] == b[0]:
            return [a[0], a[1] + b[1]]
        return a if a[0] > b[0] else b

    def result(self, acc: list[Any]) -> list[Any]:
        """``[price, bids]`` (a copy)."""
        return [acc[0], list(acc[1])]


def window_end(result: WindowResult) -> int:
    """The end of the window a per-part maximum belongs to."""
    return result.end


class HighestPerWindow(StatefulLogic[int, WindowResult, list[Any], Highest]):
    """Keyed by window end: ``[start, price, bids]``, emitted when the epoch reaches the end."""

    def on_data(
        self, record: Record, state: list[Any] | None, output: Output[Highest]
    ) -> list[Any] | None:
        w = record.value
        price, bids = w.value
        if state is None or price > state[1]:
            return [w.start, price, bids]
        if price == state[1]:
            state[2].extend(bids)
        return state

    def on_epoch(
        self, epoch: Any, states: MutableMapping[int, list[Any]], output: Output[Highest]
    ) -> None:
        done = [end for end in states if end <= epoch]
        for end in sorted(done):
            start, _price, bids = states.pop(end)
            for price, auction, bidder, date_time in bids:
                output.emit((start, end, auction, bidder, price, date_time), key=end, timestamp=end)


def query(events: Stream, size: int = SIZE) -> Stream:
    """Highest bids per source part and window, then per window."""
    per_part, _ = events.filter_map("bids", bid_tuple).window(
        "highest-per-part", Tumbling(size), HighestBids()
    )
    return per_part.key_distribute("by-window", window_end).stateful_op(
        "highest-per-window", HighestPerWindow()
    )


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
    size: int = SIZE,
) -> None:
    """The job: generated events -> q7 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink, size=size)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=300_000))).execute()
