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
from malstrom.runtime._single import build_graph
from malstrom.runtime._worker import Worker, WorkerPhase
from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._memory import NoPersistence
from malstrom.transport._exchange import LocalExchangeHub
from malstrom.transport._local import local_pair

__all__ = ["run_local_cluster"]


def run_local_cluster(
    build: Callable[[Any], None],
    parallelism: int,
    *,
    persistence: Persistence | None = None,
    snapshot_interval: float | None = None,
    on_turn: Callable[[int, Coordinator], None] | None = None,
) -> Coordinator:
    """Run ``build`` on ``parallelism`` workers to completion; returns the coordinator.

    ``on_turn(n, coordinator)`` runs before every round of worker turns (tests use it to
    inject faults or request snapshots, rescales and stops). Workers a rescale asks for are
    created here; removed ones are dropped once they finished.
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1, got {parallelism}")
    persistence = persistence if persistence is not None else NoPersistence()
    graph = build_graph(build)
    hub = LocalExchangeHub()
    workers: dict[int, Worker] = {}
    ends = {}

    def spawn(wid: int) -> Any:
        c_end, w_end = local_pair()
        workers[wid] = Worker(
            graph, wid, w_end, persistence, services={"exchange": hub.endpoint(wid)}
        )
        return c_end

    for wid in range(parallelism):
        ends[wid] = spawn(wid)
    coord = Coordinator(persistence, ends, snapshot_interval)
    coord.start()
    if coord.finished:
        return coord
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
    try:
        n = 0
        while True:
            if on_turn is not None:
                on_turn(n, coord)
            n += 1
            coord.poll()
            if coord.phase in (JobPhase.FINISHED, JobPhase.STOPPED):
                for w in workers.values():
                    w.turn()
                return coord
            if coord.phase is JobPhase.FAILED:
                raise RuntimeError(coord.error)
            for wid in sorted(coord.wanted_workers()):
                coord.add_worker(wid, spawn(wid))  # a rescale asked for it
            for wid, w in list(workers.items()):
                w.turn()
                if wid not in coord.workers and w.phase is WorkerPhase.FINISHED:
                    del workers[wid]  # removed by a rescale
    finally:
        gc.set_threshold(*threshold)
