"""Worker-to-worker pipes: the interface every transport implements, the credit accounting
they share, and the in-process transport.

A worker's :class:`Exchange` carries messages to and from its peers, FIFO per
(sender, receiver, operator) *pipe*: records, epochs, barrier and rescale markers and state
transfers of one operator travel on one pipe, and every protocol relies on their order.
Operators call :meth:`Exchange.send` and :meth:`Exchange.recv` from the worker loop only;
the worker calls :meth:`Exchange.flush` once per loop turn, so a transport can batch many
small messages into one frame.

Flow control: credits per pipe
------------------------------
Each pipe has a *window* ``W``. Its sender may have at most ``W`` in flight (plus the one
message that crosses the line): handed to the wire but not yet **consumed**, that is
returned by ``recv`` to the receiver's worker loop. Receiving a message is not consuming it:
a worker whose operators are slow consumes slowly, so its senders run out of credit.

- The receiver reports consumption as a running total per pipe (idempotent; a late report
  never takes credit back). Reports are batched: a pipe becomes *due* once ``W / 2`` was
  consumed since its last report, and at the next flush one message per peer carries the
  totals of all that peer's pipes (riding on a data frame when there is one). The threshold
  is below ``W``, so whenever a sender is out of credit on a pipe whose receiver has
  consumed everything in flight, a report is due: credit never stalls a consuming receiver.
- What a pipe has no credit for stays *queued* at its sender: ``send`` never blocks, and the
  worker loop never waits for a peer. A pipe whose queue exceeds its bound is *saturated*;
  :meth:`Exchange.saturated` names the operators that have a saturated pipe, and the worker
  stops feeding them (``malstrom.runtime._backpressure`` explains which intake stops and why
  that cannot deadlock).
- :meth:`Exchange.hold` makes ``recv`` return nothing on some operators' pipes: their
  messages wait (within the window) and their senders get no more credit.

Memory per pipe is therefore bounded on both sides: at the receiver by ``W`` plus one
message, at the sender by its bound plus what one loop turn adds. Each pipe has its own
credit, so a held or slow pipe never blocks another pipe between the same two workers (a
shared per-connection window would: two workers each waiting for the other to read the
messages in front of the ones it needs is exactly the cyclic wait to avoid).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Set as AbstractSet
from typing import Any

from malstrom.engine.exchange import Exchange
from malstrom.errors import TransportError

__all__ = ["NOTHING", "Exchange", "InPipe", "LocalExchangeHub", "OutPipe", "TransportError"]

NOTHING: frozenset[str] = frozenset()


class OutPipe:
    """The sender's side of one pipe: what waits for credit, and the credit counters.

    ``sent`` and ``granted`` are running totals of message sizes (bytes on the wire, or
    records in process); ``granted`` is the receiver's last reported consumption.
    """

    __slots__ = ("granted", "queue", "queued", "sent")

    def __init__(self) -> None:
        self.queue: deque[tuple[Any, int]] = deque()
        self.queued = 0
        self.sent = 0
        self.granted = 0

    def push(self, item: Any, size: int) -> None:
        """Queue ``item`` (of ``size``) behind everything queued before it."""
        self.queue.append((item, size))
        self.queued += size

    def release(self, window: int) -> list[Any]:
        """Take the queued items, in order, that the credit covers now (a message may start
        while less than ``window`` is in flight, so one large message always gets through)."""
        out: list[Any] = []
        queue = self.queue
        while queue and self.sent - self.granted < window:
            item, size = queue.popleft()
            self.queued -= size
            self.sent += size
            out.append(item)
        return out

    def grant(self, consumed: int) -> None:
        """The receiver consumed ``consumed`` in total (reports may arrive out of date)."""
        if consumed > self.granted:
            self.granted = consumed

    @property
    def in_flight(self) -> int:
        """Sent and not yet reported consumed."""
        return self.sent - self.granted


class InPipe:
    """The receiver's side of one pipe: consumption, and how much of it was reported."""

    __slots__ = ("consumed", "reported")

    def __init__(self) -> None:
        self.consumed = 0
        self.reported = 0

    @property
    def unreported(self) -> int:
        return self.consumed - self.reported


def local_size(msg: Any) -> int:
    """What a message costs on an in-process pipe: a batch its records, anything else 1."""
    try:
        return max(1, len(msg))
    except TypeError:
        return 1


class _LocalPipe:
    __slots__ = ("inbox", "inp", "out")

    def __init__(self) -> None:
        self.out = OutPipe()
        self.inbox: deque[tuple[Any, int]] = deque()
        self.inp = InPipe()


class LocalExchangeHub:
    """All pipes of workers living in one thread (tests, in-process clusters).

    Flow control is the gRPC transport's, counted in records instead of bytes (a batch costs
    its length, any other message 1): ``window`` per pipe, a pipe is saturated above
    ``bound`` queued, and credit reports take effect at the receiver's flush.
    """

    def __init__(self, window: int = 65_536, bound: int = 65_536) -> None:
        if window < 1 or bound < 0:
            raise ValueError(f"window must be >= 1 and bound >= 0, got {window}, {bound}")
        self.window = window
        self.bound = bound
        self.report_at = max(1, window // 2)
        self._pipes: dict[tuple[int, int, str], _LocalPipe] = {}
        self._from: dict[int, list[tuple[str, _LocalPipe]]] = {}
        self._to: dict[int, list[_LocalPipe]] = {}

    def pipe(self, src: int, dst: int, operator: str) -> _LocalPipe:
        key = (src, dst, operator)
        p = self._pipes.get(key)
        if p is None:
            p = self._pipes[key] = _LocalPipe()
            if src != dst:
                self._from.setdefault(src, []).append((operator, p))
                self._to.setdefault(dst, []).append(p)
        return p

    def endpoint(self, worker_id: int) -> LocalExchange:
        return LocalExchange(self, worker_id)

    def in_flight(self, src: int, dst: int, operator: str) -> int:
        """Records sent on a pipe and not reported consumed (introspection, tests)."""
        p = self._pipes.get((src, dst, operator))
        return 0 if p is None else p.out.in_flight

    def queued(self, src: int, dst: int, operator: str) -> int:
        """Records waiting for credit at a pipe's sender (introspection, tests)."""
        p = self._pipes.get((src, dst, operator))
        return 0 if p is None else p.out.queued


class LocalExchange:
    """One worker's endpoint of a :class:`LocalExchangeHub`."""

    def __init__(self, hub: LocalExchangeHub, me: int) -> None:
        self._hub = hub
        self._me = me
        self._held: AbstractSet[str] = NOTHING
        self._saturated: frozenset[str] = NOTHING

    def send(self, peer: int, operator: str, msg: Any) -> None:
        p = self._hub.pipe(self._me, peer, operator)
        if peer == self._me:
            p.inbox.append((msg, 0))  # loopback: no credit involved
        else:
            size = local_size(msg)
            p.out.push((msg, size), size)

    def recv(self, peer: int, operator: str) -> Any | None:
        if operator in self._held:
            return None
        p = self._hub.pipe(peer, self._me, operator)
        if not p.inbox:
            return None
        msg, size = p.inbox.popleft()
        p.inp.consumed += size
        return msg

    def flush(self) -> None:
        hub = self._hub
        report_at = hub.report_at
        for p in hub._to.get(self._me, ()):
            inp = p.inp
            if inp.unreported >= report_at:
                inp.reported = inp.consumed
                p.out.grant(inp.consumed)
        window = hub.window
        bound = hub.bound
        saturated: set[str] = set()
        for operator, p in hub._from.get(self._me, ()):
            out = p.out
            if out.queue:
                for item in out.release(window):
                    p.inbox.append(item)
                if out.queued > bound:
                    saturated.add(operator)
        self._saturated = frozenset(saturated) if saturated else NOTHING

    def set_attempt(self, attempt: int) -> None:
        pass  # one process, one attempt: nothing stale can reach these pipes

    def saturated(self) -> frozenset[str]:
        return self._saturated

    def hold(self, operators: AbstractSet[str]) -> None:
        self._held = operators

    def close(self) -> None:
        pass
