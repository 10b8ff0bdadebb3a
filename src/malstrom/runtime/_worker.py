"""The worker: builds the graph into operators and runs them, one loop turn at a time.

A turn handles pending coordinator commands, polls the sources, runs ``on_schedule`` hooks
and drains every operator's inputs in topological order, so a batch usually crosses the
whole graph within the turn that produced it. The worker never blocks by itself (snapshot
store calls are bounded, see ``malstrom.snapshot._bounded``), and its sources get a time
budget per turn (``source_turn_budget``, shared by every part of every source): a source
whose ``poll()`` blocks delays records, barriers, rescales and stops by about one budget,
not by a whole batch of polls. Under backpressure it holds the intakes upstream of a
saturated pipe (:mod:`malstrom.runtime._backpressure`).

Fencing: the worker learns its job attempt from :class:`StartBuild` and puts it on every
message, on its data-plane streams and in its blob names. Once the attempt is over (Abort
received, the coordinator's link closed or silent), :meth:`Worker.fence` raises
:class:`~malstrom.errors.AttemptFenced`: sinks call it before every write, the worker before
every blob write and commit notice. :meth:`Worker.discard` drops the sinks' buffered output
without writing it; it runs as soon as the attempt is known to be over.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Set as AbstractSet
from time import monotonic
from typing import Any

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
from malstrom.engine.context import BuildContext
from malstrom.engine.exchange import Exchange
from malstrom.engine.graph import Graph
from malstrom.engine.messages import Barrier, Rescale, Token
from malstrom.engine.operator import Operator
from malstrom.errors import AttemptFenced, BuildError, OperatorError
from malstrom.observe._user import CURRENT, LOOP_THREAD
from malstrom.runtime._backpressure import IntakeGate
from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._bounded import BoundedPersistence
from malstrom.snapshot._layout import (
    NullSnapshotWriter,
    SnapshotReader,
    SnapshotWriter,
    worker_blob,
)
from malstrom.transport._exchange import NOTHING
from malstrom.transport._local import Endpoint

__all__ = ["HEARTBEAT_INTERVAL", "SOURCE_TURN_BUDGET", "Worker", "WorkerPhase", "check_budget"]

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats; sent from the loop itself, so a hung loop goes silent."""

SOURCE_TURN_BUDGET = 0.005
"""Default seconds the sources of a worker may read for in one loop turn (all parts of all
sources together; a part also stops at :data:`~malstrom.operators.io.BATCH_SIZE` records).
Short enough that a source that blocks holds records, barriers and rescales for a few ms;
long enough that the rest of a turn costs slow sources nothing measurable."""


def check_budget(budget: float) -> float:
    """``budget`` as a float, or ValueError naming ``source_turn_budget``."""
    ok = isinstance(budget, int | float) and not isinstance(budget, bool)
    if not ok or not budget > 0 or budget == float("inf"):
        raise ValueError(f"source_turn_budget must be > 0 seconds (finite), got {budget!r}")
    return float(budget)


class WorkerPhase(enum.Enum):
    WAITING = "waiting"  # for StartBuild
    BUILT = "built"  # waiting for StartExecution
    RUNNING = "running"
    FINISHED = "finished"


class Worker:
    """Runs the whole graph for one worker id."""

    def __init__(
        self,
        graph: Graph,
        worker_id: int,
        endpoint: Endpoint,
        persistence: Persistence,
        exchange: Exchange | None = None,
        *,
        source_turn_budget: float = SOURCE_TURN_BUDGET,
    ) -> None:
        self.graph = graph
        self.source_turn_budget = check_budget(source_turn_budget)
        self.worker_id = worker_id
        self.endpoint = endpoint
        self.persistence = persistence
        self.exchange = exchange
        self.phase = WorkerPhase.WAITING
        self.ops: list[Operator] = []
        self._roots: list[Operator] = []
        self._scheduled: list[Operator] = []
        self._gate: IntakeGate | None = None
        self._aligned: list[Any] = []  # distributors with epoch alignment
        self._snapshot: tuple[int, Token, SnapshotWriter] | None = None
        self._rescale: tuple[int, Token] | None = None
        self._drained_sent = False
        self._next_heartbeat = 0.0
        self._stopping = False
        self.abort_reason: str | None = None
        #: The job attempt this worker belongs to (from StartBuild); None before.
        self.attempt: int | None = None
        self._discarded = False
        self._link_can_close = hasattr(endpoint, "closed")  # network links; in-process never
        self.metrics: Any = None  # malstrom.observe counters, when StartBuild asks for them

    # ----- fencing -------------------------------------------------------------------------
    def fence(self) -> None:
        """Raise :class:`AttemptFenced` if this worker's attempt is over (see module docs)."""
        if self.abort_reason is not None:
            raise AttemptFenced(f"worker {self.worker_id}: attempt aborted: {self.abort_reason}")
        if self._link_can_close and self.endpoint.closed:  # type: ignore[attr-defined]
            raise AttemptFenced(
                f"worker {self.worker_id}: the link to the coordinator is gone "
                f"(attempt {self.attempt} is over)"
            )

    def discard(self) -> None:
        """Drop every sink's buffered output without writing it (the attempt is over)."""
        if self._discarded:
            return
        self._discarded = True
        for op in self.ops:
            try:
                op.discard()
            except Exception:  # best effort: nothing of this attempt may be written anyway
                pass

    def _heartbeat(self) -> None:
        report = self.metrics.report() if self.metrics is not None else None
        self.endpoint.send(Heartbeat(self.worker_id, self.attempt, report))

    # ----- build -------------------------------------------------------------------------
    def _build(self, msg: StartBuild) -> None:
        self.attempt = msg.attempt
        CURRENT[0] = ""
        LOOP_THREAD[0] = threading.get_ident()
        if msg.persistence is not None:
            self.persistence = msg.persistence
        if msg.storage_timeout is not None and self.persistence.stores:
            self.persistence = BoundedPersistence(
                self.persistence, msg.storage_timeout, tick=self._heartbeat
            )
        exchange = self.exchange
        if exchange is not None:
            exchange.set_attempt(msg.attempt)
        if msg.peers is not None and exchange is not None:
            exchange.connect(  # type: ignore[attr-defined]
                {w: a for w, a in msg.peers.items() if w != self.worker_id}
            )
        reader = None
        if msg.restore_version is not None:
            manifest = self.persistence.manifest(msg.restore_version)
            reader = SnapshotReader(self.persistence, manifest)
        ctx = BuildContext(
            self.worker_id,
            msg.worker_set,
            reader,
            exchange,
            attempt=msg.attempt,
            fence=self.fence,
        )
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
            op.restored_ended = ctx.restored_ended(node.name)
            op.aligns_region = node.aligns_region
            for src, port in node.inputs:
                up = built[id(src)]
                up.outs[port].append(op.add_input())
                op.upstream_routers |= {up.name} if up.routes_by_key else up.upstream_routers
            built[id(node)] = op
            self.ops.append(op)
        self._roots = [op for op in self.ops if op.is_source]
        self._scheduled = [op for op in self.ops if op.wants_schedule]
        self._gate = IntakeGate(self.ops)
        self._aligned = [op for op in self.ops if getattr(op, "max_epoch_lead", None) is not None]
        if msg.metrics:
            from malstrom.observe._collect import instrument

            self.metrics = instrument(self.worker_id, self.ops, exchange)
        self.phase = WorkerPhase.BUILT
        self.endpoint.send(BuildComplete(self.worker_id, self.attempt))

    # ----- running -------------------------------------------------------------------------
    def turn(self) -> bool:
        """One loop turn; True if anything happened (the caller may back off when idle)."""
        worked = self._handle_commands()
        if self.phase is WorkerPhase.FINISHED:
            return worked
        now = monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            self._heartbeat()
        if self.phase is not WorkerPhase.RUNNING:
            return worked
        exchange = self.exchange
        # Backpressure: take nothing new in upstream of a pipe that peers are slow to take.
        held = NOTHING
        if exchange is not None and self._gate is not None:
            held = self._gate.held(exchange.saturated())
            exchange.hold(held)
        # CURRENT names the operator running now, for logs and user metrics (one store per
        # operator and turn); an operator that raises stays named for the error's log lines.
        current = CURRENT
        polled = held
        if self._aligned and self._gate is not None:
            # Epoch alignment: sources whose records run ahead of the peers' wait for them.
            ahead = frozenset(op.name for op in self._aligned if op.ahead(now))
            if ahead:
                polled = held | self._gate.sources_feeding(ahead)
        if not self._stopping and self._poll_sources(now + self.source_turn_budget, polled):
            worked = True
        for op in self._scheduled:
            current[0] = op.name
            if polled:
                # A held input is not an idle one (idle_timeout must not count the time).
                op.backpressured()
                if op.name in held and not (op.is_source or op.peer_intake):
                    continue  # user timers wait while their output cannot leave
            op.schedule()
        for op in self.ops:
            if op.inputs:
                current[0] = op.name
                if op.drain():
                    worked = True
        current[0] = ""
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
            self.endpoint.send(RescaleComplete(self.worker_id, resc[0], self.attempt))
            worked = True
        if not self._drained_sent and all(op.ended for op in self.ops):
            self._drained_sent = True
            if self.metrics is not None:
                self._heartbeat()  # the final counts reach the coordinator before it ends
            self.endpoint.send(Drained(self.worker_id, self.attempt))
        return worked

    def wake_deadline(self) -> float:
        """The latest ``time.monotonic()`` at which the next turn must start if nothing
        arrives (a command or a peer's frame wakes the loop earlier): the next heartbeat, or
        sooner if an operator asks (:meth:`Operator.wake_at`)."""
        deadline = self._next_heartbeat
        if self.phase is not WorkerPhase.RUNNING:
            return deadline
        now = monotonic()
        if self._snapshot is not None or self._rescale is not None:
            return now
        for op in self.ops:
            t = op.wake_at(now)
            if t is not None and t < deadline:
                deadline = t
                if t <= now:
                    break
        return deadline

    def _poll_sources(self, deadline: float, held: AbstractSet[str]) -> bool:
        """Poll every source not ``held`` once, each with its share of the time left until
        ``deadline``."""
        roots = [op for op in self._roots if op.name not in held] if held else self._roots
        count = len(roots)
        if count == 1:
            CURRENT[0] = roots[0].name
            return roots[0].poll(deadline)
        worked = False
        for i, op in enumerate(roots):
            CURRENT[0] = op.name
            now = monotonic()
            if op.poll(now + (deadline - now) / (count - i)):
                worked = True
        return worked

    def _handle_commands(self) -> bool:
        msgs = []
        while (msg := self.endpoint.recv()) is not None:
            msgs.append(msg)
        if not msgs:
            return False
        # A Finish among them: the job completed, so the link closing right after it does
        # not make the commit notice before it stale.
        finishing = any(type(m) is Finish for m in msgs)
        worked = False
        for msg in msgs:
            worked = True
            match msg:
                case TakeSnapshot():
                    self._begin_snapshot(msg.version)
                    if msg.stop:
                        self._stopping = True  # suspend: nothing new after the final barrier
                case SnapshotCommitted():
                    if not finishing:
                        self.fence()  # a late commit notice must not publish anything any more
                    for op in self.ops:
                        op.on_committed(msg.version)
                case Reconfigure():
                    self._begin_rescale(msg)
                case StartBuild():
                    self._build(msg)
                case StartExecution():
                    self.phase = WorkerPhase.RUNNING
                case Finish():
                    self.phase = WorkerPhase.FINISHED
                case Abort():
                    self.abort_reason = msg.reason
                    self.phase = WorkerPhase.FINISHED
                    self.discard()
                    return worked
                case _:
                    raise TypeError(f"worker {self.worker_id} got an unexpected command {msg!r}")
        return worked

    def _begin_rescale(self, msg: Reconfigure) -> None:
        if self._rescale is not None or self._snapshot is not None:
            raise RuntimeError(f"rescale {msg.version} requested while another operation runs")
        exchange = self.exchange
        if msg.peers is not None and exchange is not None:
            exchange.connect(  # type: ignore[attr-defined]
                {w: a for w, a in msg.peers.items() if w != self.worker_id}
            )
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
            name = worker_blob(self.worker_id, self.attempt)
            data = writer.to_bytes()
            self.fence()
            info = self.persistence.write_blob(version, name, data)
            blob = (name, info.size, info.crc32)
        self.endpoint.send(SnapshotComplete(self.worker_id, version, blob, self.attempt))
