"""DirectorySink (part files published at snapshot commit) and DirectorySource (one part per
file, each read exactly once, optionally watching for new files)."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with
from jobs import dir_job

from malstrom import OperatorError, SingleThreadRuntime
from malstrom.formats import Csv, JsonLines, Parquet
from malstrom.runtime._multi import MultiProcessRuntime
from malstrom.sinks import DirectorySink, ListSink
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence
from malstrom.sources import DirectorySource, IterSource

pytestmark = pytest.mark.timeout(240)

CRASH_JOB = Path(__file__).parent / "jobs" / "sink_crash.py"


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def published_values(d: Path) -> list[Any]:
    out: list[Any] = []
    for p in sorted(d.glob("part-*")):
        out += [json.loads(x) for x in p.read_text().splitlines()]
    return out


def crash_job(work: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(CRASH_JOB), "dir", str(work)]
    if crash:
        args += ["--crash", crash]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash", ["commit:3", "prepare:3", "prepare:1"])
def test_directory_sink_is_exactly_once_across_crashes_in_its_protocol(
    tmp_path: Path, crash: str
) -> None:
    """commit:3: the snapshot committed, the process died before renaming its files (the
    restore publishes them); prepare:N: files closed at a barrier whose snapshot never
    committed (the restore deletes them; their records are replayed)."""
    died = crash_job(tmp_path, crash)
    assert died.returncode == 9, died.stderr
    hidden = [n for n in names(tmp_path / "out") if n.startswith(".")]
    assert hidden, "the crash should leave unpublished files"
    before = published_values(tmp_path / "out")
    assert len(before) < 3000
    done = crash_job(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert sorted(published_values(tmp_path / "out")) == list(range(3000))
    assert not [n for n in names(tmp_path / "out") if n.startswith(".")]


def test_files_appear_only_when_their_snapshot_commits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[list[str]] = []

    def watch(v: int) -> int:
        if v % 1000 == 999:
            seen.append(names(out))
        return v

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(range(5000)))
            .map("watch", watch)
            .key_local("k", lambda v: v % 50)
            .sink("out", DirectorySink(out, parts=3))
        )

    SingleThreadRuntime(build).execute()  # no snapshot before the end
    assert all(not any(n.startswith("part-") for n in s) for s in seen)
    final = names(out)
    assert len(final) == 3 and all(n.startswith("part-") and n.endswith(".txt") for n in final)
    lines = [int(x) for n in final for x in (out / n).read_text().split()]
    assert sorted(lines) == list(range(5000))


def test_parquet_part_files_round_trip_typed_through_directory_source(tmp_path: Path) -> None:
    import datetime

    rows = [
        {"id": i, "x": i * 0.5, "name": f"n{i}", "at": datetime.datetime(2024, 5, 1, 0, i % 60)}
        for i in range(3000)
    ]

    def write(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(rows))
            .key_local("k", lambda r: r["id"] % 10)
            .sink("out", DirectorySink(tmp_path / "pq", Parquet(), parts=4))
        )

    SingleThreadRuntime(write, persistence=InMemoryPersistence(), snapshot_interval=0.001).execute()
    files = names(tmp_path / "pq")
    assert files and all(n.endswith(".parquet") for n in files)
    sink = ListSink()

    def read(p: Any) -> None:
        p.new_stream().source("d", DirectorySource(tmp_path / "pq", Parquet())).sink("o", sink)

    SingleThreadRuntime(read).execute()
    assert sorted(sink.values, key=lambda r: r["id"]) == rows
    assert {r.key for r in sink.records} == set(files)  # records keyed by file name


def test_sigkill_workers_mid_run_published_files_are_exact(tmp_path: Path) -> None:
    rng = random.Random(3)
    handle = MultiProcessRuntime(
        functools.partial(dir_job.build, workdir=str(tmp_path)),
        parallelism=2,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.1,
        max_restarts=10,
    ).start()
    kills = 0
    while kills < 2 and handle.running:
        time.sleep(rng.uniform(0.5, 1.0))
        status = handle.status()
        pids = status.get("pids", {})
        if status["phase"] in ("running", "snapshotting") and pids:
            try:
                os.kill(pids[rng.choice(sorted(pids))], signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            start = handle.status()["restarts"]
            while handle.running and handle.status()["restarts"] == start:
                time.sleep(0.02)
    handle.wait(180)
    assert kills >= 1
    dir_job.check(str(tmp_path))


def test_directory_source_reads_each_file_once_across_a_restore(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.csv").write_text("n\n" + "".join(f"{i * 1000 + j}\n" for j in range(400)))
    (src / ".hidden.csv").write_text("n\n-1\n")
    (src / "_tmp.csv").write_text("n\n-2\n")
    (src / "notes.txt").write_text("n\n-3\n")
    persistence = LocalDiskPersistence(tmp_path / "snap")
    fail = [True]
    out = tmp_path / "out.txt"

    def check(row: dict[str, str]) -> int:
        if fail[0] and row["n"] == "3200":
            raise ValueError("crash")
        return int(row["n"])

    def build(p: Any) -> None:
        from malstrom.sinks import FileSink

        (
            p.new_stream()
            .source("d", DirectorySource(src, Csv(), pattern="*.csv"))
            .map("check", check)
            .sink("out", FileSink(out))
        )

    import malstrom.operators.io as io

    old, io.BATCH_SIZE = io.BATCH_SIZE, 50
    try:
        with job_fails_with(OperatorError):
            SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.0005).execute()
        fail[0] = False
        rt = SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.0005)
        rt.execute()
    finally:
        io.BATCH_SIZE = old
    assert rt.restored_from is not None
    got = sorted(int(x) for x in out.read_text().split())
    assert got == sorted(i * 1000 + j for i in range(6) for j in range(400))


def test_directory_source_errors(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        DirectorySource(tmp_path / "nope")
    with pytest.raises(ValueError, match="watch"):
        DirectorySource(tmp_path, watch=0)
    with pytest.raises(ValueError, match="parts"):
        DirectorySink(tmp_path, parts=0)
    with pytest.raises(TypeError, match="format"):
        DirectorySink(tmp_path, JsonLines)  # type: ignore[arg-type]


def watch_job(provider: Any, workdir: str) -> None:
    (
        provider.new_stream()
        .source("files", DirectorySource(Path(workdir) / "in", JsonLines(), watch=0.05))
        .key_distribute("by-n", lambda v: v["n"] % 7)
        .sink("out", DirectorySink(Path(workdir) / "out", JsonLines(), parts=4))
    )


def add_file(d: Path, name: str, values: range) -> None:
    """Write under a hidden name, then rename into place (a file appears complete)."""
    tmp = d / f".{name}.tmp"
    tmp.write_text("".join(json.dumps({"n": v}) + "\n" for v in values))
    tmp.rename(d / name)


def wait_published(work: Path, count: int, handle: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(published_values(work / "out")) >= count:
            return
        assert handle.running
        time.sleep(0.05)
    raise AssertionError(f"only {len(published_values(work / 'out'))} of {count} published")


def test_watching_directory_source_reads_new_files_once_across_kill_stop_and_rescale(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    files = iter(range(100))
    total = 0

    def add(k: int) -> None:
        nonlocal total
        for _ in range(k):
            i = next(files)
            add_file(inbox, f"f{i:03d}.jsonl", range(i * 1000, i * 1000 + 300))
            total += 300

    def start(n: int) -> Any:
        return MultiProcessRuntime(
            functools.partial(watch_job, workdir=str(tmp_path)),
            parallelism=n,
            persistence=LocalDiskPersistence(tmp_path / "snap"),
            snapshot_interval=0.1,
            max_restarts=5,
        ).start()

    add(3)
    handle = start(2)
    wait_published(tmp_path, total, handle)
    add(4)  # picked up while running
    wait_published(tmp_path, total, handle)
    os.kill(handle.status()["pids"][1], signal.SIGKILL)
    add(3)
    wait_published(tmp_path, total, handle)
    handle.stop()
    add(2)  # arrive while the job is stopped
    handle = start(3)
    wait_published(tmp_path, total, handle)
    handle.rescale(2)
    add(3)
    wait_published(tmp_path, total, handle)
    handle.stop()
    got = sorted(v["n"] for v in published_values(tmp_path / "out"))
    want = sorted(n for i in range(15) for n in range(i * 1000, i * 1000 + 300))
    assert got == want
