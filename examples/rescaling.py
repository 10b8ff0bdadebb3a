"""Rescaling: keyed state follows its key when workers are added or removed.

The source cycles through 0..100 (three rounds here, so the job ends); numbers are keyed by
parity and summed per key with ``stateful_map``. Each running sum is printed with the worker
that computed it. At the end the even sum is ``3 * 2550 = 7650`` and the odd sum
``3 * 2500 = 7500``, however often the job was rescaled in between: a rescale moves a key's
state to its new owner without stopping the stream and without losing or repeating an update.

Rescaling needs more than one worker. With the multi-process runtime (coming) the same
``build`` is started non-blocking and rescaled while it runs::

    handle = MultiProcessRuntime(build, parallelism=2).start()
    handle.rescale(1)   # ... and later
    handle.rescale(2)
    handle.wait()

Today the example runs on :class:`~malstrom.SingleThreadRuntime` (one worker, no rescale);
its output (the sums) is the same.
"""

import itertools
from typing import Any

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource

ROUNDS = 3


def numbers() -> itertools.chain[int]:
    """0..100, ``ROUNDS`` times; a factory, so the source can replay it on restore."""
    return itertools.chain.from_iterable(itertools.repeat(range(101), ROUNDS))


def parity(value: int) -> str:
    return "even" if value % 2 == 0 else "odd"


def running_sum(_key: Any, value: int, total: int) -> tuple[int, int]:
    total += value
    return total, total


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    print(f"{record.key} sum {record.value} @ Worker {ctx.worker_id}")


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(numbers))
        .key_distribute("key-odd-even", parity)
        .stateful_map("keyed-sum", running_sum, initial=int)
        .inspect("print", print_with_worker)
    )


if __name__ == "__main__":
    # With MultiProcessRuntime (coming) a side thread would call handle.rescale(n) every few
    # seconds here; the single-thread runtime has one worker and nothing to rescale.
    SingleThreadRuntime(build).execute()
