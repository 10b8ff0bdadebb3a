"""Backpressure between worker processes: a sink ten times slower than the source keeps every
worker's memory bounded (peak RSS sampled from /proc), nothing is lost, and workers that
feed each other while both are slow do not deadlock.

The bound: ``RSS_BOUND_MIB`` per worker process. An idle worker is ~50-60 MiB (Python,
grpcio, malstrom); on top of that each pipe holds at most its credit window in flight
(2 MiB) and a saturated pipe's queue its bound (1 MiB) plus one loop turn's intake, all
pickled, and a turn decodes at most a window per pipe: measured peaks are 65-90 MiB. The
source makes 40 MB/s here, so a worker that kept what it cannot pass on would cross the
bound within seconds: without per-pipe credits, the relaying worker of the relay job peaked
at ~610 MiB (12-15 s runs), while the 2-worker job stayed at ~70 MiB (its slow worker's own
sources were paused, and the fast one's stopped on its full send queue).
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from jobs import slow_sink

from malstrom.runtime._multi import MultiProcessRuntime

pytestmark = pytest.mark.timeout(300)

RSS_BOUND_MIB = 200
SINK_RATE = 2_000  # records/s taken by a slow sink; the source makes SLOWER times as many
PAYLOAD = 2048  # bytes per record


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_sampled(rt: MultiProcessRuntime, timeout: float) -> dict[int, float]:
    """Run the job to completion; peak RSS (MiB) per worker id, sampled every 0.1 s."""
    handle = rt.start()
    peak: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for w, pid in handle.status().get("pids", {}).items():
                peak[w] = max(peak.get(w, 0.0), rss_mib(pid))
            done.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        handle.wait(timeout)
    finally:
        done.set()
        t.join()
        if handle.running:
            handle.kill()
    return peak


def job(tmp: Path, workers: int, slow: list[int], seconds: float, hops: str, **kw: Any) -> Any:
    """The source makes ``SLOWER * SINK_RATE`` records/s for ``seconds``; the slow sinks take
    ``SINK_RATE`` records/s for as long (then all they get at once, so the job ends)."""
    rate = SINK_RATE * slow_sink.SLOWER
    total = int(rate * seconds) // 4 * 4
    build = functools.partial(
        slow_sink.build,
        workdir=str(tmp),
        workers=workers,
        slow=slow,
        total=total,
        rate=rate,
        slow_until=time.time() + seconds + 2.0,  # + process start-up
        parts=4,
        hops=hops,
        **kw,
    )
    return MultiProcessRuntime(build, parallelism=workers), total


def check_bounded_and_exact(tmp: Path, rt: MultiProcessRuntime, total: int, seconds: float) -> None:
    t0 = time.monotonic()
    peak = run_sampled(rt, timeout=seconds * 4 + 60)
    took = time.monotonic() - t0
    slow_sink.check(str(tmp), 4, total)
    print(f"peak RSS MiB per worker: {peak}, {took:.1f} s")
    assert peak and all(v > 0 for v in peak.values()), peak
    assert max(peak.values()) < RSS_BOUND_MIB, peak


@pytest.mark.parametrize("seconds", [10.0, pytest.param(60.0, marks=pytest.mark.slow)])
def test_slow_sink_on_one_of_two_workers_bounds_memory_and_loses_nothing(
    tmp_path: Path, seconds: float
) -> None:
    # Worker 1's sink takes 2,000 of the 20,000 records/s the source makes.
    rt, total = job(tmp_path, 2, [1], seconds, "one", payload=PAYLOAD)
    check_bounded_and_exact(tmp_path, rt, total, seconds)


@pytest.mark.parametrize("seconds", [12.0, pytest.param(60.0, marks=pytest.mark.slow)])
def test_a_worker_relaying_to_a_slow_one_stays_bounded(tmp_path: Path, seconds: float) -> None:
    # Everything goes to worker 1, which forwards everything to worker 2's slow sink: worker
    # 1's sources stop under backpressure, but only credits stop what worker 0 sends it.
    rt, total = job(tmp_path, 3, [2], seconds, "relay", payload=PAYLOAD)
    check_bounded_and_exact(tmp_path, rt, total, seconds)


def test_two_slow_workers_feeding_each_other_finish_exactly(tmp_path: Path) -> None:
    # Both sinks slow, two hops keyed differently: each worker's pipes to the other fill up
    # in both directions at once (the cyclic wait credits must not turn into a deadlock).
    rt, total = job(tmp_path, 2, [0, 1], 8.0, "both", payload=PAYLOAD)
    check_bounded_and_exact(tmp_path, rt, total, 8.0)
