"""The exceptions users see."""

from __future__ import annotations

from reprlib import Repr

__all__ = ["AttemptFenced", "BuildError", "OperatorError"]

_repr = Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 8
_repr.maxtuple = 8
_repr.maxdict = 8
_repr.maxlevel = 3


def short_repr(obj: object) -> str:
    """A repr bounded in length, so a huge record never floods an error message."""
    try:
        return _repr.repr(obj)
    except Exception:  # a user __repr__ may itself fail
        return f"<unprintable {type(obj).__name__}>"


class BuildError(ValueError):
    """The dataflow is wired wrongly (duplicate name, second source, bad argument...).

    Raised while the job is built, before any record flows; the message names the operator.
    """


class OperatorError(RuntimeError):
    """A user function (or a source/sink) raised while processing.

    ``operator`` names the operator, ``record`` is the record being processed (or None), and
    the original exception is chained as ``__cause__``.
    """

    def __init__(self, operator: str, message: str, record: object = None) -> None:
        self.operator = operator
        self.record = record
        detail = f" on {short_repr(record)}" if record is not None else ""
        super().__init__(f"operator {operator!r}{detail}: {message}")


class AttemptFenced(RuntimeError):
    """This worker's job attempt is over (it failed or was aborted elsewhere): the worker must
    not write output, commit or send anything more. It drops what it holds and, in cluster
    mode, rejoins the job's next attempt."""
