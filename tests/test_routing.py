"""DistributorOp's batch routing: every record reaches its key's owner, in order, for any
worker ids (the 0..255 fast path and the general one) and any number of workers."""

from __future__ import annotations

import random
from typing import Any

import pytest

from malstrom.engine.batch import Batch
from malstrom.engine.context import BuildContext
from malstrom.keyed.distributor import DistributorOp
from malstrom.keyed.partitioners import rendezvous_select


class RecordingExchange:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Any]] = []

    def send(self, peer: int, operator: str, msg: Any) -> None:
        self.sent.append((peer, operator, msg))


@pytest.mark.parametrize(
    "workers", [(0, 1), (1, 0), (0, 1, 2), (3, 7, 250, 255), (0, 256), (5, 300, 1000)]
)
def test_every_record_goes_to_its_owner_in_order(workers: tuple[int, ...]) -> None:
    rng = random.Random(7)
    keys = [f"k{rng.randrange(300)}" for _ in range(5000)]
    for me in workers:
        ex = RecordingExchange()
        ctx = BuildContext(me, workers, exchange=ex)
        op = DistributorOp("d", str.upper, rendezvous_select, ctx)
        out = op.add_input()  # stands in for the downstream channel
        op.outs[0].append(out)
        op.on_batch(Batch([None] * len(keys), keys, list(range(len(keys)))), 0)
        got: dict[int, list[tuple[Any, Any, Any]]] = {w: [] for w in workers}
        for b in out:
            got[me] += list(zip(b.keys, b.values, b.timestamps))
        for peer, name, b in ex.sent:
            assert name == "d" and peer != me
            got[peer] += list(zip(b.keys, b.values, b.timestamps))
        for w in workers:
            want = [
                (k.upper(), k, i)
                for i, k in enumerate(keys)
                if rendezvous_select(k.upper(), workers) == w
            ]
            assert got[w] == want


def test_a_batch_owned_by_one_worker_travels_whole() -> None:
    workers = (0, 1)
    key = next(f"k{i}" for i in range(100) if rendezvous_select(f"k{i}", workers) == 1)
    ex = RecordingExchange()
    op = DistributorOp("d", None, rendezvous_select, BuildContext(0, workers, exchange=ex))
    batch = Batch([key] * 3, [1, 2, 3], [0, 1, 2])
    op.on_batch(batch, 0)
    assert ex.sent == [(1, "d", batch)]
