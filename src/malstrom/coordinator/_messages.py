"""The coordinator <-> worker protocol: plain, transport-neutral messages.

Every runtime speaks exactly this protocol; only the transport that carries it differs
(in-process queues for the single-thread runtime, gRPC for processes and machines).
"""

from __future__ import annotations

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
]


# ----- coordinator -> worker -----------------------------------------------------------------
@dataclass(frozen=True)
class StartBuild:
    """Build the graph for ``worker_set``, restoring state from ``restore_version`` if set."""

    worker_set: tuple[int, ...]
    restore_version: int | None
    peers: dict[int, str] | None = None  # data-plane addresses, for network transports
    persistence: Any = None  # the job's backend, for workers started without one (cluster)


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
    """Sent from the worker loop about once a second: the loop is alive and turning."""

    worker: int


@dataclass(frozen=True)
class BuildComplete:
    worker: int


@dataclass(frozen=True)
class SnapshotComplete:
    """The barrier of ``version`` passed every operator; the worker's blob (if any) is stored."""

    worker: int
    version: int
    blob: tuple[str, int, int] | None  # (name, size, crc32)


@dataclass(frozen=True)
class RescaleComplete:
    """Every operator of the worker finished moving state for configuration ``version``."""

    worker: int
    version: int


@dataclass(frozen=True)
class Drained:
    """Every operator of the worker has seen the end of stream (``Epoch(MAX)``)."""

    worker: int


@dataclass(frozen=True)
class WorkerFailed:
    worker: int
    error: str
