"""Parallelism: the same dataflow on several workers.

Numbers are keyed by their own value with ``key_distribute``, doubled, and printed together
with the id of the worker that processed them. On four workers the keys (and so the records)
spread over workers 0 to 3; each key always lands on the same worker (the one
``rendezvous_select`` picks), whatever the run.

In Python a worker is an OS process (threads would share one GIL), so the multi-worker
runtime is :class:`~malstrom.MultiProcessRuntime`: the very ``build`` that
``SingleThreadRuntime(build).execute()`` runs on one worker runs here on four processes.
Lines from different workers interleave in any order.
"""

import sys

from malstrom import MultiProcessRuntime, OperatorContext, Record, StreamProvider
from malstrom.sources import IterSource


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    # One write per line: print() writes the text and the newline separately, and four
    # processes sharing an unbuffered stdout could interleave between the two.
    sys.stdout.write(f"{record.value} @ Worker {ctx.worker_id}\n")
    sys.stdout.flush()


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-by-value", lambda x: x)
        .map("double", lambda x: x * 2)
        .inspect("print", print_with_worker)
    )


if __name__ == "__main__":
    MultiProcessRuntime(build, parallelism=4).execute()
