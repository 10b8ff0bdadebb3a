"""Persistence: store snapshots on disk so a job can resume.

Pass a persistence backend and a snapshot interval to the runtime. Snapshots are consistent
cuts of all state (source positions, keyed state, sink state); only committed versions are
ever restored. Here :class:`~malstrom.snapshot.LocalDiskPersistence` keeps them in a
directory, and the job sums even and odd numbers of 0..100 separately (ending at 2550 and
2500).

The snapshot interval is 10 s, so this short job ends before the first periodic snapshot,
but a job that completes always commits a final snapshot. Run the example again with the
same directory and the job resumes from that final snapshot and completes at once, printing
no records again. (The reference framework used SlateDB here; any backend works the same.)

Usage: ``python examples/persistence_backend.py [SNAPSHOT_DIR]`` (default: a fresh temp dir).
"""

import sys
import tempfile
from pathlib import Path
from typing import Any

from malstrom import SingleThreadRuntime, StreamProvider
from malstrom.sinks import StdOutSink
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import IterSource


def parity(value: int) -> str:
    return "odd" if value % 2 else "even"


def running_sum(_key: Any, value: int, total: int) -> tuple[int, int]:
    total += value
    return total, total


def build(provider: StreamProvider) -> None:
    (
        provider.new_stream()
        .source("iter-source", IterSource(range(101)))
        .key_distribute("key-by-parity", parity)
        .stateful_map("sum", running_sum, initial=int)
        .sink("stdout", StdOutSink())
    )


if __name__ == "__main__":
    snapshot_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    runtime = SingleThreadRuntime(
        build, persistence=LocalDiskPersistence(snapshot_dir), snapshot_interval=10
    )
    runtime.execute()
    if runtime.restored_from is None:
        print(f"completed; snapshots are in {snapshot_dir}")
    else:
        print(f"resumed from snapshot version {runtime.restored_from}: the job was complete")
