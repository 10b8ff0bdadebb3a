"""Coordinator operations as objects: one vocabulary, completion tests owned by the operation."""

from __future__ import annotations

from malstrom.coordinator._operations import (
    JobPhase,
    Operation,
    PendingRescale,
    PendingSnapshot,
    Request,
)


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
