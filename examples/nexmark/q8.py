"""Nexmark query 8: monitor new users.

Who registered and opened an auction within the same period? For every tumbling window of
``size`` (10 s): the people who registered in the window and also created at least one
auction in it.

SQL (``TUMBLE`` = tumbling windows of 10 s)::

    SELECT DISTINCT P.id, P.name, P.starttime
    FROM (SELECT id, name, TUMBLE_START(date_time, INTERVAL '10' SECOND) AS starttime
          FROM person) AS P
    INNER JOIN
         (SELECT seller, TUMBLE_START(date_time, INTERVAL '10' SECOND) AS starttime
          FROM auction) AS A
    ON P.id = A.seller AND P.starttime = A.starttime;

Dataflow: people -> ``key_distribute`` by id; auctions -> ``key_distribute`` by seller;
``join(Tumbling(size))`` pairs each person with each of their auctions of the same window
(as soon as both are there, timestamp = the later one, so still in that window); a second
``window(Tumbling(size), Reduce(first))`` per person turns the pairs of a window into one
result when the window closes.

Output: ``(person_id, name, window_start)`` per new seller and window.

On several workers both distributors align epochs (``max_epoch_lead``), as in
:func:`nexmark.q4.winning_bids`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from malstrom import Stream, StreamProvider
from malstrom.windows import Reduce, Tumbling, WindowResult

from .common import ALIGNMENT, DEFAULT_CONFIG, Sink, build_query, is_auction, is_person
from .generator import GeneratorConfig
from .model import Auction, Person

__all__ = ["build", "query"]

SIZE = 10_000  # ms


def person_id(person: Person) -> int:
    """A person's id."""
    return person.id


def seller(auction: Auction) -> int:
    """An auction's seller."""
    return auction.seller


def the_person(pair: tuple[Person, Auction]) -> Person:
    """The person of a (person, auction) pair."""
    return pair[0]


def first(a: Any, b: Any) -> Any:
    """The first of two."""
    return a


def new_user(result: WindowResult) -> tuple[int, str, int]:
    """``(person_id, name, window_start)``."""
    person: Person = result.value
    return (person.id, person.name, result.start)


def query(events: Stream, size: int = SIZE) -> Stream:
    """People joined with their auctions per window, one result per person and window."""
    # Epoch alignment: a worker running ahead would fill the join with windows that only
    # close when the slowest worker's epochs get there (see nexmark.q4.winning_bids).
    people = events.filter("people", is_person).key_distribute(
        "people-by-id", person_id, max_epoch_lead=ALIGNMENT
    )
    auctions = events.filter("auctions", is_auction).key_distribute(
        "auctions-by-seller", seller, max_epoch_lead=ALIGNMENT
    )
    sellers, _ = (
        people.join("people-with-auctions", auctions, Tumbling(size))
        .map("seller", the_person)
        .window("once-per-window", Tumbling(size), Reduce(first))
    )
    return sellers.map("new-users", new_user)


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
    size: int = SIZE,
) -> None:
    """The job: generated events -> q8 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink, size=size)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=100_000))).execute()
