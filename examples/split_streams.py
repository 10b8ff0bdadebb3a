"""Splitting a stream: ``split(name, n, fn)`` routes each record to any subset of ``n`` streams.

The routing function receives the record and a list of ``n`` flags, all ``False``; it sets
``outputs[i] = True`` for every stream the record should go to. Here even numbers go to both
streams and odd numbers only to the second, so ``even-sink`` prints the even numbers of
0..100 and ``all-sink`` prints all of them.
"""

from malstrom import Record, SingleThreadRuntime, StatelessSink, StreamProvider
from malstrom.sources import IterSource


class LabelledPrinter:
    """A minimal stateless sink: prints each record prefixed with a label."""

    def __init__(self, label: str) -> None:
        self.label = label

    def sink(self, record: Record) -> None:
        print(f"{self.label}: {record}")


def route_even_odd(record: Record, outputs: list[bool]) -> None:
    if record.value % 2 == 0:
        outputs[0] = outputs[1] = True  # even: to both streams
    else:
        outputs[1] = True  # odd: only to the "all" stream


def build(provider: StreamProvider) -> None:
    even_nums, all_nums = (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .split("split-even-odd", 2, route_even_odd)
    )
    even_nums.sink("even-sink", StatelessSink(LabelledPrinter("even-sink")))
    all_nums.sink("all-sink", StatelessSink(LabelledPrinter("all-sink")))


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
