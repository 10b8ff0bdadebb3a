"""StdInSource (a reader thread: the worker loop never waits for input) and PollingSource
(a poll grid whose next slot survives restarts)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with

from malstrom import OperatorError, SingleThreadRuntime
from malstrom.runtime._multi import JobFailed, MultiProcessRuntime
from malstrom.sinks import ListSink
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import PollingSource, StdInSource

pytestmark = pytest.mark.timeout(120)

STDIN_JOB = """
import sys
from malstrom import SingleThreadRuntime
from malstrom.sinks import FileSink
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import StdInSource

def build(p):
    s = p.new_stream().source("in", StdInSource()).map("up", str.upper)
    s.sink("out", FileSink(sys.argv[1]))

SingleThreadRuntime(
    build, persistence=LocalDiskPersistence(sys.argv[2]), snapshot_interval=0.05
).execute()
"""


def last_version(path: Path) -> int:
    versions = LocalDiskPersistence(path).committed_versions()
    return versions[-1] if versions else -1


def test_stdin_lines_become_records_and_the_loop_runs_while_input_is_silent(
    tmp_path: Path,
) -> None:
    script = tmp_path / "job.py"
    script.write_text(STDIN_JOB)
    out, snap = tmp_path / "out.txt", tmp_path / "snap"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(snap)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"look\r\nma\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while last_version(snap) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # No more input for a while: snapshots keep coming (the worker loop is not stuck in a
    # read), and the records read so far reached the sink.
    seen = last_version(snap)
    while last_version(snap) < seen + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last_version(snap) >= seen + 3
    assert out.read_text() == "LOOK\nMA\n"
    proc.stdin.write(b"no newline at the end")
    proc.stdin.close()
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    assert out.read_text() == "LOOK\nMA\nNO NEWLINE AT THE END\n"


def test_stdin_source_reads_a_given_stream_in_process() -> None:
    import os

    r, w = os.pipe()
    sink = ListSink()

    def build(p: Any) -> None:
        p.new_stream().source("in", StdInSource(stream=os.fdopen(r, "rb"))).sink("out", sink)

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(3):
                f.write(f"line {i}\n".encode())
                f.flush()
                time.sleep(0.05)

    t = threading.Thread(target=feed)
    t.start()
    SingleThreadRuntime(build).execute()
    t.join()
    assert sink.values == ["line 0", "line 1", "line 2"]
    assert [r.timestamp for r in sink.records] == [0, 1, 2]


def stdin_mp_job(provider: Any) -> None:
    from malstrom.sinks import StdOutSink

    provider.new_stream().source("in", StdInSource()).sink("out", StdOutSink())


def test_stdin_source_in_a_worker_process_is_a_clear_error() -> None:
    rt = MultiProcessRuntime(stdin_mp_job, parallelism=1, max_restarts=0)
    with pytest.raises(JobFailed, match="has none: use SingleThreadRuntime"):
        rt.execute()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def drain(part: Any, clock: Clock, until: float, step: float = 0.25) -> list[tuple[Any, int]]:
    """Advance the fake clock to ``until`` in steps, collecting what the part emits."""
    out: list[tuple[Any, int]] = []
    while True:
        for _ in range(200):  # let a submitted call finish on its thread
            values, stamps = part._poll_columns(100)
            out += list(zip(values, stamps))
            if part._call is None:
                break
            time.sleep(0.001)
        if clock.t >= until:
            return out
        clock.t = min(until, clock.t + step)


def test_polling_follows_its_grid_and_none_is_no_record() -> None:
    clock = Clock(1000.0)
    calls: list[float] = []

    def fn() -> Any:
        calls.append(clock.t)
        return None if len(calls) == 2 else len(calls)

    src = PollingSource(fn, 10, clock=clock)
    part = src.build_part(None, None)
    got = drain(part, clock, 1035.0)
    assert calls == [1000.0, 1010.0, 1020.0, 1030.0]
    assert got == [(1, 1_000_000), (3, 1_020_000), (4, 1_030_000)]  # slot times, in ms


def test_polling_restore_never_polls_early_and_never_loses_a_poll() -> None:
    clock = Clock(0.0)
    calls: list[float] = []
    src = PollingSource(lambda: calls.append(clock.t) or clock.t, 10, clock=clock)
    part = src.build_part(None, None)
    drain(part, clock, 12.0)
    state = part.snapshot()
    assert calls == [0.0, 10.0] and state == {"due": 20.0, "polls": 2}
    # Restart soon after: the next poll waits for its slot.
    calls.clear()
    clock.t = 13.0
    part = src.build_part(None, state)
    drain(part, clock, 19.75)
    assert calls == []
    drain(part, clock, 20.0)
    assert calls == [20.0]
    # Down for a long time: one poll at once (not one per missed slot), then back on grid.
    calls.clear()
    clock.t = 95.0
    part = src.build_part(None, state)
    got = drain(part, clock, 101.0)
    assert calls == [95.0, 100.0]
    assert [ts for _, ts in got] == [20_000, 90_000 + 10_000]


def test_polling_a_call_in_flight_at_a_snapshot_is_repeated_after_restore() -> None:
    clock = Clock(0.0)
    release = threading.Event()
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        release.wait(5)
        return len(calls)

    src = PollingSource(fn, 10, clock=clock)
    part = src.build_part(None, None)
    assert part._poll_columns(10) == ([], [])  # submitted, running
    state = part.snapshot()
    assert state == {"due": 0.0, "polls": 0}  # the slot is not delivered yet
    release.set()
    part.collect()
    again = src.build_part(None, state)
    got = drain(again, clock, 0.0)
    assert got == [(2, 0)]


def test_polling_source_end_to_end_with_max_polls_and_errors() -> None:
    sink = ListSink()
    n = [0]

    def fetch() -> dict[str, int]:
        n[0] += 1
        return {"n": n[0]}

    def build(p: Any) -> None:
        p.new_stream().source("api", PollingSource(fetch, 0.05, max_polls=3)).sink("out", sink)

    t0 = time.time()
    SingleThreadRuntime(build).execute()
    assert sink.values == [{"n": 1}, {"n": 2}, {"n": 3}]
    stamps = [r.timestamp for r in sink.records]
    assert stamps[1] - stamps[0] == 50 and stamps[2] - stamps[1] == 50
    assert stamps[0] >= int(t0 * 1000) - 1

    def boom() -> None:
        raise ConnectionError("api down")

    def failing(p: Any) -> None:
        p.new_stream().source("api", PollingSource(boom, 0.05)).sink("out", ListSink())

    with job_fails_with(OperatorError, match=r"'api'.*ConnectionError: api down"):
        SingleThreadRuntime(failing).execute()
    with pytest.raises(ValueError, match="interval"):
        PollingSource(fetch, 0)
