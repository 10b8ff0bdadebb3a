"""Damaged and hung snapshot storage: a job whose snapshots are all damaged refuses to start
(unless told to start fresh) instead of silently rewriting its output from scratch, and a
store that fails or hangs while the job runs fails the attempt as a storage error naming the
store, before the heartbeat timeout would call the worker hung."""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with
from jobs import mp_sums
from jobs.hanging_store import HangingStore
from test_cli import APP, MALSTROM, env
from test_snapshots import make_build, oracle

from malstrom import JobFailed, MultiProcessRuntime, SingleThreadRuntime
from malstrom.sinks import ListSink
from malstrom.snapshot import (
    LocalDiskPersistence,
    Persistence,
    SnapshotsDamagedError,
    StorageError,
)
from malstrom.snapshot._bounded import BoundedPersistence

pytestmark = pytest.mark.timeout(300)


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_every_version(snap: Path) -> list[int]:
    """Flip a byte in every blob of every committed version; the damaged versions."""
    p = LocalDiskPersistence(snap)
    versions = p.committed_versions()
    for v in versions:
        for blob in (snap / f"v{v:020d}").glob("*.blob"):
            flip_middle_byte(blob)
    return versions


def output_files(work: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(work)): f.read_bytes()
        for f in sorted(work.rglob("*.txt"))
        if f.is_file() and "snap" not in f.parts
    }


def mp_runtime(work: Path, p: Persistence, delay: float, **kw: Any) -> MultiProcessRuntime:
    return MultiProcessRuntime(
        functools.partial(mp_sums.build, workdir=str(work / "out"), delay=delay),
        parallelism=2,
        persistence=p,
        snapshot_interval=0.1,
        **kw,
    )


def stopped_job(work: Path, p: Persistence) -> None:
    """Run the mp_sums job for a while and stop it with a final (resumable) snapshot."""
    handle = mp_runtime(work, p, delay=0.02).start()
    deadline = time.monotonic() + 120
    while (handle.status().get("last_committed") or 0) < 3 or not output_files(work):
        assert time.monotonic() < deadline and handle.running, handle.status()
        time.sleep(0.05)
    handle.stop(120)
    assert p.last_committed() is not None


# -- every snapshot damaged -------------------------------------------------------------------


def test_single_thread_refuses_to_start_when_every_snapshot_is_damaged(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    with pytest.raises(Exception, match="injected failure"):
        SingleThreadRuntime(
            make_build(ListSink(), [], 48_000, []), persistence=p, snapshot_interval=0.002
        ).execute()
    damaged = damage_every_version(tmp_path / "snap")
    assert damaged
    starts: list[int] = []
    sink = ListSink()
    rt = SingleThreadRuntime(make_build(sink, starts, None, []), persistence=p)
    with job_fails_with(SnapshotsDamagedError) as info:
        rt.execute()
    assert info.value.versions == damaged
    text = str(info.value)
    assert all(f"version {v}" in text for v in damaged)
    assert "fresh_start=True" in text and "--fresh-start" in text
    assert starts == [] and sink.records == []  # no source was opened
    # On purpose: start fresh.
    rt = SingleThreadRuntime(make_build(sink, starts, None, []), persistence=p, fresh_start=True)
    rt.execute()
    assert rt.restored_from is None and starts == [0, 30_000]
    assert dict(r.value for r in sink.records) == oracle()
    # That run's snapshots are good: the next run resumes (the job completed: at once).
    rt = SingleThreadRuntime(make_build(ListSink(), [], None, []), persistence=p)
    rt.execute()
    assert rt.restored_from == p.last_committed()


def test_processes_refuse_to_start_and_leave_the_output_alone(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    stopped_job(tmp_path, p)
    before = output_files(tmp_path)
    assert before
    damaged = damage_every_version(tmp_path / "snap")
    with pytest.raises(JobFailed, match="every committed snapshot") as info:
        mp_runtime(tmp_path, p, delay=0.0).execute()
    assert all(f"version {v}" in str(info.value) for v in damaged)
    assert output_files(tmp_path) == before  # not cut back to nothing
    assert p.committed_versions() == damaged
    mp_runtime(tmp_path, p, delay=0.0, fresh_start=True).execute()
    totals, updates = mp_sums.read_results(str(tmp_path / "out"))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART


def test_cli_refuses_damaged_snapshots_and_starts_fresh_when_asked(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    stopped_job(tmp_path, p)
    damaged = damage_every_version(tmp_path / "snap")
    args = [*MALSTROM, "run", APP, "-w", "2", "--persistence", str(tmp_path / "snap")]
    r = subprocess.run(args, env=env(tmp_path / "out"), capture_output=True, text=True, timeout=200)
    assert r.returncode == 1
    assert "every committed snapshot" in r.stderr and "--fresh-start" in r.stderr
    assert f"version {damaged[-1]}" in r.stderr
    r = subprocess.run(
        [*args, "--fresh-start"],
        env=env(tmp_path / "out"),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr
    totals, _ = mp_sums.read_results(str(tmp_path / "out"))
    assert totals == mp_sums.expected_totals()


# -- stores that fail or hang while the job runs -------------------------------------------------


def test_bounded_store_calls(tmp_path: Path) -> None:
    ticks: list[float] = []
    release = threading.Event()

    class Slow(LocalDiskPersistence):
        def committed_versions(self) -> list[int]:
            release.wait(30)
            return [1]

        def __repr__(self) -> str:
            return "Slow('/somewhere')"

    def tick() -> None:
        ticks.append(time.monotonic())

    p = BoundedPersistence(Slow(tmp_path / "slow"), 1.2, tick)
    with pytest.raises(StorageError, match=r"Slow\('/somewhere'\): listing committed versions: "):
        p.committed_versions()
    assert len(ticks) >= 2  # heartbeats went on while waiting
    with pytest.raises(StorageError, match="not tried, an earlier call hung"):
        p.read_blob(1, "w0")
    release.set()
    fine = BoundedPersistence(LocalDiskPersistence(tmp_path / "fine"), 5)
    assert fine.write_blob(0, "w0", b"abc").size == 3
    with pytest.raises(FileNotFoundError):  # errors of the call itself pass through
        fine.read_blob(0, "w0")


def test_a_hung_store_fails_the_attempt_as_a_storage_error(tmp_path: Path) -> None:
    store = HangingStore(tmp_path / "snap", hang_from=1)
    rt = mp_runtime(tmp_path, store, delay=0.02, heartbeat_timeout=3.0, max_restarts=0)
    with pytest.raises(JobFailed) as info:
        rt.execute()
    text = str(info.value)
    assert "StorageError" in text and repr(store) in text and "writing blob" in text, text
    assert "no answer within 2.4 s" in text and "sent nothing" not in text


def damage_slatedb(snap: Path) -> None:
    """A flipped byte in every block of each table of worker 0's blob database: the
    running job finds the damage whichever of the table's blocks it reads first."""
    tables = sorted((snap / "blobs" / "b-w0" / "compacted").glob("*.sst"))
    assert tables
    for t in tables:
        data = bytearray(t.read_bytes())
        for i in range(_DAMAGE_STRIDE // 2, len(data), _DAMAGE_STRIDE):
            data[i] ^= 0xFF
        t.write_bytes(bytes(data))


# Smaller than any block of a table (these tables hold a few KiB)
_DAMAGE_STRIDE = 128


@pytest.fixture
def damaged_slatedb(tmp_path: Path) -> Any:
    pytest.importorskip("slatedb")
    from malstrom.snapshot import SlateDbPersistence

    p = SlateDbPersistence(tmp_path / "snap")
    stopped_job(tmp_path, p)
    damage_slatedb(tmp_path / "snap")
    return SlateDbPersistence(tmp_path / "snap")


def test_slatedb_damage_is_refused_at_start(tmp_path: Path, damaged_slatedb: Any) -> None:
    rt = mp_runtime(tmp_path, damaged_slatedb, 0.02, heartbeat_timeout=10.0, max_restarts=0)
    with pytest.raises(JobFailed) as info:
        rt.execute()
    text = str(info.value)
    assert "every committed snapshot" in text and "checksum mismatch" in text, text
    assert "sent nothing" not in text


def test_slatedb_damage_while_running_is_a_storage_error(
    tmp_path: Path, damaged_slatedb: Any
) -> None:
    """Started fresh over the damaged database: writing the first snapshot meets the damage.
    The job fails naming SlateDB, its location and the damage, not a silent worker."""
    rt = mp_runtime(
        tmp_path, damaged_slatedb, 0.02, heartbeat_timeout=10.0, max_restarts=0, fresh_start=True
    )
    with pytest.raises(JobFailed) as info:
        rt.execute()
    text = str(info.value)
    assert "StorageError" in text and f"SlateDB at {damaged_slatedb.location}" in text, text
    assert "sent nothing" not in text
