"""Reading one source part within its share of a loop turn's time.

A worker's sources read for at most ``source_turn_budget`` seconds per loop turn. Reads never
look at the clock per record (a clock read costs about as much as a fast ``poll()``):

- ``poll()`` parts are polled in strides, with a look at the clock after each stride;
- ``poll_batch(n)`` is called once per turn and cannot be interrupted, so ``n`` is what keeps
  the call inside the time: a :class:`ReadSizer` learns how long the part's calls take and
  picks the size that fits (a new part's first call asks for one record);
- the built-ins' column reads (``_poll_columns(n)``: IterSource, FileSource) are sized the
  same way, and while their speed is unknown they start small and double, call by call,
  until the batch is full or the time is up (what they return forms one batch).

What a reader has learnt travels with its part when a rescale moves it (``speed``).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

__all__ = ["BATCH_SIZE", "LONG_POLLS", "POLL_STRIDE", "PartReader", "ReadSizer"]

BATCH_SIZE = 2048
"""Records a source part may produce per turn: large enough to amortize per-batch costs."""

POLL_STRIDE = 64
"""Most ``poll()`` calls between two looks at the clock. A part starts looking after every
poll; its stride doubles after each read in which no stride took over :data:`LONG_POLLS`
seconds, and falls back to 1 when one does. So a part whose polls block looks after every
poll, and one poll that blocks after a long fast run overruns its time by at most this many
polls."""

LONG_POLLS = 0.001
"""A stride of polls taking longer than this (seconds) means the part blocks."""

_STRIDE, _LONG = POLL_STRIDE, LONG_POLLS
_TOP = BATCH_SIZE.bit_length() - 1  # sized reads ask for 2**b records, b <= _TOP
_INF = float("inf")

POLL, BATCH, COLUMNS = 0, 1, 2


class ReadSizer:
    """How many records an uninterruptible read asks for, so that it ends about when its
    time does.

    It remembers how long recent calls took per size (powers of two; the median of the last 3,
    so one call slowed by a busy machine changes nothing, while a call that overran tenfold
    counts at once) and picks the largest size expected to fit. A call that costs the same
    whatever it asks for (one request to a slow API) is allowed twice the time of the
    cheapest call seen: asking for fewer records would not make it shorter, only the job
    slower. Sizes above the current one are tried again once their memory has faded (2% per
    pick); a size never tried only when the one below takes at most 3/4 of the time, so the
    size grows back one doubling per call once reads are fast. Nothing known yet: 1 record.
    """

    __slots__ = ("b", "est", "fastest", "seen")

    def __init__(self) -> None:
        self.b = 0
        self.est = [_INF] * (_TOP + 1)  # expected seconds of a call, per size
        self.fastest = [_INF] * (_TOP + 1)  # the fastest recent call, per size
        self.seen: list[list[float]] = [[] for _ in range(_TOP + 1)]

    def known(self) -> bool:
        return self.est[self.b] != _INF

    def pick(self, left: float, first: bool = True) -> int:
        """The size (as ``b``: ``2**b`` records) to ask for when ``left`` seconds remain, or
        -1 if nothing is expected to fit and this is not the ``first`` call of a read."""
        est = self.est
        b = self.b
        allowed = left
        if first:
            floor = 2 * min(self.fastest)  # what any call costs, at least (inf: none yet)
            if floor != _INF and floor > allowed:
                allowed = floor
        while b and est[b] > allowed:
            b -= 1
        if not first and est[b] > allowed:
            return -1
        while b < _TOP:
            up = est[b + 1]
            if up == _INF:
                if est[b] <= 0.75 * allowed:
                    b += 1
                break
            if up > allowed:
                break
            b += 1
        for i in range(b + 1, _TOP + 1):
            if est[i] != _INF:
                est[i] *= 0.98
        self.b = b
        return b

    def learn(self, b: int, took: float, left: float) -> None:
        """A call of size ``2**b`` (or less) took ``took`` seconds when ``left`` remained."""
        if b == _TOP and took * 4 < left and self.est[b] * 4 < left:
            return  # still fast
        seen = self.seen[b]
        seen.append(took)
        if len(seen) > 3:
            del seen[0]
        mid = sorted(seen)[len(seen) // 2]
        if took > 10 * max(left, mid):
            mid = took  # overran by far (turned slow): no waiting for a second opinion
        self.est[b] = mid
        self.fastest[b] = min(seen)


def _concat(values: Any, stamps: Any, more: Any, more_stamps: Any) -> tuple[Any, Any]:
    """Two column reads as one: lists joined, consecutive ranges (line numbers) merged."""
    if type(values) is not list:
        values = list(values)
    values.extend(more)
    if type(stamps) is range and type(more_stamps) is range and stamps.stop == more_stamps.start:
        return values, range(stamps.start, more_stamps.stop)
    stamps = list(stamps)
    stamps.extend(more_stamps)
    return values, stamps


class PartReader:
    """A built partition and how to read it within a deadline (see the module docs).

    A source asks each of its parts what it :meth:`want` s to read in its share of the turn,
    then has every part :meth:`read` the smallest of those (parts read alike, so none runs
    ahead of the others in event time), each within its share of the time.
    """

    __slots__ = ("cost", "fetch", "finished", "key", "kind", "part", "sizer", "stride")

    def __init__(self, key: Any, part: Any, speed: tuple[ReadSizer, float, int] | None = None):
        self.key = key
        self.part = part
        self.finished = False
        if speed is None:
            self.sizer = ReadSizer()
            self.cost = _INF  # poll() parts: seconds per poll (unknown: one poll first)
            self.stride = 1  # poll() parts: polls between looks at the clock
        else:
            self.sizer, self.cost, self.stride = speed
        cols = getattr(part, "_poll_columns", None)
        if cols is not None:
            self.kind, self.fetch = COLUMNS, cols
        elif hasattr(part, "poll_batch"):
            self.kind, self.fetch = BATCH, self._via_batch
        else:
            self.kind, self.fetch = POLL, part.poll

    def want(self, share: float) -> int:
        """Records this part would read in ``share`` seconds."""
        sizer = self.sizer
        kind = self.kind
        if kind == POLL or (sizer.b == _TOP and sizer.est[_TOP] * 4 < share):
            return BATCH_SIZE  # polls watch the clock themselves; or full batches are fast
        if kind == COLUMNS and not sizer.known():
            return BATCH_SIZE  # unknown speed: the read starts small and grows
        return 1 << sizer.pick(share)

    def read(self, n: int, deadline: float) -> tuple[Any, Any]:
        """``(values, timestamps)``: at most ``n`` records read before ``deadline`` (one call
        or poll at least, even if it has passed); ``poll_batch`` is called once."""
        kind = self.kind
        if kind == POLL:
            return self._read_polls(n, deadline)
        fetch = self.fetch
        sizer = self.sizer
        now = monotonic()
        left = deadline - now
        b = n.bit_length() - 1
        if kind == BATCH or sizer.est[b] != _INF:
            values, stamps = fetch(n)
            sizer.learn(b, monotonic() - now, left)
            return values, stamps
        # Column reads of a size never tried (a new part's first turn): start with what is
        # known to fit (one record if nothing is) and double while calls come back full and
        # fast; what they return forms one batch.
        b = min(sizer.pick(left), b)
        size = 1 << b
        values, stamps = fetch(size)
        t = monotonic()
        sizer.learn(b, t - now, left)
        got = len(values)
        full = got == size
        while full and got < n and t < deadline:
            now = t
            left = deadline - now
            b = sizer.pick(left, False)
            if b < 0:
                break
            size = min(1 << b, n - got)
            more, more_stamps = fetch(size)
            t = monotonic()
            sizer.learn(b, t - now, left)
            k = len(more)
            if k:
                values, stamps = _concat(values, stamps, more, more_stamps)
                got += k
            full = k == size
        return values, stamps

    def speed(self) -> tuple[ReadSizer, float, int]:
        """What this part has learnt about its speed (travels with it when it moves, so that
        its new worker does not start from one record again)."""
        return self.sizer, self.cost, self.stride

    def _read_polls(self, limit: int, deadline: float) -> tuple[list[Any], list[Any]]:
        poll = self.fetch
        values: list[Any] = []
        stamps: list[Any] = []
        stride = self.stride
        cost = self.cost
        blocked = False
        got = 0
        now = monotonic()
        while True:
            n = stride if stride < limit - got else limit - got
            left = deadline - now
            if cost * n > left:  # fewer polls than a stride fit the time left
                n = int(left / cost) if left > 0 else 1
                if n < 1:
                    n = 1  # a read makes one poll at least (progress)
            for _ in range(n):
                item = poll()
                if item is None:
                    break
                values.append(item[0])  # (not a bound-method local: CPython specializes this)
                stamps.append(item[1])
            t = monotonic()
            k = len(values) - got
            got += k
            took = t - now
            cost = took / (k or 1)
            if took > _LONG:
                # Something blocked: a fast run can be followed by a poll that blocks, so
                # look at the clock after every poll until a whole read passes without that.
                stride = 1
                blocked = True
            if k < n or got >= limit or t >= deadline:
                break
            now = t
        self.cost = cost
        self.stride = stride if blocked or stride >= _STRIDE else stride * 2
        return values, stamps

    def _via_batch(self, n: int) -> tuple[Any, Any]:
        items = self.part.poll_batch(n)
        if not items:
            return (), ()
        return [i[0] for i in items], [i[1] for i in items]
