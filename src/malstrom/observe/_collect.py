"""Worker side of the metrics: counters kept per operator, updated once per batch, and the
report a worker sends the coordinator with each heartbeat.

Nothing here runs per record. :func:`instrument` wraps, on each operator *instance*, the
methods a batch goes through (``on_batch``, ``emit``, ``emit_to``, ``drain``, ``poll``): a
wrapper adds ``len(batch)`` to a counter and calls the method it shadows. Frontiers, queue
depths, keys held, bytes per peer and the source parts' ``lag()`` are read when a report is
made (about once a second), not kept up to date.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from malstrom.observe import _user

__all__ = ["OpCounters", "WorkerMetrics", "instrument", "numeric_time", "part_label"]

#: Operator classes whose output port 1 carries late records.
_LATE_PORT_CLASSES = ("GenerateEpochsOp", "WindowOp", "_WindowOp")


class OpCounters:
    """Counters of one operator on one worker (plain attributes: one add per batch)."""

    __slots__ = ("batches", "busy", "records_in", "records_late", "records_out")

    def __init__(self) -> None:
        self.records_in = 0
        self.records_out = 0
        self.records_late = 0
        self.batches = 0
        self.busy = 0.0


def numeric_time(ts: Any) -> float | None:
    """An event time as seconds since the Unix epoch, when it can be read as one.

    datetimes convert; numbers are taken as seconds, or as milliseconds when they are too
    large to be seconds (after the year 2500). Anything else (sequence numbers, tuples) has
    no wall-clock meaning: None.
    """
    if isinstance(ts, datetime):
        return ts.timestamp() if ts.tzinfo is not None else None
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return ts / 1000.0 if ts > 1.7e10 else float(ts)
    return None


def _frontier(op: Any) -> Any:
    f = op.in_frontier
    return None if f is None else f


def _wrap_on_batch(op: Any, c: OpCounters) -> None:
    inner = op.on_batch

    def on_batch(batch: Any, port: int) -> None:
        c.records_in += len(batch.values)
        c.batches += 1
        inner(batch, port)

    op.on_batch = on_batch


def _wrap_emit(op: Any, c: OpCounters, late_port: bool) -> None:
    emit, emit_to = op.emit, op.emit_to

    def counted_emit(batch: Any) -> None:
        c.records_out += len(batch.values)
        emit(batch)

    def counted_emit_to(port: int, batch: Any) -> None:
        if late_port and port == 1:
            c.records_late += len(batch.values)
        else:
            c.records_out += len(batch.values)
        emit_to(port, batch)

    op.emit = counted_emit
    op.emit_to = counted_emit_to


def _wrap_timed(op: Any, method: str, c: OpCounters) -> None:
    """Busy time: wall time of the calls that did something (idle calls are not counted)."""
    inner: Callable[..., bool] = getattr(op, method)
    clock = time.perf_counter

    def timed(*args: Any) -> bool:
        t = clock()
        worked = inner(*args)
        if worked:
            c.busy += clock() - t
        return worked

    setattr(op, method, timed)


class WorkerMetrics:
    """The counters of every operator of one worker, and the report made of them."""

    def __init__(self, worker_id: int, ops: list[Any], exchange: Any = None) -> None:
        self.worker_id = worker_id
        self.ops = ops
        self.exchange = exchange
        self.counters: dict[str, OpCounters] = {}
        self.kinds = {op.name: type(op).__name__ for op in ops}
        #: Records each source emits in all, where its implementation says (``size()``).
        self.sizes = {op.name: _source_size(op) for op in ops if op.is_source}
        self.pid = 0
        #: per peer: [records sent, records received]
        self.routed: dict[int, list[int]] = {}
        self.backpressured = 0.0  # seconds the worker held intakes (a saturated pipe)
        #: Sources whose parts may tell their lag (``lag()``), asked once per report.
        self.sources = [op for op in ops if op.is_source and hasattr(op, "parts")]
        _user.reset()  # a new attempt: the coordinator counts this worker's reports from zero
        if exchange is not None:
            self._wrap_exchange(exchange)
        for op in ops:
            c = self.counters[op.name] = OpCounters()
            late = type(op).__name__ in _LATE_PORT_CLASSES and len(op.outs) > 1
            _wrap_on_batch(op, c)
            _wrap_emit(op, c, late)
            if op.is_source:
                _wrap_timed(op, "poll", c)
            if op.inputs:
                _wrap_timed(op, "drain", c)

    def _wrap_exchange(self, exchange: Any) -> None:
        """Records per peer (once per batch sent or taken) and time held back (once a turn:
        the worker tells the exchange what it holds every turn)."""
        from malstrom.engine.batch import Batch

        send, recv, hold = exchange.send, exchange.recv, exchange.hold
        routed = self.routed
        clock = time.monotonic
        last = [0.0]

        def counted_send(peer: int, operator: str, msg: Any) -> None:
            if type(msg) is Batch:
                row = routed.get(peer)
                if row is None:
                    row = routed[peer] = [0, 0]
                row[0] += len(msg.values)
            send(peer, operator, msg)

        def counted_recv(peer: int, operator: str) -> Any:
            msg = recv(peer, operator)
            if type(msg) is Batch:
                row = routed.get(peer)
                if row is None:
                    row = routed[peer] = [0, 0]
                row[1] += len(msg.values)
            return msg

        def timed_hold(operators: Any) -> None:
            now = clock()
            if operators:
                if last[0]:
                    self.backpressured += now - last[0]
                last[0] = now
            else:
                last[0] = 0.0
            hold(operators)

        exchange.send = counted_send
        exchange.recv = counted_recv
        exchange.hold = timed_hold

    def report(self) -> dict[str, Any]:
        """Plain data (pickles and JSON-encodes): cumulative counters and current gauges."""
        ops: dict[str, list[Any]] = {}
        for op in self.ops:
            c = self.counters[op.name]
            late = c.records_late + int(getattr(op, "late_records", 0) or 0)
            states = getattr(op, "states", None)
            keys = len(states) if isinstance(states, dict) else None
            depth = 0
            for ch in op.inputs:
                depth += len(ch)
            f = _frontier(op)
            ops[op.name] = [
                c.records_in,
                c.records_out,
                c.batches,
                c.busy,
                late,
                numeric_time(f),
                depth,
                keys,
                f is not None,
            ]
        return {
            "t": time.time(),
            "ops": ops,
            "kinds": self.kinds,
            "sizes": self.sizes,
            "peers": _peers(self.exchange),
            "saturated": len(_saturated(self.exchange)),
            "routed": {peer: list(row) for peer, row in self.routed.items()},
            "backpressured": self.backpressured,
            "user": _user.snapshot(),
            "user_hist": _user.histograms(),
            "source_lag": self._source_lags(),
        }

    def _source_lags(self) -> dict[str, list[tuple[str, int]]]:
        """Per source, ``(part, lag)`` of the unfinished parts here that tell
        (``part.lag()``). A source whose parts can tell but all finished is listed with
        none: nothing left to read, and no series per finished part (a directory source may
        have read thousands of files)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for op in self.sources:
            rows = [
                (part_label(p.key), n)
                for p in op.parts
                if not p.finished and (n := _part_lag(p.part)) is not None
            ]
            if rows or any(callable(getattr(p.part, "lag", None)) for p in op.parts):
                out[op.name] = rows
        return out


#: Fields of one operator's entry in a report, in order.
OP_FIELDS = (
    "records_in",
    "records_out",
    "batches",
    "busy",
    "late",
    "frontier",
    "queue",
    "keys",
    "has_frontier",
)


def _source_size(op: Any) -> int | None:
    size = getattr(getattr(op, "impl", None), "size", None)
    if not callable(size):
        return None
    try:
        n = size()
    except Exception:  # a size is a nicety: never fail the job over it
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def part_label(key: Any) -> str:
    """A source part's key as a label: ``topic:3`` for ``("topic", 3)``, else ``str(key)``."""
    if isinstance(key, tuple):
        return ":".join(map(str, key))
    return str(key)


def _part_lag(part: Any) -> int | None:
    """What a part has not read yet (records or bytes), when it can tell: ``lag()``."""
    fn = getattr(part, "lag", None)
    if fn is None:
        return None
    try:
        n = fn()
    except Exception:  # a lag is a nicety: never fail the job over it
        return None
    if isinstance(n, int | float) and not isinstance(n, bool) and n >= 0 and math.isfinite(n):
        return int(n)
    return None


def _saturated(exchange: Any) -> Any:
    try:
        return exchange.saturated() if exchange is not None else ()
    except Exception:
        return ()


def _peers(exchange: Any) -> dict[int, list[int]]:
    """Bytes sent to and received from each peer (network exchange only)."""
    out: dict[int, list[int]] = {}
    pipes = getattr(exchange, "_out", None)
    inbound = getattr(exchange, "_inbound", None)
    if not isinstance(pipes, dict) or not isinstance(inbound, dict):
        return out
    for (peer, _op), pipe in list(pipes.items()):
        out.setdefault(peer, [0, 0])[0] += int(getattr(pipe, "sent", 0))
    for peer, state in list(inbound.items()):
        out.setdefault(peer, [0, 0])[1] += int(getattr(state, "received", 0))
    return out


def instrument(worker_id: int, ops: list[Any], exchange: Any = None) -> WorkerMetrics:
    """Wrap ``ops`` with counters; the returned object makes the heartbeat reports."""
    return WorkerMetrics(worker_id, ops, exchange)
