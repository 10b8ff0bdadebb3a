"""key_distribute: re-key records and move each to the worker that owns its key.

Each worker runs one distributor per ``key_distribute``. Ownership is
``partitioner(key, workers)``, looked up through a per-configuration cache, so the
partitioner runs once per distinct key and configuration, not once per record. With a single
worker every record is local and the operator only re-keys.

Cross-worker exchange (barrier alignment with remotes, epoch merge by minimum, FIFO pipes per
(peer, operator)) plugs in through the ``exchange`` build service; without one the job must run
on exactly one worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from malstrom._errors import BuildError
from malstrom.operators._util import batch_error
from malstrom.runtime._engine import Batch, BuildContext, Operator

__all__ = ["DistributorOp"]


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
        if len(self.workers) > 1 and "exchange" not in ctx.services:
            raise BuildError(
                f"operator {name!r}: {len(self.workers)} workers but this runtime has no "
                "worker-to-worker exchange"
            )

    def on_batch(self, batch: Batch, port: int) -> None:
        if self.key_fn is not None:
            it = iter(batch.values)
            try:
                keys = list(map(self.key_fn, it))
            except Exception as e:
                raise batch_error(self.name, e, batch, it) from e
            batch = Batch(keys, batch.values, batch.timestamps)
        # One worker: everything is local.
        self.emit(batch)
