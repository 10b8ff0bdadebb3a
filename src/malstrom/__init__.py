"""malstrom: distributed, stateful stream processing for Python.

Write a ``build(provider)`` function that wires streams through named operators, then run it
with a runtime::

    from malstrom import StreamProvider, SingleThreadRuntime
    from malstrom.sources import IterSource
    from malstrom.sinks import StdOutSink

    def build(provider: StreamProvider) -> None:
        (provider.new_stream()
            .source("words", IterSource(["Look", "ma'", "I'm", "streaming"]))
            .map("upper", str.upper)
            .sink("stdout", StdOutSink()))

    SingleThreadRuntime(build).execute()
"""

from malstrom.errors import BuildError, JobFailed, MalstromError, OperationRefused, OperatorError
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators.basic import OperatorContext, StatelessLogic
from malstrom.operators.output import Output
from malstrom.operators.stateful import ExpireMap, StatefulLogic
from malstrom.runtime._multi import JobHandle, MultiProcessRuntime
from malstrom.runtime._single import SingleThreadRuntime
from malstrom.sinks import StatefulSink, StatelessSink
from malstrom.sources import StatefulSource, StatelessSource
from malstrom.stream import Stream, StreamProvider
from malstrom.types import MAX, MIN, NoKey, Record

__all__ = [
    "MAX",
    "MIN",
    "BuildError",
    "ExpireMap",
    "JobFailed",
    "JobHandle",
    "MalstromError",
    "MultiProcessRuntime",
    "NoKey",
    "OperationRefused",
    "OperatorContext",
    "OperatorError",
    "Output",
    "Record",
    "SingleThreadRuntime",
    "StatefulLogic",
    "StatefulSink",
    "StatefulSource",
    "StatelessLogic",
    "StatelessSink",
    "StatelessSource",
    "Stream",
    "StreamProvider",
    "rendezvous_select",
]

__version__ = "0.1.0"
