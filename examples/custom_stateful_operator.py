"""A custom stateful operator: subclass :class:`~malstrom.StatefulLogic`.

``CustomBatching(n)`` collects values into lists of ``n`` per key. ``on_data`` receives the
record and its key's state (``initial_state()`` when the key has none) and returns the new
state; returning ``None`` deletes it, which is how a full batch is reset after it is emitted.
``on_epoch`` sees the states of all keys; at the end of the stream (``epoch is MAX``) it
flushes the incomplete batches.

For the numbers 0..100 this prints 20 batches of five (each stamped with the timestamp of its
last element) and finally ``[100]`` stamped ``MAX``.

State is keyed, so the stream must be keyed first: ``key_local`` puts every record under the
single key ``"all"`` (the state lives wherever the record already is).
"""

from collections.abc import MutableMapping
from typing import Any

from malstrom import MAX, Output, Record, SingleThreadRuntime, StatefulLogic, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


class CustomBatching(StatefulLogic[Any, Any, list[Any], list[Any]]):
    def __init__(self, size: int) -> None:
        self.size = size

    def initial_state(self) -> list[Any]:
        return []

    def on_data(
        self, record: Record, state: list[Any] | None, output: Output[list[Any]]
    ) -> list[Any] | None:
        batch = [*(state or []), record.value]
        if len(batch) == self.size:
            output.emit(batch)  # key and timestamp of the current record
            return None  # delete the state: the next record starts a new batch
        return batch

    def on_epoch(
        self, epoch: Any, states: MutableMapping[Any, list[Any]], output: Output[list[Any]]
    ) -> None:
        if epoch is MAX:
            # End of stream: emit every incomplete batch.
            for key, batch in states.items():
                output.emit(batch, key=key, timestamp=MAX)
            states.clear()


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_local("key-one", lambda _: "all")  # only keyed streams can use state
        .stateful_op("batches", CustomBatching(5))
        .sink("stdout", StdOutSink())
    )


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
