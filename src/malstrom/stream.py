"""The fluent dataflow API: :class:`StreamProvider` and :class:`Stream`.

``build(provider)`` wires streams through named operators; nothing runs until a runtime
executes the job. The graph built here is a description: every worker builds its own
operator instances from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from malstrom.engine.graph import Factory, Graph, Node, check_name
from malstrom.engine.operator import Operator
from malstrom.errors import BuildError
from malstrom.keyed.distributor import DistributorOp
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.operators.basic import (
    FilterMapOp,
    FilterOp,
    FlatMapOp,
    InspectFrontierOp,
    InspectOp,
    KeyLocalOp,
    MapOp,
    OperatorContext,
    SplitOp,
    StatelessLogic,
    StatelessOpOp,
)
from malstrom.operators.io import EmptyRootOp, SourceOp, StatefulSinkOp, StatelessSinkOp
from malstrom.operators.joins import IntervalJoinOp, WindowJoinOp
from malstrom.operators.stateful import (
    ExpireMap,
    StatefulLogic,
    StatefulMapOp,
    StatefulOpOp,
    TtlMapOp,
)
from malstrom.operators.time import AssignTimestampsOp, GenerateEpochsOp
from malstrom.operators.windows import WindowOp
from malstrom.sinks._protocols import StatefulSink, StatelessSink
from malstrom.sources._protocols import StatefulSource, StatelessSource
from malstrom.types import Partitioner, Record
from malstrom.windows import Aggregator, Fold, Session, Sliding, Tumbling, WindowAssigner

__all__ = ["Stream", "StreamProvider"]


def _check_fn(op: str, what: str, fn: object) -> None:
    if not callable(fn):
        raise BuildError(f"operator {op!r}: {what} must be callable, got {fn!r}")


_UNSOURCED: Any = object()

# The region of a source's records: keyed by their part and on the worker that reads the part.
# Keyed state there must not rely on that placement: a rescale moves parts by the source's
# own rule, not a distributor's, so no operator would hand the part's state over. A keyed
# operator on such a stream reads it through an internal distributor (see Stream._keyed).
_PARTS: Any = object()


def _is_key_distribute(node: Node) -> bool:
    """Whether ``node`` was made by :meth:`Stream.key_distribute`."""
    return node.distributes


def _keyed_by_distribute(node: Node | None) -> bool:
    """Whether every path from a source to ``node`` passes through a ``key_distribute``."""
    seen: dict[int, bool] = {}

    def walk(n: Node) -> bool:
        got = seen.get(id(n))
        if got is None:
            if _is_key_distribute(n):
                got = True
            elif n.is_root or not n.inputs:
                got = False
            else:
                got = all(walk(src) for src, _ in n.inputs)
            seen[id(n)] = got
        return got

    return node is not None and walk(node)


def _check_timeout(op: str, timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise BuildError(
            f"operator {op!r}: idle_timeout must be a number of seconds > 0 (or None), "
            f"got {timeout!r}"
        )


def _check_positive(op: str, what: str, x: Any) -> None:
    try:
        bad = x < x * 0
    except TypeError:
        bad = True
    if bad:
        raise BuildError(f"operator {op!r}: {what} must be zero or positive, got {x!r}")


class StreamProvider:
    """Handed to ``build(provider)``; creates the job's streams."""

    def __init__(self) -> None:
        self._graph = Graph()

    def new_stream(self) -> Stream:
        """A fresh stream: give it a source with :meth:`Stream.source`."""
        return Stream(self._graph, None, 0, _UNSOURCED)


class Stream:
    """A stream of records, extended by one named operator per call.

    Methods return the stream of the new operator's output (or several, for ``split``,
    ``cloned``, ``generate_epochs``). A stream may feed several operators; each gets every
    record. User functions that compute from data receive the value; hooks that observe or
    route receive the :class:`~malstrom.Record`.
    """

    def __init__(self, graph: Graph, node: Node | None, port: int, region: Any) -> None:
        self._graph = graph
        self._node = node
        self._port = port
        # The partitioner of this key region: which worker owns a key (None: keyed locally).
        self._partitioner = region

    # ----- plumbing -------------------------------------------------------------------
    def _tail(self) -> tuple[Node, int]:
        if self._node is None:
            # An operator on a stream without a source: the stream is empty and ends at once.
            g = self._graph
            g.roots += 1
            node = g.add(f"::empty{g.roots}", EmptyRootOp, [], internal=True, is_root=True)
            self._node, self._partitioner = node, None
        return self._node, self._port

    def _then(self, name: str, factory: Factory, ports: int = 1) -> Node:
        check_name(name)
        return self._graph.add(name, factory, [self._tail()], ports)

    def _keyed(self, name: str) -> tuple[Stream, Any]:
        """The stream keyed operator ``name`` reads, and its partitioner (None: keyed in place).

        Records straight from sources are keyed by their part, on the worker reading it; a
        rescale moves parts, and nothing would move a keyed operator's state for the part
        along. So such records pass an internal distributor first (``name::distribute``,
        keys unchanged): every record already sits with its key's owner but while a rescale
        runs, and the distributor moves the state of every key whose owner changes."""
        if self._partitioner is not _PARTS:
            return self, self._partitioner
        check_name(name)
        dist_name = f"{name}::distribute"
        dist = self._graph.add(
            dist_name,
            lambda ctx: DistributorOp(dist_name, None, rendezvous_select, ctx),
            [self._tail()],
            internal=True,
        )
        dist.distributes = True
        return Stream(self._graph, dist, 0, rendezvous_select), rendezvous_select

    def _out(self, node: Node, port: int = 0, region: Any = _UNSOURCED) -> Stream:
        partitioner = self._partitioner if region is _UNSOURCED else region
        return Stream(self._graph, node, port, partitioner)

    # ----- sources and sinks ----------------------------------------------------------------
    def source(self, name: str, source: StatefulSource | StatelessSource) -> Stream:
        """Attach a source; only on a stream fresh from ``provider.new_stream()``."""
        check_name(name)
        if not isinstance(source, StatefulSource | StatelessSource):
            raise BuildError(
                f"operator {name!r}: {source!r} is not a source; wrap your implementation in "
                "StatefulSource(impl) or StatelessSource(impl)"
            )
        if self._node is not None:
            raise BuildError(
                f"operator {name!r}: this stream already has a source or operators "
                f"({self._node.name!r}); use provider.new_stream() for every source and "
                "union the streams"
            )
        node = self._graph.add(name, lambda ctx: SourceOp(name, source, ctx), [], is_root=True)
        self._node = node  # a second .source() on this stream object is refused
        return Stream(self._graph, node, 0, _PARTS)

    def sink(self, name: str, sink: StatelessSink | StatefulSink) -> None:
        """Send every record to ``sink``; the stream ends here."""
        check_name(name)
        if isinstance(sink, StatefulSink):
            impl = sink.impl
            tail = self._tail()
            dist = self._graph.add(
                f"{name}::distribute",
                lambda ctx: DistributorOp(
                    f"{name}::distribute", None, rendezvous_select, ctx, impl.assign_part
                ),
                [tail],
                internal=True,
            )
            self._graph.add(name, lambda ctx: StatefulSinkOp(name, impl, ctx), [(dist, 0)])
        elif isinstance(sink, StatelessSink):
            self._then(name, lambda ctx: StatelessSinkOp(name, sink.impl, ctx))
        else:
            raise BuildError(
                f"operator {name!r}: {sink!r} is not a sink; wrap your implementation in "
                "StatelessSink(impl) or StatefulSink(impl)"
            )

    # ----- stateless -------------------------------------------------------------------
    def map(self, name: str, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value by ``fn(value)``."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: MapOp(name, fn)))

    def filter(self, name: str, fn: Callable[[Any], bool]) -> Stream:
        """Keep the records whose ``fn(value)`` is true."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: FilterOp(name, fn)))

    def filter_map(self, name: str, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value by ``fn(value)``; a None result drops the record."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: FilterMapOp(name, fn)))

    def flat_map(self, name: str, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """One record per element of ``fn(value)``, with the input's key and timestamp."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: FlatMapOp(name, fn)))

    def flatten(self, name: str) -> Stream:
        """One record per element of each (iterable) value."""
        return self._out(self._then(name, lambda ctx: FlatMapOp(name, None)))

    def inspect(self, name: str, fn: Callable[[Record, OperatorContext], None]) -> Stream:
        """Call ``fn(record, ctx)`` for every record and pass it on unchanged."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: InspectOp(name, fn, ctx)))

    def inspect_frontier(self, name: str, fn: Callable[[Any, OperatorContext], None]) -> Stream:
        """Call ``fn(timestamp, ctx)`` for every epoch (``MAX`` at the end)."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: InspectFrontierOp(name, fn, ctx)))

    def stateless_op(self, name: str, logic: StatelessLogic) -> Stream:
        """A custom operator without state (see :class:`~malstrom.StatelessLogic`)."""
        if not callable(getattr(logic, "on_data", None)):
            raise BuildError(f"operator {name!r}: logic needs an on_data(record, output) method")
        return self._out(self._then(name, lambda ctx: StatelessOpOp(name, logic)))

    # ----- keys ------------------------------------------------------------------------------
    def key_local(self, name: str, key_fn: Callable[[Any], Any]) -> Stream:
        """Re-key records by ``key_fn(value)`` without moving them between workers.

        State keyed after this stays on the worker where it was made (it is not moved on
        rescale); use :meth:`key_distribute` for state that must follow its key.
        """
        _check_fn(name, "key_fn", key_fn)
        return self._out(self._then(name, lambda ctx: KeyLocalOp(name, key_fn)), region=None)

    def key_distribute(
        self,
        name: str,
        key_fn: Callable[[Any], Any],
        partitioner: Partitioner = rendezvous_select,
        *,
        max_epoch_lead: float | None = None,
    ) -> Stream:
        """Re-key by ``key_fn(value)`` and move each record to the worker owning its key.

        ``max_epoch_lead`` (seconds) turns on *epoch alignment*: a worker whose own epochs
        here run ahead of another worker's (the other has not yet reached the epoch this one
        had ``max_epoch_lead`` seconds ago) stops reading the sources that feed this operator
        until it has. Every worker's records then wait less in keyed state for the slowest
        worker's epochs (less state, less work per epoch), which pays when replaying a backlog
        on several workers. A source part without data that never goes idle holds the others
        back, as in Flink's watermark alignment: give such streams an ``idle_timeout``.
        """
        _check_fn(name, "key_fn", key_fn)
        _check_fn(name, "partitioner", partitioner)
        if max_epoch_lead is not None and not (
            isinstance(max_epoch_lead, int | float)
            and not isinstance(max_epoch_lead, bool)
            and max_epoch_lead >= 0
        ):
            raise BuildError(
                f"operator {name!r}: max_epoch_lead must be a number of seconds >= 0 or None, "
                f"got {max_epoch_lead!r}"
            )
        lead = None if max_epoch_lead is None else float(max_epoch_lead)
        node = self._then(
            name, lambda ctx: DistributorOp(name, key_fn, partitioner, ctx, max_epoch_lead=lead)
        )
        node.distributes = True
        return self._out(node, region=partitioner)

    # ----- keyed state -------------------------------------------------------------------
    def stateful_map(
        self,
        name: str,
        fn: Callable[[Any, Any, Any], tuple[Any, Any]],
        initial: Callable[[], Any] | None = None,
    ) -> Stream:
        """``fn(key, value, state) -> (out_value, new_state)`` per record.

        Missing state is ``initial()`` if given, else None. Returning ``new_state=None``
        deletes the key's state.
        """
        _check_fn(name, "fn", fn)
        if initial is not None:
            _check_fn(name, "initial", initial)
        s, region = self._keyed(name)
        node = s._then(name, lambda ctx: StatefulMapOp(name, fn, initial, ctx, region))
        node.pinned = region is None
        return s._out(node)

    def stateful_op(self, name: str, logic: StatefulLogic[Any, Any, Any, Any]) -> Stream:
        """A custom keyed operator (see :class:`~malstrom.StatefulLogic`)."""
        if not callable(getattr(logic, "on_data", None)):
            raise BuildError(
                f"operator {name!r}: logic needs an on_data(record, state, output) method"
            )
        s, region = self._keyed(name)
        node = s._then(name, lambda ctx: StatefulOpOp(name, logic, ctx, region))
        node.pinned = region is None
        return s._out(node)

    def ttl_map(
        self,
        name: str,
        fn: Callable[[Any, Any, Any, ExpireMap[Any, Any]], tuple[Any, ExpireMap[Any, Any] | None]],
    ) -> Stream:
        """``fn(key, value, timestamp, expire_map) -> (out_value, expire_map or None)``.

        Entries inserted with ``expire_map.insert(k, v, expiry)`` disappear once an epoch
        ``>= expiry`` arrives.
        """
        _check_fn(name, "fn", fn)
        s, region = self._keyed(name)
        node = s._then(name, lambda ctx: TtlMapOp(name, fn, ctx, region))
        node.pinned = region is None
        return s._out(node)

    # ----- event time -------------------------------------------------------------------------
    def assign_timestamps(self, name: str, fn: Callable[[Any], Any]) -> Stream:
        """Set each record's timestamp to ``fn(value)``; drops upstream epochs except MAX."""
        _check_fn(name, "fn", fn)
        return self._out(self._then(name, lambda ctx: AssignTimestampsOp(name, fn)))

    def generate_epochs(
        self,
        name: str,
        gen: Callable[[Record, Any], Any],
        idle_timeout: float | None = None,
    ) -> tuple[Stream, Stream]:
        """Emit epochs from ``gen(record, prev_epoch) -> timestamp or None``.

        Returns ``(on_time, late)``: a record is on time iff no epoch was emitted yet or its
        timestamp is greater than the last emitted epoch. With ``idle_timeout`` (seconds), a
        worker whose input brought no record for that long is marked idle: it no longer holds
        back epochs merged downstream (other workers' windows still close) until its next
        record. Records arriving after that may be late downstream.
        """
        _check_fn(name, "gen", gen)
        _check_timeout(name, idle_timeout)
        node = self._then(
            name, lambda ctx: GenerateEpochsOp(name, gen, None, ctx, idle_timeout), ports=2
        )
        return self._out(node, 0), self._out(node, 1)

    def limit_out_of_orderness(
        self, name: str, bound: Any, idle_timeout: float | None = None
    ) -> tuple[Stream, Stream]:
        """Epochs trail the largest timestamp seen by ``bound``; returns ``(on_time, late)``.

        ``idle_timeout``: as for :meth:`generate_epochs`.
        """
        if bound is None or isinstance(bound, str | bytes | bool):
            raise BuildError(
                f"operator {name!r}: bound must be a duration in the timestamps' unit "
                f"(a number, or a timedelta for datetimes), got {bound!r}"
            )
        _check_timeout(name, idle_timeout)
        node = self._then(
            name, lambda ctx: GenerateEpochsOp(name, None, bound, ctx, idle_timeout), ports=2
        )
        return self._out(node, 0), self._out(node, 1)

    # ----- windows and joins ------------------------------------------------------------------
    def window(
        self,
        name: str,
        assigner: WindowAssigner,
        aggregator: Aggregator[Any, Any, Any],
        allowed_lateness: Any = 0,
    ) -> tuple[Stream, Stream]:
        """Aggregate each key's records per event-time window; returns ``(results, late)``.

        ``assigner`` is a :mod:`malstrom.windows` ``Tumbling``, ``Sliding`` or ``Session``;
        ``aggregator`` has ``create/add/merge/result`` (``Count()``, ``Sum()``, ...). A window
        ``[start, end)`` fires when an epoch ``>= end`` arrives: its record keeps the key, has
        ``value = WindowResult(start, end, value)`` and ``timestamp = end``. Within
        ``allowed_lateness`` of the end a late record updates its window and the result is
        emitted again at once; records whose windows are all gone go to ``late`` unchanged.
        """
        if not isinstance(assigner, Tumbling | Sliding | Session):
            raise BuildError(
                f"operator {name!r}: assigner must be Tumbling, Sliding or Session from "
                f"malstrom.windows, got {assigner!r}"
            )
        methods = ("create", "add", "result", "merge")
        for m in methods if isinstance(assigner, Session) else methods[:3]:
            _check_fn(name, f"aggregator.{m}", getattr(aggregator, m, None))
        fold = aggregator if isinstance(aggregator, Fold) else None
        if isinstance(assigner, Session) and fold is not None and not fold.can_merge:
            raise BuildError(
                f"operator {name!r}: Session windows merge, so Fold needs merge=fn(a, b)"
            )
        _check_positive(name, "allowed_lateness", allowed_lateness)
        s, region = self._keyed(name)
        node = s._then(
            name,
            lambda ctx: WindowOp(name, assigner, aggregator, allowed_lateness, ctx, region),
            ports=2,
        )
        node.pinned = region is None
        return s._out(node, 0), s._out(node, 1)

    def _join_inputs(self, name: str, right: Stream) -> Any:
        """Check that both sides are keyed alike; returns their partitioner."""
        check_name(name)
        if not isinstance(right, Stream) or right._graph is not self._graph:
            raise BuildError(f"operator {name!r}: can only join streams of the same job")
        for side, s in (("left", self), ("right", right)):
            if s._partitioner is None or not _keyed_by_distribute(s._node):
                raise BuildError(
                    f"operator {name!r}: the {side} stream must be keyed by key_distribute "
                    "(records of one key must meet on one worker)"
                )
        if self._partitioner is not right._partitioner:
            raise BuildError(
                f"operator {name!r}: both sides must be keyed by key_distribute with the "
                f"same partitioner, got {self._partitioner!r} and {right._partitioner!r}"
            )
        return self._partitioner

    def join(self, name: str, right: Stream, assigner: WindowAssigner) -> Stream:
        """Pair records of one key that fall in the same window: ``value = (left, right)``.

        ``assigner`` is ``Tumbling`` or ``Sliding`` (a pair is emitted once per window the two
        share). A pair is emitted as soon as both records are present, with the larger of the
        two timestamps. Both streams must be keyed by ``key_distribute`` with the same
        partitioner.
        """
        region = self._join_inputs(name, right)
        if isinstance(assigner, Session):
            raise BuildError(f"operator {name!r}: Session windows cannot be used for joins")
        if not isinstance(assigner, Tumbling | Sliding):
            raise BuildError(
                f"operator {name!r}: assigner must be Tumbling or Sliding from "
                f"malstrom.windows, got {assigner!r}"
            )
        node = self._graph.add(
            name,
            lambda ctx: WindowJoinOp(name, assigner, ctx, region),
            [self._tail(), right._tail()],
        )
        node.aligns_region = True
        return self._out(node, region=region)

    def interval_join(self, name: str, right: Stream, lower: Any, upper: Any) -> Stream:
        """Pair records of one key with ``left.ts + lower <= right.ts <= left.ts + upper``.

        ``value = (left_value, right_value)``, timestamp = the larger of the two, emitted as
        soon as both records are present. Both streams must be keyed by ``key_distribute``
        with the same partitioner.
        """
        region = self._join_inputs(name, right)
        try:
            ordered = lower <= upper
        except TypeError:
            ordered = False
        if not ordered:
            raise BuildError(
                f"operator {name!r}: interval_join needs lower <= upper, got {lower!r} and "
                f"{upper!r}"
            )
        node = self._graph.add(
            name,
            lambda ctx: IntervalJoinOp(name, lower, upper, ctx, region),
            [self._tail(), right._tail()],
        )
        node.aligns_region = True
        return self._out(node, region=region)

    # ----- shape ------------------------------------------------------------------------------
    def union(self, name: str, *others: Stream) -> Stream:
        """Merge this stream with ``others``; epochs merge by minimum, barriers align."""
        check_name(name)
        inputs = [self._tail()]
        for o in others:
            if not isinstance(o, Stream) or o._graph is not self._graph:
                raise BuildError(f"operator {name!r}: can only union streams of the same job")
            inputs.append(o._tail())
        node = self._graph.add(name, lambda ctx: Operator(name), inputs)
        streams = (self, *others)
        regions = {id(s._partitioner) for s in streams}
        node.aligns_region = len(inputs) > 1 and all(_keyed_by_distribute(s._node) for s in streams)
        if len(regions) == 1:
            region = self._partitioner
        elif regions == {id(_PARTS), id(rendezvous_select)}:
            region = _PARTS  # a keyed operator after it distributes again (see _keyed)
        else:
            region = None
        return self._out(node, region=region)

    def cloned(self, name: str, n: int) -> list[Stream]:
        """``n`` streams, each receiving every record."""
        if not isinstance(n, int) or n < 1:
            raise BuildError(f"operator {name!r}: cloned needs n >= 1, got {n!r}")
        node = self._then(name, lambda ctx: SplitOp(name, n, None), ports=n)
        return [self._out(node, i) for i in range(n)]

    def split(self, name: str, n: int, fn: Callable[[Record, list[bool]], None]) -> list[Stream]:
        """``n`` streams; ``fn(record, outputs)`` sets ``outputs[i] = True`` to route there."""
        if not isinstance(n, int) or n < 1:
            raise BuildError(f"operator {name!r}: split needs n >= 1, got {n!r}")
        _check_fn(name, "fn", fn)
        node = self._then(name, lambda ctx: SplitOp(name, n, fn), ports=n)
        return [self._out(node, i) for i in range(n)]
