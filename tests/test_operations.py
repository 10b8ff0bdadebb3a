"""Coordinator operations as objects: one vocabulary, completion tests owned by the operation."""

from __future__ import annotations

from collections import deque

from malstrom.coordinator._coordinator import Coordinator
from malstrom.coordinator._messages import BuildComplete, Drained, RescaleComplete
from malstrom.coordinator._operations import (
    JobPhase,
    Operation,
    PendingRescale,
    PendingSnapshot,
    Request,
)
from malstrom.snapshot import NoPersistence


def test_admin_commands_are_the_operation_names() -> None:
    # The CLI, the admin RPC and the k8s operator send these strings; the supervisor parses
    # them with Operation(name).
    assert {op.value for op in Operation} == {"snapshot", "stop", "rescale", "status"}


def test_a_snapshot_completes_when_every_worker_acknowledged() -> None:
    answers: list[tuple[object, BaseException | None]] = []
    request = Request(Operation.STOP, lambda result, err: answers.append((result, err)))
    snap = PendingSnapshot(7, JobPhase.STOPPING, request)
    assert snap.stop and not snap.final
    snap.ack(0, None)
    assert not snap.complete({0, 1})
    snap.ack(1, ("blob", 3, 4))
    assert snap.complete({0, 1})
    request.answer(7)
    assert answers == [(7, None)]


def test_a_rescale_joins_then_completes() -> None:
    r = PendingRescale(Request(Operation.RESCALE, None, 3), (0, 1, 2), {2})
    assert r.phase is JobPhase.JOINING and not r.joined()
    r.built.add(2)
    assert r.joined()
    r.phase = JobPhase.RESCALING
    r.rescaled.update({0, 1})
    assert not r.complete({0, 1, 2})
    r.rescaled.add(2)
    assert r.complete({0, 1, 2})
    assert PendingSnapshot(1, JobPhase.FINISHING, None).final


class _Pipe:
    """A coordinator's endpoint to one worker: what the test queued, what it was sent."""

    def __init__(self) -> None:
        self.inbox: deque[object] = deque()
        self.sent: list[object] = []

    def recv(self) -> object | None:
        return self.inbox.popleft() if self.inbox else None

    def send(self, msg: object) -> None:
        self.sent.append(msg)


def test_a_worker_removed_by_a_rescale_is_not_counted_as_drained() -> None:
    """A rescale that ends while the coordinator takes in the workers' messages removes a
    worker; a Drained it had queued behind its RescaleComplete used to be taken in anyway,
    so the job counted a drained worker it no longer has (it finished while a worker still
    had records, or waited for ever when that worker's count came on top)."""
    pipes = {0: _Pipe(), 1: _Pipe()}
    coord = Coordinator(NoPersistence(), pipes, None)
    for w, p in pipes.items():
        p.inbox.append(BuildComplete(w, coord.attempt))
    coord.poll()
    assert coord.phase is JobPhase.RUNNING
    done: list[object] = []
    coord.request_rescale(1, lambda n, e: done.append((n, e)))
    coord.poll()
    version = coord.config_version + 1
    pipes[0].inbox.append(RescaleComplete(0, version, coord.attempt))
    pipes[1].inbox.extend([RescaleComplete(1, version, coord.attempt), Drained(1, coord.attempt)])
    coord.poll()
    assert done == [(1, None)] and list(coord.workers) == [0]
    assert coord.phase is JobPhase.RUNNING  # worker 0 has not drained: not finishing yet
    pipes[0].inbox.append(Drained(0, coord.attempt))
    coord.poll()
    assert coord.phase is JobPhase.FINISHING
