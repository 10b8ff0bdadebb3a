"""The worker: builds the graph into operators and runs them, one loop turn at a time.

A turn handles pending coordinator commands, polls the sources, runs ``on_schedule`` hooks
and drains every operator's inputs in topological order, so a batch usually crosses the
whole graph within the turn that produced it. The worker never blocks; under backpressure it
holds the intakes upstream of a saturated pipe (:mod:`malstrom.runtime._backpressure`).
"""

from __future__ import annotations

import enum
import time
from typing import Any

from malstrom._errors import BuildError, OperatorError
from malstrom.coordinator._messages import (
    Abort,
    BuildComplete,
    Drained,
    Finish,
    Heartbeat,
    Reconfigure,
    RescaleComplete,
    SnapshotCommitted,
    SnapshotComplete,
    StartBuild,
    StartExecution,
    TakeSnapshot,
)
from malstrom.runtime._backpressure import IntakeGate
from malstrom.runtime._engine import Barrier, BuildContext, Operator, Rescale, Token
from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._layout import (
    NullSnapshotWriter,
    SnapshotReader,
    SnapshotWriter,
    worker_blob,
)
from malstrom.transport._exchange import NOTHING
from malstrom.transport._local import Endpoint

__all__ = ["HEARTBEAT_INTERVAL", "Worker", "WorkerPhase"]

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats; sent from the loop itself, so a hung loop goes silent."""


class WorkerPhase(enum.Enum):
    WAITING = "waiting"  # for StartBuild
    BUILT = "built"  # waiting for StartExecution
    RUNNING = "running"
    FINISHED = "finished"


class Worker:
    """Runs the whole graph for one worker id."""

    def __init__(
        self,
        graph: Any,
        worker_id: int,
        endpoint: Endpoint,
        persistence: Persistence,
        services: dict[str, Any] | None = None,
    ) -> None:
        self.graph = graph
        self.worker_id = worker_id
        self.endpoint = endpoint
        self.persistence = persistence
        self.services = services or {}
        self.phase = WorkerPhase.WAITING
        self.ops: list[Operator] = []
        self._roots: list[Operator] = []
        self._scheduled: list[Operator] = []
        self._gate: IntakeGate | None = None
        self._snapshot: tuple[int, Token, SnapshotWriter] | None = None
        self._rescale: tuple[int, Token] | None = None
        self._drained_sent = False
        self._next_heartbeat = 0.0
        self._stopping = False
        self.abort_reason: str | None = None

    # ----- build -------------------------------------------------------------------------
    def _build(self, msg: StartBuild) -> None:
        if msg.persistence is not None:
            self.persistence = msg.persistence
        exchange = self.services.get("exchange")
        if msg.peers is not None and exchange is not None:
            exchange.connect({w: a for w, a in msg.peers.items() if w != self.worker_id})
        reader = None
        if msg.restore_version is not None:
            manifest = self.persistence.manifest(msg.restore_version)
            reader = SnapshotReader(self.persistence, manifest)
        ctx = BuildContext(self.worker_id, msg.worker_set, reader, self.services)
        built: dict[int, Operator] = {}
        for node in self.graph.nodes:
            try:
                op = node.factory(ctx)
            except (BuildError, OperatorError):
                raise
            except Exception as e:
                raise OperatorError(node.name, f"building failed: {type(e).__name__}: {e}") from e
            if len(op.outs) != node.ports:
                op.set_ports(node.ports)
            op.restored_done = ctx.restored_ended(node.name)
            op.aligns_region = node.co_keyed
            for src, port in node.inputs:
                built[id(src)].outs[port].append(op.add_input())
            built[id(node)] = op
            self.ops.append(op)
        self._roots = [op for op in self.ops if op.is_source]
        self._scheduled = [op for op in self.ops if op.wants_schedule]
        self._gate = IntakeGate(self.ops)
        self.phase = WorkerPhase.BUILT
        self.endpoint.send(BuildComplete(self.worker_id))

    # ----- running -------------------------------------------------------------------------
    def turn(self) -> bool:
        """One loop turn; True if anything happened (the caller may back off when idle)."""
        worked = self._handle_commands()
        if self.phase is WorkerPhase.FINISHED:
            return worked
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            self.endpoint.send(Heartbeat(self.worker_id))
        if self.phase is not WorkerPhase.RUNNING:
            return worked
        exchange = self.services.get("exchange")
        # Backpressure: take nothing new in upstream of a pipe that peers are slow to take.
        held = NOTHING
        if exchange is not None and self._gate is not None:
            held = self._gate.held(exchange.saturated())
            exchange.hold(held)
        if not self._stopping:
            for op in self._roots:
                if op.name not in held and op.poll():
                    worked = True
        for op in self._scheduled:
            if held:
                op.backpressured()
                if op.name in held and not (op.is_source or op.peer_intake):
                    continue  # user timers wait while their output cannot leave
            op.schedule()
        for op in self.ops:
            if op.inputs and op.drain():
                worked = True
        if exchange is not None:
            exchange.flush()
        snap = self._snapshot
        if snap is not None and snap[1].pending == 0:
            self._finish_snapshot(*snap)
            worked = True
        resc = self._rescale
        if (
            resc is not None
            and resc[1].pending == 0
            and all(op.rescale_done(resc[0]) for op in self.ops)
        ):
            self._rescale = None
            self.endpoint.send(RescaleComplete(self.worker_id, resc[0]))
            worked = True
        if not self._drained_sent and all(op.done for op in self.ops):
            self._drained_sent = True
            self.endpoint.send(Drained(self.worker_id))
        return worked

    def _handle_commands(self) -> bool:
        worked = False
        while (msg := self.endpoint.recv()) is not None:
            worked = True
            if isinstance(msg, TakeSnapshot):
                self._begin_snapshot(msg.version)
                if msg.stop:
                    self._stopping = True  # suspend: nothing new after the final barrier
            elif isinstance(msg, SnapshotCommitted):
                for op in self.ops:
                    op.on_committed(msg.version)
            elif isinstance(msg, Reconfigure):
                self._begin_rescale(msg)
            elif isinstance(msg, StartBuild):
                self._build(msg)
            elif isinstance(msg, StartExecution):
                self.phase = WorkerPhase.RUNNING
            elif isinstance(msg, Finish):
                self.phase = WorkerPhase.FINISHED
            elif isinstance(msg, Abort):
                self.abort_reason = msg.reason
                self.phase = WorkerPhase.FINISHED
            else:
                raise TypeError(f"worker {self.worker_id} got an unexpected command {msg!r}")
        return worked

    def _begin_rescale(self, msg: Reconfigure) -> None:
        if self._rescale is not None or self._snapshot is not None:
            raise RuntimeError(f"rescale {msg.version} requested while another operation runs")
        exchange = self.services.get("exchange")
        if msg.peers is not None and exchange is not None:
            exchange.connect({w: a for w, a in msg.peers.items() if w != self.worker_id})
        token = Token(len(self._roots))
        self._rescale = (msg.version, token)
        rescale = Rescale(token, msg.version, tuple(msg.workers))
        for op in self._roots:
            op.on_control(rescale)

    def _begin_snapshot(self, version: int) -> None:
        if self._snapshot is not None:
            raise RuntimeError(f"snapshot {version} requested while {self._snapshot[0]} runs")
        writer = (
            SnapshotWriter(self.worker_id)
            if self.persistence.stores
            else NullSnapshotWriter(self.worker_id)
        )
        token = Token(len(self._roots))
        self._snapshot = (version, token, writer)
        barrier = Barrier(token, version, writer)
        for op in self._roots:
            op.pass_barrier(barrier)

    def _finish_snapshot(self, version: int, token: Token, writer: SnapshotWriter) -> None:
        self._snapshot = None
        blob = None
        if self.persistence.stores:
            name = worker_blob(self.worker_id)
            info = self.persistence.write_blob(version, name, writer.to_bytes())
            blob = (name, info.size, info.crc32)
        self.endpoint.send(SnapshotComplete(self.worker_id, version, blob))
