"""key_distribute: re-key records and move each to the worker that owns its key.

Each worker runs one distributor per ``key_distribute``. Ownership is
``partitioner(key, workers)``, looked up through a per-configuration cache, so the
partitioner runs once per distinct key, not once per record. With a single worker every
record is local and the operator only re-keys.

Across workers (through the worker's ``exchange``, FIFO per (peer, operator)):

- records for another worker are sent there and delivered downstream on arrival;
- epochs are broadcast to every peer; downstream sees the minimum over the local input and
  every peer, emitted only when it rises (so MAX passes once every worker has ended);
- barriers align (ABS): on the local barrier the distributor sends a marker to every peer and
  stops reading its local input; it stops reading a peer once that peer's marker arrives; when
  the local barrier is held and every peer is marked, the barrier goes downstream and reading
  resumes. Data from a peer before its marker belongs to the snapshot, data after it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import compress
from typing import Any

from malstrom._errors import BuildError, OperatorError, short_repr
from malstrom.operators._util import map_values, user_error
from malstrom.runtime._engine import Barrier, Batch, BuildContext, Epoch, Operator

__all__ = ["BARRIER_MARKER", "DistributorOp"]

_CACHE_LIMIT = 500_000


class _BarrierMarker:
    """Sent to every peer when the local barrier reaches a distributor."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "BARRIER_MARKER"

    def __repr__(self) -> str:
        return "BARRIER_MARKER"


BARRIER_MARKER = _BarrierMarker()


#: ``_SELECT[w]``: a bytes.translate table mapping byte ``w`` to 1 and every other byte to 0.
_SELECT = [bytes(i == w for i in range(256)) for w in range(256)]


def _take(batch: Batch, mask: Sequence[Any]) -> Batch:
    return Batch(
        list(compress(batch.keys, mask)),
        list(compress(batch.values, mask)),
        list(compress(batch.timestamps, mask)),
    )


class DistributorOp(Operator):
    """Routes records by key; with ``key_fn`` None, by ``route_fn(key)`` without re-keying."""

    def __init__(
        self,
        name: str,
        key_fn: Callable[[Any], Any] | None,
        partitioner: Callable[[Any, Sequence[int]], int],
        ctx: BuildContext,
        route_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(name)
        self.key_fn = key_fn
        self.route_fn = route_fn
        self.partitioner = partitioner
        self.me = ctx.worker_id
        self.workers = tuple(ctx.worker_set)
        self.remotes = [w for w in self.workers if w != self.me]
        self.exchange: Any = ctx.services.get("exchange")
        if self.remotes and self.exchange is None:
            raise BuildError(
                f"operator {name!r}: {len(self.workers)} workers but this runtime has no "
                "worker-to-worker exchange"
            )
        self.wants_schedule = bool(self.remotes)
        self._cache: dict[Any, int] = {}
        self._local_frontier: Any = None
        self._remote_frontier: dict[int, Any] = dict.fromkeys(self.remotes)
        self._out_frontier: Any = None
        self._local_barrier: Barrier | None = None
        self._marked: set[int] = set()

    # ----- routing -----------------------------------------------------------------------
    def _owner(self, key: Any) -> int:
        try:
            w = self.partitioner(key, self.workers)
        except Exception as e:
            raise OperatorError(
                self.name, f"partitioner failed for key {short_repr(key)}: {e}"
            ) from e
        if w not in self.workers:
            raise OperatorError(
                self.name,
                f"partitioner returned worker {w!r} for key {short_repr(key)}, "
                f"which is not one of the workers {list(self.workers)}",
            )
        return w

    def _owners(self, keys: Sequence[Any]) -> list[int]:
        cache = self._cache
        try:
            return list(map(cache.__getitem__, keys))
        except KeyError:
            pass
        except TypeError as e:
            raise OperatorError(self.name, f"keys must be hashable: {e}") from e
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for k in keys:
            if k not in cache:
                cache[k] = self._owner(k)
        return [cache[k] for k in keys]

    def on_batch(self, batch: Batch, port: int) -> None:
        if self.key_fn is not None:
            keys = map_values(self.name, self.key_fn, batch)
            batch = Batch(keys, batch.values, batch.timestamps)
        if not self.remotes:
            self.emit(batch)
            return
        if self.route_fn is not None:
            try:
                route = list(map(self.route_fn, batch.keys))
            except Exception as e:
                raise user_error(self.name, e) from e
        else:
            route = batch.keys  # type: ignore[assignment]
        owners = self._owners(route)
        me = self.me
        n = len(owners)
        # Worker ids 0..255 (the usual case): owners as bytes, so counting and the 0/1 mask of
        # each destination run at C speed (bytes.translate) instead of a map() per record.
        small = min(self.workers) >= 0 and max(self.workers) < 256
        codes: Sequence[int] = bytearray(owners) if small else owners
        n_local = codes.count(me)
        if n_local == n:
            self.emit(batch)
            return
        remaining = n
        for w in self.workers:
            count = n_local if w == me else codes.count(w)
            if not count:
                continue
            if count == n:
                part = batch
            elif small:
                part = _take(batch, codes.translate(_SELECT[w]))  # type: ignore[attr-defined]
            else:
                part = _take(batch, list(map(w.__eq__, owners)))
            remaining -= count
            if w == me:
                self.emit(part)
            else:
                self.exchange.send(w, self.name, part)
            if not remaining:
                break

    # ----- epochs ------------------------------------------------------------------------
    def on_epoch(self, ts: Any) -> None:
        if not self.remotes:
            self.emit_epoch(ts)
            return
        e = Epoch(ts)
        for w in self.remotes:
            self.exchange.send(w, self.name, e)
        self._local_frontier = ts
        self._emit_merged()

    def _emit_merged(self) -> None:
        vals = [self._local_frontier, *self._remote_frontier.values()]
        if any(v is None for v in vals):
            return
        try:
            merged = min(vals)
            rising = self._out_frontier is None or merged > self._out_frontier
        except TypeError as e:
            raise OperatorError(
                self.name, f"cannot merge epochs of incomparable timestamps {short_repr(vals)}"
            ) from e
        if rising:
            self._out_frontier = merged
            self.emit_epoch(merged)

    # ----- barriers ----------------------------------------------------------------------
    def on_barrier(self, barrier: Barrier) -> None:
        if not self.remotes:
            self.forward(barrier)
            return
        self._local_barrier = barrier
        for w in self.remotes:
            self.exchange.send(w, self.name, BARRIER_MARKER)
        self._try_release()

    def _try_release(self) -> None:
        b = self._local_barrier
        if b is not None and len(self._marked) == len(self.remotes):
            self._local_barrier = None
            self._marked.clear()
            self.forward(b)

    # ----- driving -------------------------------------------------------------------------
    def drain(self) -> bool:
        if not self.remotes:
            return super().drain()
        # While the local barrier waits for the peers' markers, local input stays queued.
        ch = self.inputs[0]
        worked = False
        while ch and self._local_barrier is None:
            self.dispatch(ch.popleft(), 0)
            worked = True
        return worked

    def schedule(self) -> None:
        """Take in what the peers sent (all of it, except past a peer's barrier marker)."""
        recv = self.exchange.recv
        name = self.name
        for w in self.remotes:
            if w in self._marked:
                continue
            while (msg := recv(w, name)) is not None:
                t = type(msg)
                if t is Batch:
                    self.emit(msg)
                elif t is Epoch:
                    self._remote_frontier[w] = msg.ts
                    self._emit_merged()
                elif msg is BARRIER_MARKER:
                    self._marked.add(w)
                    break
                else:
                    raise OperatorError(name, f"unexpected message from worker {w}: {msg!r}")
        self._try_release()
