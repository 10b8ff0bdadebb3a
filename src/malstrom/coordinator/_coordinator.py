"""The coordinator: one per job. It builds and starts the workers, triggers snapshots,
commits a version once every worker reported it complete, and ends the job with a final
committed snapshot once every worker has drained.

It is a state machine polled by its runtime (never blocking), so the same object drives the
in-process runtime and, behind a network transport, worker processes.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping

from malstrom.coordinator._messages import (
    BuildComplete,
    Drained,
    Finish,
    SnapshotCommitted,
    SnapshotComplete,
    StartBuild,
    StartExecution,
    TakeSnapshot,
    WorkerFailed,
)
from malstrom.snapshot._backend import BlobInfo, Manifest, Persistence
from malstrom.transport._local import Endpoint

__all__ = ["Coordinator", "JobPhase"]

log = logging.getLogger("malstrom.coordinator")


class JobPhase(enum.Enum):
    BUILDING = "building"
    RUNNING = "running"
    SNAPSHOTTING = "snapshotting"
    FINISHING = "finishing"  # final snapshot after every worker drained
    FINISHED = "finished"
    FAILED = "failed"


class Coordinator:
    """Drives one job over the given worker endpoints."""

    def __init__(
        self,
        persistence: Persistence,
        workers: Mapping[int, Endpoint],
        snapshot_interval: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if snapshot_interval is not None and snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be > 0 seconds, got {snapshot_interval!r}")
        self.persistence = persistence
        self.workers = dict(workers)
        self.interval = snapshot_interval
        self.clock = clock
        self.phase = JobPhase.BUILDING
        self.error: str | None = None
        self.restored_from: int | None = None
        self.last_committed: int | None = None
        self._built: set[int] = set()
        self._drained: set[int] = set()
        self._snap_version: int | None = None
        self._snap_done: dict[int, tuple[str, int, int] | None] = {}
        self._next_snapshot_at = float("inf")
        self._next_version = 0

    # ----- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        manifest = self.persistence.latest_restorable() if self.persistence.stores else None
        if manifest is not None:
            self.restored_from = manifest.version
            log.info("restoring from snapshot version %d", manifest.version)
        committed = self.persistence.committed_versions() if self.persistence.stores else []
        self._next_version = (committed[-1] + 1) if committed else 0
        if manifest is not None and manifest.meta.get("final"):
            # Every operator had seen the end of stream when this was taken: the job is done.
            # Running it again must not replay end-of-stream hooks (no duplicate output).
            log.info("job already completed at snapshot version %d", manifest.version)
            self.last_committed = manifest.version
            self.phase = JobPhase.FINISHED
            return
        worker_set = tuple(sorted(self.workers))
        for ep in self.workers.values():
            ep.send(StartBuild(worker_set, self.restored_from))

    @property
    def finished(self) -> bool:
        return self.phase is JobPhase.FINISHED

    def poll(self) -> None:
        """Handle every queued worker message and fire due timers."""
        for ep in self.workers.values():
            while (msg := ep.recv()) is not None:
                self._handle(msg)
        if self.phase is JobPhase.RUNNING:
            if len(self._drained) == len(self.workers):
                self._begin_snapshot(final=True)
            elif self.clock() >= self._next_snapshot_at:
                self._begin_snapshot(final=False)

    def request_snapshot(self) -> bool:
        """Start a snapshot now; False if another operation is running."""
        if self.phase is not JobPhase.RUNNING:
            return False
        self._begin_snapshot(final=False)
        return True

    # ----- internals -----------------------------------------------------------------------
    def _broadcast(self, msg: object) -> None:
        for ep in self.workers.values():
            ep.send(msg)

    def _handle(self, msg: object) -> None:
        if isinstance(msg, BuildComplete):
            self._built.add(msg.worker)
            if self.phase is JobPhase.BUILDING and len(self._built) == len(self.workers):
                self._broadcast(StartExecution())
                self.phase = JobPhase.RUNNING
                self._arm_timer()
        elif isinstance(msg, SnapshotComplete):
            if msg.version != self._snap_version:
                log.warning("ignoring completion of unknown snapshot %d", msg.version)
                return
            self._snap_done[msg.worker] = msg.blob
            if len(self._snap_done) == len(self.workers):
                self._commit()
        elif isinstance(msg, Drained):
            self._drained.add(msg.worker)
        elif isinstance(msg, WorkerFailed):
            self.phase = JobPhase.FAILED
            self.error = f"worker {msg.worker} failed: {msg.error}"
        else:
            raise TypeError(f"coordinator got an unexpected message {msg!r}")

    def _arm_timer(self) -> None:
        self._next_snapshot_at = (
            self.clock() + self.interval if self.interval is not None else float("inf")
        )

    def _begin_snapshot(self, final: bool) -> None:
        version = self._next_version
        self._next_version += 1
        self._snap_version = version
        self._snap_done = {}
        self.phase = JobPhase.FINISHING if final else JobPhase.SNAPSHOTTING
        self._broadcast(TakeSnapshot(version))

    def _commit(self) -> None:
        version = self._snap_version
        assert version is not None
        blobs = {b[0]: BlobInfo(b[1], b[2]) for b in self._snap_done.values() if b is not None}
        meta = {"workers": sorted(self.workers), "final": self.phase is JobPhase.FINISHING}
        self.persistence.commit(Manifest(version, blobs, meta))
        self.last_committed = version
        self._snap_version = None
        self._broadcast(SnapshotCommitted(version))
        if self.phase is JobPhase.FINISHING:
            self._broadcast(Finish())
            self.phase = JobPhase.FINISHED
        else:
            self.phase = JobPhase.RUNNING
            self._arm_timer()
