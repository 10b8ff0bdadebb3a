"""Every error malstrom raises on purpose, under one base: :class:`MalstromError`.

Each class also keeps the builtin base it always had (``ValueError`` for bad input,
``RuntimeError`` for failures), so ``except RuntimeError`` code keeps working.

The rule for runtimes: a job that is wired wrongly raises :class:`BuildError` at once, before
anything runs; a job that fails while it runs raises :class:`JobFailed`, from every runtime.
In-process (:class:`~malstrom.SingleThreadRuntime`) the original error, e.g. the
:class:`OperatorError` naming the operator and the record, is its ``__cause__``; across
processes its message carries the cause.
"""

from __future__ import annotations

from malstrom._repr import short_repr

__all__ = [
    "AdminError",
    "AttemptFenced",
    "BuildError",
    "JobFailed",
    "MalstromError",
    "OperationRefused",
    "OperatorError",
    "SnapshotCorruptError",
    "SnapshotFormatError",
    "SnapshotsDamagedError",
    "StorageError",
    "StoreUnavailableError",
    "TransportError",
]


class MalstromError(Exception):
    """Base of every error malstrom raises on purpose (catch it to catch them all)."""


class BuildError(MalstromError, ValueError):
    """The dataflow is wired wrongly (duplicate name, second source, bad argument...).

    Raised while the job is built, before any record flows; the message names the operator.
    """


class OperatorError(MalstromError, RuntimeError):
    """A user function (or a source/sink) raised while processing.

    ``operator`` names the operator, ``record`` is the record being processed (or None), and
    the original exception is chained as ``__cause__``.
    """

    def __init__(self, operator: str, message: str, record: object = None) -> None:
        self.operator = operator
        self.record = record
        detail = f" on {short_repr(record)}" if record is not None else ""
        super().__init__(f"operator {operator!r}{detail}: {message}")


class AttemptFenced(MalstromError, RuntimeError):
    """This worker's job attempt is over (it failed or was aborted elsewhere): the worker must
    not write output, commit or send anything more. It drops what it holds and, in cluster
    mode, rejoins the job's next attempt."""


class JobFailed(MalstromError, RuntimeError):
    """The job could not complete: it failed (restarts, if any, were exhausted). The message
    gives the cause; in-process runtimes also chain it as ``__cause__``."""


class OperationRefused(MalstromError, RuntimeError):
    """A snapshot, rescale or stop the job cannot take: it ended or failed, the request is
    invalid (rescale to 0 workers), or new workers never came."""


class TransportError(MalstromError, RuntimeError):
    """A peer cannot be reached (after retries), or refused us; the job must restart."""


class AdminError(MalstromError, RuntimeError):
    """The coordinator refused or failed an admin command (its message says why)."""


class StorageError(MalstromError, RuntimeError):
    """A call to the snapshot store failed or did not answer in time. The message names the
    backend and its location, what was being done and the cause."""


class StoreUnavailableError(StorageError):
    """The snapshot store could not be reached or refused the request (network, credentials,
    missing bucket, timeout). The message names the store's URL.

    It is deliberately not an :class:`OSError`: a store that cannot be reached says nothing
    about whether a snapshot is damaged, so restoring never skips a version because of it
    (it would silently fall back to an older snapshot); the job fails and is retried instead.
    """


class SnapshotFormatError(MalstromError, RuntimeError):
    """A committed snapshot was written in a format this release cannot read."""


class SnapshotCorruptError(MalstromError, RuntimeError):
    """A committed snapshot version is damaged (missing blob, wrong size or checksum)."""


class SnapshotsDamagedError(SnapshotCorruptError):
    """Snapshots exist but every one is damaged: the job refuses to start from scratch.

    Starting over would rewrite the job's output (file sinks start empty) and reread its
    sources from the beginning. ``versions`` lists the damaged versions, ``reasons`` why each
    is unusable. Repair the store, or start fresh on purpose (``fresh_start=True``, on the
    command line ``--fresh-start``).
    """

    def __init__(self, location: str, damage: dict[int, str]) -> None:
        self.location = location
        self.versions = sorted(damage)
        self.reasons = dict(damage)
        detail = "; ".join(damage[v] for v in self.versions)
        super().__init__(
            f"every committed snapshot in {location} is damaged (versions "
            f"{', '.join(map(str, self.versions))}: {detail}). Refusing to start from scratch, "
            "which would rewrite the job's output and reread its sources from the beginning. "
            "Repair or restore the snapshot store, or start fresh on purpose with "
            "fresh_start=True (command line: --fresh-start)"
        )
