"""Windows: count events per sensor and second of event time.

Each event is ``(sensor, time in milliseconds)`` and events arrive somewhat out of order.
``assign_timestamps`` makes the event time the record's timestamp, and
``limit_out_of_orderness`` issues epochs 200 ms behind the newest event seen; an event at or
behind the epoch is *late* and leaves through the second stream (``sensor-a`` at 0.4 s arrives
after the epoch has passed 1.1 s).

``window("per-second", Tumbling(1000), Count())`` keeps a count per sensor and one-second
window ``[start, start + 1000)``. A window fires when an epoch reaches its end: its record
carries ``WindowResult(start, end, count)`` and the timestamp ``end``. Windows closed by the
same epoch come out in order of end, then of the sensors' first events; the end of the
stream fires what is still open. The job prints::

    late: sensor-a @0.400
    [0.000, 1.000) sensor-a: 3
    [0.000, 1.000) sensor-b: 1
    [1.000, 2.000) sensor-b: 2
    [1.000, 2.000) sensor-a: 1
    [2.000, 3.000) sensor-a: 2
    [3.000, 4.000) sensor-b: 1
"""

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource
from malstrom.windows import Count, Tumbling

EVENTS = [
    ("sensor-a", 100),
    ("sensor-b", 250),
    ("sensor-a", 600),
    ("sensor-a", 950),
    ("sensor-b", 1100),
    ("sensor-a", 1300),
    ("sensor-b", 1250),
    ("sensor-a", 400),  # more than 200 ms behind 1300: late
    ("sensor-a", 2100),
    ("sensor-a", 2500),
    ("sensor-b", 3200),
]


def show(record: Record, _ctx: OperatorContext) -> None:
    w = record.value
    print(f"[{w.start / 1000:.3f}, {w.end / 1000:.3f}) {record.key}: {w.value}")


def show_late(record: Record, _ctx: OperatorContext) -> None:
    print(f"late: {record.key} @{record.timestamp / 1000:.3f}")


def build(provider: StreamProvider) -> None:
    on_time, late = (
        provider.new_stream()
        .source("events", IterSource(EVENTS))
        .key_distribute("by-sensor", lambda event: event[0])
        .assign_timestamps("event-time", lambda event: event[1])
        .limit_out_of_orderness("epochs", 200)
    )
    late.inspect("print-late", show_late)
    counts, _too_late = on_time.window("per-second", Tumbling(1000), Count())
    counts.inspect("print", show)


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
