"""Nexmark query 3: local item suggestion.

Who is selling in category 10 in Oregon, Idaho or California? An incremental join of new
people and new auctions on ``person.id = auction.seller``: a result appears as soon as both
the seller and the auction have been seen, whichever came first (the generator may create an
auction before its seller registers).

SQL::

    SELECT P.name, P.city, P.state, A.id
    FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
    WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA');

Dataflow: people and category-10 auctions -> ``key_distribute`` by person id (the seller of
an auction) -> ``stateful_op`` with one state per person id:

- ``(name, city, state)`` once a person from OR/ID/CA has been seen: every auction of that
  seller, earlier or later, yields a result;
- ``False`` once a person from another state has been seen: their auctions are dropped;
- a list of auction ids while the person is unknown: auctions waiting for their seller.

People never change, so the state per person is final once the person is seen, and an
unmatched auction is kept only until its seller registers.

Output: ``(name, city, state, auction_id)`` per match, with the timestamp of whichever of
the two events arrived second.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from malstrom import Output, Record, StatefulLogic, Stream, StreamProvider

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig
from .model import Auction, Event, Person

__all__ = ["CATEGORY", "STATES", "SellerJoin", "build", "query"]

CATEGORY = 10
STATES = frozenset({"OR", "ID", "CA"})

PersonState = tuple[str, str, str] | bool | list[int]


def relevant(event: Event) -> bool:
    """People, and auctions of category 10."""
    t = type(event)
    return t is Person or (t is Auction and event.category == CATEGORY)  # type: ignore[union-attr]


def person_id(event: Person | Auction) -> int:
    """The person a record is about: the person, or the auction's seller."""
    return event.id if type(event) is Person else event.seller  # type: ignore[union-attr]


class SellerJoin(StatefulLogic[int, Any, PersonState, tuple[str, str, str, int]]):
    """The incremental join, keyed by person id (see the module docstring)."""

    def on_data(
        self,
        record: Record,
        state: PersonState | None,
        output: Output[tuple[str, str, str, int]],
    ) -> PersonState | None:
        event = record.value
        if type(event) is Person:
            if event.state not in STATES:
                return False
            seller = (event.name, event.city, event.state)
            if type(state) is list:
                for auction_id in state:
                    output.emit((*seller, auction_id))
            return seller
        # an auction of category 10
        if state is None:
            return [event.id]
        if isinstance(state, list):
            state.append(event.id)
        elif isinstance(state, tuple):
            output.emit((state[0], state[1], state[2], event.id))
        return state


def query(events: Stream) -> Stream:
    """People and category-10 auctions, distributed by person id, joined per person."""
    return (
        events.filter("people-and-category-10", relevant)
        .key_distribute("by-person", person_id)
        .stateful_op("join-sellers", SellerJoin())
    )


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> q3 -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=5_000))).execute()
