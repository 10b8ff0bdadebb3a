"""A deterministic, seeded Nexmark event generator and a partitioned malstrom source for it.

The model follows the generator of the Apache Beam / Flink-community Nexmark suites (its
structure, not its random numbers: the events are not bit-for-bit Beam's):

- **Event ids.** Events are numbered ``0, 1, 2, ...``; the id alone decides the kind of
  event: of every 50 consecutive ids (``person_proportion + auction_proportion +
  bid_proportion``, 1 + 3 + 46 by default) the first is a :class:`~nexmark.model.Person`, the
  next 3 are :class:`~nexmark.model.Auction` s and the last 46 :class:`~nexmark.model.Bid` s.
  Person and auction ids are dense and follow from the event id too: the ``k``-th person is
  ``1000 + k``, the ``k``-th auction ``1000 + k``. Categories are ``10 .. 10 + num_categories``.
- **Event time.** ``date_time = base_time + id * 1000 // events_per_second`` (ms): a constant
  inter-event delay, like Beam's default rate shape. ``events_per_second`` sets *event* time;
  nothing is throttled.
- **Hot items.** A bid goes to the *hot* auction (the first of the last 100 auctions) with
  probability ``1 - 1/hot_auction_ratio`` (1/2), otherwise to a random auction among the last
  ``num_in_flight_auctions`` (100) plus 10 not created yet. A bidder is the hot bidder (second
  of the last 100 people) with probability ``1 - 1/hot_bidders_ratio`` (3/4), otherwise a random
  person among the last ``num_active_people`` (1000) plus 10 not created yet; likewise an
  auction's seller is the hot seller (first of the last 100 people) with probability
  ``1 - 1/hot_sellers_ratio`` (3/4). Ids "not created yet" make some events refer to a person
  or auction whose own event comes later, as in Beam.
- **Auctions** close at ``expires = date_time + 1 + uniform[0, 2 * horizon)`` where the horizon
  is the event time it takes to create ``num_in_flight_auctions`` more auctions, so about that
  many auctions are open at any time. ``reserve = initial_bid + price``; prices (cents) are
  ``round(100 * 10 ** uniform[0, 6))``, so between $1 and $1,000,000, log-uniformly.
- **People** get a name from 11 first names x 9 last names, a city among 10 and a US state
  among AZ, CA, ID, OR, WA, WY (independently, as in Beam), an e-mail and a credit card number.

**Determinism.** Every random choice of event ``i`` comes from a splitmix64 stream keyed by
``(seed, i)``: an event is a pure function of ``(config, i)``. So the same ``(seed, count)``
gives the same events however they are split into parts, whichever worker generates them,
and after any restore.

**The source.** :class:`NexmarkSource` is a ``StatefulSourceImpl`` with ``parts`` parts: part
``p`` generates the ids ``i`` with ``i % parts == p``, in order, ``batch`` events per poll at
most (``poll_batch``). Its state is the number of events the part has emitted, so a restored
part resumes exactly where its snapshot was taken. Within a part event time never decreases.
A worker polls each of its parts once per turn with the same ``max_records``, so the parts of
one worker never drift more than ``batch * parts`` ids apart:
:meth:`NexmarkSource.out_of_orderness` is the bound to give ``limit_out_of_orderness`` so that
no record is ever late. (After a restore at another parallelism, parts that ran on different
workers may be further apart; records behind the bound then leave through the ``late``
stream.)

Run ``cd examples && python -m nexmark.generator [COUNT]`` to print the first events.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from .model import Auction, Bid, Event, Person

__all__ = [
    "FIRST_AUCTION_ID",
    "FIRST_CATEGORY_ID",
    "FIRST_PERSON_ID",
    "US_STATES",
    "EventFactory",
    "GeneratorConfig",
    "NexmarkPart",
    "NexmarkSource",
    "generate",
]

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
PERSON_ID_LEAD = 10  # people not created yet that may be picked as bidder or seller
AUCTION_ID_LEAD = 10  # auctions not created yet that may be bid on
HOT_GROUP = 100  # hot auction / seller / bidder: one per group of the last 100

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
               "Deiter", "Walter")  # fmt: skip
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones",
              "Noris")  # fmt: skip
DOMAINS = ("example.com", "mail.test", "inbox.test", "post.test")
ADJECTIVES = ("antique", "rare", "signed", "vintage", "mint", "used", "boxed", "handmade")
NOUNS = ("clock", "lamp", "guitar", "camera", "vase", "bicycle", "poster", "coin", "map",
         "radio", "chair", "atlas")  # fmt: skip
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64 increment
_DRAWS = 4  # 64-bit draws reserved per event (a person uses 3, an auction 3, a bid 2)


def _mix(z: int) -> int:
    """The splitmix64 finalizer: a bijection of 64-bit ints that scrambles its input well."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _price(u32: int) -> int:
    """A price in cents, log-uniform in [$1, $1,000,000) (Beam's ``nextPrice``)."""
    return round(10.0 ** (u32 / 4294967296.0 * 6.0) * 100.0)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Two equal configs generate the same events."""

    seed: int = 0
    max_events: int | None = None
    """Events in total (ids ``0 .. max_events - 1``); None: never ends."""
    events_per_second: int = 10_000
    """Event-time rate: ``date_time = base_time + id * 1000 // events_per_second``."""
    base_time: int = 1_600_000_000_000
    """Event time of event 0, ms since 1970-01-01 (2020-09-13T12:26:40Z)."""
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    num_in_flight_auctions: int = 100
    num_active_people: int = 1000
    num_categories: int = 5

    def __post_init__(self) -> None:
        positive = (
            "events_per_second",
            "person_proportion",
            "auction_proportion",
            "bid_proportion",
            "hot_auction_ratio",
            "hot_sellers_ratio",
            "hot_bidders_ratio",
            "num_in_flight_auctions",
            "num_active_people",
            "num_categories",
        )
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GeneratorConfig.{name} must be a positive int, got {v!r}")
        if self.max_events is not None and self.max_events < 0:
            raise ValueError(f"GeneratorConfig.max_events must be >= 0, got {self.max_events}")

    @property
    def proportion_denominator(self) -> int:
        """Events per period: one period holds ``person + auction + bid`` proportions."""
        return self.person_proportion + self.auction_proportion + self.bid_proportion

    def timestamp(self, event_id: int) -> int:
        """Event time of event ``event_id`` (ms)."""
        return self.base_time + event_id * 1000 // self.events_per_second


class EventFactory:
    """Makes event ``i`` of a config: ``factory(i)``, or ``factory.batch(range)`` for many."""

    def __init__(self, config: GeneratorConfig) -> None:
        c = self.config = config
        self._p = c.person_proportion
        self._a = c.auction_proportion
        self._total = c.proportion_denominator
        self._key = _mix(c.seed & _M64)
        self._events_for_auctions = c.num_in_flight_auctions * self._total // self._a

    # ----- ids (base 0), as functions of the event id --------------------------------------------
    def last_person(self, i: int) -> int:
        """Base-0 id of the newest person at event ``i`` (its own id if ``i`` is a person)."""
        epoch, off = divmod(i, self._total)
        if off >= self._p:
            off = self._p - 1
        return epoch * self._p + off

    def last_auction(self, i: int) -> int:
        """Base-0 id of the newest auction at event ``i`` (its own if ``i`` is an auction)."""
        epoch, off = divmod(i, self._total)
        if off < self._p:
            epoch -= 1
            off = self._a - 1
        elif off >= self._p + self._a:
            off = self._a - 1
        else:
            off -= self._p
        return epoch * self._a + off

    def _random_person(self, i: int, u32: int) -> int:
        n = self.last_person(i) + 1
        active = min(n, self.config.num_active_people)
        return n - active + u32 % (active + PERSON_ID_LEAD)

    def _random_auction(self, i: int, u32: int) -> int:
        newest = self.last_auction(i)
        oldest = max(newest - self.config.num_in_flight_auctions, 0)
        return oldest + u32 % (newest - oldest + 1 + AUCTION_ID_LEAD)

    def _draw(self, i: int, k: int) -> int:
        """The ``k``-th 64-bit random draw of event ``i`` (k < 4)."""
        return _mix((self._key + (i * _DRAWS + k + 1) * _GAMMA) & _M64)

    # ----- events ------------------------------------------------------------------------------
    def kind(self, i: int) -> type[Person] | type[Auction] | type[Bid]:
        """Which kind of event ``i`` is."""
        off = i % self._total
        return Person if off < self._p else Auction if off < self._p + self._a else Bid

    def person(self, i: int) -> Person:
        """Event ``i``, which must be a person."""
        r0, r1, r2 = self._draw(i, 0), self._draw(i, 1), self._draw(i, 2)
        first = FIRST_NAMES[(r0 & 0xFFFF) % len(FIRST_NAMES)]
        last = LAST_NAMES[(r0 >> 16 & 0xFFFF) % len(LAST_NAMES)]
        card = " ".join(f"{(r1 >> s & 0xFFFF) % 10000:04d}" for s in (0, 16, 32, 48))
        email = (
            f"{first.lower()}.{last.lower()}{(r2 & 0xFFFFFFFF) % 10000}"
            f"@{DOMAINS[(r2 >> 32) % len(DOMAINS)]}"
        )
        return Person(
            id=FIRST_PERSON_ID + self.last_person(i),
            name=f"{first} {last}",
            email_address=email,
            credit_card=card,
            city=US_CITIES[(r0 >> 32 & 0xFFFF) % len(US_CITIES)],
            state=US_STATES[(r0 >> 48) % len(US_STATES)],
            date_time=self.config.timestamp(i),
        )

    def auction(self, i: int) -> Auction:
        """Event ``i``, which must be an auction."""
        c = self.config
        r0, r1, r2 = self._draw(i, 0), self._draw(i, 1), self._draw(i, 2)
        if (r0 & 0xFFFF) % c.hot_sellers_ratio > 0:
            seller = self.last_person(i) // HOT_GROUP * HOT_GROUP
        else:
            seller = self._random_person(i, r0 >> 16 & 0xFFFFFFFF)
        ts = c.timestamp(i)
        horizon = c.timestamp(i + self._events_for_auctions) - ts
        initial = _price(r1 & 0xFFFFFFFF)
        adjective = ADJECTIVES[(r2 >> 32 & 0xFFFF) % len(ADJECTIVES)]
        noun = NOUNS[(r2 >> 48) % len(NOUNS)]
        return Auction(
            id=FIRST_AUCTION_ID + self.last_auction(i),
            item_name=f"{adjective} {noun}",
            description=f"Lot {i}: {adjective} {noun}",
            initial_bid=initial,
            reserve=initial + _price(r1 >> 32),
            date_time=ts,
            expires=ts + 1 + (r2 & 0xFFFFFFFF) % max(2 * horizon, 1),
            seller=FIRST_PERSON_ID + seller,
            category=FIRST_CATEGORY_ID + (r0 >> 48) % c.num_categories,
        )

    def bid(self, i: int) -> Bid:
        """Event ``i``, which must be a bid."""
        c = self.config
        r0, r1 = self._draw(i, 0), self._draw(i, 1)
        if (r0 & 0xFF) % c.hot_auction_ratio > 0:
            auction = self.last_auction(i) // HOT_GROUP * HOT_GROUP
        else:
            auction = self._random_auction(i, r0 >> 8 & 0xFFFFFFFF)
        if (r0 >> 40 & 0xFF) % c.hot_bidders_ratio > 0:
            bidder = self.last_person(i) // HOT_GROUP * HOT_GROUP + 1
        else:
            bidder = self._random_person(i, r1 & 0xFFFFFFFF)
        return Bid(
            auction=FIRST_AUCTION_ID + auction,
            bidder=FIRST_PERSON_ID + bidder,
            price=_price(r1 >> 32),
            channel=CHANNELS[(r0 >> 48) % len(CHANNELS)],
            date_time=c.timestamp(i),
        )

    def __call__(self, i: int) -> Event:
        """Event ``i``."""
        off = i % self._total
        if off < self._p:
            return self.person(i)
        if off < self._p + self._a:
            return self.auction(i)
        return self.bid(i)

    def batch(self, ids: range) -> list[tuple[Event, int]]:
        """``(event, date_time)`` for every id of ``ids`` (the source's poll format).

        The same events as ``self(i)``; bids (92% of the events) are made inline here, which
        is about twice as fast (``test_nexmark`` checks that both agree).
        """
        c = self.config
        total, p, a = self._total, self._p, self._a
        pa = p + a
        person, auction = self.person, self.auction
        key, base, rate = self._key, c.base_time, c.events_per_second
        hot_auctions, hot_bidders = c.hot_auction_ratio, c.hot_bidders_ratio
        in_flight, active_people = c.num_in_flight_auctions, c.num_active_people
        m64, gamma, draws = _M64, _GAMMA, _DRAWS
        out: list[tuple[Event, int]] = []
        append = out.append
        for i in ids:
            epoch, off = divmod(i, total)
            if off < pa:
                e: Event = person(i) if off < p else auction(i)
                append((e, e.date_time))
                continue
            # A bid: the same draws and choices as self.bid(i), inlined.
            z = (key + (i * draws + 1) * gamma) & m64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
            r0 = z ^ (z >> 31)
            z = (key + (i * draws + 2) * gamma) & m64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
            r1 = z ^ (z >> 31)
            newest_auction = epoch * a + a - 1
            if (r0 & 0xFF) % hot_auctions > 0:
                auction_id = newest_auction // HOT_GROUP * HOT_GROUP
            else:
                oldest = max(newest_auction - in_flight, 0)
                span = newest_auction - oldest + 1 + AUCTION_ID_LEAD
                auction_id = oldest + (r0 >> 8 & 0xFFFFFFFF) % span
            people = epoch * p + p  # base-0 id of the newest person, plus one
            if (r0 >> 40 & 0xFF) % hot_bidders > 0:
                bidder = (people - 1) // HOT_GROUP * HOT_GROUP + 1
            else:
                active = min(people, active_people)
                bidder = people - active + (r1 & 0xFFFFFFFF) % (active + PERSON_ID_LEAD)
            ts = base + i * 1000 // rate
            append(
                (
                    Bid(
                        FIRST_AUCTION_ID + auction_id,
                        FIRST_PERSON_ID + bidder,
                        round(10.0 ** ((r1 >> 32) / 4294967296.0 * 6.0) * 100.0),
                        CHANNELS[(r0 >> 48) % 4],
                        ts,
                    ),
                    ts,
                )
            )
        return out


def generate(config: GeneratorConfig, start: int = 0, stop: int | None = None) -> Iterator[Event]:
    """Events ``start .. stop - 1`` in id order (``stop`` defaults to ``config.max_events``)."""
    if stop is None:
        stop = config.max_events
    factory = EventFactory(config)
    i = start
    while stop is None or i < stop:
        yield factory(i)
        i += 1


class NexmarkPart:
    """One part of :class:`NexmarkSource`: the ids ``part, part + parts, part + 2 * parts, ...``."""

    __slots__ = ("_factory", "_part", "_parts", "_stop", "batch", "emitted")

    def __init__(
        self, factory: EventFactory, part: int, parts: int, emitted: int, batch: int
    ) -> None:
        self._factory = factory
        self._part = part
        self._parts = parts
        self.batch = batch
        self.emitted = emitted
        """Events this part has produced so far: its state."""
        n = factory.config.max_events
        self._stop = None if n is None else (n - part + parts - 1) // parts  # events in part

    def poll_batch(self, max_records: int) -> list[tuple[Event, int]]:
        """Up to ``min(max_records, batch)`` next ``(event, date_time)`` pairs."""
        n = min(max_records, self.batch)
        start = self.emitted
        end = start + n if self._stop is None else min(start + n, self._stop)
        if end <= start:
            return []
        self.emitted = end
        parts, part = self._parts, self._part
        return self._factory.batch(range(part + start * parts, part + end * parts, parts))

    def poll(self) -> tuple[Event, int] | None:
        """The next ``(event, date_time)``, or None once finished."""
        got = self.poll_batch(1)
        return got[0] if got else None

    def is_finished(self) -> bool:
        """Whether every event of this part has been produced."""
        return self._stop is not None and self.emitted >= self._stop

    def snapshot(self) -> object:
        """The number of events produced: where a restored part resumes."""
        return self.emitted

    def collect(self) -> object:
        """Same as :meth:`snapshot` (the part moves to another worker)."""
        return self.emitted


class NexmarkSource:
    """A ``StatefulSourceImpl``: ``parts`` parts, part ``p`` generating the ids ``i % parts == p``.

    Wrap it for a job: ``stream.source("nexmark", StatefulSource(NexmarkSource(config, 4)))``.
    Each poll returns at most ``batch`` events per part; :meth:`out_of_orderness` is the
    ``limit_out_of_orderness`` bound under which no event is late (see the module docstring).
    """

    def __init__(self, config: GeneratorConfig, parts: int = 1, batch: int = 256) -> None:
        if not isinstance(parts, int) or parts < 1:
            raise ValueError(f"NexmarkSource: parts must be a positive int, got {parts!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"NexmarkSource: batch must be a positive int, got {batch!r}")
        self.config = config
        self.parts = parts
        self.batch = batch
        self._factory = EventFactory(config)

    def list_parts(self) -> list[Hashable]:
        """``0 .. parts - 1``."""
        return list(range(self.parts))

    def build_part(self, part: Any, state: object | None) -> NexmarkPart:
        """Part ``part``, resuming after ``state`` events (0 on a fresh start)."""
        emitted = 0 if state is None else int(state)  # type: ignore[call-overload]
        return NexmarkPart(self._factory, int(part), self.parts, emitted, self.batch)

    def out_of_orderness(self) -> int:
        """Event time (ms) a part can be behind the newest event of its worker, plus a margin.

        Parts polled round-robin with the same ``max_records`` are never more than
        ``batch * parts - 1`` ids apart, which is at most ``that * 1000 // rate + 1`` ms; a
        record is late only ``bound`` ms or more behind the newest one.
        """
        return self.batch * self.parts * 1000 // self.config.events_per_second + 2

    def __repr__(self) -> str:
        return f"NexmarkSource({self.config!r}, parts={self.parts}, batch={self.batch})"


if __name__ == "__main__":
    import sys

    for event in generate(GeneratorConfig(max_events=int(sys.argv[1]) if sys.argv[1:] else 60)):
        print(event)
