"""Failure recovery: a job that crashes resumes from its last committed snapshot.

A stateful source emits the numbers 0..1999 (its state is the next number; it paces itself
to a few thousand numbers a second, like a live feed). ``RunningTotal`` adds them up and
reports progress every 250 numbers and the final count and total at the end of the stream.
The runtime snapshots every 0.05 s to :class:`~malstrom.snapshot.LocalDiskPersistence`.

The ``fail-once`` operator raises an exception after 1000 records, once: it leaves a marker
file so the next run does not fail again. :class:`~malstrom.SingleThreadRuntime` never
restarts by itself; the error ends ``execute()``. Running the job again with the same
persistence resumes from the last committed snapshot: the source part is rebuilt from its
snapshotted position and the total from its snapshotted value. Progress lines printed after
that snapshot in the failed run may be printed again, but every number is added exactly once:
the final line reads ``count=2000 total=1999000``.

Usage: ``python examples/persistence_backend_failing.py [WORK_DIR] [--no-restart]``. By default
the script restarts the job itself (like a supervisor would). With ``--no-restart`` the crash
ends the process with an error; run the same command again to resume. WORK_DIR (default: a
fresh temp dir) holds the snapshots and the marker file.
"""

import functools
import sys
import tempfile
import time
from collections.abc import Hashable, MutableMapping
from pathlib import Path
from typing import Any

from malstrom import (
    MAX,
    JobFailed,
    OperatorContext,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatefulSource,
    StatelessSink,
    StreamProvider,
)
from malstrom.snapshot import LocalDiskPersistence

COUNT = 2000  # numbers 0..COUNT-1
RATE = 4000  # numbers per second the source produces at most
FAIL_AFTER = 1000  # records the first run processes before it fails
DEFAULT_DIR: Path | None = None  # None: a fresh temp dir per invocation


class NumberPartition:
    """Emits ``next``, ``next + 1``, ... up to ``COUNT - 1``; its state is ``next``."""

    def __init__(self, start: int) -> None:
        self.next = start
        self.start = start
        self.started_at = time.monotonic()

    def poll(self) -> tuple[int, int] | None:
        allowed = self.start + int((time.monotonic() - self.started_at) * RATE)
        if self.next >= COUNT or self.next >= allowed:
            return None  # nothing ready yet (poll must never block)
        n = self.next
        self.next += 1
        return n, n

    def is_finished(self) -> bool:
        return self.next >= COUNT

    def snapshot(self) -> int:
        return self.next

    def collect(self) -> int:
        return self.next


class NumberSource:
    def list_parts(self) -> list[Hashable]:
        return ["numbers"]

    def build_part(self, part: Any, state: Any) -> NumberPartition:
        print(f"source part {part!r} built with state {state!r}")
        return NumberPartition(int(state or 0))


class RunningTotal(StatefulLogic[Any, int, tuple[int, int], str]):
    """State per key: ``(count, total)``."""

    def initial_state(self) -> tuple[int, int]:
        return (0, 0)

    def on_data(
        self, record: Record, state: tuple[int, int] | None, output: Output[str]
    ) -> tuple[int, int]:
        count, total = state or (0, 0)
        count, total = count + 1, total + record.value
        if count % 250 == 0:
            output.emit(f"progress: count={count} total={total}")
        return (count, total)

    def on_epoch(
        self, epoch: Any, states: MutableMapping[Any, tuple[int, int]], output: Output[str]
    ) -> None:
        if epoch is MAX:
            for key, (count, total) in states.items():
                output.emit(f"final: count={count} total={total}", key=key)


class FailOnce:
    """Raises after ``FAIL_AFTER`` records, unless the marker file exists (then never)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.seen = 0

    def __call__(self, _record: Record, _ctx: OperatorContext) -> None:
        self.seen += 1
        if self.seen == FAIL_AFTER and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"Oh no! injected failure after {FAIL_AFTER} records")


class LinePrinter:
    def sink(self, record: Record) -> None:
        print(record.value, flush=True)


def build(provider: StreamProvider, work_dir: Path | None = DEFAULT_DIR) -> None:
    marker = Path(work_dir or tempfile.gettempdir()) / "failed-once.marker"
    (
        provider.new_stream()
        .source("numbers", StatefulSource(NumberSource()))
        .inspect("fail-once", FailOnce(marker))
        .key_distribute("one-key", lambda _: "total")
        .stateful_op("running-total", RunningTotal())
        .sink("stdout", StatelessSink(LinePrinter()))
    )


def run(work_dir: Path) -> None:
    runtime = SingleThreadRuntime(
        functools.partial(build, work_dir=work_dir),
        persistence=LocalDiskPersistence(work_dir / "snapshots"),
        snapshot_interval=0.05,
    )
    try:
        runtime.execute()
    finally:
        if runtime.restored_from is not None:
            print(f"(this run resumed from snapshot version {runtime.restored_from})")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    restart = "--no-restart" not in sys.argv[1:]
    work = Path(args[0]) if args else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 4):
        try:
            run(work)
            break
        except JobFailed as e:  # its __cause__ is the OperatorError naming the operator
            print(f"job failed ({e}); restarting from the last committed snapshot")
            if not restart or attempt == 3:
                raise
    print(f"expected: count={COUNT} total={sum(range(COUNT))}")
