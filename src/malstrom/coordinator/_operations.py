"""The coordinator's operations as objects: what is asked (:class:`Operation`), and the one
operation in flight (:class:`PendingSnapshot`, :class:`PendingRescale`) with the
acknowledgements it waits for and its completion test.

The coordinator runs one operation at a time; requests queue as :class:`Request` s. The
operation vocabulary is shared by the coordinator, the supervisor and the admin commands (the
admin wire strings are ``Operation.value``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Callback",
    "JobPhase",
    "Operation",
    "PendingRescale",
    "PendingSnapshot",
    "Request",
]

Callback = Callable[[Any, BaseException | None], None]
"""``callback(result, None)`` once an operation completed, ``(None, error)`` if it did not."""


class Operation(enum.Enum):
    """What can be asked of a running job (also the admin command names)."""

    SNAPSHOT = "snapshot"
    STOP = "stop"  # a final, resumable snapshot, then every worker exits
    RESCALE = "rescale"
    STATUS = "status"  # answered at once, never queued


class JobPhase(enum.Enum):
    """The job's status as the coordinator reports it (derived from its operation in flight)."""

    BUILDING = "building"
    RUNNING = "running"
    SNAPSHOTTING = "snapshotting"
    JOINING = "joining"  # rescale: waiting for new workers to connect and build
    RESCALING = "rescaling"  # rescale: keys and parts move between running workers
    STOPPING = "stopping"  # final snapshot of a stop (resumable)
    FINISHING = "finishing"  # final snapshot after every worker drained (job complete)
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class Request:
    """A queued request: the operation, who to answer, and a rescale's new worker count."""

    op: Operation
    callback: Callback | None
    workers: int = 0

    def answer(self, result: Any, error: BaseException | None = None) -> None:
        if self.callback is not None:
            self.callback(result, error)


@dataclass
class PendingSnapshot:
    """A snapshot in flight: complete once every worker acknowledged ``version``.

    ``phase`` says which kind: a periodic or requested one (SNAPSHOTTING), the final one of a
    stop (STOPPING) or of a job whose every worker drained (FINISHING).
    """

    version: int
    phase: JobPhase
    request: Request | None
    acks: dict[int, tuple[str, int, int] | None] = field(default_factory=dict)

    @property
    def stop(self) -> bool:
        """Workers exit after this snapshot commits (a stop or the job's end)."""
        return self.phase in (JobPhase.STOPPING, JobPhase.FINISHING)

    @property
    def final(self) -> bool:
        """The job completed: a restart from this snapshot has nothing left to do."""
        return self.phase is JobPhase.FINISHING

    def ack(self, worker: int, blob: tuple[str, int, int] | None) -> None:
        self.acks[worker] = blob

    def complete(self, workers: Collection[int]) -> bool:
        return len(self.acks) == len(workers)


@dataclass
class PendingRescale:
    """A rescale in flight: JOINING until every new worker built, then RESCALING until every
    worker of the new configuration reported its keys and parts moved."""

    request: Request
    target: tuple[int, ...]
    joining: set[int]
    built: set[int] = field(default_factory=set)
    rescaled: set[int] = field(default_factory=set)
    phase: JobPhase = JobPhase.JOINING

    def joined(self) -> bool:
        """Every new worker has built (it may start)."""
        return self.built == self.joining

    def complete(self, workers: Collection[int]) -> bool:
        return len(self.rescaled) == len(workers)
