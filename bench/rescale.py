#!/usr/bin/env python
"""Live rescale benchmark: a keyed job with 100,000 keys rescaled 2 -> 3 -> 2 while it runs,
against stop-with-snapshot-and-restart.

    .venv/bin/python bench/rescale.py              # full: 100,000 keys, 3 rounds (~1 min)
    .venv/bin/python bench/rescale.py --quick      # 20,000 keys, shorter phases, 1 round (~17 s)
    .venv/bin/python bench/rescale.py --rate 100000 --rounds 5 --only rescale
    .venv/bin/python bench/rescale.py --tick 0     # parts release records at every poll
    .venv/bin/python bench/rescale.py --timeline   # 0.25-s buckets around every event, every round

The job (every round builds it fresh, ``max_restarts=0``, so a failure cannot hide as a slow run):

    partitioned stateful source (16 parts) -> key_distribute -> stateful_map(running count)
        -> observing sink

- Source: part ``p``'s record ``i`` has the key ``(i * parts + p) % keys`` (ints), so the parts
  together go round-robin over all keys. Each part is throttled to ``rate / parts`` records/s
  (``--rate``, default 150,000 in all) against a shared wall-clock origin ``t0`` (nothing before
  ``t0``; a part that was paused, e.g. while it moved to another worker or while the job was
  down, catches up afterwards, as a source with a backlog would). A part releases what is due
  every ``--tick`` (5 ms; the parts' moments are staggered over the tick), like a producer
  with a 5-ms linger: at every poll, batches would be ~3 records and per-batch costs would
  dominate. Its state is its position. ``t0`` and, at the end, the final
  position (the same for every part) are given to the parts through a small control file they
  re-read every 50 ms, so the job runs as long as the benchmark wants and then ends by itself.
- Sink: per output batch, it notes ``(time.time(), outputs of unmoved keys, outputs of moved
  keys)`` (16 bytes) and, per key, the last running count it output. Both go into memory-mapped
  files of its own (one set per worker process): worker processes end with ``os._exit`` (a
  removed worker, a stopped job), so an in-process buffer could lose its tail; a store into a
  shared mapping is in the page cache at once and costs no system call. The cost per batch
  and per record is the same in every phase.
- "Moved" keys are those whose owner ``rendezvous_select(key, [0, 1])`` differs from
  ``rendezvous_select(key, [0, 1, 2])`` (about a third): they move to worker 2 in 2 -> 3 and
  back in 3 -> 2 (the script checks that they are exactly worker 2's keys). All other keys are
  "unmoved": they never change worker, and a live rescale should not stop them.

Rescale run: start at 2 workers, write ``t0`` once the job runs, ``--warm`` s (3) steady state,
``handle.rescale(3)``, ``--phase`` s (3), ``handle.rescale(2)``, ``--phase`` s, then end the
source and wait for the job to complete. Measured, per rescale:

1. the wall time of the blocking ``rescale()`` call, and the coordinator's view of it: a thread
   polls ``handle.status()["phase"]`` every ~1 ms during the call (joining = new processes start
   and build; rescaling = keys and source parts move);
2. the longest gap between consecutive sink observations holding outputs of unmoved keys
   (merged over all workers): "during" = the longest gap that overlaps the ``rescale()`` call,
   "steady" = the longest in the 2 s before the call. Target: during <= 3x steady. The same for
   moved keys during the call (they are held while their state moves);
3. outputs/s (all keys) over the 2 s before the call, during the call, the lowest 0.25-s bucket
   from the call to 0.5 s after it, and the first second after it; and the lag: records the
   source had offered (``rate * (t - t0)``) minus outputs so far, in ms of input, at each sink
   observation: its max in the 2 s before vs from the call to 1 s after, and when it is back
   at the steady max ("caught up", seconds after the call returned).

Restart run (the comparison): the same job with ``LocalDiskPersistence`` in a temp dir (no
periodic snapshots): 2 workers, ``--warm`` s, ``handle.stop()`` (final snapshot, workers exit),
then at once ``MultiProcessRuntime(..., parallelism=3).start()`` on the same persistence,
``--phase`` s, end. Downtime = first sink observation after the restart minus the last one
before the stop (every key stops, so it is also the unmoved-key gap). Also: the ``stop()`` call,
start -> coordinator running, and the same throughput and lag figures.

Correctness, every run: the final position ``E`` of every part gives the expected count of
every key (the global indices ``i * parts + p`` cover ``0 .. E * parts - 1`` exactly once). Per
key, the largest running count any sink output must equal it (a key whose state were split or
lost restarts its count; a lost or doubly applied record changes it), and the sinks' total
output count must be ``E * parts`` (each record yields one output; a duplicate or lost output
changes it). A wrong result, a restart or a full observation file aborts the benchmark.

The machine has 2 CPUs that may be shared with other work (the load average is printed):
numbers are noisy, the script states the targets and never asserts wall-clock limits.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import mmap
import os
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

# gRPC's C core logs a benign INFO line ("Got goaway") when a data stream ends at shutdown.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

_HERE = Path(__file__).resolve().parent
_SRC = _HERE.parent / "src"
for _p in (str(_SRC), str(_HERE)):
    if Path(_p).is_dir() and _p not in sys.path:
        sys.path.insert(0, _p)

from core import running_count  # noqa: E402

from malstrom import (  # noqa: E402
    MultiProcessRuntime,
    StatefulSource,
    StatelessSink,
    StreamProvider,
    rendezvous_select,
)
from malstrom.snapshot import LocalDiskPersistence  # noqa: E402

KEYS = 100_000
QUICK_KEYS = 20_000
PARTS = 16  # rendezvous_select puts parts 0-15 8:8 on workers {0, 1}
RATE = 150_000  # records/s offered, all parts together
GAP_TARGET = 3.0  # unmoved-key gap during a rescale <= 3x the steady-state gap
CTL_EVERY = 0.05  # s between control-file reads of a part
OBS = struct.Struct("<dii")  # time.time(), outputs of unmoved keys, outputs of moved keys
OBS_CAP = 1 << 22  # observations per sink file (64 MiB sparse file)
TICK = 0.005  # s between a part's releases (--tick)
STEADY = 2.0  # s before an event that count as steady state
TIMEOUT = 180.0  # s for any blocking call on a job


# ----------------------------------------------------------------------------------------------
# Source, sink and build function (module level: the worker processes import them).
# ----------------------------------------------------------------------------------------------
def key_of(v: int) -> int:
    return v


def read_ctl(path: str) -> tuple[float | None, int | None]:
    """(t0, end position) from the control file; None where not (yet) given."""
    try:
        fields = Path(path).read_text().split()
    except FileNotFoundError:
        return None, None
    t0 = float(fields[0]) if fields else None
    end = int(fields[1]) if len(fields) > 1 else None
    return t0, end


def write_ctl(path: str, t0: float, end: int | None = None) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(f"{t0!r}" if end is None else f"{t0!r} {end}")
    os.replace(tmp, path)


class GenPart:
    """One part: record ``i`` is key ``(i * parts + p) % keys``, throttled against ``t0``."""

    __slots__ = (
        "ctl",
        "end",
        "keys",
        "next_check",
        "p",
        "parts",
        "phase",
        "pos",
        "rate",
        "t0",
        "tick",
    )

    def __init__(
        self, p: int, parts: int, keys: int, rate: float, tick: float, ctl: str, pos: int
    ) -> None:
        self.p, self.parts, self.keys = p, parts, keys
        self.rate = rate  # records/s of this part
        self.tick = tick  # release what is due every ``tick`` s (0: at every poll)
        self.phase = tick * p / parts  # parts release at staggered moments
        self.ctl = ctl
        self.pos = pos
        self.t0: float | None = None
        self.end: int | None = None
        self.next_check = 0.0

    def _check(self, now: float) -> None:
        self.next_check = now + CTL_EVERY
        t0, end = read_ctl(self.ctl)
        self.t0 = t0
        if end is not None:
            if self.pos > end:  # the end came too late: expected counts would be wrong
                raise RuntimeError(f"part {self.p} is at {self.pos}, past the end {end}")
            self.end = end

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        now = time.time()
        if self.end is None and now >= self.next_check:
            self._check(now)
        if self.t0 is None:
            return []
        elapsed = now - self.t0
        tick = self.tick
        if tick:
            elapsed = ((elapsed - self.phase) // tick) * tick + self.phase
        due = int(self.rate * elapsed)
        if self.end is not None and due > self.end:
            due = self.end
        start = self.pos
        k = min(n, due - start)
        if k <= 0:
            return []
        self.pos = start + k
        parts, keys = self.parts, self.keys
        first = start * parts + self.p
        ks = [g % keys for g in range(first, first + k * parts, parts)]
        return list(zip(ks, range(start, start + k), strict=True))

    def poll(self) -> tuple[int, int] | None:
        items = self.poll_batch(1)
        return items[0] if items else None

    def is_finished(self) -> bool:
        return self.end is not None and self.pos >= self.end

    def snapshot(self) -> object:
        return self.pos

    def collect(self) -> object:
        return self.pos


class GenSource:
    """StatefulSourceImpl: ``parts`` throttled parts over ``keys`` keys, ``rate`` records/s."""

    def __init__(self, keys: int, parts: int, rate: float, tick: float, ctl: str) -> None:
        self.keys, self.parts, self.rate, self.tick, self.ctl = keys, parts, rate, tick, ctl

    def list_parts(self) -> list[int]:
        return list(range(self.parts))

    def build_part(self, part: int, state: object | None) -> GenPart:
        pos = int(state or 0)  # type: ignore[call-overload]
        return GenPart(
            part, self.parts, self.keys, self.rate / self.parts, self.tick, self.ctl, pos
        )


def _mapped(path: str, size: int) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)  # sparse: pages are allocated as they are written
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class ObsSink:
    """Per batch: (time, unmoved outputs, moved outputs); per key: the last count output.

    Opened on its first batch, in the worker process (the parent builds the graph too)."""

    def __init__(self, outdir: str, moved: bytes) -> None:
        self.outdir = outdir
        self.moved = moved  # moved[key] == 1: the key changes owner in 2 <-> 3
        self.obs: mmap.mmap | None = None
        self.off = 0
        self.cap = OBS_CAP * OBS.size
        self.last: Any = None

    def _open(self) -> None:
        tag = f"{os.getpid()}-{id(self):x}"
        self.obs = _mapped(os.path.join(self.outdir, f"obs-{tag}"), self.cap)
        last = _mapped(os.path.join(self.outdir, f"last-{tag}"), 4 * len(self.moved))
        self.last = memoryview(last).cast("i")

    def sink(self, record: Any) -> None:
        self._observe([record.key], [record.value])

    def sink_batch(self, records: Any) -> None:
        self._observe(records.keys, records.values)

    def _observe(self, keys: Any, values: Any) -> None:
        now = time.time()
        if self.obs is None:
            self._open()
        n_moved = sum(map(self.moved.__getitem__, keys))
        off = self.off
        if off < self.cap:  # full: the parent sees it and aborts
            OBS.pack_into(self.obs, off, now, len(values) - n_moved, n_moved)  # type: ignore[arg-type]
            self.off = off + OBS.size
        last = self.last
        for k, c in zip(keys, values):
            last[k] = c


def build(
    p: StreamProvider,
    *,
    keys: int,
    parts: int,
    rate: float,
    tick: float,
    ctl: str,
    outdir: str,
    moved: bytes,
) -> None:
    """The benchmark job (``functools.partial`` it)."""
    (
        p.new_stream()
        .source("gen", StatefulSource(GenSource(keys, parts, rate, tick, ctl)))
        .key_distribute("by_key", key_of)
        .stateful_map("count", running_count, initial=int)
        .sink("obs", StatelessSink(ObsSink(outdir, moved)))
    )


# ----------------------------------------------------------------------------------------------
# Reading what the sinks saw, and checking it
# ----------------------------------------------------------------------------------------------
@functools.cache
def moved_flags(keys: int) -> bytes:
    """moved[k] == 1: key k's owner differs between workers [0, 1] and [0, 1, 2] (so it moves
    in 2->3 and back in 3->2; the relation is symmetric)."""
    sel = rendezvous_select
    moved = bytes(sel(k, [0, 1]) != sel(k, [0, 1, 2]) for k in range(keys))
    # Rendezvous hashing moves exactly the keys the added (removed) worker 2 owns.
    if moved != bytes(sel(k, [0, 1, 2]) == 2 for k in range(keys)):
        raise SystemExit("keys that move are not exactly worker 2's: gap figures would be wrong")
    return moved


class Obs:
    """Every sink observation of a run, merged over workers and sorted by time."""

    def __init__(self, outdir: str) -> None:
        rows: list[tuple[float, int, int]] = []
        self.files = 0
        for entry in os.scandir(outdir):
            if not entry.name.startswith("obs-"):
                continue
            self.files += 1
            n = 0
            with open(entry.path, "rb") as f:
                while chunk := f.read(OBS.size * 65536):
                    done = False
                    for row in OBS.iter_unpack(chunk):
                        if row[0] == 0.0:
                            done = True
                            break
                        rows.append(row)
                        n += 1
                    if done:
                        break
            if n >= OBS_CAP:
                raise SystemExit(f"observation file {entry.name} is full ({n:,}): raise OBS_CAP")
        rows.sort()
        self.t = [r[0] for r in rows]
        self.u = [r[1] for r in rows]
        self.m = [r[2] for r in rows]
        self.cum = list(accumulate(u + m for _, u, m in rows))
        self.t_u = [r[0] for r in rows if r[1]]  # observations with unmoved-key outputs
        self.t_m = [r[0] for r in rows if r[2]]

    @property
    def total(self) -> int:
        return self.cum[-1] if self.cum else 0

    def count(self, lo: float, hi: float) -> int:
        """Outputs observed in [lo, hi)."""
        i, j = bisect.bisect_left(self.t, lo), bisect.bisect_left(self.t, hi)
        return (self.cum[j - 1] if j else 0) - (self.cum[i - 1] if i else 0)

    def split(self, lo: float, hi: float) -> tuple[int, int]:
        """(unmoved, moved) outputs observed in [lo, hi)."""
        i, j = bisect.bisect_left(self.t, lo), bisect.bisect_left(self.t, hi)
        return sum(self.u[i:j]), sum(self.m[i:j])

    def rate(self, lo: float, hi: float) -> float:
        return self.count(lo, hi) / (hi - lo) if hi > lo else float("nan")

    def min_bucket_rate(self, lo: float, hi: float, width: float = 0.25) -> float:
        rates = []
        t = lo
        while t + width <= hi + 1e-9:
            rates.append(self.rate(t, t + width))
            t += width
        return min(rates) if rates else float("nan")

    def last_before(self, t: float) -> float:
        i = bisect.bisect_left(self.t, t)
        return self.t[i - 1] if i else float("nan")

    def first_after(self, t: float) -> float:
        i = bisect.bisect_right(self.t, t)
        return self.t[i] if i < len(self.t) else float("nan")

    def lag_ms(self, t0: float, rate: float, limit: int) -> list[float]:
        """Per observation: records offered by then minus outputs so far, in ms of input."""
        return [(min(rate * (t - t0), limit) - c) / rate * 1000 for t, c in zip(self.t, self.cum)]


def max_gap(times: list[float], lo: float, hi: float) -> tuple[float, float]:
    """The longest interval between consecutive ``times`` that overlaps [lo, hi]:
    (length, start)."""
    i = max(bisect.bisect_left(times, lo) - 1, 0)
    best, at = 0.0, float("nan")
    while i + 1 < len(times) and times[i] <= hi:
        if times[i + 1] - times[i] > best:
            best, at = times[i + 1] - times[i], times[i]
        i += 1
    return best, at


def check(outdir: str, obs: Obs, keys: int, parts: int, end: int, label: str) -> None:
    """Every key's largest running count == its records; outputs == records. Else abort."""
    total = end * parts
    want = [total // keys + (1 if k < total % keys else 0) for k in range(keys)]
    got = [0] * keys
    files = 0
    for entry in os.scandir(outdir):
        if entry.name.startswith("last-"):
            files += 1
            a = array("i", Path(entry.path).read_bytes())
            got = list(map(max, got, a))
    bad = [k for k in range(keys) if got[k] != want[k]]
    if bad or obs.total != total:
        ex = ", ".join(f"key {k}: {got[k]} (want {want[k]})" for k in bad[:5])
        raise SystemExit(
            f"{label}: WRONG RESULT: {len(bad):,} keys with a wrong final count ({ex}); "
            f"{obs.total:,} outputs observed, {total:,} records generated "
            f"({files} sink files)"
        )


# ----------------------------------------------------------------------------------------------
# Running jobs
# ----------------------------------------------------------------------------------------------
class PhaseWatch(threading.Thread):
    """Polls the coordinator's phase (~1 ms) and notes every change with its time."""

    def __init__(self, handle: Any) -> None:
        super().__init__(name="phase-watch", daemon=True)
        self.handle = handle
        self.events: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        last = None
        while True:
            try:
                phase = self.handle.status().get("phase")
            except RuntimeError:  # a dict resized under status(): try again
                phase = last
            if phase != last:
                self.events.append((time.time(), str(phase)))
                last = phase
            if self.halt.wait(0.001):
                return

    def first(self, phase: str, after: float = 0.0) -> float | None:
        for t, p in self.events:
            if p == phase and t >= after:
                return t
        return None


def wait_running(handle: Any) -> float:
    deadline = time.monotonic() + TIMEOUT
    while handle.status().get("phase") != "running":
        if not handle.running:
            handle.wait(0)  # raises JobFailed with the cause
            raise SystemExit(f"job ended before it ran: {handle.status()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"job not running after {TIMEOUT:g} s: {handle.status()}")
        time.sleep(0.002)
    return time.time()


@dataclass(frozen=True)
class Config:
    keys: int
    parts: int
    rate: float  # records/s, all parts together
    tick: float  # s between a part's releases (0: release at every poll)
    warm: float  # s of steady state before the first event
    phase: float  # s after each event


class Run:
    """One job run in a fresh temp dir (control file, sink files, snapshots)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.keys, self.parts, self.rate = cfg.keys, cfg.parts, cfg.rate
        self.tmp = tempfile.mkdtemp(prefix="malstrom-rescale-")
        self.ctl = os.path.join(self.tmp, "ctl")
        self.outdir = os.path.join(self.tmp, "out")
        os.mkdir(self.outdir)
        self.build = functools.partial(
            build,
            keys=cfg.keys,
            parts=cfg.parts,
            rate=cfg.rate,
            tick=cfg.tick,
            ctl=self.ctl,
            outdir=self.outdir,
            moved=moved_flags(cfg.keys),
        )
        self.t0 = 0.0
        self.end = 0
        self.wall = time.time()
        self.cpu = _children_cpu()

    def runtime(self, parallelism: int, persistence: Any = None) -> MultiProcessRuntime:
        return MultiProcessRuntime(
            self.build, parallelism=parallelism, persistence=persistence, max_restarts=0
        )

    def go(self) -> None:
        self.t0 = time.time()
        write_ctl(self.ctl, self.t0)

    def finish(self, handle: Any, label: str) -> Obs:
        """End the source a second from now, wait for the job, read and check the sinks."""
        per_part = self.rate / self.parts
        self.end = int(per_part * (time.time() - self.t0 + 1.0)) + 1
        write_ctl(self.ctl, self.t0, self.end)
        handle.wait(TIMEOUT)
        st = handle.status()
        if st.get("restarts"):
            raise SystemExit(f"{label}: the job restarted ({st}); numbers would be meaningless")
        self.wall = time.time() - self.wall
        self.cpu = _children_cpu() - self.cpu  # every worker process has been joined
        obs = Obs(self.outdir)
        check(self.outdir, obs, self.keys, self.parts, self.end, label)
        return obs

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(handle: Any) -> dict[int, float]:
    """CPU seconds (user + system) each worker process has used so far, by worker id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for w, pid in handle.status().get("pids", {}).items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[w] = (int(fields[11]) + int(fields[12])) / tick
    return out


def phase_at(events: list[tuple[float, str]], t: float) -> str:
    """The coordinator phase at time ``t`` (from a PhaseWatch's events)."""
    name = "?"
    for te, p in events:
        if te <= t:
            name = p
    return name


def timed_rescale(handle: Any, n: int) -> dict[str, Any]:
    watch = PhaseWatch(handle)
    watch.start()
    time.sleep(0.005)
    call = time.time()
    handle.rescale(n, timeout=TIMEOUT)
    ret = time.time()
    time.sleep(0.02)
    watch.halt.set()
    watch.join()
    joining = watch.first("joining", call)
    rescaling = watch.first("rescaling", call)
    running = watch.first("running", rescaling or call)
    return {
        "call": call,
        "ret": ret,
        "joining_s": (rescaling - joining) if joining and rescaling else None,
        "rescaling_s": (running - rescaling) if rescaling and running else None,
        "events": watch.events,
    }


def event_figures(obs: Obs, lag: list[float], call: float, ret: float) -> dict[str, Any]:
    """Gaps, rates and lag around an event that runs from ``call`` to ``ret``."""
    lo = call - STEADY
    steady_gap = max_gap(obs.t_u, lo, call)[0]
    during_gap, gap_at = max_gap(obs.t_u, call, ret)
    i0, i1 = bisect.bisect_left(obs.t, lo), bisect.bisect_left(obs.t, call)
    i2 = bisect.bisect_left(obs.t, ret + 1.0)
    steady_lag = max(lag[i0:i1], default=float("nan"))
    event_lag = max(lag[i1:i2], default=float("nan"))
    caught = float("nan")
    for i in range(bisect.bisect_left(obs.t, ret), len(obs.t)):
        if lag[i] <= steady_lag:
            caught = obs.t[i] - ret
            break
    return {
        "steady_gap_ms": steady_gap * 1000,
        "during_gap_ms": during_gap * 1000,
        "gap_ratio": during_gap / steady_gap if steady_gap else float("nan"),
        "gap_at": gap_at - call,  # start of the longest unmoved-key gap, s after the call
        "moved_gap_ms": max_gap(obs.t_m, call, ret)[0] * 1000,
        "rate_before": obs.rate(lo, call),
        "rate_during": obs.rate(call, ret),
        "rate_min_bucket": obs.min_bucket_rate(call, ret + 0.5),
        "rate_after": obs.rate(ret, ret + 1.0),
        "steady_lag_ms": steady_lag,
        "event_lag_ms": event_lag,
        "caught_up_s": caught,
    }


def run_rescale(cfg: Config) -> dict[str, Any]:
    run = Run(cfg)
    warm, phase = cfg.warm, cfg.phase
    handle = None
    try:
        handle = run.runtime(2).start()
        started = wait_running(handle)
        run.go()
        time.sleep(max(warm - STEADY, 0.0))
        cpu0, t_cpu = proc_cpu(handle), time.time()
        time.sleep(min(warm, STEADY))
        cpu1, t_cpu = proc_cpu(handle), time.time() - t_cpu
        up = timed_rescale(handle, 3)
        workers_up = handle.status()["workers"]
        time.sleep(phase)
        down = timed_rescale(handle, 2)
        workers_down = handle.status()["workers"]
        time.sleep(phase)
        if workers_up != [0, 1, 2] or workers_down != [0, 1]:
            raise SystemExit(f"rescale left workers {workers_up} then {workers_down}")
        obs = run.finish(handle, "rescale run")
    finally:
        if handle is not None and handle.running:
            handle.kill()
        run.close()
    lag = obs.lag_ms(run.t0, cfg.rate, run.end * cfg.parts)
    out: dict[str, Any] = {"t0": run.t0, "started": started, "obs": obs, "lag": lag}
    out["cpu"], out["wall"] = run.cpu, run.wall
    out["steady_cpu"] = {w: (cpu1[w] - cpu0[w]) / t_cpu for w in cpu1 if w in cpu0}
    for name, ev in (("up", up), ("down", down)):
        out[name] = {**ev, **event_figures(obs, lag, ev["call"], ev["ret"])}
        out[name]["call_s"] = ev["ret"] - ev["call"]
    return out


def run_restart(cfg: Config) -> dict[str, Any]:
    run = Run(cfg)
    warm, phase = cfg.warm, cfg.phase
    persistence = LocalDiskPersistence(os.path.join(run.tmp, "snap"))
    h2 = h3 = None
    try:
        h2 = run.runtime(2, persistence).start()
        wait_running(h2)
        run.go()
        time.sleep(warm)
        stop_call = time.time()
        h2.stop(TIMEOUT)
        stop_ret = time.time()
        h3 = run.runtime(3, persistence).start()
        running = wait_running(h3)
        if h3.status()["workers"] != [0, 1, 2]:
            raise SystemExit(f"restart runs on workers {h3.status()['workers']}")
        time.sleep(phase)
        obs = run.finish(h3, "restart run")
    finally:
        for h in (h2, h3):
            if h is not None and h.running:
                h.kill()
        run.close()
    lag = obs.lag_ms(run.t0, cfg.rate, run.end * cfg.parts)
    last = obs.last_before(stop_ret)
    first = obs.first_after(stop_ret)
    fig = event_figures(obs, lag, stop_call, first)
    fig.update(
        call=stop_call,
        ret=first,
        call_s=first - stop_call,
        stop_s=stop_ret - stop_call,
        start_running_s=running - stop_ret,
        running_first_s=first - running,
        downtime_s=first - last,
        events=[(stop_ret, "stop() returned, start()"), (running, "running")],
        end="first output",
    )
    return {"t0": run.t0, "obs": obs, "lag": lag, "restart": fig, "cpu": run.cpu, "wall": run.wall}


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------
def med(xs: list[Any]) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


ROWS = [
    # (label, key of the figures, format)
    ("rescale() call / stop->first output, s", "call_s", ".3f"),
    ("  coordinator: joining (spawn+build), s", "joining_s", ".3f"),
    ("  coordinator: rescaling (keys move), s", "rescaling_s", ".3f"),
    ("  stop() call, s", "stop_s", ".3f"),
    ("  start() -> running, s", "start_running_s", ".3f"),
    ("  running -> first output, s", "running_first_s", ".3f"),
    ("downtime: last output -> first output, s", "downtime_s", ".3f"),
    ("unmoved keys: max gap steady (2 s before), ms", "steady_gap_ms", ".1f"),
    ("unmoved keys: max gap during the event, ms", "during_gap_ms", ".1f"),
    (f"  ratio during/steady (target <= {GAP_TARGET:g}x)", "gap_ratio", ".2f"),
    ("moved keys: max gap during the event, ms", "moved_gap_ms", ".1f"),
    ("outputs/s: 2 s before", "rate_before", ",.0f"),
    ("outputs/s: during the event", "rate_during", ",.0f"),
    ("outputs/s: lowest 0.25-s bucket (to +0.5 s)", "rate_min_bucket", ",.0f"),
    ("outputs/s: first 1 s after", "rate_after", ",.0f"),
    ("lag (ms of input): max steady", "steady_lag_ms", ".0f"),
    ("lag (ms of input): max event .. +1 s", "event_lag_ms", ".0f"),
    ("caught up (lag <= steady max), s after", "caught_up_s", ".2f"),
]


def print_table(cols: list[tuple[str, list[dict[str, Any]]]], title: str) -> None:
    width = max(len(r[0]) for r in ROWS)
    print(f"\n{title}")
    hdr = f"{'':<{width}} " + " ".join(f"{name:>16}" for name, _ in cols)
    print(hdr)
    print("-" * len(hdr))
    for label, key, spec in ROWS:
        if not any(key in d for _, ds in cols for d in ds):
            continue
        cells = []
        for _, ds in cols:
            vals = [d.get(key) for d in ds if key in d]
            cells.append(fmt(med(vals), spec) if vals else "")
        print(f"{label:<{width}} " + " ".join(f"{c:>16}" for c in cells))


def print_timeline(res: dict[str, Any], name: str, ev: dict[str, Any], rate: float) -> None:
    obs: Obs = res["obs"]
    lag: list[float] = res["lag"]
    t0 = ev["call"]
    print(
        f"\n  timeline {name} (0.25-s buckets, t relative to the call; outputs/s of unmoved "
        f"and moved keys, max lag; offered {rate:,.0f}/s)"
    )
    marks = [(ev["call"], "call"), *ev.get("events", []), (ev["ret"], ev.get("end", "returned"))]
    t = t0 - 0.75
    while t < ev["ret"] + 1.5:
        u, m = obs.split(t, t + 0.25)
        i, j = bisect.bisect_left(obs.t, t), bisect.bisect_left(obs.t, t + 0.25)
        mx = max(lag[i:j], default=float("nan"))
        notes = ", ".join(f"{p}@{tt - t0:+.3f}" for tt, p in marks if t <= tt < t + 0.25)
        print(
            f"  {t - t0:+6.2f} s  unmoved {u * 4:>9,.0f}  moved {m * 4:>9,.0f}  "
            f"lag {fmt(mx, '>6.0f')} ms  {notes}"
        )
        t += 0.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k keys, shorter phases, 1 round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    ap.add_argument("--keys", type=int, default=None, help=f"keys (default {KEYS:,})")
    ap.add_argument("--rate", type=float, default=RATE, help=f"records/s (default {RATE:,})")
    ap.add_argument("--parts", type=int, default=PARTS, help=f"source parts (default {PARTS})")
    ap.add_argument(
        "--tick",
        type=float,
        default=TICK,
        help=f"s between a part's releases, 0 = at every poll (default {TICK:g})",
    )
    ap.add_argument("--warm", type=float, default=None, help="s before the first event (3)")
    ap.add_argument("--phase", type=float, default=None, help="s after each event (3)")
    ap.add_argument(
        "--only", action="append", choices=["rescale", "restart"], help="run only these parts"
    )
    ap.add_argument("--timeline", action="store_true", help="print timelines of every round")
    args = ap.parse_args()
    keys = args.keys or (QUICK_KEYS if args.quick else KEYS)
    rounds = args.rounds or (1 if args.quick else 3)
    warm = args.warm if args.warm is not None else (2.5 if args.quick else 3.0)
    phase = args.phase if args.phase is not None else (2.0 if args.quick else 3.0)
    parts_run = args.only or ["rescale", "restart"]
    rate = args.rate
    cfg = Config(keys, args.parts, rate, args.tick, warm, phase)
    print(
        f"malstrom rescale benchmark: python {sys.version.split()[0]}, "
        f"{'quick' if args.quick else 'full'} mode, {rounds} round(s), {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}\n"
        f"job: {args.parts} source parts -> key_distribute -> stateful_map(running count) -> "
        f"sink; {keys:,} keys, offered {rate:,.0f} records/s (each part releases every "
        f"{args.tick * 1000:g} ms); warm-up {warm:g} s, "
        f"{phase:g} s after each event"
    )
    moved = moved_flags(keys)
    sel = rendezvous_select
    parts_moving = sum(sel(p, [0, 1]) != sel(p, [0, 1, 2]) for p in range(args.parts))
    print(
        f"keys that move in 2<->3: {sum(moved):,} of {keys:,} ({100 * sum(moved) / keys:.1f}%); "
        f"source parts that move: {parts_moving} of {args.parts}"
    )
    wall = time.perf_counter()
    ups: list[dict[str, Any]] = []
    downs: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    for r in range(rounds):
        if "rescale" in parts_run:
            res = run_rescale(cfg)
            ups.append(res["up"])
            downs.append(res["down"])
            obs = res["obs"]
            steady = obs.rate(res["up"]["call"] - STEADY, res["up"]["call"])
            print(
                f"round {r + 1}: rescale run checked ({obs.total:,} outputs, {obs.files} sink "
                f"files; worker CPU {res['cpu']:.1f} s in {res['wall']:.1f} s wall); steady "
                f"output {steady:,.0f}/s, {obs.total / len(obs.t):.0f} outputs per sink batch"
            )
            for name in ("up", "down"):
                ev = res[name]
                print(
                    f"  {'2->3' if name == 'up' else '3->2'}: call {ev['call_s']:.3f} s; longest "
                    f"unmoved-key gap {ev['during_gap_ms']:.1f} ms from +{ev['gap_at']:.3f} s "
                    f"({phase_at(ev['events'], ev['call'] + ev['gap_at'])}) vs steady "
                    f"{ev['steady_gap_ms']:.1f} ms: {ev['gap_ratio']:.2f}x"
                )
            busy = ", ".join(f"w{w} {100 * c:.0f}%" for w, c in sorted(res["steady_cpu"].items()))
            print(f"  steady state at 2 workers: CPU per worker process (of one core): {busy}")
            if steady < 0.95 * rate:
                print(f"  NOTE: steady-state output {steady:,.0f}/s is below the offered rate")
            if args.timeline or r == rounds - 1:
                print_timeline(res, "2->3", res["up"], rate)
                print_timeline(res, "3->2", res["down"], rate)
        if "restart" in parts_run:
            res = run_restart(cfg)
            f = res["restart"]
            restarts.append(f)
            print(
                f"round {r + 1}: restart run checked ({res['obs'].total:,} outputs, "
                f"{res['obs'].files} sink files; worker CPU {res['cpu']:.1f} s in "
                f"{res['wall']:.1f} s wall); downtime {f['downtime_s']:.3f} s "
                f"(stop {f['stop_s']:.3f} s, start->running {f['start_running_s']:.3f} s, "
                f"running->first output {f['running_first_s']:.3f} s)"
            )
            if args.timeline or r == rounds - 1:
                print_timeline(res, "stop + restart at 3", f, rate)
    cols = [(n, d) for n, d in (("2->3", ups), ("3->2", downs), ("stop+restart@3", restarts)) if d]
    print_table(cols, f"medians over {rounds} round(s) (per-round values above)")
    if ups:
        for name, d in (("2->3", ups), ("3->2", downs)):
            ratios = [x["gap_ratio"] for x in d]
            ok = med(ratios) <= GAP_TARGET
            print(
                f"{name}: unmoved-key gap ratio per round "
                + " ".join(f"{x:.2f}" for x in ratios)
                + f"; median {med(ratios):.2f} vs target <= {GAP_TARGET:g}: "
                + ("met" if ok else "NOT met")
            )
    if ups and restarts:
        worse = max(med([x["during_gap_ms"] for x in d]) for d in (ups, downs))
        print(
            f"longest unmoved-key gap during a live rescale (median, worse direction): "
            f"{worse:.0f} ms vs stop+restart downtime "
            f"{med([x['downtime_s'] for x in restarts]) * 1000:.0f} ms"
        )
    print(
        f"\ntotal {time.perf_counter() - wall:.0f} s; load average at end "
        f"{os.getloadavg()[0]:.2f}. Timings on a 2-CPU machine shared with other work are "
        "noisy: compare within one run, not across runs."
    )


if __name__ == "__main__":
    main()
