"""Parallelism: the same dataflow on several workers.

Numbers are keyed by their own value with ``key_distribute``, doubled, and printed together
with the id of the worker that processed them. With four workers the keys (and so the
records) spread over workers 0 to 3; each key always lands on the same worker.

In Python a worker is an OS process (threads would share one GIL), so the multi-worker
runtime is ``MultiProcessRuntime`` (coming): ``MultiProcessRuntime(build,
parallelism=4).execute()`` runs this very ``build`` on four processes. Today the example runs
on :class:`~malstrom.SingleThreadRuntime`, where every record is handled by worker 0.
"""

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource


def print_with_worker(record: Record, ctx: OperatorContext) -> None:
    print(f"{record.value} @ Worker {ctx.worker_id}")


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-by-value", lambda x: x)
        .map("double", lambda x: x * 2)
        .inspect("print", print_with_worker)
    )


if __name__ == "__main__":
    # Same build on four worker processes (coming):
    #     MultiProcessRuntime(build, parallelism=4).execute()
    SingleThreadRuntime(build).execute()
