#!/usr/bin/env python
"""Core throughput and memory benchmark: malstrom's SingleThreadRuntime vs a plain Python loop.

    .venv/bin/python bench/core.py            # full: 5 rounds, full-size inputs
    .venv/bin/python bench/core.py --quick    # 3 rounds, inputs 1/5 the size
    .venv/bin/python bench/core.py --profile b --profile c   # cProfile one framework run each
    .venv/bin/python bench/core.py --metrics-overhead        # metrics on vs off (target >= 0.95)

Three pipelines run on one worker, each against a plain loop calling the SAME user functions:

  (a) IterSource(ints) -> map(double) -> filter(keep) -> counting sink
  (b) IterSource(words, 10k keys) -> key_distribute(word_key) -> stateful_map(running count)
      -> counting sink
  (c) IterSource((key, event_time)) -> assign_timestamps -> limit_out_of_orderness(BOUND)
      -> on time: key_distribute -> stateful_op(per-key count, emit each record) -> counting sink
      -> late: counting sink

Inputs are generated once, outside the timed region. Each round runs the framework then the
loop (alternating); the reported rec/s are medians over rounds and the ratio is the median of
the per-round ratios framework/loop. rec/s = input records / wall seconds. The framework time
covers ``SingleThreadRuntime(build).execute()`` including the (tiny) graph build and the final
snapshot the runtime always takes at completion.

Memory: pipeline (b) with N distinct keys (1,000,000 full) in fresh subprocesses, peak RSS
(``ru_maxrss``) of the framework run vs the plain-dict loop, raw and minus the RSS of a process
that only generated the input.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parent.parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from malstrom import SingleThreadRuntime, StatefulLogic, StatelessSink, StreamProvider  # noqa: E402
from malstrom.sources import IterSource  # noqa: E402

SEED = 20240601
N_KEYS = 10_000
BOUND = 50  # limit_out_of_orderness bound for (c)
DISORDER = 100  # max backwards jitter of an out-of-order event in (c)
DISORDER_P = 0.10  # fraction of events in (c) that are jittered backwards

TARGETS = {"a": 0.50, "b": 0.35}
MEM_TARGET = 2.0


# ----------------------------------------------------------------------------------------------
# User functions: shared verbatim by the framework pipelines and the plain loops.
# ----------------------------------------------------------------------------------------------
def double(x: int) -> int:
    return x * 2


def keep(x: int) -> bool:
    return x % 3 != 0


def word_key(w: str) -> str:
    return w


def running_count(key: Any, value: Any, state: int) -> tuple[int, int]:
    n = state + 1
    return n, n


def event_ts(v: tuple[str, int]) -> int:
    return v[1]


def event_key(v: tuple[str, int]) -> str:
    return v[0]


class CountLogic(StatefulLogic):
    """Per-key count; emits the key's new count for every record."""

    def initial_state(self) -> int:
        return 0

    def on_data(self, record: Any, state: int, output: Any) -> int:
        state += 1
        output.emit(state)
        return state


class CountSink:
    """A StatelessSink impl that only counts what reaches it."""

    def __init__(self) -> None:
        self.n = 0

    def sink(self, record: Any) -> None:
        self.n += 1

    def sink_batch(self, records: list[Any]) -> None:
        self.n += len(records)


class _LoopOutput:
    """What the plain loop hands to CountLogic.on_data: counts emits, nothing else."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def emit(self, value: Any, key: Any = None, timestamp: Any = None) -> None:
        self.n += 1


# ----------------------------------------------------------------------------------------------
# Inputs (generated once, outside the timed region).
# ----------------------------------------------------------------------------------------------
def key_pool(n: int) -> list[str]:
    return [f"w{i:07d}" for i in range(n)]


def gen_ints(n: int) -> list[int]:
    return list(range(n))


def gen_words(n: int, n_keys: int = N_KEYS) -> list[str]:
    rng = random.Random(SEED + 1)
    return rng.choices(key_pool(n_keys), k=n)


def gen_distinct_words(n: int) -> list[str]:
    rng = random.Random(SEED + 3)
    words = key_pool(n)
    rng.shuffle(words)
    return words


def gen_events(n: int, n_keys: int = N_KEYS) -> list[tuple[str, int]]:
    rng = random.Random(SEED + 2)
    keys = key_pool(n_keys)
    rand, choice, randrange = rng.random, rng.choice, rng.randrange
    out = []
    for i in range(n):
        jitter = randrange(DISORDER) if rand() < DISORDER_P else 0
        out.append((choice(keys), i - jitter))
    return out


# ----------------------------------------------------------------------------------------------
# The pipelines: framework and loop versions. Each returns (seconds, result-for-checking).
# ----------------------------------------------------------------------------------------------
METRICS = {"on": True}
"""Per-operator metrics in the framework runs (on by default, as in the runtimes)."""


def _execute(build: Any) -> float:
    t0 = time.perf_counter()
    SingleThreadRuntime(build, metrics=METRICS["on"]).execute()
    return time.perf_counter() - t0


def fw_a(data: list[int]) -> tuple[float, Any]:
    sink = CountSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("ints", IterSource(data))
            .map("double", double)
            .filter("keep", keep)
            .sink("count", StatelessSink(sink))
        )

    return _execute(build), sink.n


def loop_a(data: list[int]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    n = 0
    for x in data:
        if keep(double(x)):
            n += 1
    return time.perf_counter() - t0, n


def fw_b(words: list[str]) -> tuple[float, Any]:
    sink = CountSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("words", IterSource(words))
            .key_distribute("by_word", word_key)
            .stateful_map("count", running_count, initial=int)
            .sink("out", StatelessSink(sink))
        )

    return _execute(build), sink.n


def loop_b(words: list[str]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    state: dict[str, int] = {}
    get = state.get
    n = 0
    for w in words:
        key = word_key(w)
        s = get(key, 0)
        _out, s = running_count(key, w, s)
        state[key] = s
        n += 1
    return time.perf_counter() - t0, n


def fw_c(events: list[tuple[str, int]]) -> tuple[float, Any]:
    on_sink = CountSink()
    late_sink = CountSink()

    def build(p: StreamProvider) -> None:
        on_time, late = (
            p.new_stream()
            .source("events", IterSource(events))
            .assign_timestamps("ts", event_ts)
            .limit_out_of_orderness("ooo", BOUND)
        )
        (
            on_time.key_distribute("by_key", event_key)
            .stateful_op("count", CountLogic())
            .sink("out", StatelessSink(on_sink))
        )
        late.sink("late", StatelessSink(late_sink))

    return _execute(build), (on_sink.n, late_sink.n)


def loop_c(events: list[tuple[str, int]]) -> tuple[float, Any]:
    logic = CountLogic()
    on_data = logic.on_data
    out = _LoopOutput()
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    get = counts.get
    prev = None  # last epoch: running max timestamp minus BOUND
    late = 0
    for v in events:
        t = event_ts(v)
        if prev is None or t > prev:
            k = event_key(v)
            counts[k] = on_data((k, v, t), get(k, 0), out)
        else:
            late += 1
        c = t - BOUND
        if prev is None or c > prev:
            prev = c
    return time.perf_counter() - t0, (out.n, late)


PIPELINES = {
    "a": ("(a) map->filter->count", fw_a, loop_a),
    "b": ("(b) keyed stateful_map", fw_b, loop_b),
    "c": ("(c) event time + stateful_op", fw_c, loop_c),
}


# ----------------------------------------------------------------------------------------------
# Throughput
# ----------------------------------------------------------------------------------------------
def bench_pipeline(key: str, data: list[Any], rounds: int) -> dict[str, Any]:
    label, fw, loop = PIPELINES[key]
    n = len(data)
    fw_rates, loop_rates, ratios = [], [], []
    for _ in range(rounds):
        gc.collect()
        t_fw, r_fw = fw(data)
        gc.collect()
        t_loop, r_loop = loop(data)
        if r_fw != r_loop:
            raise SystemExit(f"{label}: framework result {r_fw!r} != loop result {r_loop!r}")
        fw_rates.append(n / t_fw)
        loop_rates.append(n / t_loop)
        ratios.append(t_loop / t_fw)
    return {
        "label": label,
        "n": n,
        "fw": statistics.median(fw_rates),
        "loop": statistics.median(loop_rates),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "result": r_fw,
    }


def bench_metrics(key: str, data: list[Any], rounds: int) -> dict[str, Any]:
    """Framework throughput with per-operator metrics on vs off (alternating runs)."""
    label, fw, _ = PIPELINES[key]
    on_rates, off_rates, ratios, cpu_ratios = [], [], [], []
    try:
        for _ in range(rounds):
            times, cpu = {}, {}
            for on in (False, True):
                METRICS["on"] = on
                gc.collect()
                c0 = time.process_time()
                times[on] = fw(data)[0]
                cpu[on] = time.process_time() - c0
            off_rates.append(len(data) / times[False])
            on_rates.append(len(data) / times[True])
            ratios.append(times[False] / times[True])
            cpu_ratios.append(cpu[False] / cpu[True])
    finally:
        METRICS["on"] = True
    return {
        "label": label,
        "on": statistics.median(on_rates),
        "off": statistics.median(off_rates),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios),
    }


def print_metrics_table(rows: list[dict[str, Any]], rounds: int) -> None:
    print(f"\nMetrics overhead, SingleThreadRuntime, median of {rounds} rounds (target >= 0.95)")
    print("on/off: throughput ratio (wall time); cpu: the same from process CPU time, which")
    print("other processes on a shared machine disturb less")
    print(f"{'pipeline':<44} {'off rec/s':>12} {'on rec/s':>12} {'on/off':>7} {'cpu':>6}")
    for r in rows:
        verdict = "ok" if r["ratio"] >= 0.95 else "BELOW TARGET"
        print(
            f"{r['label']:<44} {fmt_rate(r['off']):>12} {fmt_rate(r['on']):>12} "
            f"{r['ratio']:>7.3f} {r['cpu_ratio']:>6.3f} {verdict}  "
            f"rounds: {', '.join(f'{x:.3f}' for x in r['ratios'])}"
        )


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.3f} M"


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    print(
        f"\nThroughput, SingleThreadRuntime (1 worker), median of {rounds} rounds; "
        "rec/s = input records / wall s"
    )
    hdr = (
        f"{'pipeline':<32} {'records':>9} {'framework rec/s':>16} {'loop rec/s':>12} "
        f"{'ratio':>6} {'target':>7}  verdict"
    )
    print(hdr)
    print("-" * len(hdr))
    for key, r in rows:
        tgt = TARGETS.get(key)
        tgt_s = f">={tgt:.2f}" if tgt is not None else "-"
        verdict = "-" if tgt is None else ("PASS" if r["ratio"] >= tgt else "FAIL")
        print(
            f"{r['label']:<32} {r['n']:>9,} {fmt_rate(r['fw']):>16} {fmt_rate(r['loop']):>12} "
            f"{r['ratio']:>6.3f} {tgt_s:>7}  {verdict}"
        )
    print(
        "per-round ratios: "
        + "; ".join(f"({k}) " + " ".join(f"{x:.3f}" for x in r["ratios"]) for k, r in rows)
    )
    for k, r in rows:
        print(f"checked ({k}): framework and loop agree on {r['result']!r}")


# ----------------------------------------------------------------------------------------------
# Memory (each measurement in a fresh subprocess)
# ----------------------------------------------------------------------------------------------
def mem_child(mode: str, n: int) -> None:
    words = gen_distinct_words(n)
    gc.collect()
    result: Any = None
    if mode == "framework":
        _, result = fw_b(words)
    elif mode == "loop":
        _, result = loop_b(words)
    elif mode != "baseline":
        raise SystemExit(f"unknown mem mode {mode!r}")
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"mode": mode, "maxrss_kb": rss_kb, "hwm_kb": _vm_hwm_kb(), "result": result}))


def _vm_hwm_kb() -> int | None:
    """Peak RSS of this process image since exec (Linux /proc), to cross-check ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run_mem_child(mode: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", mode, "--mem-keys", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"memory child {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(n: int, runs: int) -> None:
    # ru_maxrss survives exec: a child's figure is max(its own peak, the parent's peak RSS at
    # spawn time). So this runs first, while this parent is small, and each child also reports
    # VmHWM (its own image's peak since exec) as a cross-check.
    rss: dict[str, list[float]] = {"baseline": [], "framework": [], "loop": []}
    worst_gap = 0.0
    for _ in range(runs):
        for mode in rss:
            out = run_mem_child(mode, n)
            if mode != "baseline" and out["result"] != n:
                raise SystemExit(f"memory child {mode}: counted {out['result']} != {n}")
            rss[mode].append(out["maxrss_kb"] / 1024)
            if out.get("hwm_kb") is not None:
                worst_gap = max(worst_gap, abs(out["maxrss_kb"] - out["hwm_kb"]) / 1024)
    base = statistics.median(rss["baseline"])
    fw = statistics.median(rss["framework"])
    lp = statistics.median(rss["loop"])
    raw_ratio = fw / lp
    net_fw, net_lp = fw - base, lp - base
    net_ratio = net_fw / net_lp if net_lp > 0 else float("inf")
    verdict = "PASS" if net_ratio <= MEM_TARGET else "FAIL"
    print(
        f"\nMemory, pipeline (b) with {n:,} distinct keys, peak RSS (ru_maxrss) of a fresh "
        f"process, median of {runs} run(s)"
    )
    hdr = f"{'process':<34} {'peak RSS MiB':>12} {'minus baseline':>15}"
    print(hdr)
    print("-" * len(hdr))
    print(f"{'baseline (interpreter + input)':<34} {base:>12.1f} {'-':>15}")
    print(f"{'framework (SingleThreadRuntime)':<34} {fw:>12.1f} {net_fw:>15.1f}")
    print(f"{'loop (plain dict state)':<34} {lp:>12.1f} {net_lp:>15.1f}")
    print(
        f"ratio framework/loop: raw {raw_ratio:.2f}x, baseline-subtracted {net_ratio:.2f}x "
        f"(target <= {MEM_TARGET:.1f}x on the baseline-subtracted figure): {verdict}"
    )
    print(
        f"cross-check: ru_maxrss and /proc VmHWM differ by at most {worst_gap:.1f} MiB "
        f"(parent RSS at spawn {_self_rss_mib():.1f} MiB)"
    )


def _self_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Profiling
# ----------------------------------------------------------------------------------------------
def profile(keys: list[str], sizes: dict[str, int], profiler: str) -> None:
    gens = {"a": gen_ints, "b": gen_words, "c": gen_events}
    for key in keys:
        label, fw, _ = PIPELINES[key]
        data = gens[key](sizes[key])
        print(f"\n=== profile {label}, {len(data):,} records ({profiler}) ===")
        gc.collect()
        if profiler == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(interval=0.0005)
            prof.start()
            fw(data)
            prof.stop()
            print(prof.output_text(unicode=False, color=False, show_all=False))
        else:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            fw(data)
            prof.disable()
            stats = pstats.Stats(prof)
            stats.sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, inputs 1/5 the size")
    ap.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    ap.add_argument(
        "--only",
        action="append",
        choices=["a", "b", "c", "mem"],
        help="run only these parts (repeatable)",
    )
    ap.add_argument(
        "--profile",
        action="append",
        choices=["a", "b", "c"],
        help="profile one framework run of these pipelines instead of benchmarking",
    )
    ap.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    ap.add_argument(
        "--metrics-overhead",
        action="store_true",
        help="compare framework runs with per-operator metrics on and off (no loops, no memory)",
    )
    ap.add_argument("--mem-child", help=argparse.SUPPRESS)
    ap.add_argument("--mem-keys", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.mem_child:
        mem_child(args.mem_child, args.mem_keys)
        return

    scale = 5 if args.quick else 1
    sizes = {"a": 2_000_000 // scale, "b": 1_000_000 // scale, "c": 1_000_000 // scale}
    mem_keys = args.mem_keys or 1_000_000 // scale
    rounds = args.rounds or (3 if args.quick else 5)

    if args.profile:
        profile(args.profile, sizes, args.profiler)
        return

    if args.metrics_overhead:
        gens = {"a": gen_ints, "b": gen_words, "c": gen_events}
        print(f"malstrom metrics overhead: python {sys.version.split()[0]}, {rounds} rounds")
        keys = [k for k in (args.only or ["a", "b", "c"]) if k != "mem"]
        rows = [bench_metrics(k, gens[k](sizes[k]), rounds) for k in keys]
        print_metrics_table(rows, rounds)
        return

    parts = args.only or ["a", "b", "c", "mem"]
    print(
        f"malstrom core benchmark: python {sys.version.split()[0]}, "
        f"{'quick' if args.quick else 'full'} mode, {rounds} rounds, pid {os.getpid()}"
    )
    if "mem" in parts:  # first: see bench_memory
        bench_memory(mem_keys, 1 if args.quick else 3)
    gens = {"a": gen_ints, "b": gen_words, "c": gen_events}
    rows = []
    for key in ("a", "b", "c"):
        if key not in parts:
            continue
        data = gens[key](sizes[key])
        rows.append((key, bench_pipeline(key, data, rounds)))
        del data
    if rows:
        print_table(rows, rounds)


if __name__ == "__main__":
    main()
