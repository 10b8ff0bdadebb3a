"""Rescaling: keyed state follows its key when workers join or leave a running job.

The source counts through 0..100 three times, slowly; numbers are keyed by parity and summed
per key with ``stateful_map``. Each running sum is printed with the worker that computed it.
While the job runs, a side thread rescales it from 2 workers to 3, then to 1, then to 2: new
worker processes start, the keys (and the source's position) move to their new owners, and
removed workers exit, all without stopping the stream. At the end the even sum is
``3 * 2550 = 7650`` and the odd sum ``3 * 2500 = 7500``, with no update lost or repeated,
however the job was rescaled in between.

    python examples/rescaling.py
"""

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from malstrom import MultiProcessRuntime, OperatorContext, Record, StreamProvider
from malstrom.sources import IterSource

ROUNDS = 3


def numbers() -> Iterator[int]:
    """0..100, ``ROUNDS`` times, one every 10 ms; a factory, so the source can replay it."""
    for n in itertools.chain.from_iterable(itertools.repeat(range(101), ROUNDS)):
        time.sleep(0.01)
        yield n


def parity(value: int) -> str:
    return "even" if value % 2 == 0 else "odd"


def running_sum(_key: Any, value: int, total: int) -> tuple[int, int]:
    total += value
    return total, total


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    print(f"{record.key} sum {record.value} @ Worker {ctx.worker_id}", flush=True)


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(numbers))
        .key_distribute("key-odd-even", parity)
        .stateful_map("keyed-sum", running_sum, initial=int)
        .inspect("print", print_with_worker)
    )


def rescale_a_few_times(handle: Any) -> None:
    for workers in (3, 1, 2):
        time.sleep(0.5)
        if handle.running:
            handle.rescale(workers)


if __name__ == "__main__":
    job = MultiProcessRuntime(build, parallelism=2).start()
    threading.Thread(target=rescale_a_few_times, args=(job,), daemon=True).start()
    job.wait()
