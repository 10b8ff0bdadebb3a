"""What each added worker costs when there is nothing to do: worker and coordinator CPU, the
coordinator's memory, a snapshot round and a rescale, for 1 to 16 worker processes.

    .venv/bin/python bench/workers.py                 # 1, 2, 4, 8, 16 workers
    .venv/bin/python bench/workers.py --workers 2 8   # some of them
    .venv/bin/python bench/workers.py --seconds 10    # longer CPU sampling (default 5 s)

The job is idle on purpose (one source polled once an hour -> key_distribute -> map), so
everything measured is the framework's own cost: a worker that polls instead of sleeping,
or a coordinator whose work grows faster than its workers, shows here. CPU is read from
/proc (user + system seconds of each process over the sampling window), so a busy machine
changes these figures far less than wall-clock throughput. Snapshot round = the
``handle.snapshot()`` call (trigger to commit, local-disk persistence), median of 5;
rescale = ``handle.rescale(n + 1)`` then ``handle.rescale(n)``, wall time of each call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so workers import this module

from malstrom import MultiProcessRuntime, StreamProvider
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import PollingSource


def idle_job(provider: StreamProvider) -> None:
    """Nothing to do: one poll an hour, then a shuffle and a map."""
    (
        provider.new_stream()
        .source("tick", PollingSource(lambda: 1, 3600))
        .key_distribute("by-value", lambda v: v)
        .map("same", lambda v: v)
    )


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(n: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        handle = MultiProcessRuntime(
            idle_job, parallelism=n, persistence=LocalDiskPersistence(d)
        ).start()
        try:
            while handle.status().get("phase") != "running":
                time.sleep(0.01)
            start_up = time.monotonic() - t0
            time.sleep(1.0)
            pids = list(handle.status()["pids"].values())
            w0 = [_cpu(p) for p in pids]
            c0 = os.times()
            s0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - s0
            c1 = os.times()
            worker = [(_cpu(p) - b) / elapsed for p, b in zip(pids, w0)]
            coord = (c1.user + c1.system - c0.user - c0.system) / elapsed
            rss = _rss_mib()
            snaps = []
            for _ in range(5):
                s = time.monotonic()
                handle.snapshot()
                snaps.append(time.monotonic() - s)
            s = time.monotonic()
            handle.rescale(n + 1)
            up = time.monotonic() - s
            s = time.monotonic()
            handle.rescale(n)
            down = time.monotonic() - s
        finally:
            handle.stop()
    return {
        "workers": n,
        "start_up_s": start_up,
        "worker_core_median": statistics.median(worker),
        "worker_core_max": max(worker),
        "coordinator_core": coord,
        "coordinator_rss_mib": rss,
        "snapshot_ms": statistics.median(snaps) * 1000,
        "rescale_up_s": up,
        "rescale_down_s": down,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} on {os.cpu_count()} CPUs")
    head = (
        "| workers | start-up s | idle worker, core (median / max) | coordinator process, core "
        "| coordinator RSS MiB | snapshot round ms | rescale n->n+1 / back, s |"
    )
    print(head)
    print("|---|---|---|---|---|---|---|")
    for n in args.workers:
        r = measure(n, args.seconds)
        print(
            f"| {n} | {r['start_up_s']:.2f} | {r['worker_core_median']:.4f} / "
            f"{r['worker_core_max']:.4f} | {r['coordinator_core']:.4f} | "
            f"{r['coordinator_rss_mib']:.0f} | {r['snapshot_ms']:.1f} | "
            f"{r['rescale_up_s']:.2f} / {r['rescale_down_s']:.2f} |",
            flush=True,
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
