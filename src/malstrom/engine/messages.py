"""The in-band messages that travel on the channels beside record batches.

:class:`Epoch` (watermark), :class:`Barrier` (ABS snapshot marker), :class:`Rescale` and the
key-region messages a distributor sends while keyed state moves. Copies of a control message
are tracked with an explicit :class:`Token` counter, never with reference counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = [
    "IDLE",
    "Acquire",
    "Barrier",
    "Control",
    "Epoch",
    "Handover",
    "Installed",
    "Interrogate",
    "RegionMessage",
    "Released",
    "Rescale",
    "Select",
    "Token",
]


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
    to ``keys`` (so their new owners can be worked out ahead of the Handover, a few at a
    time), and :meth:`Operator.keys_moving` runs."""

    __slots__ = ("keys", "version")

    def __init__(self, token: Token, version: int) -> None:
        super().__init__(token)
        self.version = version
        self.keys: set[Any] = set()


Select = Callable[[Iterable[Any]], list[Any]]
"""``select(keys)``: those of ``keys`` that leave this worker (see :class:`Handover`)."""


class Handover(RegionMessage):
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
        """The keys among ``keys`` that leave this worker (in this hand-over)."""
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

    __slots__ = ("origins", "version")

    def __init__(self, token: Token, version: int, origin: str) -> None:
        super().__init__(token)
        self.version = version
        #: The distributors whose rescale ended in this message: its sender, and those of
        #: the other inputs an aligning operator merged into it.
        self.origins = frozenset((origin,))

    def merged(self, other: Released) -> Released:
        """This message naming ``other``'s origins too (an aligning operator consumed
        ``other``): a new object with the same token and copies' bookkeeping, so the copies
        of this one on other paths keep naming only their own origins."""
        out = Released.__new__(Released)
        out.token = self.token
        out.handled = self.handled
        out.version = self.version
        out.origins = self.origins | other.origins
        return out
