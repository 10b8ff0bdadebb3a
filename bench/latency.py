#!/usr/bin/env python
"""Latency with sources that block: end-to-end record latency, snapshot trigger -> commit,
live rescale and stop, when every ``poll()`` of a source sleeps.

    .venv/bin/python bench/latency.py              # 3 rounds of every scenario (~1.5 min)
    .venv/bin/python bench/latency.py --quick      # 1 round, shorter runs (~25 s)
    .venv/bin/python bench/latency.py --only single --only multi --rounds 5
    .venv/bin/python bench/latency.py --budget 0.002   # another source_turn_budget (seconds)

Scenarios (every record's value carries ``time.time()`` of the moment its source returned it;
the sink computes ``time.time() - created`` per record, so latency is how long the engine held
the record, not how long the source took to make it):

- ``single``: SingleThreadRuntime, a source of 2 parts whose ``poll()`` sleeps 1 ms before
  returning each record (~1000 records/s), ``snapshot_interval=0.1``. Latency p50/p99/max,
  and snapshot trigger -> commit: the coordinator's ``_begin_snapshot`` (the moment it sends
  the barrier command) and ``_commit`` (the manifest is written) are timed by wrapping them in
  this process (an instrument of this script, not an API).
- ``paced``: the same, but each part's ``poll()`` sleeps until its next record is due (500
  records/s per part): the shape of the observation in issue 9.
- ``multi``: MultiProcessRuntime with 2 workers, 4 parts sleeping 1 ms per poll,
  ``key_distribute`` (16 keys: half the records cross to the other process over gRPC) -> sink.
  Each worker's sink appends its latencies to a file of its own. During the run,
  ``handle.snapshot()`` is called 3 times (trigger -> commit as the caller sees it, including
  the supervisor's request queue).
- ``rescale``: MultiProcessRuntime with 2 workers, 3 parts sleeping 1 ms per poll (the issue's
  job), snapshots every 0.2 s; after 1 s ``handle.rescale(3)`` (a new process starts, builds
  and joins; keys and parts move), 1 s later ``handle.rescale(2)``, then ``handle.stop()``
  (final snapshot). The wall time of each blocking call.

Targets (issue 9): with a source blocking 1 ms per record, p99 latency <= 20 ms on one worker
and <= 50 ms across 2 workers; a snapshot commits within 100 ms of its trigger; a 2 -> 3
rescale completes in <= 1 s. Medians over rounds are printed; the machine has 2 CPUs that may
be shared with other work (the load average is printed): nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from malstrom import (  # noqa: E402
    MultiProcessRuntime,
    OperationRefused,
    SingleThreadRuntime,
    StatefulSource,
    StatelessSink,
    StreamProvider,
)
from malstrom.coordinator._coordinator import Coordinator  # noqa: E402
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence  # noqa: E402

KEYS = 16
DELAY = 0.001  # seconds each poll sleeps
TARGETS = {"single": 20.0, "paced": 20.0, "multi": 50.0}  # p99 ms
SNAPSHOT_TARGET = 100.0  # ms
RESCALE_TARGET = 1.0  # s


# ----------------------------------------------------------------------------------------------
# The sources
# ----------------------------------------------------------------------------------------------
class BlockingPart:
    """Sleeps ``delay`` s in every poll, then returns ``((created, i), i)``."""

    def __init__(self, nxt: int, count: int, delay: float) -> None:
        self.nxt, self.count, self.delay = nxt, count, delay

    def poll(self) -> tuple[Any, Any] | None:
        if self.nxt >= self.count:
            return None
        time.sleep(self.delay)
        i = self.nxt
        self.nxt = i + 1
        return (time.time(), i), i

    def is_finished(self) -> bool:
        return self.nxt >= self.count

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class PacedPart(BlockingPart):
    """Sleeps until its next record is due (``1 / delay`` records per second)."""

    def __init__(self, nxt: int, count: int, delay: float) -> None:
        super().__init__(nxt, count, delay)
        self.due = time.monotonic()

    def poll(self) -> tuple[Any, Any] | None:
        if self.nxt >= self.count:
            return None
        self.due += self.delay
        pause = self.due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        i = self.nxt
        self.nxt = i + 1
        return (time.time(), i), i


class Parts:
    def __init__(self, parts: int, count: int, delay: float, paced: bool = False) -> None:
        self.parts, self.count, self.delay, self.paced = parts, count, delay, paced

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None) -> BlockingPart:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        cls = PacedPart if self.paced else BlockingPart
        return cls(nxt, self.count, self.delay)


# ----------------------------------------------------------------------------------------------
# The sinks
# ----------------------------------------------------------------------------------------------
class ListLatency:
    """In-process: latencies (s) into a list."""

    def __init__(self) -> None:
        self.out: list[float] = []

    def sink(self, record: Any) -> None:
        self.out.append(time.time() - record.value[0])

    def sink_batch(self, batch: Any) -> None:
        now = time.time()
        self.out.extend(now - v[0] for v in batch.values)


class FileLatency:
    """In a worker process: latencies (s, float64) appended to ``outdir/lat-PID.bin`` per
    batch (worker processes end with ``os._exit``: nothing may wait in a buffer)."""

    def __init__(self, outdir: str) -> None:
        self.outdir = outdir
        self.fd = -1

    def sink(self, record: Any) -> None:
        self.sink_batch([record])

    def sink_batch(self, batch: Any) -> None:
        now = time.time()
        if self.fd < 0:
            path = os.path.join(self.outdir, f"lat-{os.getpid()}.bin")
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self.fd, array("d", [now - v[0] for v in batch.values]).tobytes())

    def __getstate__(self) -> dict[str, Any]:
        return {"outdir": self.outdir, "fd": -1}


def read_latencies(outdir: str) -> list[float]:
    out = array("d")
    for f in Path(outdir).glob("lat-*.bin"):
        out.frombytes(f.read_bytes())
    return list(out)


def build_single(provider: StreamProvider, parts: Parts, sink: Any) -> None:
    provider.new_stream().source("slow", StatefulSource(parts)).sink("latency", StatelessSink(sink))


def build_multi(provider: StreamProvider, parts: Parts, outdir: str) -> None:
    (
        provider.new_stream()
        .source("slow", StatefulSource(parts))
        .key_distribute("by-key", lambda v: v[1] % KEYS)
        .sink("latency", StatelessSink(FileLatency(outdir)))
    )


# ----------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------
class SnapshotTimes:
    """Wraps Coordinator._begin_snapshot / _commit in this process to time trigger -> commit."""

    def __init__(self) -> None:
        self.begun: dict[int, float] = {}
        self.committed: dict[int, float] = {}
        self._orig = (Coordinator._begin_snapshot, Coordinator._commit)

    def __enter__(self) -> SnapshotTimes:
        begin, commit = self._orig
        times = self

        def timed_begin(coord: Any, *args: Any) -> None:
            t = time.perf_counter()
            begin(coord, *args)
            times.begun[coord._next_version - 1] = t

        def timed_commit(coord: Any) -> None:
            commit(coord)
            times.committed[coord.last_committed] = time.perf_counter()

        Coordinator._begin_snapshot = timed_begin  # type: ignore[method-assign]
        Coordinator._commit = timed_commit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Coordinator._begin_snapshot, Coordinator._commit = self._orig  # type: ignore[method-assign]

    def durations_ms(self) -> list[float]:
        return [
            (self.committed[v] - t) * 1000 for v, t in self.begun.items() if v in self.committed
        ]


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.budget is None else {"source_turn_budget": args.budget}


def run_single(args: argparse.Namespace, paced: bool) -> dict[str, Any]:
    count = int(args.seconds / DELAY / 2)  # 2 parts on one worker: ~1000 records/s in all
    sink = ListLatency()
    build = functools.partial(build_single, parts=Parts(2, count, DELAY, paced), sink=sink)
    with SnapshotTimes() as snaps:
        SingleThreadRuntime(
            build, persistence=InMemoryPersistence(), snapshot_interval=0.1, **_budget(args)
        ).execute()
    assert len(sink.out) == 2 * count, (len(sink.out), count)
    return {"lat": sink.out, "snap_ms": snaps.durations_ms()}


def run_multi(args: argparse.Namespace) -> dict[str, Any]:
    count = int(args.seconds / DELAY / 2)  # 4 parts on 2 workers
    tmp = tempfile.mkdtemp(prefix="malstrom-latency-")
    try:
        outdir = os.path.join(tmp, "out")
        os.mkdir(outdir)
        build = functools.partial(build_multi, parts=Parts(4, count, DELAY), outdir=outdir)
        handle = MultiProcessRuntime(
            build,
            parallelism=2,
            persistence=LocalDiskPersistence(os.path.join(tmp, "snap")),
            max_restarts=0,
            **_budget(args),
        ).start()
        snaps: list[float] = []
        try:
            wait_running(handle)
            for _ in range(3):
                time.sleep(args.seconds / 4)
                t0 = time.perf_counter()
                try:
                    handle.snapshot(timeout=60)
                except OperationRefused:  # the job ended before the snapshot was taken
                    snaps.append(float("inf"))
                    break
                snaps.append((time.perf_counter() - t0) * 1000)
            handle.wait(600)
        finally:
            if handle.running:
                handle.kill()
        lat = read_latencies(outdir)
        assert len(lat) == 4 * count, (len(lat), count)
        return {"lat": lat, "snap_ms": snaps}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_rescale(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="malstrom-latency-")
    try:
        outdir = os.path.join(tmp, "out")
        os.mkdir(outdir)
        build = functools.partial(build_multi, parts=Parts(3, 10**9, DELAY), outdir=outdir)
        handle = MultiProcessRuntime(
            build,
            parallelism=2,
            persistence=LocalDiskPersistence(os.path.join(tmp, "snap")),
            snapshot_interval=0.2,
            max_restarts=0,
            **_budget(args),
        ).start()
        out: dict[str, Any] = {}
        try:
            wait_running(handle)
            for n, label in ((3, "up_s"), (2, "down_s")):
                time.sleep(1.0)
                t0 = time.perf_counter()
                handle.rescale(n, timeout=300)
                out[label] = time.perf_counter() - t0
            time.sleep(0.5)
            t0 = time.perf_counter()
            handle.stop(timeout=300)
            out["stop_s"] = time.perf_counter() - t0
            if handle.status().get("restarts"):
                raise SystemExit(f"the job restarted: {handle.status()}")
        finally:
            if handle.running:
                handle.kill()
        out["lat"] = read_latencies(outdir)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_running(handle: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while handle.status().get("phase") != "running":
        if time.monotonic() > deadline:
            raise SystemExit(f"the job did not start: {handle.status()}")
        time.sleep(0.01)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 2-s runs")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="length of a latency run")
    ap.add_argument("--budget", type=float, default=None, help="source_turn_budget (s)")
    ap.add_argument(
        "--only", action="append", choices=["single", "paced", "multi", "rescale"], default=[]
    )
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    only = args.only or ["single", "paced", "multi", "rescale"]
    print(
        f"load average at start {os.getloadavg()[0]:.2f}; {args.rounds} round(s); polls sleep "
        f"{DELAY * 1000:g} ms; source_turn_budget "
        f"{'default' if args.budget is None else f'{args.budget:g} s'}"
    )
    wall = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in only}
    for r in range(args.rounds):
        for kind in only:
            if kind == "single":
                res = run_single(args, paced=False)
            elif kind == "paced":
                res = run_single(args, paced=True)
            elif kind == "multi":
                res = run_multi(args)
            else:
                res = run_rescale(args)
            results[kind].append(res)
            print(f"  round {r + 1} {kind}: done ({len(res['lat'])} records)", flush=True)

    print("\nEnd-to-end latency (ms; per round p50/p99/max, then the median over rounds)")
    print(f"{'scenario':<34}{'p50':>8}{'p99':>8}{'max':>9}  target p99   verdict")
    names = {
        "single": "SingleThreadRuntime, 2 parts x 1ms",
        "paced": "SingleThreadRuntime, 2 x 500/s due",
        "multi": "MultiProcessRuntime(2), 4 x 1ms",
        "rescale": "MultiProcessRuntime 2->3->2, 3x1ms",
    }
    for kind in only:
        rows = results[kind]
        p50 = med([pct(x["lat"], 0.5) * 1000 for x in rows])
        p99 = med([pct(x["lat"], 0.99) * 1000 for x in rows])
        mx = med([max(x["lat"]) * 1000 for x in rows])
        target = TARGETS.get(kind)
        verdict = "-" if target is None else ("met" if p99 <= target else "NOT met")
        tgt = f"<= {target:g}" if target is not None else "-"
        print(f"{names[kind]:<34}{p50:>8.1f}{p99:>8.1f}{mx:>9.1f}  {tgt:<11}  {verdict}")

    snap_rows = [
        (kind, [d for x in results[kind] for d in x["snap_ms"]])
        for kind in only
        if kind in ("single", "paced", "multi")
    ]
    if snap_rows:
        print(f"\nSnapshot trigger -> commit (ms; target <= {SNAPSHOT_TARGET:g})")
        for kind, ds in snap_rows:
            how = "handle.snapshot() call" if kind == "multi" else "every 0.1 s"
            refused = sum(d == float("inf") for d in ds)
            ds = [d for d in ds if d != float("inf")]
            print(
                f"{names[kind]:<34} {how:<24} n={len(ds):<3} median {med(ds):6.1f}  "
                f"max {max(ds) if ds else float('nan'):6.1f}  "
                + ("met" if ds and med(ds) <= SNAPSHOT_TARGET else "NOT met")
                + (f"  ({refused} refused: the job had ended)" if refused else "")
            )
    if "rescale" in results:
        rows = results["rescale"]
        up = [x["up_s"] for x in rows]
        down = [x["down_s"] for x in rows]
        stop = [x["stop_s"] for x in rows]
        print(
            f"\nLive rescale of a job whose 3 parts sleep 1 ms per poll (s; median of "
            f"{len(rows)}): 2->3 {med(up):.2f} (target <= {RESCALE_TARGET:g}: "
            f"{'met' if med(up) <= RESCALE_TARGET else 'NOT met'}), 3->2 {med(down):.2f}, "
            f"stop (final snapshot) {med(stop):.2f}; per round: "
            + "; ".join(f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in zip(up, down, stop))
        )
    print(
        f"\ntotal {time.perf_counter() - wall:.0f} s; load average at end "
        f"{os.getloadavg()[0]:.2f}. Timings on a 2-CPU machine shared with other work are noisy."
    )


if __name__ == "__main__":
    main()
