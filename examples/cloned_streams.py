"""Cloning a stream: ``cloned(name, n)`` sends every record to each of ``n`` streams.

The numbers 0..100 are cloned into two streams, each ending in its own sink, so every record
is printed twice: once by ``numbers-sink`` and once by ``more-numbers-sink``.
"""

from malstrom import Record, SingleThreadRuntime, StatelessSink, StreamProvider
from malstrom.sources import IterSource


class LabelledPrinter:
    """A minimal stateless sink: prints each record prefixed with a label."""

    def __init__(self, label: str) -> None:
        self.label = label

    def sink(self, record: Record) -> None:
        print(f"{self.label}: {record}")


def build(provider: StreamProvider) -> None:
    numbers, more_numbers = (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .cloned("clone-values", 2)
    )
    numbers.sink("numbers-sink", StatelessSink(LabelledPrinter("numbers-sink")))
    more_numbers.sink("more-numbers-sink", StatelessSink(LabelledPrinter("more-numbers-sink")))


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
