"""The coordinator <-> worker protocol: plain, transport-neutral messages.

Every runtime speaks exactly this protocol; only the transport that carries it differs
(in-process queues for the single-thread runtime, gRPC for processes and machines).

**Attempts.** Each start or restart of a job is an *attempt* with its own id (an int that
grows from attempt to attempt, see ``new_attempt_id``). :class:`StartBuild` tells a worker
the attempt it belongs to; every message a worker sends afterwards carries that id, and the
coordinator ignores messages of any other attempt. Workers put it on their data-plane streams
too (peers refuse streams of another attempt), name their snapshot blobs with it (a late
write of a failed attempt never replaces a blob of a later one) and hand it to their sinks
(``FileSink`` refuses writes of an attempt older than the newest that wrote its files). So
nothing a worker of a failed attempt still does, such as a late flush, a stale send or a
snapshot write, reaches the output or the state of a later attempt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Abort",
    "BuildComplete",
    "Drained",
    "Finish",
    "Heartbeat",
    "Hello",
    "Reconfigure",
    "RescaleComplete",
    "SnapshotCommitted",
    "SnapshotComplete",
    "StartBuild",
    "StartExecution",
    "TakeSnapshot",
    "WorkerFailed",
    "new_attempt_id",
]

_attempt_lock = threading.Lock()
_last_attempt = 0


def new_attempt_id(after: int = 0) -> int:
    """The id of a new job attempt: microseconds since the epoch, greater than ``after`` and
    than every id this process made before.

    Attempt ids grow from one attempt to the next: in one coordinator process always, across
    coordinator processes (a replaced coordinator) as far as their clocks agree; a coordinator
    also starts above the attempt recorded in the snapshot it resumes from, which covers a
    clock that is behind.
    """
    global _last_attempt
    with _attempt_lock:
        _last_attempt = max(_last_attempt + 1, after + 1, time.time_ns() // 1000)
        return _last_attempt


# ----- coordinator -> worker -----------------------------------------------------------------
@dataclass(frozen=True)
class StartBuild:
    """Build the graph for ``worker_set``, restoring state from ``restore_version`` if set."""

    worker_set: tuple[int, ...]
    restore_version: int | None
    peers: dict[int, str] | None = None  # data-plane addresses, for network transports
    persistence: Any = None  # the job's backend, for workers started without one (cluster)
    attempt: int = 0  # the job attempt this worker now belongs to (fencing)
    storage_timeout: float | None = None  # bound on one snapshot store call (None: none)
    metrics: bool = False  # count per operator and report with each heartbeat


@dataclass(frozen=True)
class StartExecution:
    """Every worker is built: start running."""


@dataclass(frozen=True)
class TakeSnapshot:
    """Inject a barrier for snapshot ``version`` and report when it has passed every operator.

    ``stop``: the job stops at this snapshot, so sources produce nothing after the barrier.
    """

    version: int
    stop: bool = False


@dataclass(frozen=True)
class SnapshotCommitted:
    """``version`` is committed: two-phase sinks may publish what it covers."""

    version: int


@dataclass(frozen=True)
class Reconfigure:
    """Move to worker set ``workers`` (configuration ``version``) without stopping: inject a
    Rescale and report :class:`RescaleComplete` once every key and part has moved. ``peers``:
    every worker's data-plane address (network transports)."""

    version: int
    workers: tuple[int, ...]
    peers: dict[int, str] | None = None


@dataclass(frozen=True)
class Finish:
    """The job is complete (its final snapshot is committed): stop."""


@dataclass(frozen=True)
class Abort:
    """The job attempt failed elsewhere: stop now (a restart from the last snapshot follows)."""

    reason: str


# ----- worker -> coordinator -----------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """First message of a worker: who it is and where its peers reach its data plane."""

    worker: int
    data_address: str | None
    pid: int


@dataclass(frozen=True)
class Heartbeat:
    """Sent from the worker loop about once a second: the loop is alive and turning.
    ``attempt`` is None before the worker got its :class:`StartBuild`."""

    worker: int
    attempt: int | None = None
    metrics: Any = None  # the worker's metrics report (malstrom.observe), when asked for


@dataclass(frozen=True)
class BuildComplete:
    worker: int
    attempt: int | None = None


@dataclass(frozen=True)
class SnapshotComplete:
    """The barrier of ``version`` passed every operator; the worker's blob (if any) is stored."""

    worker: int
    version: int
    blob: tuple[str, int, int] | None  # (name, size, crc32)
    attempt: int | None = None


@dataclass(frozen=True)
class RescaleComplete:
    """Every operator of the worker finished moving state for configuration ``version``."""

    worker: int
    version: int
    attempt: int | None = None


@dataclass(frozen=True)
class Drained:
    """Every operator of the worker has seen the end of stream (``Epoch(MAX)``)."""

    worker: int
    attempt: int | None = None


@dataclass(frozen=True)
class WorkerFailed:
    """The worker failed; ``attempt`` is None if it failed before its :class:`StartBuild`."""

    worker: int
    error: str
    attempt: int | None = None
