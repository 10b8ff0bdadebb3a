"""SingleThreadRuntime: the whole job (coordinator and one worker) on the calling thread."""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from malstrom.coordinator._coordinator import Coordinator, JobPhase
from malstrom.engine.graph import Graph
from malstrom.errors import JobFailed
from malstrom.runtime._worker import SOURCE_TURN_BUDGET, Worker, WorkerPhase, check_budget
from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._memory import NoPersistence
from malstrom.stream import StreamProvider
from malstrom.transport._local import local_pair

__all__ = ["SingleThreadRuntime"]

log = logging.getLogger("malstrom.runtime")


def build_graph(build: Callable[[StreamProvider], None]) -> Graph:
    """Run the user's ``build`` function and return the graph it described."""
    if not callable(build):
        raise TypeError(f"build must be a function build(provider) -> None, got {build!r}")
    provider = StreamProvider()
    build(provider)
    return provider._graph


class SingleThreadRuntime:
    """Runs a job on one worker in the calling thread.

    ``persistence`` stores snapshots (default: none); ``snapshot_interval`` takes one every so
    many seconds. An error ends :meth:`execute` with an exception naming the operator; running
    the job again with the same persistence resumes from the last committed snapshot. A job
    that completes commits a final snapshot, so running it again completes at once. If
    snapshots exist but every one is damaged, :meth:`execute` raises
    :class:`~malstrom.snapshot.SnapshotsDamagedError` naming them instead of starting over;
    ``fresh_start=True`` ignores existing snapshots and runs the job from the beginning.

    ``source_turn_budget`` (seconds, default 5 ms) bounds how long the sources read in one
    loop turn, all parts together: records, snapshot barriers and stops move at least that
    often even if a source's ``poll()`` blocks. Raise it for a little less per-turn overhead
    with slow sources, lower it for lower latency.

    ``http="HOST:PORT"`` serves ``/metrics``, ``/healthz`` and a live dashboard while the job
    runs (port 0: any free port; :attr:`http_url` tells which). Its snapshot and stop
    actions take the admin ``token`` (a random one is made and logged when not given).
    ``metrics=False`` turns the per-operator counters off.
    """

    def __init__(
        self,
        build: Callable[[StreamProvider], None],
        *,
        persistence: Persistence | None = None,
        snapshot_interval: float | None = None,
        fresh_start: bool = False,
        source_turn_budget: float = SOURCE_TURN_BUDGET,
        http: str | None = None,
        token: str | None = None,
        metrics: bool = True,
    ) -> None:
        self.build = build
        if http is not None:
            from malstrom.observe._http import parse_address

            parse_address(http)  # a malformed address fails here, not when the job starts
        self.http = http
        self.token = token
        self.metrics = metrics or http is not None
        self.http_url: str | None = None
        """Where the dashboard and ``/metrics`` are served (when ``http`` was given)."""
        self._observer: Any = None
        self.source_turn_budget = check_budget(source_turn_budget)
        self.persistence = persistence if persistence is not None else NoPersistence()
        self.snapshot_interval = snapshot_interval
        self.fresh_start = fresh_start
        self.restored_from: int | None = None
        """The snapshot version the last :meth:`execute` resumed from (None: fresh start)."""

    def state(self) -> dict[str, Any] | None:
        """Metrics, snapshot history and events of the last :meth:`execute` (None with
        ``metrics=False``): what the dashboard shows, as plain data."""
        return self._observer.state() if self._observer is not None else None

    def execute(self) -> None:
        """Run the job to completion (sources exhausted and final snapshot committed).

        A job wired wrongly raises :class:`~malstrom.errors.BuildError` before anything runs;
        a job that fails raises :class:`~malstrom.errors.JobFailed` whose ``__cause__`` is the
        original error (an :class:`~malstrom.errors.OperatorError` for user code).
        """
        graph = build_graph(self.build)
        c_end, w_end = local_pair()
        worker = Worker(
            graph, 0, w_end, self.persistence, source_turn_budget=self.source_turn_budget
        )
        after = self.persistence.last_committed() if self.fresh_start else None
        coord = Coordinator(
            self.persistence, {0: c_end}, self.snapshot_interval, restore_after=after
        )
        # A taken or malformed http address is the caller's error (OSError/ValueError), raised
        # before the job starts; only what happens while it runs becomes a JobFailed.
        ops = self._observe(graph, coord)
        try:
            self._execute(coord, worker, ops)
        except JobFailed:
            raise
        except Exception as e:
            raise JobFailed(f"{type(e).__name__}: {e}") from e
        finally:
            if ops is not None:
                ops.close()

    def _observe(self, graph: Any, coord: Coordinator) -> Any:
        """Metrics and the HTTP endpoint, when asked for (see the class docs)."""
        if not self.metrics:
            return None
        from malstrom.observe._job import OperationQueue, observe

        token = self.token or secrets.token_hex(16)
        if self.http is not None and self.token is None:
            log.warning("malstrom: dashboard actions take the admin token %s", token)
        queue = OperationQueue()
        obs = observe(
            f"local-{secrets.token_hex(4)}",
            graph,
            http=self.http,
            token=token,
            act=queue.act,
            status=coord.status,
        )
        coord.observer = obs.observer
        obs.queue = queue  # type: ignore[attr-defined]
        self.http_url = obs.url
        self._observer = obs.observer
        return obs

    def _execute(self, coord: Coordinator, worker: Worker, ops: Any) -> None:
        coord.start()
        self.restored_from = coord.restored_from
        if coord.finished:
            return
        # Batches allocate many short-lived container objects; CPython's default gen-0 threshold
        # (700) would run the cyclic GC every few hundred records. Raise it while the job runs.
        gc_threshold = gc.get_threshold()
        gc.set_threshold(max(gc_threshold[0], 50_000), *gc_threshold[1:])
        try:
            self._run(coord, worker, ops.queue if ops is not None else None)
        finally:
            gc.set_threshold(*gc_threshold)

    @staticmethod
    def _run(coord: Coordinator, worker: Worker, operations: Any = None) -> None:
        idle = 0
        while True:
            if operations is not None:
                operations.serve(coord)  # snapshot / stop asked for from the dashboard
            coord.poll()
            if coord.phase in (JobPhase.FINISHED, JobPhase.STOPPED):
                worker.turn()  # deliver the commit notice and Finish to the worker
                break
            if coord.phase is JobPhase.FAILED:
                raise JobFailed(coord.error or "the job failed")
            if worker.turn():
                idle = 0
            else:
                # Nothing to do (sources have no data right now): back off gently.
                idle = min(idle + 1, 20)
                time.sleep(0.0002 * idle)
        assert worker.phase is WorkerPhase.FINISHED
