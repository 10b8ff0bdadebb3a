"""What every Nexmark query starts from: the generated events, in event time.

:func:`event_stream` adds the generator's source to a job, makes each event's ``date_time``
its record's timestamp (``assign_timestamps``) and issues epochs that trail the newest
timestamp by the source's out-of-orderness bound (``limit_out_of_orderness``), under which no
event is ever late (see :mod:`nexmark.generator`). Queries take the resulting on-time stream
and pick the events they need with :func:`is_person`, :func:`is_auction` and :func:`is_bid`.

Every query module ``q*.py`` has ``query(events, ...) -> Stream`` (its operators) and
``build(provider, *, config, parts, sink, late_sink, ...)``, a complete job: events ->
query -> ``sink`` (a ``StdOutSink`` by default). Pass the parameters with
``functools.partial`` (a partial of a module-level function is importable, as
``MultiProcessRuntime`` needs).
"""

from __future__ import annotations

from typing import Any

from malstrom import StatefulSink, StatefulSource, StatelessSink, Stream, StreamProvider
from malstrom.sinks import StdOutSink

from .generator import GeneratorConfig, NexmarkSource
from .model import Auction, Bid, Event, Person

__all__ = [
    "ALIGNMENT",
    "DEFAULT_CONFIG",
    "Sink",
    "build_query",
    "event_stream",
    "event_time",
    "finish",
    "is_auction",
    "is_bid",
    "is_person",
]

Sink = StatelessSink | StatefulSink

DEFAULT_CONFIG = GeneratorConfig(max_events=100_000)

ALIGNMENT = 0.1
"""``max_epoch_lead`` (seconds) of the distributors whose state waits for epochs (q4, q6,
q8): on two workers it took q4 from 0.85x to 1.24x of one worker, q8 from 1.05x to 1.20x
(no effect on q5 and q7, whose state does not grow with the lead)."""
"""What ``build`` generates unless told otherwise: 100,000 events (10 s of event time)."""


def event_time(event: Event) -> int:
    """The event's time (ms): its record's timestamp."""
    return event.date_time


def is_person(event: Event) -> bool:
    """Whether ``event`` is a new person."""
    return type(event) is Person


def is_auction(event: Event) -> bool:
    """Whether ``event`` is a new auction."""
    return type(event) is Auction


def is_bid(event: Event) -> bool:
    """Whether ``event`` is a bid."""
    return type(event) is Bid


def event_stream(
    provider: StreamProvider,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    late_sink: Sink | None = None,
    batch: int = 256,
) -> Stream:
    """The generated events with event-time timestamps and epochs; returns the on-time stream.

    Late events (none, unless parts drifted apart, see :mod:`nexmark.generator`) go to
    ``late_sink`` when given, else they are dropped.
    """
    source = NexmarkSource(config, parts, batch)
    on_time, late = (
        provider.new_stream()
        .source("nexmark", StatefulSource(source))
        .assign_timestamps("event-time", event_time)
        .limit_out_of_orderness("epochs", source.out_of_orderness())
    )
    if late_sink is not None:
        late.sink("late-events", late_sink)
    return on_time


def finish(results: Stream, sink: Sink | None) -> None:
    """Send a query's results to ``sink`` (printed when None)."""
    results.sink("results", sink if sink is not None else StdOutSink())


def build_query(
    query: Any,
    provider: StreamProvider,
    config: GeneratorConfig,
    parts: int,
    sink: Sink | None,
    late_sink: Sink | None,
    **params: Any,
) -> None:
    """The job of every ``q*.build``: events -> ``query(events, **params)`` -> ``sink``."""
    finish(query(event_stream(provider, config, parts, late_sink), **params), sink)
