"""Several workers and their coordinator in one thread, over in-memory pipes.

Not a user-facing runtime (one thread gains nothing on CPU work): it runs the distributed
protocols (key routing, barrier alignment across workers, epoch merging, snapshots and
restores at any parallelism) deterministically, for tests.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from malstrom.coordinator._coordinator import Coordinator, JobPhase
from malstrom.errors import JobFailed
from malstrom.runtime._single import build_graph
from malstrom.runtime._worker import SOURCE_TURN_BUDGET, Worker, WorkerPhase
from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._memory import NoPersistence
from malstrom.transport._exchange import LocalExchangeHub
from malstrom.transport._local import local_pair

__all__ = ["LocalCluster", "run_local_cluster"]


class LocalCluster:
    """A job on several in-thread workers, advanced one round of turns at a time.

    ``step()`` runs one round (coordinator poll, then one turn of every worker) and returns
    False once the job has ended. Workers a rescale asks for are created here; removed ones
    are dropped once they finished. Dropping the object mid-run is a crash of every worker.
    """

    def __init__(
        self,
        build: Callable[[Any], None],
        parallelism: int,
        *,
        persistence: Persistence | None = None,
        snapshot_interval: float | None = None,
        source_turn_budget: float = SOURCE_TURN_BUDGET,
        hub: LocalExchangeHub | None = None,
    ) -> None:
        if parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {parallelism}")
        self.persistence = persistence if persistence is not None else NoPersistence()
        self.graph = build_graph(build)
        self.hub = hub if hub is not None else LocalExchangeHub()
        self.source_turn_budget = source_turn_budget
        self.workers: dict[int, Worker] = {}
        ends = {wid: self._spawn(wid) for wid in range(parallelism)}
        self.coord = Coordinator(
            self.persistence, ends, snapshot_interval, pinned=self.graph.pinned()
        )
        self.coord.start()
        self.turns = 0

    def _spawn(self, wid: int) -> Any:
        c_end, w_end = local_pair()
        self.workers[wid] = Worker(
            self.graph,
            wid,
            w_end,
            self.persistence,
            exchange=self.hub.endpoint(wid),
            source_turn_budget=self.source_turn_budget,
        )
        return c_end

    @property
    def ended(self) -> bool:
        """The job finished or stopped."""
        return self.coord.phase in (JobPhase.FINISHED, JobPhase.STOPPED)

    def step(self) -> bool:
        """One round; False once the job finished or stopped. Raises if it failed."""
        coord = self.coord
        if self.ended:
            return False
        self.turns += 1
        coord.poll()
        if self.ended:
            for w in self.workers.values():
                w.turn()  # they take in Finish
            return False
        if coord.phase is JobPhase.FAILED:
            raise JobFailed(coord.error or "the job failed")
        for wid in sorted(coord.wanted_workers()):
            coord.add_worker(wid, self._spawn(wid))  # a rescale asked for it
        for wid, w in list(self.workers.items()):
            w.turn()
            if wid not in coord.workers and w.phase is WorkerPhase.FINISHED:
                del self.workers[wid]  # removed by a rescale
        return True


def run_local_cluster(
    build: Callable[[Any], None],
    parallelism: int,
    *,
    persistence: Persistence | None = None,
    snapshot_interval: float | None = None,
    on_turn: Callable[[int, Coordinator], None] | None = None,
    source_turn_budget: float = SOURCE_TURN_BUDGET,
    hub: LocalExchangeHub | None = None,
) -> Coordinator:
    """Run ``build`` on ``parallelism`` workers to completion; returns the coordinator.

    ``on_turn(n, coordinator)`` runs before every round of worker turns (tests use it to
    inject faults or request snapshots, rescales and stops). ``hub`` sets the pipes' credit
    windows (tests use tiny ones).
    """
    cluster = LocalCluster(
        build,
        parallelism,
        persistence=persistence,
        snapshot_interval=snapshot_interval,
        source_turn_budget=source_turn_budget,
        hub=hub,
    )
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        n = 0
        while not cluster.ended:
            if on_turn is not None:
                on_turn(n, cluster.coord)
            n += 1
            cluster.step()
        return cluster.coord
    finally:
        gc.set_threshold(*threshold)
