"""The smallest possible job: a stream with nothing in it.

Teaches the skeleton every malstrom program shares:

* a module-level ``build(provider)`` function that describes the dataflow, and
* a runtime that executes it (here :class:`~malstrom.SingleThreadRuntime`).

The stream has no source, so it ends immediately: the job does absolutely nothing and exits.
"""

from malstrom import SingleThreadRuntime, StreamProvider


def build(provider: StreamProvider) -> None:
    provider.new_stream()


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
