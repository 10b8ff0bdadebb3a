#!/usr/bin/env python
"""Kafka benchmark: topic -> keyed count -> topic, on librdkafka's mock cluster (loopback).

    .venv/bin/python bench/kafka.py            # 3 rounds of 200,000 records
    .venv/bin/python bench/kafka.py --quick    # 1 round of 50,000 records

Input: ``--records`` words (10,000 distinct keys, the word as Kafka key and value) in a topic
of 4 partitions. Every run reads all of it and writes, per record, ``str(running count of its
word)`` keyed by the word to a fresh output topic, then ends.

- plain: one process, a plain confluent-kafka loop: ``consume(10000)`` batches from all
  partitions, a dict of counts, ``produce()`` per record, ``flush()`` at the end.
- framework: KafkaSource(bounded) -> key_distribute(word) -> stateful_map(count) -> KafkaSink,
  on SingleThreadRuntime (the "1 worker" figure compared with plain; target ratio >= 0.7),
  and MultiProcessRuntime at 1 and 2 workers (timed from the moment every worker is built,
  its consumer assigned, to the end: process start-up excluded). Sinks at-least-once
  (idempotent producer, flushed at each barrier) and exactly-once (one transaction per part
  per snapshot interval, written at the snapshot's commit), snapshots every second to local
  disk.

Figures are records/s from start to the last record flushed (for exactly-once: committed),
medians over the rounds; the load average is printed at start and end (a shared machine is
noisy). Every framework run's output is checked (record count and the sum of counts).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from malstrom import MultiProcessRuntime, SingleThreadRuntime
from malstrom.connectors.kafka import KafkaSink, KafkaSource, MockCluster
from malstrom.snapshot import LocalDiskPersistence

KEYS = 10_000
PARTITIONS = 4


def fill(bootstrap: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        w = b"w%d" % ((i * 7919) % KEYS)
        while True:
            try:
                p.produce(topic, w, w)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(60) == 0


def plain(bootstrap: str, src: str, dst: str, n: int) -> float:
    t0 = time.perf_counter()
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-plain", "enable.auto.commit": False}
    )
    c.assign([TopicPartition(src, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    counts: dict[bytes, int] = {}
    produce, poll = p.produce, p.poll
    seen = 0
    while seen < n:
        for m in c.consume(10_000, 0.1):
            if m.error() is not None:
                continue
            k = m.key()
            v = counts.get(k, 0) + 1
            counts[k] = v
            while True:
                try:
                    produce(dst, str(v).encode(), k)
                    break
                except BufferError:
                    poll(0.01)
            seen += 1
        poll(0)
    assert p.flush(60) == 0
    elapsed = time.perf_counter() - t0
    c.close()
    return elapsed


def count(m: Any, state: int) -> tuple[str, int]:
    return str(state + 1), state + 1


def build(provider: Any, bootstrap: str, src: str, dst: str, exactly_once: bool) -> None:
    (
        provider.new_stream()
        .source("in", KafkaSource(bootstrap, src, bounded=True, discover_interval=None))
        .key_distribute("by-word", lambda m: m.key)
        .stateful_map("count", lambda k, m, s: count(m, s), initial=int)
        .sink("out", KafkaSink(bootstrap, dst, key=lambda r: r.key, exactly_once=exactly_once))
    )


def run_framework(bootstrap: str, src: str, dst: str, workers: int, eos: bool) -> float:
    job = functools.partial(build, bootstrap=bootstrap, src=src, dst=dst, exactly_once=eos)
    with tempfile.TemporaryDirectory() as snap:
        persistence = LocalDiskPersistence(snap)
        if workers == 0:
            t0 = time.perf_counter()
            SingleThreadRuntime(job, persistence=persistence, snapshot_interval=1.0).execute()
            return time.perf_counter() - t0
        handle = MultiProcessRuntime(
            job, parallelism=workers, persistence=persistence, snapshot_interval=1.0
        ).start()
        while handle.status().get("phase") in ("starting", "building"):
            time.sleep(0.001)
        t0 = time.perf_counter()  # workers built (consumers assigned): start-up excluded
        handle.wait(600)
        return time.perf_counter() - t0


def check(bootstrap: str, dst: str, n: int) -> None:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-check",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    parts = c.list_topics(dst, timeout=10).topics[dst].partitions
    c.assign([TopicPartition(dst, p, OFFSET_BEGINNING) for p in parts])
    got, total, ended = 0, 0, set()
    deadline = time.monotonic() + 120
    while len(ended) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(10_000, 0.5):
            if m.error() is None:
                got += 1
                total += int(m.value())
            else:
                ended.add(m.partition())
    c.close()
    per_key = [n // KEYS + (1 if k < n % KEYS else 0) for k in range(KEYS)]
    want = sum(c * (c + 1) // 2 for c in per_key)
    if (got, total) != (n, want):
        raise SystemExit(f"WRONG OUTPUT in {dst}: {got} records (want {n}), sum {total} ({want})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--records", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n = args.records or (50_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {n} records, {rounds} rounds")
    cases = [
        ("plain loop (1 process)", None, None),
        ("SingleThreadRuntime, at-least-once", 0, False),
        ("SingleThreadRuntime, exactly-once", 0, True),
        ("MultiProcessRuntime(1), exactly-once", 1, True),
        ("MultiProcessRuntime(2), exactly-once", 2, True),
        ("MultiProcessRuntime(2), at-least-once", 2, False),
    ]
    rates: dict[str, list[float]] = {c[0]: [] for c in cases}
    with MockCluster() as mock:
        bs = mock.bootstrap_servers
        src = "bench-in"
        mock.create_topic(src, PARTITIONS)
        fill(bs, src, n)
        out = 0
        for r in range(rounds):
            for name, workers, eos in cases:
                out += 1
                dst = f"bench-out-{out}"
                mock.create_topic(dst, PARTITIONS)
                if workers is None:
                    secs = plain(bs, src, dst, n)
                else:
                    secs = run_framework(bs, src, dst, workers, bool(eos))
                    check(bs, dst, n)
                rates[name].append(n / secs)
                print(f"round {r + 1}: {name}: {n / secs:,.0f} records/s", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["plain loop (1 process)"]
    print("\n| pipeline | records/s (median) | vs plain loop |\n|---|---|---|")
    for name, _, _ in cases:
        print(f"| {name} | {med[name]:,.0f} | {med[name] / base:.2f} |")
    eos, alo = med["SingleThreadRuntime, exactly-once"], med["SingleThreadRuntime, at-least-once"]
    print(f"\nexactly-once / at-least-once (1 worker): {eos / alo:.2f}")
    p2 = med["MultiProcessRuntime(2), exactly-once"]
    p1 = med["MultiProcessRuntime(1), exactly-once"]
    print(f"2 workers / 1 worker (exactly-once, start-up excluded): {p2 / p1:.2f}")


if __name__ == "__main__":
    main()
