#!/usr/bin/env python
"""Nexmark benchmark: events/s of each query on 1 and 2 workers, and of the generator alone.

    .venv/bin/python bench/nexmark.py             # full: 500,000 events, 3 rounds
    .venv/bin/python bench/nexmark.py --quick     # 100,000 events, 2 rounds
    .venv/bin/python bench/nexmark.py --only q5 --only q8 --rounds 5 --events 1000000

Every query of ``examples/nexmark`` (q0-q8) runs over the same seeded events
(``GeneratorConfig(seed=1, events_per_second=10_000)``, Beam's default rate, so 500,000
events are 50 s of event time and the windowed queries use their standard 10 s windows)
on:

- ``SingleThreadRuntime`` (one worker in this process),
- ``MultiProcessRuntime(parallelism=1)`` (one worker process + the coordinator here),
- ``MultiProcessRuntime(parallelism=2)``.

The source has ``--parts`` parts (16; they are dealt out evenly, 8:8 on two workers) and
generates the events inside the workers, so no input crosses processes; only what ``key_distribute``
routes does. Results go to a counting sink (one per worker, which keeps its count in a file
of its own); the result counts of the three runtimes must agree, or the script stops.

Reported, per query: events/s = events / wall seconds of ``execute()`` (median over rounds;
multi-process figures include starting the worker processes, which the ``start-up`` row
measures with a 0-event q0; the ``net`` column is the 2p/1p ratio with each runtime's
median start-up taken off its median time), the CPU seconds of the worker(s) (this process
for the single thread; the worker processes, all threads, for the others: more robust to a
busy machine than wall time, and 2p vs 1p shows what distribution costs), and the result
count. The
``generator`` rows are the floor: the same events made by a plain loop with no framework,
through the source's batch path (``NexmarkSource`` parts polled round-robin, what every job
does) and through ``generate()``, one event at a time. The ``ceiling`` line: the batch path
in one fresh process against two at once, each making half the parts' events (once per
round): how much faster two processes that share nothing make the events on this machine at
that moment, the most a second worker could give a query that does little besides.

The machine may be shared: the load average is printed before and after, and multi-process
numbers in particular depend on how many CPUs are free at the time.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# gRPC's C core logs a benign INFO line ("Got goaway") when a data stream ends at shutdown.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_ROOT = Path(__file__).resolve().parent.parent
# examples/ goes first: this script is bench/nexmark.py, and ``import nexmark`` must find the
# package examples/nexmark, not this file (python puts bench/ on sys.path to run it).
for _p in (str(_ROOT / "src"), str(_ROOT / "examples")):
    if _p in sys.path:
        sys.path.remove(_p)
    sys.path.insert(0, _p)

from nexmark import q0, q1, q2, q3, q4, q5, q6, q7, q8  # noqa: E402
from nexmark.generator import GeneratorConfig, NexmarkSource, generate  # noqa: E402

from malstrom import MultiProcessRuntime, SingleThreadRuntime, StatelessSink, StreamProvider  # noqa: E402

QUERIES = {
    "q0": q0,
    "q1": q1,
    "q2": q2,
    "q3": q3,
    "q4": q4,
    "q5": q5,
    "q6": q6,
    "q7": q7,
    "q8": q8,
}
SEED = 1
RATE = 10_000
PARTS = 16
RUNTIMES = ("single", "mp1", "mp2")


def config(n: int) -> GeneratorConfig:
    return GeneratorConfig(seed=SEED, max_events=n, events_per_second=RATE)


# ----------------------------------------------------------------------------------------------
# Sink and build function (module level: worker processes import them).
# ----------------------------------------------------------------------------------------------
class FileCountSink:
    """Counts the records it receives; keeps the count in a file of its own.

    The count is rewritten in place (one ``pwrite``) after every batch: worker processes end
    with ``os._exit``, so there is no later moment to write it.
    """

    def __init__(self, outdir: str) -> None:
        self.outdir = outdir
        self.n = 0
        self.fd: int | None = None

    def sink(self, record: Any) -> None:
        self.sink_batch([record])

    def sink_batch(self, records: Any) -> None:
        self.n += len(records)
        if self.fd is None:
            name = f"sink-{os.getpid()}-{id(self):x}"
            self.fd = os.open(os.path.join(self.outdir, name), os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self.fd, f"{self.n}\n".ljust(24).encode(), 0)


def build(provider: StreamProvider, *, query: str, n: int, parts: int, outdir: str) -> None:
    """Query ``query`` over ``n`` events, results counted into ``outdir``."""
    QUERIES[query].build(
        provider,
        config=config(n),
        parts=parts,
        sink=StatelessSink(FileCountSink(outdir)),
        late_sink=StatelessSink(FileCountSink(os.path.join(outdir, "late"))),
    )


def read_counts(outdir: str) -> int:
    return sum(
        int(Path(e.path).read_text().split()[0])
        for e in os.scandir(outdir)
        if e.name.startswith("sink-")
    )


def run(query: str, runtime: str, n: int, parts: int) -> tuple[float, int, float]:
    """One run: (wall seconds, result records, worker CPU seconds). Late events are an error.

    Worker CPU is that of the worker processes (all their threads), or of this process for
    ``SingleThreadRuntime``.
    """
    tmp = tempfile.mkdtemp(prefix="malstrom-nexmark-")
    try:
        os.mkdir(os.path.join(tmp, "late"))
        job = functools.partial(build, query=query, n=n, parts=parts, outdir=tmp)
        gc.collect()
        who = resource.RUSAGE_SELF if runtime == "single" else resource.RUSAGE_CHILDREN
        ru0 = resource.getrusage(who)
        t0 = time.perf_counter()
        if runtime == "single":
            SingleThreadRuntime(job).execute()
        else:
            MultiProcessRuntime(job, parallelism=int(runtime[2:]), max_restarts=0).execute()
        dt = time.perf_counter() - t0
        ru1 = resource.getrusage(who)  # worker processes have been joined by now
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        late = read_counts(os.path.join(tmp, "late"))
        if late:
            raise SystemExit(f"{query} on {runtime}: {late} late events (the bound is wrong)")
        return dt, read_counts(tmp), cpu
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The generator alone
# ----------------------------------------------------------------------------------------------
def generator_batches(n: int, parts: int, share: tuple[int, int] = (0, 1)) -> float:
    """Seconds to make ``n`` events the way a job's source does (parts polled round-robin);
    with ``share=(i, k)`` only the parts ``p % k == i`` (what one of k workers reads)."""
    source = NexmarkSource(config(n), parts)
    i, k = share
    live = [source.build_part(p, None) for p in source.list_parts() if p % k == i]
    t0 = time.perf_counter()
    made = 0
    while live:
        for part in live:
            made += len(part.poll_batch(2048))
        live = [p for p in live if not p.is_finished()]
    dt = time.perf_counter() - t0
    assert k > 1 or made == n, made
    return dt


def generator_procs(n: int, parts: int, procs: int) -> float:
    """Slowest of ``procs`` fresh processes started together, each making its share of the
    parts' events: what ``procs`` workers that share nothing can do on this machine now."""
    cmd = [sys.executable, os.path.abspath(__file__), "--generator-child"]
    ps = [
        subprocess.Popen([*cmd, f"{n}:{parts}:{i}:{procs}"], stdout=subprocess.PIPE, text=True)
        for i in range(procs)
    ]
    return max(float(p.communicate()[0]) for p in ps)


def generator_loop(n: int) -> float:
    """Seconds for ``for event in generate(config): pass``."""
    t0 = time.perf_counter()
    made = sum(1 for _ in generate(config(n)))
    dt = time.perf_counter() - t0
    assert made == n
    return dt


# ----------------------------------------------------------------------------------------------
def rate(n: int, seconds: float) -> str:
    r = n / seconds
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.0f} k/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 events, 2 rounds")
    ap.add_argument("--events", type=int, help="events per run (default 500,000)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3); medians are reported")
    ap.add_argument("--parts", type=int, default=PARTS, help="source parts (default 16)")
    ap.add_argument("--only", action="append", choices=list(QUERIES), help="queries to run")
    ap.add_argument("--generator-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator_child:
        n, parts, i, k = map(int, args.generator_child.split(":"))
        print(f"{generator_batches(n, parts, (i, k)):.6f}")
        return
    n = args.events or (100_000 if args.quick else 500_000)
    rounds = args.rounds or (2 if args.quick else 3)
    queries = args.only or list(QUERIES)
    print(
        f"Nexmark: {n:,} events (seed {SEED}, {RATE:,} events per second of event time), "
        f"{args.parts} source parts, median of {rounds} rounds; "
        f"load average at start {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"
    )

    gen_batch = statistics.median(generator_batches(n, args.parts) for _ in range(rounds))
    gen_loop = statistics.median(generator_loop(n) for _ in range(rounds))
    ceiling: list[float] = []

    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    results: dict[str, int] = {}
    startup: dict[str, list[float]] = {"mp1": [], "mp2": []}
    for r in range(rounds):
        for rt in ("mp1", "mp2"):
            startup[rt].append(run("q0", rt, 0, args.parts)[0])
        for q in queries:
            order = RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]
            for rt in order:
                dt, count, cpu = run(q, rt, n, args.parts)
                if results.setdefault(q, count) != count:
                    raise SystemExit(
                        f"{q}: {rt} produced {count:,} results, another runtime {results[q]:,}"
                    )
                times.setdefault((q, rt), []).append(dt)
                cpus.setdefault((q, rt), []).append(cpu)
            print(f"  round {r + 1}: {q} done", file=sys.stderr, flush=True)
        ceiling.append(generator_procs(n, args.parts, 1) / generator_procs(n, args.parts, 2))

    hdr = (
        f"{'query':<28} {'single thread':>14} {'1 process':>10} {'2 processes':>12} "
        f"{'2p/1p':>6} {'net':>5} {'CPU s: ST / 1p / 2p':>20} {'results':>9}"
    )
    su1, su2 = (statistics.median(startup[rt]) for rt in ("mp1", "mp2"))
    print()
    print(hdr)
    print("-" * len(hdr))
    print(f"{'generator, source batches':<28} {rate(n, gen_batch):>14} {'':>10} {'':>12}")
    print(f"{'generator, generate() loop':<28} {rate(n, gen_loop):>14}")
    for q in queries:
        med = {rt: statistics.median(times[(q, rt)]) for rt in RUNTIMES}
        cpu = " / ".join(f"{statistics.median(cpus[(q, rt)]):.2f}" for rt in RUNTIMES)
        print(
            f"{q:<28} {rate(n, med['single']):>14} {rate(n, med['mp1']):>10} "
            f"{rate(n, med['mp2']):>12} {med['mp1'] / med['mp2']:>6.2f} "
            f"{(med['mp1'] - su1) / max(1e-9, med['mp2'] - su2):>5.2f} {cpu:>20} "
            f"{results[q]:>9,}"
        )
    print(f"{'start-up (q0, 0 events)':<28} {'':>14} {su1:>9.2f}s {su2:>11.2f}s")
    print(
        f"\nceiling: the generator alone in 2 fresh processes at once (half the parts each) is "
        f"{statistics.median(ceiling):.2f}x of 1 (median of rounds; rounds "
        f"{', '.join(f'{c:.2f}' for c in ceiling)})"
    )
    print(
        f"\nload average at end {os.getloadavg()[0]:.2f} (other processes on the machine skew "
        "the multi-process numbers most)"
    )


if __name__ == "__main__":
    main()
