"""Nexmark query 0: pass-through.

Every event goes through unchanged; the query measures what reading, timestamping and
writing the events costs, the floor of every other query.

SQL::

    SELECT * FROM person UNION ALL SELECT * FROM auction UNION ALL SELECT * FROM bid;

Output: every event (``Person``, ``Auction`` or ``Bid``) at its event time.
"""

from __future__ import annotations

from functools import partial

from malstrom import Stream, StreamProvider

from .common import DEFAULT_CONFIG, Sink, build_query
from .generator import GeneratorConfig

__all__ = ["build", "query"]


def query(events: Stream) -> Stream:
    """The events themselves."""
    return events


def build(
    provider: StreamProvider,
    *,
    config: GeneratorConfig = DEFAULT_CONFIG,
    parts: int = 1,
    sink: Sink | None = None,
    late_sink: Sink | None = None,
) -> None:
    """The job: generated events -> ``sink``."""
    build_query(query, provider, config, parts, sink, late_sink)


if __name__ == "__main__":
    from malstrom import SingleThreadRuntime

    SingleThreadRuntime(partial(build, config=GeneratorConfig(max_events=100))).execute()
