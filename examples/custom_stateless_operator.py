"""A custom stateless operator: subclass :class:`~malstrom.StatelessLogic`.

``on_data(record, output)`` is called for every record and may emit any number of records
through ``output.emit(value)`` (key and timestamp default to the input record's). This
``CustomFlatten`` re-implements the built-in ``flatten``: the lists ``[1, 2, 3, 4]``,
``[5, 6, 7]`` and ``[8, 9, 10]`` become the records 1..10, each keeping the timestamp of the
list it came from.
"""

from typing import Any

from malstrom import Output, Record, SingleThreadRuntime, StatelessLogic, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


class CustomFlatten(StatelessLogic):
    """Emits one record per element of each (iterable) value."""

    def on_data(self, record: Record, output: Output[Any]) -> None:
        for x in record.value:
            output.emit(x)


def build(provider: StreamProvider) -> None:
    data = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10]]
    (
        provider.new_stream()
        .source("iter-source", IterSource(data))
        .stateless_op("flatten", CustomFlatten())
        .sink("stdout", StdOutSink())
    )


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
