"""Keyed state: one running sum per key.

The numbers 0..100 are keyed ``"even"`` or ``"odd"`` with ``key_distribute``; ``stateful_map``
keeps a separate state per key, so the sink prints two interleaved running sums. The last
``"even"`` record carries 2550 (0 + 2 + ... + 100) and the last ``"odd"`` one 2500
(1 + 3 + ... + 99).
"""

from typing import Any

from malstrom import SingleThreadRuntime, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


def parity(value: int) -> str:
    return "odd" if value % 2 else "even"


def running_sum(_key: Any, value: int, total: int) -> tuple[int, int]:
    total += value
    return total, total


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-by-parity", parity)
        .stateful_map("sum", running_sum, initial=int)
        .sink("stdout", StdOutSink())
    )


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
