"""Keyed streams: ``key_distribute`` re-keys records and sends each key to the worker owning it.

Every worker runs the whole dataflow; records only move between workers at ``key_distribute``.
Here numbers are keyed by parity and the job runs on two worker processes, so the even numbers
are all printed by one worker and the odd numbers all by one worker (which one is decided by
the partitioner, ``rendezvous_select`` by default, and is the same on every run; with two
keys it may be the same worker for both). Lines of the two workers interleave in any order.
"""

from malstrom import MultiProcessRuntime, OperatorContext, Record, StreamProvider
from malstrom.sources import IterSource


def parity(value: int) -> str:
    return "even" if value % 2 == 0 else "odd"


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    print(f"{record} @ Worker {ctx.worker_id}", flush=True)


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-odd-even", parity)
        .inspect("print", print_with_worker)
    )


if __name__ == "__main__":
    MultiProcessRuntime(build, parallelism=2).execute()
