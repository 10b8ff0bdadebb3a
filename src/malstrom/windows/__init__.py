"""Event-time windows: assigners, aggregators and :class:`WindowResult`.

A window groups the records of one key by event time and reduces them to one value. You pick
*which* windows a record belongs to with an **assigner** and *how* their values are reduced
with an **aggregator**, then call :meth:`Stream.window <malstrom.Stream.window>`::

    results, late = keyed.window("clicks-per-second", Tumbling(1000), Count())

Assigners (a window is the half-open interval ``[start, end)``):

- :class:`Tumbling` ``(size, offset=0)``: ``[offset + k*size, offset + (k+1)*size)``, one per
  record.
- :class:`Sliding` ``(size, slide, offset=0)``: every ``[offset + k*slide, +size)`` that
  contains the timestamp (negative starts included), ``size / slide`` windows per record.
- :class:`Session` ``(gap)``: each record opens ``[ts, ts + gap)``; overlapping intervals of one
  key merge, so a session ends ``gap`` after its last record. A record at ``ts >= last + gap``
  starts a new session.

Timestamps may be numbers or datetimes. With datetimes, sizes, slides and gaps are
``timedelta`` s and windows are aligned on 1970-01-01 in the timestamps' time zone (pass
``offset`` as a ``timedelta`` to shift them, or as a ``datetime`` to anchor them elsewhere).

**Firing.** A window fires when an epoch ``>= end`` reaches the operator, before that epoch
is forwarded: its result record keeps the key, has ``value = WindowResult(start, end, value)``
and ``timestamp = end``. Windows closed by the same epoch are emitted in order of ``end``, then
in the order their keys entered them. ``Epoch(MAX)`` (end of stream) fires every open window.

**Late records.** With ``allowed_lateness = L`` a window's state is kept until an epoch
``>= end + L``; a record that arrives behind the frontier for a fired but kept window updates
it, and the full updated result is emitted at once (again with ``timestamp = end``). A record
whose windows are all gone is sent, unchanged, to the second stream ``late``. A window fed by
an on-time stream never sees late records; lateness matters when the ``late`` stream of
``limit_out_of_orderness`` is unioned back in, or when a source makes its own epochs.

**Aggregators** are objects with four methods (see :class:`Aggregator`): ``create()`` makes
an empty accumulator, ``add(acc, value)`` returns the accumulator with ``value`` added (it may
update ``acc`` in place and return it), ``merge(a, b)`` combines two accumulators (used when
sessions merge; ``a`` is the earlier session) and ``result(acc)`` turns an accumulator into
the emitted value. ``result`` may be called more than once on the same accumulator (late
updates), so it must not hand out an object that ``add`` later changes. Built-ins:
:class:`Count`, :class:`Sum`, :class:`Min`, :class:`Max`, :class:`Collect`, :class:`Fold`,
:class:`Reduce`.

A complete job: the number of events per key and second, from event times in milliseconds::

    from malstrom import SingleThreadRuntime, StreamProvider
    from malstrom.sinks import StdOutSink
    from malstrom.sources import IterSource
    from malstrom.windows import Count, Tumbling

    EVENTS = [("a", 100), ("b", 300), ("a", 900), ("a", 1200), ("b", 2500)]

    def build(provider: StreamProvider) -> None:
        on_time, _late = (
            provider.new_stream()
            .source("events", IterSource(EVENTS))
            .key_distribute("by-key", lambda e: e[0])
            .assign_timestamps("event-time", lambda e: e[1])
            .limit_out_of_orderness("epochs", 0)
        )
        results, _too_late = on_time.window("per-second", Tumbling(1000), Count())
        results.sink("print", StdOutSink())

    SingleThreadRuntime(build).execute()

prints (each window fires once the epoch passes its end; the last one at the end of the
stream)::

    Record(key='a', value=WindowResult(start=0, end=1000, value=2), timestamp=1000)
    Record(key='b', value=WindowResult(start=0, end=1000, value=1), timestamp=1000)
    Record(key='a', value=WindowResult(start=1000, end=2000, value=1), timestamp=2000)
    Record(key='b', value=WindowResult(start=2000, end=3000, value=1), timestamp=3000)

Joins reuse the assigners: ``left.join(name, right, Tumbling(1000))`` pairs the records of
one key that fall in the same window (``Session`` cannot be used there).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

__all__ = [
    "Aggregator",
    "Collect",
    "Count",
    "Fold",
    "Max",
    "Min",
    "Reduce",
    "Session",
    "Sliding",
    "Sum",
    "Tumbling",
    "WindowAssigner",
    "WindowResult",
]

V_contra = TypeVar("V_contra", contravariant=True)
A = TypeVar("A")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")


class WindowResult(NamedTuple):
    """The value of a fired window's record: its bounds ``[start, end)`` and the aggregate."""

    start: Any
    """First timestamp of the window (inclusive)."""
    end: Any
    """End of the window (exclusive); also the result record's timestamp."""
    value: Any
    """``aggregator.result(acc)``."""


# ----- assigners --------------------------------------------------------------------------------


def _positive(op: str, what: str, x: Any) -> Any:
    try:
        ok = x > x - x
    except TypeError:
        ok = False
    if not ok or isinstance(x, bool):
        raise ValueError(f"{op}: {what} must be a positive number or timedelta, got {x!r}")
    return x


_EPOCHS: dict[Any, Any] = {}


def _epoch_of(ts: Any) -> Any:
    """1970-01-01 in the time zone of ``ts`` (a datetime or a date)."""
    if isinstance(ts, datetime):
        tz = ts.tzinfo
        e = _EPOCHS.get(tz)
        if e is None:
            e = _EPOCHS[tz] = datetime(1970, 1, 1, tzinfo=tz)
        return e
    return date(1970, 1, 1)


class WindowAssigner:
    """Base class of :class:`Tumbling`, :class:`Sliding` and :class:`Session`."""

    __slots__ = ()


class _Aligned(WindowAssigner):
    """Windows of a fixed ``size`` aligned on ``offset + k * step``."""

    __slots__ = ("offset", "size")

    size: Any
    offset: Any

    def _anchor(self, ts: Any) -> Any:
        """Where window starts are counted from, for timestamp ``ts``."""
        off = self.offset
        if isinstance(ts, date):
            if isinstance(off, date):
                return off
            base = _epoch_of(ts)
            return base + off if off else base
        return off

    def _static_anchor(self, ts: Any) -> Any:
        """The anchor when it is the same for every timestamp like ``ts``, else None."""
        off = self.offset
        if isinstance(off, date) or not isinstance(ts, date):
            return off
        if isinstance(ts, datetime) and ts.tzinfo is not None:
            return None  # each time zone has its own 1970-01-01
        return self._anchor(ts)


class Tumbling(_Aligned):
    """Fixed, non-overlapping windows ``[offset + k*size, offset + (k+1)*size)``.

    ``offset`` shifts the grid (0 by default; 1970-01-01 in the timestamps' time zone for
    datetimes, where ``offset`` may be a ``timedelta`` shift or a ``datetime`` anchor).
    """

    __slots__ = ()

    def __init__(self, size: Any, offset: Any = 0) -> None:
        self.size = _positive("Tumbling", "size", size)
        self.offset = offset

    def _starts(self, ts: Any) -> list[Any]:
        anchor = self._anchor(ts)
        size = self.size
        return [anchor + (ts - anchor) // size * size]

    def __repr__(self) -> str:
        return f"Tumbling({self.size!r}, offset={self.offset!r})"


class Sliding(_Aligned):
    """Overlapping windows ``[offset + k*slide, offset + k*slide + size)``.

    A record belongs to every such window that contains its timestamp (about
    ``size / slide`` of them; negative starts included). With ``slide > size`` the windows
    leave gaps, and a record in a gap belongs to no window: it is dropped.
    """

    __slots__ = ("slide",)

    def __init__(self, size: Any, slide: Any, offset: Any = 0) -> None:
        self.size = _positive("Sliding", "size", size)
        self.slide = _positive("Sliding", "slide", slide)
        self.offset = offset

    def _starts(self, ts: Any) -> list[Any]:
        """Starts of the windows containing ``ts``, earliest first."""
        anchor = self._anchor(ts)
        slide, size = self.slide, self.size
        k = (ts - anchor) // slide
        out = []
        while True:
            s = anchor + k * slide
            if s + size <= ts:
                break
            out.append(s)
            k -= 1
        out.reverse()
        return out

    def __repr__(self) -> str:
        return f"Sliding({self.size!r}, {self.slide!r}, offset={self.offset!r})"


class Session(WindowAssigner):
    """Per-key activity sessions: a session ends ``gap`` after its last record.

    Each record opens ``[ts, ts + gap)``; intervals of one key that overlap merge (half-open:
    a record at ``ts >= last + gap`` starts a new session). Needs an aggregator with ``merge``.
    Not usable for joins.
    """

    __slots__ = ("gap",)

    def __init__(self, gap: Any) -> None:
        self.gap = _positive("Session", "gap", gap)

    def __repr__(self) -> str:
        return f"Session({self.gap!r})"


# ----- aggregators ------------------------------------------------------------------------------


class Aggregator(Protocol[V_contra, A, R_co]):
    """What a window aggregator provides (any object with these methods will do).

    ``create() -> acc``: a fresh, empty accumulator for a new window.
    ``add(acc, value) -> acc``: ``acc`` with ``value`` added; may update ``acc`` in place and
    return it. ``merge(a, b) -> acc``: both combined (sessions only; ``a`` is the earlier one).
    ``result(acc) -> value``: the window's value; called again after late updates, so it must
    not return an object that a later ``add`` changes. Accumulators are stored in snapshots,
    so they must be picklable.
    """

    def create(self) -> A:
        """A new, empty accumulator."""
        ...

    def add(self, acc: A, value: V_contra) -> A:
        """``acc`` with ``value`` added."""
        ...

    def merge(self, a: A, b: A) -> A:
        """Two accumulators combined (``a`` holds the earlier records)."""
        ...

    def result(self, acc: A) -> R_co:
        """The value emitted for a window."""
        ...


class Count:
    """The number of records in the window."""

    __slots__ = ()

    def create(self) -> int:
        """0."""
        return 0

    def add(self, acc: int, value: Any) -> int:
        """``acc + 1``."""
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        """``a + b``."""
        return a + b

    def result(self, acc: int) -> int:
        """The count."""
        return acc

    def __repr__(self) -> str:
        return "Count()"


class _KeyFn:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any] | None) -> None:
        if fn is not None and not callable(fn):
            raise ValueError(f"{type(self).__name__}: fn must be callable, got {fn!r}")
        self.fn = fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'' if self.fn is None else self.fn!r})"


class Sum(_KeyFn):
    """The sum of ``fn(value)`` (of the values themselves without ``fn``).

    Works for anything with ``+`` (numbers, ``timedelta`` s, ...): the accumulator starts empty
    (``None``) rather than at 0. An empty sum's result is 0.
    """

    __slots__ = ()

    def __init__(self, fn: Callable[[Any], Any] | None = None) -> None:
        super().__init__(fn)

    def create(self) -> Any:
        """``None`` (nothing summed yet)."""
        return None

    def add(self, acc: Any, value: Any) -> Any:
        """``acc + fn(value)``."""
        x = value if self.fn is None else self.fn(value)
        return x if acc is None else acc + x

    def merge(self, a: Any, b: Any) -> Any:
        """``a + b``."""
        return b if a is None else a if b is None else a + b

    def result(self, acc: Any) -> Any:
        """The sum (0 when empty)."""
        return 0 if acc is None else acc


class Min(_KeyFn):
    """The smallest ``fn(value)`` (of the values themselves without ``fn``); None when empty."""

    __slots__ = ()

    def __init__(self, fn: Callable[[Any], Any] | None = None) -> None:
        super().__init__(fn)

    def create(self) -> Any:
        """``None``."""
        return None

    def add(self, acc: Any, value: Any) -> Any:
        """The smaller of ``acc`` and ``fn(value)``."""
        x = value if self.fn is None else self.fn(value)
        return x if acc is None or x < acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        """The smaller of the two."""
        return b if a is None or (b is not None and b < a) else a

    def result(self, acc: Any) -> Any:
        """The minimum."""
        return acc


class Max(_KeyFn):
    """The largest ``fn(value)`` (of the values themselves without ``fn``); None when empty."""

    __slots__ = ()

    def __init__(self, fn: Callable[[Any], Any] | None = None) -> None:
        super().__init__(fn)

    def create(self) -> Any:
        """``None``."""
        return None

    def add(self, acc: Any, value: Any) -> Any:
        """The larger of ``acc`` and ``fn(value)``."""
        x = value if self.fn is None else self.fn(value)
        return x if acc is None or x > acc else acc

    def merge(self, a: Any, b: Any) -> Any:
        """The larger of the two."""
        return b if a is None or (b is not None and b > a) else a

    def result(self, acc: Any) -> Any:
        """The maximum."""
        return acc


class Collect:
    """Every value of the window, in arrival order (merged sessions: earlier session first)."""

    __slots__ = ()

    def create(self) -> list[Any]:
        """An empty list."""
        return []

    def add(self, acc: list[Any], value: Any) -> list[Any]:
        """Appends ``value`` to ``acc``."""
        acc.append(value)
        return acc

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        """``a`` extended by ``b``."""
        a.extend(b)
        return a

    def result(self, acc: list[Any]) -> list[Any]:
        """A copy of the list."""
        return list(acc)

    def __repr__(self) -> str:
        return "Collect()"


class Fold(Generic[T]):
    """``fn(...fn(fn(initial_factory(), v1), v2)..., vn)``: a left fold over the window.

    Sessions need ``merge(a, b)`` to combine two folded states; without it ``Fold`` cannot be
    used with :class:`Session`. The result is the folded state itself: fold into immutable
    values (or copy in ``fn``) when late updates may re-emit a window.
    """

    __slots__ = ("_merge", "fn", "initial_factory")

    def __init__(
        self,
        initial_factory: Callable[[], T],
        fn: Callable[[T, Any], T],
        merge: Callable[[T, T], T] | None = None,
    ) -> None:
        for what, f in (("initial_factory", initial_factory), ("fn", fn)):
            if not callable(f):
                raise ValueError(f"Fold: {what} must be callable, got {f!r}")
        if merge is not None and not callable(merge):
            raise ValueError(f"Fold: merge must be callable, got {merge!r}")
        self.initial_factory = initial_factory
        self.fn = fn
        self._merge = merge

    @property
    def can_merge(self) -> bool:
        """Whether a ``merge`` function was given (required by sessions)."""
        return self._merge is not None

    def create(self) -> T:
        """``initial_factory()``."""
        return self.initial_factory()

    def add(self, acc: T, value: Any) -> T:
        """``fn(acc, value)``."""
        return self.fn(acc, value)

    def merge(self, a: T, b: T) -> T:
        """``merge(a, b)`` as given to the constructor."""
        if self._merge is None:
            raise TypeError("Fold needs merge= to combine two states (Session windows)")
        return self._merge(a, b)

    def result(self, acc: T) -> T:
        """The folded state."""
        return acc


class _Empty:
    """The accumulator of a :class:`Reduce` that has seen nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<empty>"

    def __reduce__(self) -> str:
        return "_EMPTY"


_EMPTY = _Empty()


class Reduce:
    """``fn(...fn(fn(v1, v2), v3)..., vn)``: combines the values pairwise.

    ``fn`` should be associative: merged sessions combine as ``fn(earlier, later)``. The
    result of an empty reduce is None.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        if not callable(fn):
            raise ValueError(f"Reduce: fn must be callable, got {fn!r}")
        self.fn = fn

    def create(self) -> Any:
        """An empty marker."""
        return _EMPTY

    def add(self, acc: Any, value: Any) -> Any:
        """``fn(acc, value)``, or ``value`` for the first one."""
        return value if acc is _EMPTY else self.fn(acc, value)

    def merge(self, a: Any, b: Any) -> Any:
        """``fn(a, b)``."""
        return b if a is _EMPTY else a if b is _EMPTY else self.fn(a, b)

    def result(self, acc: Any) -> Any:
        """The reduced value (None when empty)."""
        return None if acc is _EMPTY else acc

    def __repr__(self) -> str:
        return f"Reduce({self.fn!r})"
