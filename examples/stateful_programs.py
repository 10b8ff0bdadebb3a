"""Stateful programs: a running sum with ``stateful_map``.

``stateful_map(name, fn, initial)`` calls ``fn(key, value, state)`` for every record and
keeps the returned state per key (``initial()`` for a key seen the first time). All numbers
are keyed to the same key, so the job prints the running sum of 0..100, ending at 5050.

State takes part in snapshots: the runtime here takes one every 300 seconds, but with the
default ``NoPersistence`` nothing is stored (see ``persistence_backend.py`` for a backend that
keeps snapshots so a job can resume).
"""

from typing import Any

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource


def running_sum(_key: Any, value: int, total: int) -> tuple[int, int]:
    total += value
    return total, total  # (value to emit, new state)


def print_value(record: Record, _ctx: OperatorContext) -> None:
    print(record.value)


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-by-value", lambda _: 0)  # one key for all records
        .stateful_map("sum", running_sum, initial=int)
        .inspect("print", print_value)
    )


if __name__ == "__main__":
    SingleThreadRuntime(build, snapshot_interval=300).execute()
