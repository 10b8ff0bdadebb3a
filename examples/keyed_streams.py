"""Keyed streams: ``key_distribute`` re-keys records and sends each key to the worker owning it.

Every worker runs the whole dataflow; records only move between workers at ``key_distribute``.
Here numbers are keyed by parity, so with two workers the even numbers are all printed by one
worker and the odd numbers by the other (which one is decided by the partitioner,
``rendezvous_select`` by default, and is stable across runs).

This runs on :class:`~malstrom.SingleThreadRuntime` today, where the one worker (id 0) owns
both keys. The same ``build`` runs unchanged on two workers with the multi-process runtime
(coming): ``MultiProcessRuntime(build, parallelism=2).execute()``.
"""

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource


def parity(value: int) -> str:
    return "even" if value % 2 == 0 else "odd"


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    print(f"{record} @ Worker {ctx.worker_id}")


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-odd-even", parity)
        .inspect("print", print_with_worker)
    )


if __name__ == "__main__":
    # Same build on two workers (coming): MultiProcessRuntime(build, parallelism=2).execute()
    SingleThreadRuntime(build).execute()
