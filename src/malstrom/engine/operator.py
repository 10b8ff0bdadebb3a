"""The operator base class every operator on a worker derives from: draining its input
channels, merging epochs, aligning barriers, emitting and forwarding."""

from __future__ import annotations

from collections import deque
from typing import Any

from malstrom._repr import short_repr
from malstrom.engine.batch import Batch
from malstrom.engine.epochs import merge_epochs
from malstrom.engine.messages import (
    IDLE,
    Acquire,
    Barrier,
    Control,
    Epoch,
    Handover,
    Installed,
    Interrogate,
    RegionMessage,
    Released,
    Rescale,
    Select,
)
from malstrom.errors import OperatorError
from malstrom.types import MAX

__all__ = ["Channel", "Operator"]

Channel = deque
"""An edge between two operators on one worker: an unbounded FIFO of messages."""


class Operator:
    """One operator instance on one worker.

    The worker calls :meth:`drain` every loop turn; it feeds queued messages to the ``on_*``
    hooks in FIFO order per channel, merges epochs across input channels by minimum and aligns
    barriers (a channel whose head is a barrier waits until every channel has one).
    """

    is_source = False
    """Roots of the graph: the worker injects barriers into them and calls :meth:`poll`."""
    wants_schedule = False
    """Call :meth:`schedule` every loop turn (``on_schedule`` hooks)."""
    peer_intake = False
    """Takes records from other workers through the exchange in :meth:`schedule`
    (distributors): under backpressure the worker holds that intake, but keeps scheduling."""
    hooks_on_epoch = False
    """Runs user hooks on epochs: after a restore from a snapshot taken when this operator had
    already ended, its end-of-stream hooks must not run (and emit) a second time."""
    migrates = False
    """Holds keyed state placed by a partitioner: takes part in Handover/Acquire (rescale)."""
    routes_by_key = False
    """A distributor: records leave it for their key's owner, and a rescale's cycle runs in
    it (see :attr:`upstream_routers`)."""
    aligns_region = False
    """Several inputs, every one keyed by a distributor: the final Handover, Installed and
    Released of a rescale align here like barriers (a key's state and its records from every
    input move together; what follows Released follows every input's held records)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[Channel] = []
        self.outs: list[list[Channel]] = [[]]
        self.in_frontier: Any = None
        #: Saw the end of the stream (emitted ``Epoch(MAX)``). A worker whose every operator
        #: ended is *drained* (it tells the coordinator, which then takes the final snapshot).
        self.ended = False
        #: Had ended in the snapshot this worker restored from (its end hooks already ran).
        self.restored_ended = False
        self._chan_epochs: list[Any] = []
        self._blocked: list[bool] = []
        self._idle_out = False
        #: The distributors nearest upstream on every input path (set when the worker builds
        #: the graph): what they emit during a rescale is routed here.
        self.upstream_routers: frozenset[str] = frozenset()

    # ----- wiring ------------------------------------------------------------------------
    def add_input(self) -> Channel:
        ch: Channel = deque()
        self.inputs.append(ch)
        self._chan_epochs.append(None)
        self._blocked.append(False)
        return ch

    def set_ports(self, n: int) -> None:
        self.outs = [[] for _ in range(n)]

    # ----- hooks for subclasses -------------------------------------------------------------
    def on_batch(self, batch: Batch, port: int) -> None:
        self.emit(batch)

    def on_epoch(self, ts: Any) -> None:
        self.emit_epoch(ts)

    def on_barrier(self, barrier: Barrier) -> None:
        self.snapshot(barrier.writer)
        self.forward(barrier)

    def on_control(self, msg: Control) -> None:
        if isinstance(msg, RegionMessage):
            if self.name in msg.handled:
                # Another path's copy of a message this operator acted on and passed on. The
                # records of keys moving here are held back until Installed, which follows
                # every Acquire on each path, so none of theirs came in between.
                msg.token.pending -= 1
                return
            msg.handled.add(self.name)
            if isinstance(msg, Handover):
                if msg.only is not None and self.aligns_region:
                    # One input's chunk: the key's records from the other inputs may still
                    # come. This operator and everything after it hand keys over in the
                    # final, aligned one.
                    msg.token.pending -= 1
                    return
                if self.migrates:
                    got = self.extract(msg.select)
                    if got:
                        msg.collection[self.name] = got
            elif isinstance(msg, Acquire):
                if self.migrates:
                    states = msg.states.get(self.name)
                    if states:
                        self.install(states)
            elif isinstance(msg, Interrogate):
                if self.migrates:
                    self.held_keys(msg.keys)
                self.keys_moving(msg.version)
            elif isinstance(msg, Released):
                self.keys_moved(msg.version)
        self.forward(msg)

    def keys_moving(self, version: int) -> None:
        """Rescale ``version`` starts in this operator's key region: records of the new
        configuration may follow, and keys held back may arrive later than newer records of
        other keys (until :meth:`keys_moved`)."""

    def keys_moved(self, version: int) -> None:
        """Rescale ``version`` ended in this operator's key region: the moved state is
        installed and the records held back while it moved have passed."""

    def held_keys(self, into: set[Any]) -> None:
        """Add the keys this operator holds state for to ``into``."""

    def extract(self, select: Select) -> dict[Any, Any]:
        """Remove and return the per-key state of the keys ``select(keys)`` picks."""
        return {}

    def install(self, states: dict[Any, Any]) -> None:
        """Take over per-key state collected by another worker (the format of ``extract``)."""

    def rescale_done(self, version: int) -> bool:
        """Whether this operator finished its part of rescale ``version``."""
        return True

    def forwards_idle(self) -> bool:
        """Whether an idle input makes this operator's output idle. Not while it holds
        records it will emit on a later epoch (pending windows, user ``on_epoch`` hooks):
        downstream merges must keep waiting for them."""
        return True

    def snapshot(self, writer: Any) -> None:
        """Persist this operator's state (stateful operators override)."""

    def poll(self, deadline: float) -> bool:
        """Sources only: produce records, reading until ``deadline`` (``time.monotonic()``)
        at most. True if anything was produced (or left unread for lack of time)."""
        return False

    def schedule(self) -> None:
        """Runs every loop turn when :attr:`wants_schedule` is set."""

    def wake_at(self, now: float) -> float | None:
        """When this operator next needs a loop turn though nothing arrives for it
        (``time.monotonic()`` seconds; ``now``: keep polling; None: only when a record or
        message arrives). Asked only when the worker is idle, to decide how long it may
        sleep. The default keeps polling operators that want :meth:`schedule`."""
        return now if self.wants_schedule else None

    def backpressured(self) -> None:
        """Runs (before :meth:`schedule`, with :attr:`wants_schedule` set) every loop turn in
        which the worker holds intakes because a pipe to a peer is saturated."""

    def on_committed(self, version: int) -> None:
        """A snapshot version this operator took part in is committed (two-phase sinks)."""

    def discard(self) -> None:
        """The job attempt is over: drop buffered output without writing it (sinks)."""

    # ----- emitting ----------------------------------------------------------------------
    def emit(self, batch: Batch) -> None:
        if batch.values:
            for ch in self.outs[0]:
                ch.append(batch)

    def emit_to(self, port: int, batch: Batch) -> None:
        if batch.values:
            for ch in self.outs[port]:
                ch.append(batch)

    def emit_epoch(self, ts: Any) -> None:
        e = Epoch(ts)
        for port in self.outs:
            for ch in port:
                ch.append(e)
        if ts is MAX:
            self.ended = True

    def forward(self, msg: Control) -> None:
        """Broadcast a control message to every output channel, keeping its token exact."""
        n = 0
        for port in self.outs:
            for ch in port:
                ch.append(msg)
                n += 1
        msg.token.pending += n - 1

    # ----- driving -----------------------------------------------------------------------
    def _epoch_in(self, idx: int, ts: Any) -> None:
        epochs = self._chan_epochs
        epochs[idx] = ts
        if len(epochs) == 1:
            merged = ts
        else:
            merged = merge_epochs(epochs, self.name)
            if merged is None:
                return
        if merged is IDLE:
            if not self._idle_out and self.forwards_idle():
                self._idle_out = True
                self.emit_epoch(IDLE)
            return
        cur = self.in_frontier
        try:
            rising = cur is None or merged > cur
        except TypeError as e:
            raise OperatorError(
                self.name,
                f"incomparable timestamps: epoch {short_repr(merged)} after {short_repr(cur)}",
            ) from e
        if rising:
            self._idle_out = False
            self.in_frontier = merged
            if merged is MAX and self.restored_ended and self.hooks_on_epoch:
                self.emit_epoch(MAX)  # its end-of-stream hooks already ran before the snapshot
            else:
                self.on_epoch(merged)
        elif self._idle_out:
            # Active again but behind: say so downstream (merges there take this path back in).
            self._idle_out = False
            self.emit_epoch(cur)

    def pass_barrier(self, barrier: Barrier) -> None:
        """A barrier reaches this operator: note whether it had ended, then snapshot."""
        if self.ended:
            barrier.writer.ended.add(self.name)
        self.on_barrier(barrier)

    def dispatch(self, msg: Any, port: int) -> None:
        """Hand one message from input channel ``port`` to its hook."""
        t = type(msg)
        if t is Batch:
            self.on_batch(msg, port)
        elif t is Epoch:
            self._epoch_in(port, msg.ts)
        elif t is Barrier:
            self.pass_barrier(msg)
        else:
            self.on_control(msg)

    def drain(self) -> bool:
        """Process every message that can be processed now; True if any was."""
        inputs = self.inputs
        if len(inputs) == 1:
            ch = inputs[0]
            if not ch:
                return False
            popleft = ch.popleft
            on_batch = self.on_batch
            while ch:
                msg = popleft()
                t = type(msg)
                if t is Batch:
                    on_batch(msg, 0)
                elif t is Epoch:
                    self._epoch_in(0, msg.ts)
                elif t is Barrier:
                    self.pass_barrier(msg)
                else:
                    self.on_control(msg)
            return True
        return self._drain_aligned()

    def _drain_aligned(self) -> bool:
        worked = False
        blocked = self._blocked
        progress = True
        while progress:
            progress = False
            for idx, ch in enumerate(self.inputs):
                if blocked[idx]:
                    continue
                while ch:
                    msg = ch[0]
                    t = type(msg)
                    if t is Batch:
                        ch.popleft()
                        self.on_batch(msg, idx)
                    elif t is Epoch:
                        ch.popleft()
                        self._epoch_in(idx, msg.ts)
                    elif isinstance(msg, Control) and self._aligns(msg):
                        blocked[idx] = True
                        break
                    else:
                        ch.popleft()
                        self.on_control(msg)
                    worked = progress = True
            if all(blocked):
                first = None
                for ch in self.inputs:
                    msg = ch.popleft()
                    if first is None:
                        first = msg
                    else:
                        msg.token.pending -= 1  # this copy is consumed here
                        if type(msg) is Released and not msg.origins <= first.origins:
                            first = first.merged(msg)
                assert first is not None
                for i in range(len(blocked)):
                    blocked[i] = False
                if type(first) is Barrier:
                    self.pass_barrier(first)
                else:
                    self.on_control(first)
                worked = progress = True
        return worked

    def _aligns(self, msg: Control) -> bool:
        """Control messages aligned across input channels: barriers and rescales always; a
        rescale's final Handover, Installed and Released where every input is keyed by a
        distributor."""
        t = type(msg)
        if t is Barrier or t is Rescale:
            return True
        if not self.aligns_region:
            return False
        if t is Handover:
            return msg.only is None  # type: ignore[attr-defined]
        return t is Installed or t is Released
