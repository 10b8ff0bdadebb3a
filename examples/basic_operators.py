"""Operators: a source, a ``map`` and an ``inspect``.

Every step of a dataflow is an *operator* with a unique name. Here ``IterSource`` emits the
numbers 0..100, ``map`` doubles each value and ``inspect`` prints it, so the job prints every
second number from 0 to 200, one per line.
"""

from malstrom import OperatorContext, Record, SingleThreadRuntime, StreamProvider
from malstrom.sources import IterSource


def print_value(record: Record, _ctx: OperatorContext) -> None:
    print(record.value)


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))  # <-- this is an operator
        .map("double", lambda x: x * 2)
        .inspect("print", print_value)  # <-- and this too
    )


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
