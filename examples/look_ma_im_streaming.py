"""Look ma, I'm streaming! The README's first job.

A source of four words, a ``map`` that upper-cases each word, and a sink that prints every
record. It prints::

    Record(key=NoKey, value='LOOK', timestamp=0)
    Record(key=NoKey, value="MA'", timestamp=1)
    Record(key=NoKey, value="I'M", timestamp=2)
    Record(key=NoKey, value='STREAMING', timestamp=3)

Records carry a key (``NoKey``: the stream is not keyed yet), a value and an event-time
timestamp (``IterSource`` numbers its items 0, 1, 2, ...).
"""

from malstrom import SingleThreadRuntime, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("words", IterSource(["Look", "ma'", "I'm", "streaming"]))
        .map("upper", str.upper)
        .sink("stdout", StdOutSink())
    )


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
