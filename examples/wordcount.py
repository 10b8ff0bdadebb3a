"""The main demo job: a resumable word count over text files.

Reads every ``*.txt`` file in an input directory (one source part per file), splits lines
into words, moves each word to the worker that owns it, keeps a running count per word in
keyed state and writes every update to a file sink. Snapshots go to local disk every
``--snapshot-interval`` seconds; kill the job at any moment and run it again: it resumes from
the last committed snapshot, and both the counts and the output file hold every word exactly
once. At the end it prints the ten most frequent words.

    python examples/wordcount.py [--workdir DIR] [--fresh]
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path
from typing import Any

from malstrom import MAX, SingleThreadRuntime, StatefulLogic, StreamProvider
from malstrom.sinks import FileSink, ListSink
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import FileSource

VOCABULARY = [
    "stream",
    "state",
    "snapshot",
    "barrier",
    "epoch",
    "window",
    "key",
    "worker",
    "record",
    "operator",
    "source",
    "sink",
    "event",
    "time",
    "exactly",
    "once",
    "rescale",
    "partition",
    "coordinator",
    "python",
    "batch",
]


def make_corpus(directory: Path, files: int = 4, lines: int = 25_000) -> None:
    """Write a deterministic corpus (Zipf-like word frequencies) if it is not there yet."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    weights = [1 / (i + 1) for i in range(len(VOCABULARY))]
    for f in range(files):
        path = directory / f"part-{f}.txt"
        if path.exists():
            continue
        words = rng.choices(VOCABULARY, weights, k=lines * 8)
        text = "".join(" ".join(words[i : i + 8]) + "\n" for i in range(0, len(words), 8))
        path.write_text(text)


class FinalCounts(StatefulLogic[str, str, int, tuple[str, int]]):
    """Counts per word; at the end of the stream emits each word's total once."""

    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + 1

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for word, count in states.items():
                output.emit((word, count), key=word)


def make_build(inputs: Path, updates: Path, totals: ListSink) -> Any:
    def build(provider: StreamProvider) -> None:
        words = (
            provider.new_stream()
            .source("lines", FileSource(str(inputs / "*.txt")))
            .flat_map("split", str.split)
            .key_distribute("by-word", lambda w: w)
        )
        updates_stream, totals_stream = words.cloned("fan-out", 2)
        (
            updates_stream.stateful_map(
                "running-count", lambda k, v, s: (f"{k} {s + 1}", s + 1), initial=int
            ).sink("updates-file", FileSink(updates))
        )
        totals_stream.stateful_op("totals", FinalCounts()).sink("collect-totals", totals)

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo-output", type=Path)
    parser.add_argument("--fresh", action="store_true", help="forget earlier runs' snapshots")
    parser.add_argument("--snapshot-interval", type=float, default=0.2)
    args = parser.parse_args()

    work: Path = args.workdir
    if args.fresh:
        shutil.rmtree(work / "snapshots", ignore_errors=True)
        (work / "updates.txt").unlink(missing_ok=True)
    make_corpus(work / "input")
    totals = ListSink()
    runtime = SingleThreadRuntime(
        make_build(work / "input", work / "updates.txt", totals),
        persistence=LocalDiskPersistence(work / "snapshots"),
        snapshot_interval=args.snapshot_interval,
    )
    start = time.perf_counter()
    runtime.execute()
    elapsed = time.perf_counter() - start
    if runtime.restored_from is not None:
        print(f"resumed from snapshot version {runtime.restored_from}")
    if not totals.records:
        print("the job had already completed; run with --fresh to count again")
        return
    counts = sorted((r.value for r in totals.records), key=lambda wc: (-wc[1], wc[0]))
    total = sum(c for _, c in counts)
    print(f"counted {total:,} words ({len(counts)} distinct) in {elapsed:.2f}s; top ten:")
    for word, count in counts[:10]:
        print(f"  {word:<12} {count:>8,}")
    print(f"every update is in {work / 'updates.txt'}; snapshots in {work / 'snapshots'}")


if __name__ == "__main__":
    main()
