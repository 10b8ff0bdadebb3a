#!/usr/bin/env python
"""Distributed benchmark: pipeline (b) on MultiProcessRuntime at parallelism 1 and 2.

    .venv/bin/python bench/distributed.py            # full: 7 rounds (snapshots: 5)
    .venv/bin/python bench/distributed.py --quick    # 3 rounds, smaller inputs
    .venv/bin/python bench/distributed.py --only scale --only wire   # parts: scale, wire, snap
    .venv/bin/python bench/distributed.py --only cpu [--work 50]     # worker CPU per record
    .venv/bin/python bench/distributed.py --worker-gc 50000          # every job's build() raises
                                                                      # the workers' gc threshold
    .venv/bin/python bench/distributed.py --pyspy /tmp/prof --pyspy-args=--gil
                                      # py-spy both workers of one 2-process job, summarized

Pipeline (b) of bench/core.py -- key_distribute(word_key) -> stateful_map(running count per
key) -> counting sink -- fed by a PARTITIONED stateful source: ``--parts`` (16) parts, each
generating its share of the words inside the worker (``random.Random(PART_SEED + part)``,
drawn from the same 10,000 keys, served with ``poll_batch``), so no input crosses a process
boundary; only what key_distribute routes to the other worker does.

1. scale (4,000,000 words; ``--words``): records/s of ``execute()`` (wall, including process
   start-up) for SingleThreadRuntime (reference), MultiProcessRuntime(parallelism=1) and
   (parallelism=2); the start-up cost is measured by running the same job over 0 records in
   the same round, and subtracted for the "net" figures. Ratio 2-process / 1-process: target >= 1.3.
   Also: the same two jobs run a second time in every round (a noise check: how far two
   identical measurements differ), and the speedup two independent SingleThreadRuntime
   processes get on this machine (the ceiling).
2. wire: pickled payload bytes per record of the batches the distributor sends (the remote
   share of 2048-record source batches; 1, 2 and 8 per flush, 8 being one 2-worker turn),
   encode/decode cost, the per-frame overhead of the Frame message, gRPC and HTTP/2, and the
   CPU cost of the distributor's routing.
3. snap: 2 processes, LocalDiskPersistence, snapshot_interval=1.0 vs no interval (only the
   final snapshot every completed job takes), on a job of several seconds. Target >= 0.9.
4. cpu (only with ``--only cpu``): net worker CPU per record at p=1 and p=2 (all threads of
   all workers, minus a 0-record job), their ratio (<= ~1.54x is what a 1.3x speedup needs),
   and the CPU split by thread kind; ``--work K`` adds sum(range(K)) per record.

Correctness: every framework run writes, per sink instance (one per worker), the number of
records it saw and the sum of the running counts it saw to a file; the parent sums them and
compares with the expected values computed from the same seeded generators. The sum of
running counts is sum_k c_k (c_k + 1) / 2, so a key whose state were split between workers,
or a record lost or duplicated, changes it. A run that fails the check aborts the benchmark.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import pickle
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from itertools import compress
from pathlib import Path
from typing import Any

# gRPC's C core logs a benign INFO line ("Got goaway") when a data stream ends at shutdown.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_HERE = Path(__file__).resolve().parent
_SRC = _HERE.parent / "src"
for _p in (str(_SRC), str(_HERE)):
    if Path(_p).is_dir() and _p not in sys.path:
        sys.path.insert(0, _p)

from _common import FileCountSink, PositionPart  # noqa: E402
from core import N_KEYS, SEED, key_pool, running_count, word_key  # noqa: E402

from malstrom import SingleThreadRuntime, StatefulSource, StatelessSink, StreamProvider  # noqa: E402
from malstrom.engine.batch import Batch  # noqa: E402
from malstrom.engine.messages import Epoch  # noqa: E402
from malstrom.keyed._parts import part_owners  # noqa: E402
from malstrom.keyed.partitioners import rendezvous_select  # noqa: E402
from malstrom.operators.io import BATCH_SIZE  # noqa: E402
from malstrom.runtime._multi import MultiProcessRuntime  # noqa: E402
from malstrom.snapshot import LocalDiskPersistence  # noqa: E402
from malstrom.transport import malstrom_pb2 as pb  # noqa: E402
from malstrom.transport._grpc_data import (  # noqa: E402
    FRAME_BYTES,
    decode_frame,
    encode_frames,
)

PARTS = 16  # --parts; fixed parts are dealt out evenly: 8:8 over workers {0, 1}
PART_SEED = SEED + 100  # part p draws from random.Random(PART_SEED + p)
SCALE_TARGET = 1.3
SNAP_TARGET = 0.9
SNAP_INTERVAL = 1.0
DISTRIBUTOR = "by_word"  # operator name the distributor sends under

_POOL: list[str] | None = None


def pool() -> list[str]:
    global _POOL
    if _POOL is None:
        _POOL = key_pool(N_KEYS)
    return _POOL


def dealt() -> Counter[int]:
    """Parts each of workers 0 and 1 reads at p=2 (fixed parts are dealt out evenly)."""
    return Counter(part_owners(list(range(PARTS)), (0, 1)).values())


def share(n: int, parts: int, part: int) -> int:
    """Records part ``part`` generates: n split as evenly as possible."""
    return n // parts + (1 if part < n % parts else 0)


# ----------------------------------------------------------------------------------------------
# Source, sink and build function (module level: the worker processes import them).
# ----------------------------------------------------------------------------------------------
class WordsPart(PositionPart):
    """One part: ``total`` words from its own seeded generator; position = records emitted."""

    __slots__ = ("_pool", "_rng", "pos", "total")

    def __init__(self, part: int, total: int, skip: int) -> None:
        self._pool = pool()
        self._rng = random.Random(PART_SEED + part)
        self.total = total
        self.pos = 0
        if skip:  # resume: choices() draws one random() per item, so chunking does not matter
            self._rng.choices(self._pool, k=skip)
            self.pos = skip

    def poll_batch(self, n: int) -> list[tuple[str, int]]:
        k = min(n, self.total - self.pos)
        if k <= 0:
            return []
        words = self._rng.choices(self._pool, k=k)
        start = self.pos
        self.pos = start + k
        return list(zip(words, range(start, start + k), strict=True))


class WordsSource:
    """StatefulSourceImpl: ``parts`` parts generating ``n`` words in total."""

    def __init__(self, n: int, parts: int) -> None:
        self.n = n
        self.parts = parts

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None) -> WordsPart:
        return WordsPart(part, share(self.n, self.parts, part), int(state or 0))  # type: ignore[call-overload]


def worked_count(work: range, key: Any, value: Any, state: int) -> tuple[int, int]:
    """running_count plus ``sum(work)``: more CPU per record (the cpu part's ``--work``)."""
    sum(work)
    n = state + 1
    return n, n


def build_b(
    p: StreamProvider,
    *,
    n: int,
    parts: int,
    outdir: str,
    gc_threshold: int = 0,
    work: int = 0,
) -> None:
    """Pipeline (b) over the partitioned word source (``functools.partial`` it)."""
    if gc_threshold:  # diagnostic (--worker-gc): what SingleThreadRuntime does for its run
        g = gc.get_threshold()
        gc.set_threshold(max(g[0], gc_threshold), *g[1:])
    (
        p.new_stream()
        .source("words", StatefulSource(WordsSource(n, parts)))
        .key_distribute(DISTRIBUTOR, word_key)
        .stateful_map(
            "count",
            functools.partial(worked_count, range(work)) if work else running_count,
            initial=int,
        )
        .sink("out", StatelessSink(FileCountSink(outdir)))
    )


# ----------------------------------------------------------------------------------------------
# Expected results and checking
# ----------------------------------------------------------------------------------------------
def part_words(part: int, total: int) -> list[str]:
    return random.Random(PART_SEED + part).choices(pool(), k=total)


@functools.cache
def expected(n: int, parts: int) -> tuple[int, int]:
    counts: Counter[str] = Counter()
    for p in range(parts):
        counts.update(part_words(p, share(n, parts, p)))
    return n, sum(c * (c + 1) // 2 for c in counts.values())


def read_sinks(outdir: str) -> tuple[int, int, int]:
    """(records, sum of running counts, sink files) over every sink file in ``outdir``."""
    n = s = files = 0
    for entry in os.scandir(outdir):
        if entry.name.startswith("sink-"):
            a, b = Path(entry.path).read_text().split()
            n += int(a)
            s += int(b)
            files += 1
    return n, s, files


class Job:
    """One framework run in a fresh output directory; ``run()`` returns wall seconds."""

    def __init__(
        self,
        label: str,
        n: int,
        parallelism: int | None,  # None: SingleThreadRuntime
        *,
        snapshot_interval: float | None = None,
        disk: bool = False,
        gc_threshold: int = 0,
    ) -> None:
        self.label = label
        self.n = n
        self.parallelism = parallelism
        self.snapshot_interval = snapshot_interval
        self.disk = disk
        self.gc_threshold = gc_threshold
        self.snapshots = 0  # committed snapshot versions of the last run (disk only)
        self.cpu: list[tuple[float, float]] = []  # per run: (this process, worker processes) s
        self.snapshot_bytes = 0  # size of the last committed snapshot (disk only)

    def run(self) -> float:
        tmp = tempfile.mkdtemp(prefix="malstrom-bench-")
        try:
            outdir = os.path.join(tmp, "out")
            os.mkdir(outdir)
            build = functools.partial(
                build_b, n=self.n, parts=PARTS, outdir=outdir, gc_threshold=self.gc_threshold
            )
            persistence = LocalDiskPersistence(os.path.join(tmp, "snap")) if self.disk else None
            gc.collect()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            if self.parallelism is None:
                SingleThreadRuntime(
                    build, persistence=persistence, snapshot_interval=self.snapshot_interval
                ).execute()
            else:
                MultiProcessRuntime(
                    build,
                    parallelism=self.parallelism,
                    persistence=persistence,
                    snapshot_interval=self.snapshot_interval,
                    max_restarts=0,  # a restart would make a run look slow, or wrong: fail
                ).execute()
            dt = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers are joined by now
            self.cpu.append(
                (
                    ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
                    rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime,
                )
            )
            got_n, got_s, files = read_sinks(outdir)
            want = expected(self.n, PARTS)
            if (got_n, got_s) != want and not (self.n == 0 and files == 0):
                raise SystemExit(
                    f"{self.label}: WRONG RESULT: sinks saw {got_n:,} records, sum of counts "
                    f"{got_s:,} ({files} sink files); expected {want[0]:,} and {want[1]:,}"
                )
            if persistence is not None:
                versions = persistence.committed_versions()
                self.snapshots = versions[-1] + 1 if versions else 0
                vdirs = sorted(e.path for e in os.scandir(persistence.path) if e.is_dir())
                if vdirs:
                    self.snapshot_bytes = sum(
                        e.stat().st_size for e in os.scandir(vdirs[-1]) if e.is_file()
                    )
            return dt
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def rounds_of(jobs: list[Job], rounds: int) -> dict[str, list[float]]:
    """Run every job once per round, alternating the order (forward, backward) by round."""
    times: dict[str, list[float]] = {j.label: [] for j in jobs}
    for r in range(rounds):
        order = jobs if r % 2 == 0 else jobs[::-1]
        for j in order:
            times[j.label].append(j.run())
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ----------------------------------------------------------------------------------------------
# 1. scaling
# ----------------------------------------------------------------------------------------------
class Independent:
    """Calibration: plain SingleThreadRuntime jobs in ``procs`` fresh processes at once.

    Each child builds everything, then waits for a go signal and times only ``execute()``
    over ``n / procs`` records (checked like every run). The time reported is the slowest
    child's, so (1 process, n) / (2 processes, n/2 each) is the speedup this machine gives two
    processes that share nothing, right now: the ceiling for p=2 / p=1.
    """

    def __init__(self, label: str, n: int, procs: int) -> None:
        self.label = label
        self.n = n
        self.procs = procs

    def run(self) -> float:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--st-child",
            str(self.n // self.procs),
            "--parts",
            str(PARTS),
        ]
        ps = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(self.procs)
        ]
        try:
            for p in ps:
                if p.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                    raise SystemExit(f"{self.label}: child failed to start")
            for p in ps:
                p.stdin.write("go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            walls = [float(p.stdout.readline()) for p in ps]  # type: ignore[union-attr]
        finally:
            for p in ps:
                if p.wait(60) != 0:
                    raise SystemExit(f"{self.label}: child exited with {p.returncode}")
        return max(walls)


def st_child(n: int) -> None:
    job = Job("child", n, None)
    expected(n, PARTS)
    print("ready", flush=True)
    sys.stdin.readline()
    print(f"{job.run():.6f}", flush=True)


def bench_scale(n: int, rounds: int, gc_threshold: int) -> None:
    st = Job("SingleThreadRuntime", n, None, gc_threshold=gc_threshold)
    p1 = Job("MultiProcess p=1", n, 1, gc_threshold=gc_threshold)
    p2 = Job("MultiProcess p=2", n, 2, gc_threshold=gc_threshold)
    e1 = Job("empty p=1", 0, 1, gc_threshold=gc_threshold)
    e2 = Job("empty p=2", 0, 2, gc_threshold=gc_threshold)
    jobs: list[Any] = [st, p1, e1, p2, e2]
    # The same two jobs again: how far two identical measurements differ on this machine now.
    g1 = Job("MultiProcess p=1 again", n, 1, gc_threshold=gc_threshold)
    g2 = Job("MultiProcess p=2 again", n, 2, gc_threshold=gc_threshold)
    jobs += [g1, g2]
    i1 = Independent("indep. ST, 1 process", n, 1)
    i2 = Independent("indep. ST, 2 x n/2", n, 2)
    jobs += [i1, i2]
    Job("warm-up", 0, 2).run()  # the first spawn pays for cold caches: not measured
    t = rounds_of(jobs, rounds)

    def net(job: Job, empty: Job) -> list[float]:
        return [a - b for a, b in zip(t[job.label], t[empty.label], strict=True)]

    def ratios(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b, strict=True)]

    gc_note = f", worker gc threshold {gc_threshold}" if gc_threshold else ""
    placed = dealt()
    print(
        f"\n1. Scaling: pipeline (b), {n:,} words ({N_KEYS:,} keys) from a {PARTS}-part "
        f"generated source (p=2: worker 0 reads {placed[0]} parts, worker 1 {placed[1]}), "
        f"median of {rounds} rounds{gc_note}"
    )
    hdr = (
        f"{'runtime':<24} {'wall s':>7} {'rec/s (wall)':>13} {'start-up s':>11} "
        f"{'net s':>7} {'rec/s (net)':>12} {'CPU s: parent':>14} {'workers':>8}"
    )
    print(hdr)
    print("-" * len(hdr))

    def row(label: str, w: float, su: str, nt: str, rn: str, cp: str, cw: str, rate: str) -> None:
        print(f"{label:<24} {w:>7.3f} {rate:>13} {su:>11} {nt:>7} {rn:>12} {cp:>14} {cw:>8}")

    def rate(x: float) -> str:
        return f"{n / x / 1e6:.3f} M"

    def cpu(job: Job, i: int) -> str:
        return f"{med([c[i] for c in job.cpu]):.3f}"

    w = med(t[st.label])
    row(st.label, w, "-", "-", "-", cpu(st, 0), "-", rate(w))
    pairs = [(p1, e1), (p2, e2), (g1, e1), (g2, e2)]
    for job, empty in pairs:
        w, su, m = med(t[job.label]), med(t[empty.label]), med(net(job, empty))
        row(job.label, w, f"{su:.3f}", f"{m:.3f}", rate(m), cpu(job, 0), cpu(job, 1), rate(w))
    for empty in (e1, e2):
        row(
            empty.label + " (0 rec)",
            med(t[empty.label]),
            "-",
            "-",
            "-",
            cpu(empty, 0),
            cpu(empty, 1),
            "-",
        )
    w = med(t[i1.label])
    row(i1.label, w, "-", "-", "-", "-", "-", rate(w))
    w = med(t[i2.label])
    row(i2.label, w, "-", "-", "-", "-", "-", rate(w))

    wall_r = ratios(t[p1.label], t[p2.label])
    net_r = ratios(net(p1, e1), net(p2, e2))
    ceil_r = ratios(t[i1.label], t[i2.label])
    rw, rn, rc = med(wall_r), med(net_r), med(ceil_r)
    print(
        f"ratio p=2 / p=1 (median of per-round ratios): wall {rw:.3f}x, net of start-up "
        f"{rn:.3f}x (target >= {SCALE_TARGET}x): wall {verdict(rw >= SCALE_TARGET)}, "
        f"net {verdict(rn >= SCALE_TARGET)}"
    )
    again = ratios(net(g1, e1), net(g2, e2))
    print(
        f"noise check, the same jobs again in every round: p=2 / p=1 net {med(again):.3f}x; "
        f"p=1 / p=1 again (net) {med(ratios(net(p1, e1), net(g1, e1))):.3f}, "
        f"p=2 / p=2 again {med(ratios(net(p2, e2), net(g2, e2))):.3f}"
    )
    print(
        f"ceiling on this machine now: 2 independent processes vs 1 (execute() only) "
        f"{rc:.3f}x; p=1 net / SingleThreadRuntime "
        f"{med(ratios(t[st.label], net(p1, e1))):.3f}x"
    )
    print("per-round wall ratios p2/p1: " + " ".join(f"{x:.3f}" for x in wall_r))
    print("per-round net ratios  p2/p1: " + " ".join(f"{x:.3f}" for x in net_r))
    print("per-round ceiling ratios:    " + " ".join(f"{x:.3f}" for x in ceil_r))
    want = expected(n, PARTS)
    print(
        f"checked: every run's sinks saw {want[0]:,} records with sum of running counts "
        f"{want[1]:,} (empty runs: 0; independent halves: their own expected totals)"
    )


# ----------------------------------------------------------------------------------------------
# 2. bytes on the wire
# ----------------------------------------------------------------------------------------------
def remote_batches(count: int, n_total: int) -> list[Batch]:
    """The remote share (for worker 1, as seen by worker 0) of ``count`` source batches.

    The batches come from the middle of part 0's stream of a job of ``n_total`` records, so
    the timestamps have their typical size.
    """
    workers = (0, 1)
    total = share(n_total, PARTS, 0)
    start = max(0, total // 2 - count * BATCH_SIZE // 2)
    words = part_words(0, start + count * BATCH_SIZE)
    out = []
    for b in range(count):
        lo = start + b * BATCH_SIZE
        vals = words[lo : lo + BATCH_SIZE]
        stamps = list(range(lo, lo + BATCH_SIZE))
        keys = list(map(word_key, vals))  # what the distributor puts in the keys column
        mask = [rendezvous_select(k, workers) == 1 for k in keys]
        out.append(
            Batch(
                list(compress(keys, mask)),
                list(compress(vals, mask)),
                list(compress(stamps, mask)),
            )
        )
    return out


def timeit_us(fn: Any, records: int, repeat: int = 7, number: int = 50) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / number / records * 1e6


def bench_wire(n_total: int) -> None:
    per_turn = dealt()[0]
    batches = remote_batches(max(4, per_turn), n_total)
    print(
        f"\n2. Bytes on the wire, pipeline (b) at parallelism 2: the remote share of "
        f"{BATCH_SIZE}-record source batches as the distributor sends them, through "
        f"encode_frames (pickle protocol 5); a worker turn polls its {per_turn} parts, so one "
        f"flush carries {per_turn} batches"
    )
    hdr = (
        f"{'batches per flush':<18} {'records':>8} {'frames':>7} {'payload B':>10} "
        f"{'B/record':>9} {'+overhead B/rec':>16} {'encode us/rec':>14} {'1 pickle us/rec':>16} "
        f"{'decode us/rec':>14}"
    )
    print(hdr)
    print("-" * len(hdr))
    for per_flush in sorted({1, 2, per_turn}):
        box: list[tuple[str, Any]] = [(DISTRIBUTOR, b) for b in batches[:per_flush]]
        records = sum(len(b) for _, b in box)
        payloads = encode_frames(box)
        size = sum(map(len, payloads))
        overhead = sum(frame_overhead(len(p)) for p in payloads)
        enc = timeit_us(lambda box=box: encode_frames(box), records)
        once = timeit_us(lambda box=box: pickle.dumps(box, 5), records)
        dec = timeit_us(lambda p=payloads: [decode_frame(x) for x in p], records)
        print(
            f"{per_flush:<18} {records:>8,} {len(payloads):>7} {size:>10,} "
            f"{size / records:>9.2f} {(size + overhead) / records:>16.2f} {enc:>14.3f} "
            f"{once:>16.3f} {dec:>14.3f}"
        )
    b = batches[0]
    r = len(b)
    cols = {c: len(pickle.dumps(getattr(b, c), 5)) / r for c in ("keys", "values", "timestamps")}
    both = len(pickle.dumps((b.keys, b.values), 5)) / r
    raw = sum(len(k) for k in b.keys) / r
    print(
        f"per column, one batch of {r} records (B/record): keys {cols['keys']:.2f}, values "
        f"{cols['values']:.2f} alone / {both - cols['keys']:.2f} after keys (pickle memo: "
        f"values are the key strings), timestamps {cols['timestamps']:.2f}; the words "
        f"themselves are {raw:.0f} B"
    )
    one = frame_overhead(1000)
    ep = len(pickle.dumps([(DISTRIBUTOR, Epoch(10**6))], 5))
    print(
        f"per-frame overhead (estimate): Frame fields ~{pb_overhead(1000)} B + gRPC message "
        f"prefix 5 B + HTTP/2 DATA header 9 B per 16 KiB = ~{one} B for a small frame; an "
        f"Epoch alone pickles to {ep} B. Frames are cut at ~{FRAME_BYTES // 1024} KiB: each "
        f"message is pickled once, then each frame's list of those pickles (encode vs 1 pickle "
        f"above)"
    )
    split = split_cost_us()
    print(
        f"CPU of routing a {BATCH_SIZE}-record batch to 2 workers the way DistributorOp."
        f"on_batch does (one split of the columns by owner, cache hits): "
        + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
        + " us/record (p=1 skips it)"
    )


def split_cost_us() -> dict[str, float]:
    """DistributorOp.on_batch's routing, minus key_fn, for one 2048-record batch, 2 workers:
    the router in use (C unless MALSTROM_PURE_PYTHON=1 or not built) and the Python one."""
    from malstrom.keyed import _route

    workers = (0, 1)
    words = part_words(0, BATCH_SIZE)
    b = Batch(list(words), words, list(range(BATCH_SIZE)))
    cache = {k: rendezvous_select(k, workers) for k in set(words)}

    def route(split: Any) -> list[Batch]:
        parts = split(b.keys, b.keys, b.values, b.timestamps, cache, workers)
        return [b] if type(parts) is int else [Batch(k, v, t) for _, k, v, t in parts]

    routers = {"python": _route.split_py}
    if _route.NATIVE:
        routers = {"C": _route.split, **routers}
    return {k: timeit_us(functools.partial(route, f), BATCH_SIZE) for k, f in routers.items()}


def pb_overhead(payload_len: int) -> int:
    frame = pb.Frame(from_worker=1, seq=123_456, payload=b"x" * payload_len)
    return frame.ByteSize() - payload_len


def frame_overhead(payload_len: int) -> int:
    msg = payload_len + pb_overhead(payload_len)
    return pb_overhead(payload_len) + 5 + 9 * -(-(msg + 5) // 16384)


# ----------------------------------------------------------------------------------------------
# 3. snapshots
# ----------------------------------------------------------------------------------------------
def bench_snap(n: int, rounds: int, gc_threshold: int) -> None:
    none = Job("no interval", n, 2, disk=True, gc_threshold=gc_threshold)
    every = Job(f"every {SNAP_INTERVAL:g} s", n, 2, disk=True, gc_threshold=gc_threshold)
    every.snapshot_interval = SNAP_INTERVAL
    snaps: dict[str, list[int]] = {none.label: [], every.label: []}
    times: dict[str, list[float]] = {none.label: [], every.label: []}
    for r in range(rounds):
        for j in (none, every) if r % 2 == 0 else (every, none):
            times[j.label].append(j.run())
            snaps[j.label].append(j.snapshots)
    ratios = [a / b for a, b in zip(times[none.label], times[every.label], strict=True)]
    print(
        f"\n3. Snapshots: pipeline (b), {n:,} words, MultiProcessRuntime(parallelism=2), "
        f"LocalDiskPersistence, median of {rounds} rounds"
    )
    hdr = f"{'snapshot_interval':<18} {'wall s':>7} {'rec/s':>11} {'snapshots/run':>14}"
    print(hdr)
    print("-" * len(hdr))
    for j in (none, every):
        w = med(times[j.label])
        s = "/".join(map(str, snaps[j.label]))
        print(f"{j.label:<18} {w:>7.3f} {n / w / 1e6:>9.3f} M {s:>14}")
    rr = med(ratios)
    print(
        f"ratio with/without snapshots (rec/s): {rr:.3f} (target >= {SNAP_TARGET}): "
        f"{verdict(rr >= SNAP_TARGET)}; per round: " + " ".join(f"{x:.3f}" for x in ratios)
    )
    print(
        f"snapshots/run counts committed versions incl. the final one; last snapshot "
        f"{every.snapshot_bytes / 1024:.0f} KiB on disk; results checked as in 1."
    )


# ----------------------------------------------------------------------------------------------
# 4. CPU per record, per thread
# ----------------------------------------------------------------------------------------------
def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of every live thread of ``pid`` (schedstat: ns resolution), by name/tid."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except (OSError, ValueError, IndexError):
            continue
        out[f"{name}/{tid}"] = ns / 1e9
    return out


def run_watched(n: int, parallelism: int, work: int = 0) -> tuple[float, float, dict[str, float]]:
    """One checked MultiProcessRuntime run; (wall s, worker CPU s, CPU s per thread kind).

    Worker CPU comes from RUSAGE_CHILDREN (exact, all threads). The per-thread split polls
    /proc/<pid>/task/*/schedstat every 2 ms and keeps each thread's last value (threads end
    with their process, so up to ~2 ms of each is missed); threads are grouped by name, the
    main thread as "main".
    """
    tmp = tempfile.mkdtemp(prefix="malstrom-bench-")
    try:
        outdir = os.path.join(tmp, "out")
        os.mkdir(outdir)
        build = functools.partial(build_b, n=n, parts=PARTS, outdir=outdir, work=work)
        gc.collect()
        rc0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        handle = MultiProcessRuntime(build, parallelism=parallelism, max_restarts=0).start()
        last: dict[tuple[int, str], float] = {}
        pids: dict[int, int] = {}
        while handle.running:
            if len(pids) < parallelism:
                pids = handle.status().get("pids") or {}
            for pid in pids.values():
                for name, sec in _thread_cpu(pid).items():
                    last[(pid, name)] = sec
            time.sleep(0.002)
        handle.wait()
        dt = time.perf_counter() - t0
        rc1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = rc1.ru_utime + rc1.ru_stime - rc0.ru_utime - rc0.ru_stime
        got = read_sinks(outdir)[:2]
        if n and got != expected(n, PARTS):
            raise SystemExit(f"p={parallelism}: WRONG RESULT {got} != {expected(n, PARTS)}")
        kinds: dict[str, float] = {}
        for (pid, name), sec in last.items():
            comm, _, tid = name.rpartition("/")
            kind = "main" if tid == str(pid) else comm
            kinds[kind] = kinds.get(kind, 0.0) + sec
        return dt, cpu, kinds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_cpu(n: int, rounds: int, work: int = 0) -> None:
    """Worker CPU per record at p=1 and p=2 (net of a 0-record job), and per thread kind."""
    runs: dict[tuple[int, int], list[tuple[float, float, dict[str, float]]]] = {}
    run_watched(0, 2)  # warm-up
    for r in range(rounds):
        order = [(1, n), (1, 0), (2, n), (2, 0)]
        for p, m in order if r % 2 == 0 else order[::-1]:
            runs.setdefault((p, m), []).append(run_watched(m, p, work))
    print(
        f"\n4. Worker CPU per record: pipeline (b), {n:,} words, MultiProcessRuntime, "
        f"median of {rounds} rounds; net = minus the same job over 0 records (same round)"
        + (f"; the count also computes sum(range({work})) per record (--work)" if work else "")
    )
    hdr = (
        f"{'parallelism':<12} {'wall s':>7} {'net wall s':>10} {'CPU s':>7} {'net CPU s':>10} "
        f"{'net CPU us/rec':>15}"
    )
    print(hdr)
    print("-" * len(hdr))
    net_cpu: dict[int, list[float]] = {}
    net_wall: dict[int, list[float]] = {}
    for p in (1, 2):
        full, empty = runs[(p, n)], runs[(p, 0)]
        net_cpu[p] = [a[1] - b[1] for a, b in zip(full, empty, strict=True)]
        net_wall[p] = [a[0] - b[0] for a, b in zip(full, empty, strict=True)]
        print(
            f"{p:<12} {med([a[0] for a in full]):>7.3f} {med(net_wall[p]):>10.3f} "
            f"{med([a[1] for a in full]):>7.3f} {med(net_cpu[p]):>10.3f} "
            f"{med(net_cpu[p]) / n * 1e6:>15.3f}"
        )
    cr = [b / a for a, b in zip(net_cpu[1], net_cpu[2], strict=True)]
    wr = [a / b for a, b in zip(net_wall[1], net_wall[2], strict=True)]
    print(
        f"net worker CPU p=2 / p=1: {med(cr):.3f}x (<= ~1.54x needed for a 1.3x speedup); "
        f"net wall speedup p=2 vs p=1: {med(wr):.3f}x; per round CPU "
        + " ".join(f"{x:.2f}" for x in cr)
        + "; wall "
        + " ".join(f"{x:.2f}" for x in wr)
    )
    for p in (1, 2):
        kinds: dict[str, list[float]] = {}
        for _, _, k in runs[(p, n)]:
            for name, sec in k.items():
                kinds.setdefault(name, []).append(sec)
        top = sorted(kinds.items(), key=lambda kv: -med(kv[1]))[:8]
        print(
            f"p={p} CPU s by thread (all workers, median): "
            + ", ".join(f"{name} {med(v):.3f}" for name, v in top)
        )


# ----------------------------------------------------------------------------------------------
# 5. in-process: what distribution costs in CPU, by operator, without gRPC or threads
# ----------------------------------------------------------------------------------------------
class _PicklingExchange:
    """run_local_cluster's exchange, but what goes to another worker is framed, pickled and
    unpickled by encode_frames/decode_frame as GrpcExchange does, timing both (no credit
    flow control: the bench never saturates a pipe)."""

    def __init__(
        self, queues: dict[tuple[int, int, str], deque[Any]], me: int, clock: Counter[str]
    ) -> None:
        self.queues = queues
        self.me = me
        self.clock = clock
        self.out: dict[int, list[tuple[str, Any]]] = {}

    def _q(self, src: int, dst: int, operator: str) -> deque[Any]:
        q = self.queues.get((src, dst, operator))
        if q is None:
            q = self.queues[(src, dst, operator)] = deque()
        return q

    def send(self, peer: int, operator: str, msg: Any) -> None:
        if peer == self.me:
            self._q(peer, peer, operator).append(msg)
        else:
            self.out.setdefault(peer, []).append((operator, msg))

    def recv(self, peer: int, operator: str) -> Any | None:
        q = self._q(peer, self.me, operator)
        return q.popleft() if q else None

    def flush(self) -> None:
        clock = self.clock
        for peer, box in self.out.items():
            t0 = time.perf_counter()
            payloads = encode_frames(box)
            t1 = time.perf_counter()
            for payload in payloads:
                for operator, msg in decode_frame(payload):
                    self._q(self.me, peer, operator).append(msg)
            clock["decode_frame"] += time.perf_counter() - t1
            clock["encode_frames"] += t1 - t0
        self.out = {}

    def set_attempt(self, attempt: int) -> None:
        pass  # one process, one attempt: no peer of another attempt can connect

    def saturated(self) -> frozenset[str]:
        return frozenset()

    def hold(self, operators: Any) -> None:
        pass

    def close(self) -> None:
        pass


def bench_inproc(n: int, rounds: int) -> None:
    """Both workers in one thread (run_local_cluster): CPU per record by operator, p=1 vs p=2."""
    from malstrom.keyed.distributor import DistributorOp
    from malstrom.operators.io import SourceOp, StatelessSinkOp
    from malstrom.operators.stateful import StatefulMapOp
    from malstrom.testing import _cluster
    from malstrom.transport._exchange import LocalExchangeHub

    clock: Counter[str] = Counter()

    class Hub(LocalExchangeHub):
        def __init__(self) -> None:
            super().__init__()
            self.queues: dict[tuple[int, int, str], deque[Any]] = {}

        def endpoint(self, worker_id: int) -> Any:
            return _PicklingExchange(self.queues, worker_id, clock)

    timed = [
        (SourceOp, "poll"),
        (DistributorOp, "on_batch"),
        (DistributorOp, "schedule"),
        (StatefulMapOp, "on_batch"),
        (StatelessSinkOp, "on_batch"),
    ]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in timed]

    def timer(label: str, fn: Any) -> Any:
        def run(*a: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                clock[label] += time.perf_counter() - t0

        return run

    results: dict[int, list[tuple[float, dict[str, float]]]] = {1: [], 2: []}
    real_hub = _cluster.LocalExchangeHub
    _cluster.LocalExchangeHub = Hub  # type: ignore[misc]
    for cls, name, fn in saved:
        setattr(cls, name, timer(f"{cls.__name__}.{name}", fn))
    try:
        for _ in range(rounds):
            for p in (1, 2):
                tmp = tempfile.mkdtemp(prefix="malstrom-bench-")
                try:
                    build = functools.partial(build_b, n=n, parts=PARTS, outdir=tmp)
                    clock.clear()
                    gc.collect()
                    t0 = time.process_time()
                    _cluster.run_local_cluster(build, p)
                    cpu = time.process_time() - t0
                    if read_sinks(tmp)[:2] != expected(n, PARTS):
                        raise SystemExit(f"in-process p={p}: WRONG RESULT {read_sinks(tmp)}")
                    results[p].append((cpu, dict(clock)))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        _cluster.LocalExchangeHub = real_hub  # type: ignore[misc]
        for cls, name, fn in saved:
            setattr(cls, name, fn)
    print(
        f"\n5. In-process: pipeline (b), {n:,} words, both workers in one thread "
        f"(run_local_cluster), messages to the other worker through encode_frames/decode_frame; "
        f"ns per record, median of {rounds} rounds (no gRPC, no threads)"
    )
    labels = sorted({k for p in (1, 2) for _, c in results[p] for k in c})
    hdr = f"{'':<28} {'p=1':>8} {'p=2':>8} {'p=2 - p=1':>10}"
    print(hdr)
    print("-" * len(hdr))
    tot = {p: med([c for c, _ in results[p]]) / n * 1e9 for p in (1, 2)}
    for label in [*labels, "total CPU"]:
        v = {
            p: tot[p]
            if label == "total CPU"
            else med([c.get(label, 0.0) for _, c in results[p]]) / n * 1e9
            for p in (1, 2)
        }
        print(f"{label:<28} {v[1]:>8.0f} {v[2]:>8.0f} {v[2] - v[1]:>+10.0f}")
    print(
        f"p=2 / p=1 total CPU in one thread: {tot[2] / tot[1]:.3f}x (DistributorOp.on_batch "
        f"includes key_fn, which p=1 runs too; encode/decode run inside the workers' flush)"
    )


# ----------------------------------------------------------------------------------------------
# py-spy on the workers of one 2-process run
# ----------------------------------------------------------------------------------------------
def pyspy_workers(outdir: str, n: int, gc_threshold: int, extra: list[str]) -> None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="malstrom-bench-")
    build = functools.partial(build_b, n=n, parts=PARTS, outdir=tmp, gc_threshold=gc_threshold)
    handle = MultiProcessRuntime(build, parallelism=2, max_restarts=0).start()
    pids: dict[int, int] = {}
    while len(pids) < 2 and handle.running:
        pids = handle.status().get("pids") or {}
        time.sleep(0.005)
    procs = []
    for w, pid in sorted(pids.items()):
        out = os.path.join(outdir, f"worker{w}.txt")
        procs.append(
            subprocess.Popen(
                [pyspy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", out, *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    t0 = time.perf_counter()
    handle.wait()
    print(f"2-process run of {n:,} records: {time.perf_counter() - t0:.2f} s after attach")
    for p in procs:
        p.wait(30)
    print(f"checked: sinks {read_sinks(tmp)[:2]} expected {expected(n, PARTS)}")
    shutil.rmtree(tmp, ignore_errors=True)
    for w in sorted(pids):
        path = os.path.join(outdir, f"worker{w}.txt")
        if os.path.exists(path):
            print(f"\nworker {w} (pid {pids[w]}), py-spy samples by function (self / total):")
            summarize_raw(path)


def summarize_raw(path: str, top: int = 18) -> None:
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack:
            continue
        c = int(cnt)
        samples += c
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")]
        frames = [f for f in frames if f.strip()]
        if not frames:
            continue
        self_c[frames[-1]] += c
        for f in set(frames):
            total_c[f] += c
    print(f"  {samples} samples; top self:")
    for f, c in self_c.most_common(top):
        print(f"  {100 * c / samples:5.1f}%  {f}")
    print("  top total (inclusive):")
    for f, c in total_c.most_common(top):
        print(f"  {100 * c / samples:5.1f}%  {f}")


# ----------------------------------------------------------------------------------------------
def main() -> None:
    global PARTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, smaller inputs")
    ap.add_argument(
        "--words", type=int, default=None, help="scale part's words (4,000,000; quick 1,000,000)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    ap.add_argument(
        "--only",
        action="append",
        choices=["scale", "wire", "snap", "cpu", "inproc"],
        help="run only these parts (cpu: per-record worker CPU and per-thread split; inproc: "
        "CPU by operator with both workers in one thread; neither is in the default set)",
    )
    ap.add_argument(
        "--worker-gc",
        type=int,
        default=0,
        metavar="N",
        help="diagnostic: the build function raises gen-0 gc threshold to N in every worker",
    )
    ap.add_argument("--parts", type=int, default=PARTS, help=f"source parts (default {PARTS})")
    ap.add_argument(
        "--work",
        type=int,
        default=0,
        metavar="K",
        help="cpu part only: the count also computes sum(range(K)) per record (more work per "
        "record, to see how the p=2 / p=1 ratio depends on it); fewer records as K grows",
    )
    ap.add_argument("--pyspy", metavar="DIR", help="py-spy the workers of one 2-process run")
    ap.add_argument(
        "--pyspy-args", default="", help="extra py-spy record arguments, e.g. '--gil --idle'"
    )
    ap.add_argument("--st-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    PARTS = args.parts
    if args.st_child is not None:
        st_child(args.st_child)
        return

    n = 1_000_000
    n_snap = 4_000_000 if args.quick else 12_000_000
    rounds = args.rounds or (3 if args.quick else 7)
    if args.quick:
        n = 500_000
    # The scale part's net times must dwarf start-up and the run-to-run noise: 1M words took
    # 0.4 s net at p=1 on a quiet machine, where two independent processes showed only 1.45x.
    n_scale = args.words or (1_000_000 if args.quick else 4_000_000)
    if args.pyspy:
        pyspy_workers(args.pyspy, 4 * n, args.worker_gc, args.pyspy_args.split())
        return
    parts = args.only or ["scale", "wire", "snap"]
    print(
        f"malstrom distributed benchmark: python {sys.version.split()[0]}, "
        f"{'quick' if args.quick else 'full'} mode, {rounds} rounds, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    t0 = time.perf_counter()
    if "scale" in parts:
        expected(n_scale, PARTS)  # computed once, outside any timed region
        bench_scale(n_scale, rounds, args.worker_gc)
    if "wire" in parts:
        bench_wire(n)
    if "cpu" in parts:
        n_cpu = 4 * n
        expected(n_cpu, PARTS)
        bench_cpu(n_cpu // (1 + args.work // 25), rounds, args.work)
    if "inproc" in parts:
        expected(4 * n, PARTS)
        bench_inproc(4 * n, rounds)
    if "snap" in parts:
        expected(n_snap, PARTS)
        bench_snap(n_snap, args.rounds or (3 if args.quick else 5), args.worker_gc)
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; load average at end "
        f"{os.getloadavg()[0]:.2f} (other processes on the machine skew multi-process numbers)"
    )


if __name__ == "__main__":
    main()
