"""A realistic job on 1 and 2 workers: JSON events parsed and hashed, keyed by user, summed.

    .venv/bin/python bench/scaleout.py              # 400,000 events, 5 rounds
    .venv/bin/python bench/scaleout.py --quick      # 200,000 events, 3 rounds
    .venv/bin/python bench/scaleout.py --events 1000000 --rounds 7
    .venv/bin/python bench/scaleout.py --parts 4 --ab-placement   # even deal vs rendezvous

The job (issue 10's "realistic" row): 16 source parts generate JSON text inside the workers
(``json.dumps`` of a small event dict, from a seeded generator per part), then
``map(json.loads + sha256 of a field)`` -> ``key_distribute(user)`` -> ``stateful_map(sum of
amounts per user)`` -> a counting sink per worker. The parent checks every run against a
plain computation: record count, sum of amounts and sum of the hashes' first 32 bits, all
independent of the order records arrive in, so a lost, duplicated or unhashed record shows.

Each round runs, alternating the order: ``MultiProcessRuntime`` at parallelism 1 and 2 over
the events and over 0 events (start-up), and the calibration: one plain Python loop doing
the same work in one fresh process over all events, and two at once over half each. Their
ratio is the **ceiling**: what two processes sharing nothing gain on this machine right now.
Rates are net of start-up (wall minus the 0-event run of the same round and parallelism);
ratios are medians of per-round ratios. Worker CPU seconds per 1,000 records come from
``RUSAGE_CHILDREN`` (all worker processes, all threads).

The **coupling** line compares the p=2 job with two independent p=1 jobs over half the events
each, started together in two fresh processes (each checked against its own plain
computation): the same work on the same two CPUs at the same moment, the only difference
being that the p=2 job's workers route records to each other. Its wall and worker-CPU ratios
are what that routing costs, and they move far less with the machine than p=2 / p=1 does.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # workers import this module

from _common import FileTotalsSink, PositionPart

from malstrom import MultiProcessRuntime, StreamProvider

PARTS = 16
USERS = 5_000
SEED = 20261202


def share(n: int, part: int, parts: int) -> int:
    return n // parts + (1 if part < n % parts else 0)


class EventsPart(PositionPart):
    """One part: its share of the events, generated in chunks as it is polled."""

    def __init__(self, part: int, total: int, pos: int) -> None:
        self.rng = random.Random(SEED * 100 + part)
        self.total = total
        self.pos = 0
        for _ in range(pos):  # resume: replay the generator (benchmarks never restore)
            self._one()
        self.pos = pos

    def _one(self) -> str:
        rng = self.rng
        user = rng.randrange(USERS)
        amount = rng.randrange(1, 1000)
        item = rng.randrange(1_000_000)
        return json.dumps(
            {"user": f"user-{user}", "amount": amount, "item": f"item-{item}", "seq": self.pos}
        )

    def poll_batch(self, n: int) -> list[tuple[str, int]]:
        out = []
        for _ in range(min(n, self.total - self.pos)):
            out.append((self._one(), self.pos))
            self.pos += 1
        return out


class EventsSource:
    def __init__(self, n: int, parts: int, rendezvous: bool) -> None:
        self.n, self.parts = n, parts
        if rendezvous:
            # A source that may grow keeps rendezvous per part (the placement before parts
            # were dealt out evenly); it never relists within a benchmark run.
            self.relist_interval = 3600.0

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None) -> EventsPart:
        pos = int(state or 0)  # type: ignore[call-overload]
        return EventsPart(part, share(self.n, part, self.parts), pos)


def parse(text: str) -> dict[str, Any]:
    """The user's work per record: parse the event, hash one of its fields."""
    event: dict[str, Any] = json.loads(text)
    event["digest"] = hashlib.sha256(event["item"].encode()).hexdigest()
    return event


def add(user: str, event: dict[str, Any], total: int) -> tuple[tuple[int, int], int]:
    total += event["amount"]
    return (event["amount"], int(event["digest"][:8], 16)), total


class CountSink(FileTotalsSink):
    """Counts records and sums amounts and hash prefixes; keeps them in a file of its own."""

    def __init__(self, outdir: str) -> None:
        super().__init__(outdir)
        self.n = self.amounts = self.hashes = 0

    def sink_batch(self, records: Any) -> None:
        values = getattr(records, "values", records)
        self.n += len(values)
        for amount, h in values:
            self.amounts += amount
            self.hashes += h
        self.write_totals(f"{self.n} {self.amounts} {self.hashes}\n", 80)


def build(
    p: StreamProvider, *, n: int, outdir: str, parts: int = PARTS, rendezvous: bool = False
) -> None:
    from malstrom.sinks import StatelessSink
    from malstrom.sources import StatefulSource

    (
        p.new_stream()
        .source("events", StatefulSource(EventsSource(n, parts, rendezvous)))
        .map("parse", parse)
        .key_distribute("by-user", lambda e: e["user"])
        .stateful_map("sum", add, initial=int)
        .sink("count", StatelessSink(CountSink(outdir)))
    )


def plain(n: int, parts: int = PARTS) -> tuple[int, int, int]:
    """The same work as a plain loop: generate, parse, hash, sum per user."""
    totals: dict[str, int] = {}
    count = amounts = hashes = 0
    for part in range(parts):
        p = EventsPart(part, share(n, part, parts), 0)
        while not p.is_finished():
            for text, _ in p.poll_batch(2048):
                e = parse(text)
                totals[e["user"]] = totals.get(e["user"], 0) + e["amount"]
                count += 1
                amounts += e["amount"]
                hashes += int(e["digest"][:8], 16)
    return count, amounts, hashes


def run_job(
    n: int,
    parallelism: int,
    want: tuple[int, int, int] | None,
    parts: int = PARTS,
    rendezvous: bool = False,
) -> tuple[float, float]:
    """Wall seconds and worker CPU seconds of one checked run."""
    with tempfile.TemporaryDirectory() as outdir:
        job = functools.partial(build, n=n, outdir=outdir, parts=parts, rendezvous=rendezvous)
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        MultiProcessRuntime(job, parallelism=parallelism, max_restarts=0).execute()
        wall = time.perf_counter() - t0
        rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        got = [0, 0, 0]
        for name in os.listdir(outdir):
            with open(os.path.join(outdir, name)) as f:
                for i, x in enumerate(f.read().split()):
                    got[i] += int(x)
        if want is not None and tuple(got) != want:
            raise SystemExit(f"p={parallelism}: WRONG RESULT {tuple(got)}, expected {want}")
    cpu = rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime
    return wall, cpu


def independent_jobs(n: int, want: tuple[int, int, int], parts: int) -> tuple[float, float]:
    """Two fresh processes each running the p=1 job over ``n`` events at once: the slower
    one's wall seconds (``execute()`` only) and their worker CPU seconds together."""
    cmd = [sys.executable, os.path.abspath(__file__), "--job-child", str(n)]
    cmd += ["--parts", str(parts), "--want", ",".join(map(str, want))]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    runs = []
    for p in ps:
        out = p.communicate()[0]
        if p.returncode:
            raise SystemExit(f"an independent p=1 job failed (exit {p.returncode})")
        runs.append(tuple(map(float, out.split())))
    return max(w for w, _ in runs), sum(c for _, c in runs)


def plain_procs(n: int, procs: int) -> float:
    """Slowest of ``procs`` fresh processes each running the plain loop over n / procs."""
    cmd = [sys.executable, os.path.abspath(__file__), "--plain-child", str(n // procs)]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    walls = [float(p.communicate()[0]) for p in ps]
    return max(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="200,000 events, 3 rounds")
    ap.add_argument("--parts", type=int, default=PARTS, help="source parts (default 16)")
    ap.add_argument(
        "--ab-placement",
        action="store_true",
        help="also run p=2 with rendezvous per part (r2) beside the even deal (p2)",
    )
    ap.add_argument("--plain-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--job-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--want", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child is not None:
        t0 = time.perf_counter()
        plain(args.plain_child)
        print(f"{time.perf_counter() - t0:.6f}")
        return
    if args.job_child is not None:
        a, b, c = map(int, args.want.split(","))
        print("{:.6f} {:.6f}".format(*run_job(args.job_child, 1, (a, b, c), args.parts)))
        return
    n, rounds = (200_000, 3) if args.quick else (args.events, args.rounds)
    parts = args.parts
    print(
        f"{n:,} events, {parts} parts, {rounds} rounds; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    t0 = time.perf_counter()
    want = plain(n, parts)
    plain_s = time.perf_counter() - t0
    want_half = plain(n // 2, parts)
    steps = ["p1", "p2", *(["r2"] if args.ab_placement else []), "e1", "e2", "i2", "c1", "c2"]
    rows: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {"p1": [], "p2": [], "r2": [], "i2": []}
    for r in range(rounds):
        for step in steps if r % 2 == 0 else steps[::-1]:
            if step in ("p1", "p2", "r2"):
                wall, c = run_job(n, int(step[1]), want, parts, step == "r2")
                cpu[step].append(c)
            elif step in ("e1", "e2"):
                wall, _ = run_job(0, int(step[1]), None, parts)
            elif step == "i2":
                wall, c = independent_jobs(n // 2, want_half, parts)
                cpu[step].append(c)
            else:
                wall = plain_procs(n, int(step[1]))
            rows[step].append(wall)
        done = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in rows.items())
        print(f"round {r + 1}: {done}", flush=True)
    med = statistics.median
    net1 = [a - b for a, b in zip(rows["p1"], rows["e1"])]
    net2 = [a - b for a, b in zip(rows["p2"], rows["e2"])]
    ratio = med([a / b for a, b in zip(net1, net2)])
    ceiling = med([a / b for a, b in zip(rows["c1"], rows["c2"])])
    print()
    print("| | events/s (net of start-up) | start-up s | worker CPU s per 1k events |")
    print("|---|---|---|---|")
    print(f"| plain loop, 1 process | {n / plain_s:,.0f} | | |")
    for k, net in (("1", net1), ("2", net2)):
        per_k = 1000 * med(cpu["p" + k]) / n
        print(f"| p={k} | {n / med(net):,.0f} | {med(rows['e' + k]):.2f} | {per_k:.3f} |")
    print()
    print(f"p=2 / p=1 (net, median of rounds): {ratio:.2f}x; ceiling: {ceiling:.2f}x")
    coupled_wall = med([a / b for a, b in zip(rows["p2"], rows["i2"])])
    coupled_cpu = med([a / b for a, b in zip(cpu["p2"], cpu["i2"])])
    print(
        f"coupling: p=2 / two independent p=1 jobs over half the events each, at once "
        f"(median of rounds): wall {coupled_wall:.2f}x, worker CPU {coupled_cpu:.2f}x"
    )
    if args.ab_placement:
        net_r = [a - b for a, b in zip(rows["r2"], rows["e2"])]
        ratio_r = med([a / b for a, b in zip(net1, net_r)])
        per_k = 1000 * med(cpu["r2"]) / n
        print(
            f"p=2 with rendezvous per part: {n / med(net_r):,.0f} events/s, {per_k:.3f} CPU s "
            f"per 1k events; p=2 / p=1: {ratio_r:.2f}x"
        )
    print(f"p=1 / plain loop: {plain_s / med(net1):.2f}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
