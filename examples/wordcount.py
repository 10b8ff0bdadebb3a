"""The main demo job: a resumable word count over text files, on local worker processes.

Reads every ``*.txt`` file in an input directory (one source part per file, spread over the
workers), splits lines into words, moves each word to the worker that owns it, keeps a running
count per word in keyed state and writes every update to ``updates.txt``; at the end of the
input each word's total goes to ``totals.txt``. Both files are exactly-once FileSinks.
Snapshots go to local disk every ``--snapshot-interval`` seconds: kill the job at any moment
(even with SIGKILL) and run it again; it resumes from the last committed snapshot and every
word is still counted exactly once. At the end it prints the ten most frequent words.

    python examples/wordcount.py [--workdir DIR] [--workers N] [--fresh]
"""

from __future__ import annotations

import argparse
import functools
import random
import shutil
import time
from pathlib import Path
from typing import Any

from malstrom import MAX, MultiProcessRuntime, StatefulLogic, StreamProvider
from malstrom.sinks import FileSink
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


class FinalCounts(StatefulLogic[str, str, int, str]):
    """Counts per word; at the end of the stream emits each word's total once."""

    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + 1

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for word, count in states.items():
                output.emit(f"{word} {count}", key=word)


def build(provider: StreamProvider, workdir: str) -> None:
    """The dataflow (module level, so worker processes can import it)."""
    work = Path(workdir)
    words = (
        provider.new_stream()
        .source("lines", FileSource(str(work / "input" / "*.txt")))
        .flat_map("split", str.split)
        .key_distribute("by-word", lambda w: w)
    )
    updates, totals = words.cloned("fan-out", 2)
    (
        updates.stateful_map(
            "running-count", lambda k, v, s: (f"{k} {s + 1}", s + 1), initial=int
        ).sink("updates-file", FileSink(work / "updates.txt"))
    )
    totals.stateful_op("totals", FinalCounts()).sink("totals-file", FileSink(work / "totals.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo-output", type=Path)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier runs' snapshots")
    parser.add_argument("--snapshot-interval", type=float, default=0.2)
    args = parser.parse_args()

    work: Path = args.workdir.resolve()
    if args.fresh:
        shutil.rmtree(work / "snapshots", ignore_errors=True)
        for name in ("updates.txt", "totals.txt"):
            (work / name).unlink(missing_ok=True)
    make_corpus(work / "input")
    persistence = LocalDiskPersistence(work / "snapshots")
    resumed_from = persistence.last_committed()
    runtime = MultiProcessRuntime(
        functools.partial(build, workdir=str(work)),
        parallelism=args.workers,
        persistence=persistence,
        snapshot_interval=args.snapshot_interval,
    )
    start = time.perf_counter()
    runtime.execute()
    elapsed = time.perf_counter() - start
    if resumed_from is not None:
        print(f"resumed from snapshot version {resumed_from}")
    counts = []
    for line in (work / "totals.txt").read_text().splitlines():
        word, count = line.rsplit(" ", 1)
        counts.append((word, int(count)))
    counts.sort(key=lambda wc: (-wc[1], wc[0]))
    total = sum(c for _, c in counts)
    print(
        f"counted {total:,} words ({len(counts)} distinct) on {args.workers} worker processes "
        f"in {elapsed:.2f}s; top ten:"
    )
    for word, count in counts[:10]:
        print(f"  {word:<12} {count:>8,}")
    print(f"every update is in {work / 'updates.txt'}; snapshots in {work / 'snapshots'}")


if __name__ == "__main__":
    main()
