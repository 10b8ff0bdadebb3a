"""Combining streams: ``union(name, *others)`` merges several streams into one.

Two independent sources each emit 0..100; their union goes to one sink, so every number is
printed twice (the union interleaves the streams; it does not zip or join them by key).
Event time is merged too: the union's epoch is the minimum of its inputs' epochs, so the
merged stream ends only once both sources have ended.
"""

from malstrom import SingleThreadRuntime, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.sources import IterSource


def build(provider: StreamProvider) -> None:
    numbers = provider.new_stream().source("iter-source", IterSource(range(101)))
    more_numbers = provider.new_stream().source("other-iter-source", IterSource(range(101)))
    numbers.union("union", more_numbers).sink("std-out-sink", StdOutSink())


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
