"""The engine's vocabulary: in-band messages, the operator base class, the build context.

Records travel as columnar :class:`Batch` es (three parallel sequences) so that operators run
C-speed loops (``map``, ``itertools.compress``) instead of building an object per record.
Control travels in-band on the same FIFO channels: :class:`Epoch` (watermark) and
:class:`Barrier` (ABS snapshot marker). Copies of a control message are tracked with an
explicit :class:`Token` counter (DESIGN invariant 4), never with reference counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import Any

from malstrom._errors import OperatorError, short_repr
from malstrom.types import MAX, Record

__all__ = [
    "IDLE",
    "Acquire",
    "Barrier",
    "Batch",
    "BuildContext",
    "Channel",
    "Collect",
    "Control",
    "Epoch",
    "Installed",
    "Interrogate",
    "Operator",
    "Released",
    "Rescale",
    "Token",
    "make_record",
]

ENDED_KEY = "::ended"
"""Snapshot entry listing the operators that had ended (seen MAX) on a worker."""

Channel = deque
"""An edge between two operators on one worker: an unbounded FIFO of messages."""

make_record: Callable[[tuple[Any, Any, Any]], Record] = partial(tuple.__new__, Record)
"""Build a Record from a ``(key, value, timestamp)`` tuple at C speed."""


class Batch:
    """A run of records in columns. Batches are never mutated once emitted (they may be shared)."""

    __slots__ = ("keys", "timestamps", "values")

    def __init__(self, keys: Sequence[Any], values: Sequence[Any], timestamps: Sequence[Any]):
        self.keys = keys
        self.values = values
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.values)

    def records(self) -> list[Record]:
        return list(map(make_record, zip(self.keys, self.values, self.timestamps)))

    def iter_records(self) -> Iterator[Record]:
        """Records one at a time: each is freed before the next is made (no GC pressure)."""
        return map(make_record, zip(self.keys, self.values, self.timestamps))

    def record(self, i: int) -> Record:
        return Record(self.keys[i], self.values[i], self.timestamps[i])

    @staticmethod
    def same_key(key: Any, values: Sequence[Any], timestamps: Sequence[Any]) -> Batch:
        return Batch(list(repeat(key, len(values))), values, timestamps)


class _Idle:
    """An epoch value saying "this channel has nothing now": merges leave it out of the minimum."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "IDLE"

    def __repr__(self) -> str:
        return "IDLE"


IDLE: Any = _Idle()
"""``Epoch(IDLE)``: the channel is idle (no source data); it does not hold back merged epochs
until it sends a real epoch again. Hooks never see it."""


class Epoch:
    """Promise: no later record on this channel has a timestamp ``<= ts``."""

    __slots__ = ("ts",)

    def __init__(self, ts: Any) -> None:
        self.ts = ts

    def __repr__(self) -> str:
        return f"Epoch({self.ts!r})"


class Token:
    """Counts the live copies of a broadcast control message; zero means it has completed."""

    __slots__ = ("pending",)

    def __init__(self, pending: int = 0) -> None:
        self.pending = pending


class Control:
    """A control message whose completion is tracked by a :class:`Token`."""

    __slots__ = ("token",)

    def __init__(self, token: Token) -> None:
        self.token = token


class Barrier(Control):
    """ABS snapshot barrier: operators persist their state into ``writer`` as it passes."""

    __slots__ = ("version", "writer")

    def __init__(self, token: Token, version: int, writer: Any) -> None:
        super().__init__(token)
        self.version = version
        self.writer = writer


class Rescale(Control):
    """The worker set changes to ``workers`` (configuration ``version``): injected at the roots.

    Every operator sees it once (multi-input operators align it). Distributors and sources
    start their migration cycle on it; it completes when every copy is consumed and every
    operator reports :meth:`Operator.rescale_done`.
    """

    __slots__ = ("version", "workers")

    def __init__(self, token: Token, version: int, workers: tuple[int, ...]) -> None:
        super().__init__(token)
        self.version = version
        self.workers = workers


class RegionMessage(Control):
    """A message a distributor sends into its key region during a rescale.

    Its copies share one object on a worker. Where a region fans out and meets again (a
    ``split`` or ``cloned`` stream, or two filters of one keyed stream, joined or unioned),
    one message reaches an operator once per path: :meth:`Operator.on_control` acts on the
    first copy and consumes the others (``handled`` names the operators that acted), so every
    operator installs moved state, reports its keys or sees a rescale end exactly once.
    """

    __slots__ = ("handled",)

    def __init__(self, token: Token) -> None:
        super().__init__(token)
        self.handled: set[str] = set()


class Interrogate(RegionMessage):
    """Sent by a distributor into its key region when rescale ``version`` starts (before any
    record of the new configuration): every keyed operator adds the keys it holds state for
    to ``keys`` (so their new owners can be worked out ahead of the Collect, a few at a
    time), and :meth:`Operator.keys_moving` runs."""

    __slots__ = ("keys", "version")

    def __init__(self, token: Token, version: int) -> None:
        super().__init__(token)
        self.version = version
        self.keys: set[Any] = set()


Select = Callable[[Iterable[Any]], list[Any]]
"""``select(keys)``: those of ``keys`` that leave this worker (see :class:`Collect`)."""


class Collect(RegionMessage):
    """Sent by a distributor into its key region: hand over the state of every key that
    leaves this worker into ``collection[operator name]``.

    Operators find their leaving keys with :meth:`select`. A distributor collects the keys it
    knows to leave in chunks (``only``: just these keys, one chunk per loop turn), then once
    more for the rest: then the keys known to stay or to leave (``staying``, ``leaving``) are
    sorted out with set operations at C speed, and ``moving(key)`` decides the others."""

    __slots__ = ("collection", "leaving", "moving", "only", "staying")

    def __init__(
        self,
        token: Token,
        moving: Callable[[Any], bool],
        staying: AbstractSet[Any] = frozenset(),
        leaving: AbstractSet[Any] = frozenset(),
        only: set[Any] | None = None,
    ) -> None:
        super().__init__(token)
        self.moving = moving
        self.staying = staying
        self.leaving = leaving
        self.only = only
        self.collection: dict[str, dict[Any, Any]] = {}

    def select(self, keys: Iterable[Any]) -> list[Any]:
        """The keys among ``keys`` that leave this worker (in this collect)."""
        if not isinstance(keys, AbstractSet):
            keys = set(keys)
        only = self.only
        if only is not None:
            return list(only & keys)  # C speed, walking the smaller side (a keys view too)
        rest = keys - self.staying
        known = rest & self.leaving
        if known:
            rest -= known
        moving = self.moving
        return [*known, *[k for k in rest if moving(k)]]


class Acquire(RegionMessage):
    """Sent by a distributor into its key region: install ``states[operator name]`` (keys that
    now belong to this worker, collected by their previous owner)."""

    __slots__ = ("states",)

    def __init__(self, token: Token, states: dict[str, dict[Any, Any]]) -> None:
        super().__init__(token)
        self.states = states


class Installed(RegionMessage):
    """Every key moving to this worker has been acquired; held records follow it."""

    __slots__ = ("version",)

    def __init__(self, token: Token, version: int) -> None:
        super().__init__(token)
        self.version = version


class Released(RegionMessage):
    """The records held during rescale ``version`` have passed (they follow
    :class:`Installed`): the region runs in the new configuration, and
    :meth:`Operator.keys_moved` runs."""

    __slots__ = ("version",)

    def __init__(self, token: Token, version: int) -> None:
        super().__init__(token)
        self.version = version


def _never_fenced() -> None:
    pass


@dataclass
class BuildContext:
    """What an operator may know about its worker when it is built.

    ``attempt`` is the job attempt the worker belongs to; ``fence()`` raises
    :class:`~malstrom._errors.AttemptFenced` once that attempt is over. Operators with side
    effects outside the job (sinks) call it before each one.
    """

    worker_id: int
    worker_set: tuple[int, ...]
    restore: Any = None  # a snapshot reader, or None on a fresh start
    services: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    fence: Callable[[], None] = _never_fenced

    def restore_keyed(
        self, operator: str, owner: Callable[[Any, Sequence[int]], int] | None
    ) -> Iterator[tuple[Any, Any]]:
        """The ``(key, state)`` pairs of ``operator`` that this worker owns now."""
        if self.restore is None:
            return iter(())
        return self.restore.keyed(operator, owner, self.worker_id, self.worker_set)

    def restored_ended(self, operator: str) -> bool:
        """Whether ``operator`` had seen the end of stream in the snapshot restored from."""
        if self.restore is None:
            return False
        ended = self.restore.worker_scoped(ENDED_KEY)
        if self.worker_id in ended:
            return operator in ended[self.worker_id]
        return bool(ended) and all(operator in names for names in ended.values())

    def restore_worker(self, operator: str) -> dict[int, Any]:
        """Per-worker (unkeyed) state of ``operator``, by the worker id that stored it."""
        if self.restore is None:
            return {}
        return self.restore.worker_scoped(operator)


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
    """Holds keyed state placed by a partitioner: takes part in Collect/Acquire (rescale)."""
    aligns_region = False
    """Several inputs, every one keyed by a distributor: the final Collect, Installed and
    Released of a rescale align here like barriers (a key's state and its records from every
    input move together; what follows Released follows every input's held records)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs: list[Channel] = []
        self.outs: list[list[Channel]] = [[]]
        self.in_frontier: Any = None
        self.done = False
        self.restored_done = False
        self._chan_epochs: list[Any] = []
        self._blocked: list[bool] = []
        self._idle_out = False

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
            if isinstance(msg, Collect):
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
            self.done = True

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
            if any(e is None for e in epochs):
                return
            live = [e for e in epochs if e is not IDLE]
            if not live:
                merged = IDLE
            else:
                try:
                    merged = min(live)
                except TypeError as e:
                    raise OperatorError(
                        self.name,
                        f"cannot merge epochs of incomparable timestamps {short_repr(epochs)}",
                    ) from e
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
            if merged is MAX and self.restored_done and self.hooks_on_epoch:
                self.emit_epoch(MAX)  # its end-of-stream hooks already ran before the snapshot
            else:
                self.on_epoch(merged)
        elif self._idle_out:
            # Active again but behind: say so downstream (merges there take this path back in).
            self._idle_out = False
            self.emit_epoch(cur)

    def pass_barrier(self, barrier: Barrier) -> None:
        """A barrier reaches this operator: note whether it had ended, then snapshot."""
        if self.done:
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
        rescale's final Collect, Installed and Released where every input is keyed by a
        distributor."""
        t = type(msg)
        if t is Barrier or t is Rescale:
            return True
        if not self.aligns_region:
            return False
        if t is Collect:
            return msg.only is None  # type: ignore[attr-defined]
        return t is Installed or t is Released
