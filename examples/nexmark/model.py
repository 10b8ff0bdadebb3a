"""The Nexmark data model: an online auction site's three kinds of events.

Every event is a frozen dataclass carrying its event time ``date_time`` (milliseconds since
1970-01-01, an ``int``):

- :class:`Person`: someone registers (1 event in 50 by default);
- :class:`Auction`: a person (the ``seller``) opens an auction, which closes at ``expires``
  (3 in 50);
- :class:`Bid`: a person (the ``bidder``) bids ``price`` on an auction (46 in 50).

Prices are in cents of a US dollar. The fields follow the Nexmark suites of Apache Beam and
of the Flink community (``extra`` is the padding field those suites use to reach an average
event size; this generator leaves it empty).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Auction", "Bid", "Event", "Person"]


@dataclass(frozen=True, slots=True)
class Person:
    """A new user of the auction site."""

    id: int
    name: str
    email_address: str
    credit_card: str
    city: str
    state: str
    date_time: int
    extra: str = ""


@dataclass(frozen=True, slots=True)
class Auction:
    """An item put up for auction by ``seller`` (a person id), open until ``expires``."""

    id: int
    item_name: str
    description: str
    initial_bid: int
    reserve: int
    date_time: int
    expires: int
    seller: int
    category: int
    extra: str = ""


@dataclass(frozen=True, slots=True)
class Bid:
    """``bidder`` (a person id) offers ``price`` cents for ``auction`` (an auction id)."""

    auction: int
    bidder: int
    price: int
    channel: str
    date_time: int
    extra: str = ""


Event = Person | Auction | Bid
"""Any Nexmark event."""
