"""Epoch alignment (``key_distribute(..., max_epoch_lead=...)``): a worker whose epochs run
ahead of its peers' stops reading the sources that feed the distributor until they catch up.

The job: two source parts on two workers, one part's event time advancing ten times faster
per record than the other's. Without alignment the fast worker's frontier runs away from the
slow one's; with it, the lead stays within about one source poll. Results are the same.
"""

from __future__ import annotations

from typing import Any

import pytest

from malstrom import BuildError, StatefulSource, StatelessSink, StreamProvider
from malstrom.keyed.distributor import DistributorOp
from malstrom.keyed.partitioners import rendezvous_select
from malstrom.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)

N = 20_000


def _split_parts() -> tuple[str, str]:
    """Two part names that rendezvous places on workers 0 and 1."""
    names = [f"part-{i}" for i in range(64)]
    on0 = next(n for n in names if rendezvous_select(n, (0, 1)) == 0)
    on1 = next(n for n in names if rendezvous_select(n, (0, 1)) == 1)
    return on0, on1


FAST, SLOW = _split_parts()


class Part:
    def __init__(self, name: str, count: int, pos: int) -> None:
        self.name, self.count, self.pos = name, count, pos

    def poll(self) -> tuple[Any, Any] | None:
        if self.pos >= self.count:
            return None
        i = self.pos
        self.pos += 1
        ts = i * (10 if self.name == FAST else 1)
        return (self.name, ts), ts  # (value, timestamp)

    def is_finished(self) -> bool:
        return self.pos >= self.count

    def snapshot(self) -> int:
        return self.pos

    def collect(self) -> int:
        return self.pos


class Parts:
    def __init__(self, slow_count: int) -> None:
        self.slow_count = slow_count

    def list_parts(self) -> list[str]:
        return [FAST, SLOW]

    def build_part(self, part: str, state: object | None) -> Part:
        count = N if part == FAST else self.slow_count
        return Part(part, count, int(state) if isinstance(state, int) else 0)


def run(lead: float | None, slow_count: int = N) -> tuple[dict[str, int], int]:
    """Records per part reaching the sink, and the largest lead of one worker's frontier over
    the other's seen at the distributor (in event-time units)."""
    seen: dict[str, int] = {}

    class Count:
        def sink(self, record: Any) -> None:
            name = record.value[0]
            seen[name] = seen.get(name, 0) + 1

    def build(provider: StreamProvider) -> None:
        on_time, _ = (
            provider.new_stream()
            .source("parts", StatefulSource(Parts(slow_count)))
            .assign_timestamps("ts", lambda v: v[1])
            .generate_epochs("epochs", lambda record, prev: record.timestamp)
        )
        on_time.key_distribute("by-part", lambda v: v[0] + str(v[1] % 7), max_epoch_lead=lead).sink(
            "count", StatelessSink(Count())
        )

    cluster = LocalCluster(build, 2)
    worst = 0
    while cluster.step():
        for worker in cluster.workers.values():
            for op in worker.ops:
                if isinstance(op, DistributorOp):
                    local = op._local_frontier
                    remote = [r for r in op._remote_frontier.values() if isinstance(r, int)]
                    if isinstance(local, int) and remote and local < 10 * N:
                        worst = max(worst, local - min(remote))
    return seen, worst


def test_without_alignment_the_fast_worker_runs_away() -> None:
    seen, worst = run(None)
    assert seen == {FAST: N, SLOW: N}
    assert worst > 5 * N  # the fast part's event time is ~9 N ahead by the end


def test_alignment_bounds_the_lead_and_keeps_every_record() -> None:
    seen, worst = run(0.0)
    assert seen == {FAST: N, SLOW: N}
    # At most about one source poll of the fast part (<= 2,048 records, 10 time units each)
    # ahead of the slow one, instead of ~9 N.
    assert worst <= 2 * 2048 * 10


def test_a_finished_peer_never_holds_the_others() -> None:
    # The slow part ends early: its worker's frontier is MAX, the fast one must run to the end.
    seen, _ = run(0.0, slow_count=100)
    assert seen == {FAST: N, SLOW: 100}


@pytest.mark.parametrize("bad", [-1, "1", True, float("nan")])
def test_bad_max_epoch_lead_is_a_build_error(bad: Any) -> None:
    def build(provider: StreamProvider) -> None:
        provider.new_stream().source("parts", StatefulSource(Parts(1))).key_distribute(
            "by", lambda v: v, max_epoch_lead=bad
        )

    with pytest.raises(BuildError, match="max_epoch_lead"):
        LocalCluster(build, 1)
