"""Keyed state that expires: ``ttl_map`` and :class:`~malstrom.ExpireMap`.

``ttl_map(name, fn)`` calls ``fn(key, value, timestamp, expire_map)`` per record; ``fn``
returns ``(output_value, expire_map)``. Entries put into the map with
``expire_map.insert(k, v, expiry)`` are dropped once an epoch reaches ``expiry``, so the state
of idle keys cleans itself up. Expiry is driven by event time, so these streams get epochs
from ``generate_epochs`` (every record's timestamp becomes the new epoch).

1. Running total: numbers 0..99 keyed by parity; each key's total lives for 15 time units
   after its last update. Records of each key arrive every 2 units, so totals never expire
   before the end of the stream: the last totals are 2450 (even) and 2500 (odd).
2. Sliding window: each word is kept for 2 time units, and every record outputs the words of
   the current and the previous timestamp joined with ``|``: ``foo``, ``foo|bar``,
   ``bar|hello``, ``hello|world``, ``world|baz``.
"""

from typing import Any

from malstrom import ExpireMap, Record, SingleThreadRuntime, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


def epoch_at_record(record: Record, _prev: Any) -> Any:
    """Every record moves event time to its own timestamp."""
    return record.timestamp


def ttl_running_total(
    _key: Any, value: int, ts: int, state: ExpireMap[str, int]
) -> tuple[int, ExpireMap[str, int]]:
    total = state.get("total", 0) + value
    state.insert("total", total, ts + 15)  # forget the total 15 time units after this update
    return total, state


def build_running_total(provider: StreamProvider) -> None:
    on_time, _late = (
        provider.new_stream()
        .source("numbers", IterSource(range(100)))
        .key_local("key-by-parity", lambda x: "odd" if x % 2 else "even")
        .assign_timestamps("number-as-time", lambda x: x)  # the number is its own timestamp
        .generate_epochs("numbers-epochs", epoch_at_record)
    )
    on_time.ttl_map("running-total", ttl_running_total).sink("totals-sink", StdOutSink())


def sliding_concat(
    _key: Any, word: str, ts: int, state: ExpireMap[int, str]
) -> tuple[str, ExpireMap[int, str]]:
    state.insert(ts, word, ts + 2)  # keep each word for two time units
    window = [state.get(t) for t in (ts - 1, ts)]
    return "|".join(w for w in window if w is not None), state


def build_sliding_window(provider: StreamProvider) -> None:
    words = ["foo", "bar", "hello", "world", "baz"]
    on_time, _late = (
        provider.new_stream()
        .source("words", IterSource(words))
        .key_local("single-key", lambda _: 0)  # a single key for all records
        .generate_epochs("words-epochs", epoch_at_record)  # IterSource stamps 0, 1, 2, ...
    )
    (
        on_time.ttl_map("sliding-window", sliding_concat)
        .filter("remove-empty", bool)
        .sink("window-sink", StdOutSink())
    )


def build(provider: StreamProvider) -> None:
    """Both dataflows as one job: two independent streams (operator names are unique)."""
    build_running_total(provider)
    build_sliding_window(provider)


if __name__ == "__main__":
    # Run the two dataflows one after the other so their outputs do not interleave.
    print("=== Running Total Example ===")
    SingleThreadRuntime(build_running_total, snapshot_interval=300).execute()
    print()
    print("=== Sliding Window Example ===")
    SingleThreadRuntime(build_sliding_window, snapshot_interval=300).execute()
