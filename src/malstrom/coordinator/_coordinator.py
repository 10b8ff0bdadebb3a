"""The coordinator: one per job. It builds and starts the workers, runs one operation at a
time (snapshot, rescale, stop), commits a snapshot version once every worker reported it complete,
watches worker heartbeats, and ends the job with a final committed snapshot once every worker
has drained.

It is a state machine polled by its runtime (never blocking), so the same object drives the
in-process runtimes and, behind a network transport, worker processes on many machines.

One coordinator object drives one *attempt* of the job (``attempt``, see
``malstrom.coordinator._messages``): it sends the id in every :class:`StartBuild` and ignores
worker messages that carry another one. It resumes from the newest committed snapshot that
verifies; if snapshots exist but every one is damaged it refuses to start (a silent start from
scratch would rewrite the job's output and reread its sources) unless told to start fresh.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from malstrom.coordinator._messages import (
    BuildComplete,
    Drained,
    Finish,
    Heartbeat,
    Hello,
    Reconfigure,
    RescaleComplete,
    SnapshotCommitted,
    SnapshotComplete,
    StartBuild,
    StartExecution,
    TakeSnapshot,
    WorkerFailed,
    new_attempt_id,
)
from malstrom.coordinator._operations import (
    Callback,
    JobPhase,
    Operation,
    PendingRescale,
    PendingSnapshot,
    Request,
)
from malstrom.errors import OperationRefused
from malstrom.snapshot._backend import BlobInfo, Manifest, Persistence
from malstrom.snapshot._bounded import STORAGE_SHARE, BoundedPersistence
from malstrom.snapshot._errors import StorageError
from malstrom.transport._local import Endpoint

__all__ = ["Coordinator", "JobPhase", "Operation", "OperationRefused", "completed_version"]

log = logging.getLogger("malstrom.coordinator")


def completed_version(persistence: Persistence, after: int | None = None) -> int | None:
    """The snapshot version at which the job completed, if its last snapshot says so.

    Only versions above ``after`` count (a fresh start ignores the older ones). Raises
    :class:`~malstrom.snapshot.SnapshotsDamagedError` if every such version is damaged.
    """
    if not persistence.stores:
        return None
    manifest = persistence.restore_point(after)
    return manifest.version if manifest is not None and manifest.meta.get("final") else None


def _refuse(reason: str, callback: Callback | None) -> None:
    """Answer a request the job cannot take: through its callback, else by raising."""
    err = OperationRefused(reason)
    if callback is None:
        raise err
    callback(None, err)


_ENDED = (JobPhase.FINISHED, JobPhase.STOPPED, JobPhase.FAILED)


class Coordinator:
    """Drives one job attempt over the given worker endpoints."""

    def __init__(
        self,
        persistence: Persistence,
        workers: Mapping[int, Endpoint],
        snapshot_interval: float | None,
        *,
        heartbeat_timeout: float | None = None,
        peers: Mapping[int, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        pinned: list[str] | None = None,
        attempt: int | None = None,
        restore_after: int | None = None,
        observer: Any = None,
    ) -> None:
        if snapshot_interval is not None and snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be > 0 seconds, got {snapshot_interval!r}")
        #: This attempt's id; a new one is made when not given (see ``new_attempt_id``).
        self.attempt = attempt if attempt is not None else new_attempt_id()
        #: Only snapshot versions above this one are restored from (a fresh start).
        self.restore_after = restore_after
        #: Bound on each snapshot store call while the job runs, on the workers and here: a
        #: store that hangs fails the attempt as a storage error before the heartbeat would.
        self.storage_timeout = (
            heartbeat_timeout * STORAGE_SHARE if heartbeat_timeout is not None else None
        )
        self._store = (
            BoundedPersistence(persistence, self.storage_timeout)
            if self.storage_timeout is not None and persistence.stores
            else persistence
        )
        self.persistence = persistence
        self.workers = dict(workers)
        self.interval = snapshot_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.peers = dict(peers) if peers is not None else None
        self.clock = clock
        # BUILDING, RUNNING or how the job ended; phase adds the operation in flight.
        self._state = JobPhase.BUILDING
        self.error: str | None = None
        self.restored_from: int | None = None
        self.last_committed: int | None = None
        self._built: set[int] = set()
        self._drained: set[int] = set()
        self._snapshot: PendingSnapshot | None = None
        self._rescale: PendingRescale | None = None
        self._ops: deque[Request] = deque()
        self._next_snapshot_at = float("inf")
        self._next_version = 0
        self._last_seen: dict[int, float] = {}
        self.pinned = list(pinned or [])
        """Operators keeping keyed state in place: the job cannot lose workers."""
        self.config_version = 0
        #: Gets worker metrics and job events (malstrom.observe.JobObserver); None: no metrics.
        self.observer = observer

    @property
    def phase(self) -> JobPhase:
        """The job's status: how it ended, else the phase of the operation in flight, else
        BUILDING or RUNNING."""
        if self._state in _ENDED:
            return self._state
        op = self._snapshot or self._rescale
        return op.phase if op is not None else self._state

    # ----- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Pick the snapshot to resume from and tell every worker to build.

        Raises :class:`~malstrom.snapshot.SnapshotsDamagedError` if snapshots exist but every
        one is damaged (see ``restore_after`` for starting fresh on purpose).
        """
        stores = self.persistence.stores
        manifest = self.persistence.restore_point(self.restore_after) if stores else None
        if manifest is not None:
            self.restored_from = manifest.version
            log.info("restoring from snapshot version %d", manifest.version)
            before = manifest.meta.get("attempt")
            if isinstance(before, int) and before >= self.attempt:
                self.attempt = new_attempt_id(before)  # this clock is behind: stay above
        committed = self.persistence.committed_versions() if self.persistence.stores else []
        self._next_version = (committed[-1] + 1) if committed else 0
        if manifest is not None and manifest.meta.get("final"):
            # Every operator had seen the end of stream when this was taken: the job is done.
            # Running it again must not replay end-of-stream hooks (no duplicate output).
            log.info("job already completed at snapshot version %d", manifest.version)
            self.last_committed = manifest.version
            self._state = JobPhase.FINISHED
            return
        worker_set = tuple(sorted(self.workers))
        now = self.clock()
        for w, ep in self.workers.items():
            self._last_seen[w] = now
            ep.send(self._start_build(worker_set, self.restored_from))

    def _start_build(self, worker_set: tuple[int, ...], restore: int | None) -> StartBuild:
        return StartBuild(
            worker_set,
            restore,
            self.peers,
            self._shipped_persistence(),
            attempt=self.attempt,
            storage_timeout=self.storage_timeout,
            metrics=self.observer is not None,
        )

    def _shipped_persistence(self) -> Persistence | None:
        # Workers on other machines learn the backend from the coordinator (it pickles).
        return self.persistence if self.peers is not None else None

    @property
    def finished(self) -> bool:
        """True once the job completed (final snapshot committed)."""
        return self.phase is JobPhase.FINISHED

    @property
    def ended(self) -> bool:
        """Finished, stopped or failed."""
        return self.phase in _ENDED

    def poll(self) -> None:
        """Handle every queued worker message, fire due timers, start queued operations."""
        for w, ep in list(self.workers.items()):
            # A rescale that ends in this loop removes workers: what they still queued is not
            # taken in (a removed worker's Drained would count it as one of the job's).
            while w in self.workers and (msg := ep.recv()) is not None:
                if not self._current(msg):
                    continue
                self._last_seen[w] = self.clock()
                self._handle(msg)
                if self.phase is JobPhase.FAILED:
                    return
        if self.phase is JobPhase.RUNNING:
            now = self.clock()
            if self._drained >= self.workers.keys():
                self._begin_snapshot(JobPhase.FINISHING, None)
            elif self._ops:
                request = self._ops.popleft()
                match request.op:
                    case Operation.RESCALE:
                        self._begin_rescale(request)
                    case Operation.STOP:
                        self._begin_snapshot(JobPhase.STOPPING, request)
                    case _:
                        self._begin_snapshot(JobPhase.SNAPSHOTTING, request)
            elif now >= self._next_snapshot_at:
                self._begin_snapshot(JobPhase.SNAPSHOTTING, None)
        if self.heartbeat_timeout is not None and self.phase not in (
            JobPhase.BUILDING,
            *_ENDED,
        ):
            now = self.clock()
            rescale = self._rescale
            for w, seen in self._last_seen.items():
                if rescale is not None and w in rescale.joining and w not in rescale.built:
                    continue  # still building: a big restore or import may take a while
                if now - seen > self.heartbeat_timeout:
                    self._fail(
                        f"worker {w} sent nothing for {now - seen:.1f}s "
                        f"(heartbeat timeout {self.heartbeat_timeout}s): hung or unreachable"
                    )
                    return

    def request_snapshot(self, callback: Callback | None = None) -> None:
        """Queue a snapshot; ``callback(version, None)`` once committed (or ``(None, error)``)."""
        self._request(Operation.SNAPSHOT, callback)

    def request_stop(self, callback: Callback | None = None) -> None:
        """Queue a stop: a final (resumable) snapshot, then every worker exits."""
        self._request(Operation.STOP, callback)

    def request_rescale(self, workers: int, callback: Callback | None = None) -> None:
        """Queue a rescale to ``workers`` workers (ids ``0..workers-1``) while the job runs;
        ``callback(workers, None)`` once every key and part has moved."""
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            _refuse(
                f"cannot rescale to {workers!r} workers: give an int >= 1 "
                "(to end the job, stop it)",
                callback,
            )
        elif self.pinned and workers < len(self.workers):
            _refuse(
                f"cannot rescale to {workers} workers: operator(s) {self.pinned} keep keyed "
                "state in place (after key_local or a custom re-keying), which cannot move off "
                "the workers being removed. Key the stream with key_distribute to rescale",
                callback,
            )
        else:
            self._request(Operation.RESCALE, callback, workers)

    def wanted_workers(self) -> set[int]:
        """New worker ids a rescale waits for (the runtime starts them and calls
        :meth:`add_worker`)."""
        rescale = self._rescale
        if rescale is None or rescale.phase is not JobPhase.JOINING:
            return set()
        return rescale.joining - set(self.workers)

    def add_worker(self, worker: int, endpoint: Endpoint, address: str | None = None) -> None:
        """A new worker a rescale asked for has connected."""
        rescale = self._rescale
        if rescale is None or worker not in rescale.joining or worker in self.workers:
            raise ValueError(f"worker {worker} was not asked to join")
        self.workers[worker] = endpoint
        self._last_seen[worker] = self.clock()
        if self.peers is not None and address is not None:
            self.peers[worker] = address
        if not self.wanted_workers():
            old = tuple(w for w in sorted(self.workers) if w not in rescale.joining)
            for w in sorted(rescale.joining):
                self.workers[w].send(self._start_build(old, None))

    def cancel_rescale(self, reason: str) -> None:
        """New workers did not come: give the rescale up (nothing has moved yet)."""
        rescale = self._rescale
        if rescale is None or rescale.phase is not JobPhase.JOINING:
            return
        for w in rescale.joining:
            ep = self.workers.pop(w, None)
            self._last_seen.pop(w, None)
            if ep is not None:
                ep.send(Finish())
        self._rescale = None
        rescale.request.answer(None, OperationRefused(f"rescale abandoned: {reason}"))

    def status(self) -> dict[str, Any]:
        """A plain-data summary of the job attempt."""
        return {
            "phase": self.phase.value,
            "workers": sorted(self.workers),
            "drained": sorted(self._drained),
            "last_committed": self.last_committed,
            "restored_from": self.restored_from,
            "error": self.error,
        }

    def fail(self, reason: str) -> None:
        """Mark the attempt failed (the runtime detected a dead worker or lost connection)."""
        self._fail(reason)

    # ----- internals -----------------------------------------------------------------------
    def _request(self, op: Operation, callback: Callback | None, workers: int = 0) -> None:
        if self.phase in _ENDED or self.phase in (JobPhase.FINISHING, JobPhase.STOPPING):
            _refuse(f"cannot {op.value}: the job is {self.phase.value}", callback)
        else:
            self._ops.append(Request(op, callback, workers))

    def _answer_leftovers(self, version: int) -> None:
        """Requests still queued when the job ended: a stop is done, anything else refused."""
        requests, self._ops = list(self._ops), deque()
        for request in requests:
            if request.op is Operation.STOP:
                request.answer(version)
            else:
                request.answer(
                    None,
                    OperationRefused(f"cannot {request.op.value}: the job {self.phase.value}"),
                )

    def _fail(self, reason: str) -> None:
        if self.phase in _ENDED:
            return
        self._state = JobPhase.FAILED
        self.error = reason
        self._observe("failed", reason=reason)
        err = RuntimeError(reason)
        pending = [
            *self._ops,
            *([self._snapshot.request] if self._snapshot and self._snapshot.request else []),
            *([self._rescale.request] if self._rescale else []),
        ]
        self._ops.clear()
        self._snapshot = None
        self._rescale = None
        for request in pending:
            request.answer(None, err)

    def _broadcast(self, msg: object) -> None:
        for ep in self.workers.values():
            ep.send(msg)

    def _current(self, msg: object) -> bool:
        """Whether ``msg`` belongs to this attempt (else it is dropped: fencing)."""
        attempt = getattr(msg, "attempt", self.attempt)
        if attempt == self.attempt:
            return True
        if attempt is None and isinstance(msg, Heartbeat | WorkerFailed | Hello):
            return True  # from a worker that has not built yet
        log.warning(
            "ignoring %s of attempt %s (this is attempt %d): a worker of an earlier attempt",
            type(msg).__name__,
            attempt,
            self.attempt,
        )
        return False

    def _observe(self, event: str, **data: Any) -> None:
        """Tell the observer (metrics, dashboard) about a job event."""
        if self.observer is not None:
            self.observer.event(event, **data)

    def _handle(self, msg: object) -> None:
        rescale = self._rescale
        match msg:
            case Heartbeat():
                if self.observer is not None and msg.metrics is not None:
                    self.observer.report(msg.worker, self.attempt, msg.metrics)
                return
            case Hello():
                return
            case BuildComplete() if rescale is not None and msg.worker in rescale.joining:
                rescale.built.add(msg.worker)
                if rescale.joined():
                    for w in rescale.joining:
                        self.workers[w].send(StartExecution())
                    self._reconfigure(rescale)
            case RescaleComplete():
                if (
                    msg.version != self.config_version + 1
                    or rescale is None
                    or rescale.phase is not JobPhase.RESCALING
                ):
                    log.warning("ignoring completion of unknown rescale %d", msg.version)
                    return
                rescale.rescaled.add(msg.worker)
                if rescale.complete(self.workers):
                    self._end_rescale(rescale)
            case BuildComplete():
                self._built.add(msg.worker)
                if self.phase is JobPhase.BUILDING and len(self._built) == len(self.workers):
                    self._broadcast(StartExecution())
                    self._state = JobPhase.RUNNING
                    now = self.clock()  # a fast builder must not look silent while others build
                    for w in self._last_seen:
                        self._last_seen[w] = now
                    self._arm_timer()
            case SnapshotComplete():
                snapshot = self._snapshot
                if snapshot is None or msg.version != snapshot.version:
                    log.warning("ignoring completion of unknown snapshot %d", msg.version)
                    return
                snapshot.ack(msg.worker, msg.blob)
                if snapshot.complete(self.workers):
                    self._commit(snapshot)
            case Drained():
                self._drained.add(msg.worker)
            case WorkerFailed():
                self._fail(f"worker {msg.worker} failed: {msg.error}")
            case _:
                raise TypeError(f"coordinator got an unexpected message {msg!r}")

    def _begin_rescale(self, request: Request) -> None:
        n = request.workers
        if n == len(self.workers):
            request.answer(n)
            return
        target = tuple(range(n))
        rescale = PendingRescale(request, target, {w for w in target if w not in self.workers})
        self._rescale = rescale
        log.info("rescaling from %d to %d workers", len(self.workers), n)
        self._observe("rescale_started", before=len(self.workers), workers=n)
        if not rescale.joining:
            self._reconfigure(rescale)

    def _reconfigure(self, rescale: PendingRescale) -> None:
        rescale.phase = JobPhase.RESCALING
        rescale.rescaled = set()
        msg = Reconfigure(self.config_version + 1, rescale.target, self.peers)
        self._broadcast(msg)

    def _end_rescale(self, rescale: PendingRescale) -> None:
        self.config_version += 1
        for w in sorted(set(self.workers) - set(rescale.target)):
            self.workers.pop(w).send(Finish())
            self._last_seen.pop(w, None)
            self._drained.discard(w)
            if self.peers is not None:
                self.peers.pop(w, None)
        self._rescale = None
        log.info("rescaled to %d workers", len(self.workers))
        self._observe("rescale_done", workers=len(self.workers))
        rescale.request.answer(len(self.workers))

    def _arm_timer(self) -> None:
        self._next_snapshot_at = (
            self.clock() + self.interval if self.interval is not None else float("inf")
        )

    def _begin_snapshot(self, phase: JobPhase, request: Request | None) -> None:
        version = self._next_version
        self._next_version += 1
        self._snapshot = PendingSnapshot(version, phase, request)
        self._observe("snapshot_started", version=version)
        self._broadcast(TakeSnapshot(version, stop=phase is JobPhase.STOPPING))

    def _commit(self, snapshot: PendingSnapshot) -> None:
        version = snapshot.version
        blobs = {b[0]: BlobInfo(b[1], b[2]) for b in snapshot.acks.values() if b is not None}
        final = snapshot.final
        meta = {"workers": sorted(self.workers), "final": final, "attempt": self.attempt}
        try:
            self._store.commit(Manifest(version, blobs, meta))
        except StorageError as e:
            self._fail(f"committing snapshot {version} failed: {e}")
            return
        self.last_committed = version
        self._snapshot = None
        self._observe(
            "snapshot_committed",
            version=version,
            size=sum(b.size for b in blobs.values()),
            final=final,
        )
        self._broadcast(SnapshotCommitted(version))
        if snapshot.stop:
            self._broadcast(Finish())
            self._state = JobPhase.FINISHED if final else JobPhase.STOPPED
            self._answer_leftovers(version)
        else:
            self._arm_timer()
        if snapshot.request is not None:
            snapshot.request.answer(version)
