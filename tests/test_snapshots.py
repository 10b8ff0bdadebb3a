"""Snapshots end to end: crash and resume with exactly-once state, damaged and foreign
snapshots, completed jobs, stateful sources and sinks."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with

from malstrom import MAX, OperatorError, SingleThreadRuntime, StatefulLogic, StatefulSource
from malstrom.sinks import FileSink, ListSink
from malstrom.snapshot import (
    InMemoryPersistence,
    LocalDiskPersistence,
    NoPersistence,
    SnapshotFormatError,
)
from malstrom.sources import FileSource, IterSource

N = 60_000
KEYS = 97


class NumberPartition:
    """Emits ``start, start+1, ...`` up to ``end``; remembers how far it got."""

    def __init__(self, nxt: int, end: int, log: list[int]) -> None:
        self.nxt = nxt
        self.end = end
        log.append(nxt)  # where each build started: proves where replay began

    def poll(self) -> tuple[int, int] | None:
        if self.nxt >= self.end:
            return None
        v = self.nxt
        self.nxt += 1
        return v, v

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        stop = min(self.end, self.nxt + min(n, 500))
        out = [(v, v) for v in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= self.end

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Numbers:
    """Two parts: evens and odds... simply two halves of ``range(N)``."""

    def __init__(self, log: list[int]) -> None:
        self.log = log

    def list_parts(self) -> list[str]:
        return ["low", "high"]

    def build_part(self, part: str, state: object | None) -> NumberPartition:
        lo, hi = (0, N // 2) if part == "low" else (N // 2, N)
        return NumberPartition(lo if state is None else int(state), hi, self.log)  # type: ignore[call-overload]


class DumpAtEnd(StatefulLogic[Any, int, int, Any]):
    """Running sum per key; at the end of stream emits every key's final state."""

    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + record.value

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k, s in states.items():
                output.emit((k, s), key=k)


class Boom(Exception):
    pass


def make_build(sink: Any, log: list[int], crash_at: int | None, seen: list[int]) -> Any:
    def fail(v: int) -> int:
        seen.append(v)
        if crash_at is not None and v == crash_at:
            raise Boom(f"injected failure at {v}")
        return v

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(Numbers(log)))
            .map("maybe-fail", fail)
            .key_distribute("by-key", lambda v: v % KEYS)
            .stateful_op("sum", DumpAtEnd())
            .sink("out", sink)
        )

    return build


def oracle() -> dict[int, int]:
    out: Counter[int] = Counter()
    for v in range(N):
        out[v % KEYS] += v
    return dict(out)


def run(
    persistence: Any, crash_at: int | None = None, interval: float | None = 0.002
) -> tuple[SingleThreadRuntime, ListSink, list[int], list[int]]:
    sink = ListSink()
    log: list[int] = []
    seen: list[int] = []
    rt = SingleThreadRuntime(
        make_build(sink, log, crash_at, seen), persistence=persistence, snapshot_interval=interval
    )
    if crash_at is None:
        rt.execute()
    else:
        with job_fails_with(OperatorError) as info:
            rt.execute()
        assert info.value.operator == "maybe-fail"
        assert isinstance(info.value.__cause__, Boom)
    return rt, sink, log, seen


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_crash_then_resume_gives_exactly_once_state(tmp_path: Path, backend: str) -> None:
    p = InMemoryPersistence() if backend == "memory" else LocalDiskPersistence(tmp_path / "snap")
    _, _, _, seen1 = run(p, crash_at=int(N * 0.8))
    assert p.last_committed() is not None, "a snapshot must have committed before the crash"

    rt, sink, starts, seen2 = run(p)
    assert rt.restored_from is not None
    assert dict(r.value for r in sink.records) == oracle()
    # Replay started at the parts' snapshotted offsets, not from the beginning...
    assert starts[0] > 0 and starts[1] > N // 2
    assert len(seen2) < N
    # ...and nothing was skipped: the two runs together saw every number.
    assert set(seen1) | set(seen2) == set(range(N))


def test_uninterrupted_run_matches_oracle_without_persistence() -> None:
    _, sink, _, _ = run(NoPersistence())
    assert dict(r.value for r in sink.records) == oracle()


def test_repeated_crashes_still_exactly_once(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    for crash_at in (N // 5, N // 2 + N // 4, N // 2 - 50):
        run(p, crash_at=crash_at)
    _, sink, _, _ = run(p)
    assert dict(r.value for r in sink.records) == oracle()


def test_completed_job_reruns_at_once_without_duplicates(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    _, sink1, _, _ = run(p, interval=None)
    assert dict(r.value for r in sink1.records) == oracle()
    final = p.last_committed()
    rt, sink2, starts, seen = run(p, interval=None)
    assert sink2.records == [] and seen == [] and starts == []
    assert rt.restored_from == final


def test_damaged_newest_snapshot_falls_back_to_previous(tmp_path: Path, caplog: Any) -> None:
    p = LocalDiskPersistence(tmp_path / "snap", retain=5)
    run(p, crash_at=N // 4)
    versions = p.committed_versions()
    assert len(versions) >= 2
    (newest,) = (tmp_path / "snap" / f"v{versions[-1]:020d}").glob("w0.*.blob")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        rt, sink, _, _ = run(p)
    assert rt.restored_from == versions[-2]
    assert "damaged" in caplog.text
    assert dict(r.value for r in sink.records) == oracle()


def test_partial_version_is_never_read(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    run(p, crash_at=N // 4)
    last = p.last_committed()
    assert last is not None
    # A version whose blobs were written but which never committed (crash before commit).
    p.write_blob(last + 1, "w0", b"garbage that must never be parsed")
    rt, sink, _, _ = run(p)
    assert rt.restored_from == last
    assert dict(r.value for r in sink.records) == oracle()


def test_foreign_snapshot_format_is_refused(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap")
    run(p, crash_at=N // 4)
    last = p.last_committed()
    manifest = tmp_path / "snap" / f"v{last:020d}" / "MANIFEST"
    raw = json.loads(manifest.read_text())
    raw["format"] = 99
    manifest.write_text(json.dumps(raw))
    with job_fails_with(SnapshotFormatError, match="format 99"):
        run(p)


def test_retention_keeps_last_versions(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "snap", retain=2)
    run(p)
    dirs = sorted(os.listdir(tmp_path / "snap"))
    assert len(dirs) <= 3  # two committed + at most one partial in flight
    assert len(p.committed_versions()) == 2


def _wordcount_build(paths: list[str], out: str, crash_on: str | None) -> Any:
    def maybe_fail(line: str) -> str:
        if crash_on is not None and line == crash_on:
            raise Boom(line)
        return line

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("files", FileSource(paths))
            .map("check", maybe_fail)
            .flat_map("words", str.split)
            .key_distribute("by-word", lambda w: w)
            .stateful_map("count", lambda k, v, s: (f"{k} {s + 1}", s + 1), initial=int)
            .sink("file", FileSink(out))
        )

    return build


def line(i: int, j: int) -> str:
    return f"w{(i * 7 + j) % 13} w{j % 5} line{i}-{j}"


def test_file_source_and_file_sink_exactly_once_across_crash(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        f = tmp_path / f"in{i}.txt"
        f.write_text("".join(line(i, j) + "\n" for j in range(9000)))
        paths.append(str(f))
    expected_out = tmp_path / "expected.txt"
    SingleThreadRuntime(_wordcount_build(paths, str(expected_out), None)).execute()

    out = tmp_path / "out.txt"
    p = LocalDiskPersistence(tmp_path / "snap")
    rt = SingleThreadRuntime(
        _wordcount_build(paths, str(out), line(2, 5000)), persistence=p, snapshot_interval=0.001
    )
    with job_fails_with(OperatorError):
        rt.execute()
    assert p.last_committed() is not None
    partial = out.read_text().splitlines()
    rt = SingleThreadRuntime(_wordcount_build(paths, str(out), None), persistence=p)
    rt.execute()
    assert rt.restored_from is not None
    got = out.read_text().splitlines()
    want = expected_out.read_text().splitlines()
    # Every output line exactly once: the crashed run's uncommitted tail was rolled back.
    assert Counter(got) == Counter(want)
    assert len(partial) > 0


def test_iter_source_refuses_to_resume_a_one_shot_iterator() -> None:
    p = InMemoryPersistence()
    gen = iter(range(10_000))
    state: dict[str, int] = {}

    def count(k: Any, v: int, s: int) -> tuple[int, int]:
        if v == 9_000 and not state:
            state["crashed"] = 1
            raise Boom("once")
        return s + 1, s + 1

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("gen", IterSource(gen))
            .stateful_map("count", count, initial=int)
        )

    rt = SingleThreadRuntime(build, persistence=p, snapshot_interval=0.0001)
    with job_fails_with(OperatorError):
        rt.execute()
    if p.last_committed() is None:
        pytest.skip("no snapshot committed before the failure on this machine")
    with job_fails_with(OperatorError, match="cannot resume"):
        rt.execute()


def test_iter_source_resumes_a_factory() -> None:
    p = InMemoryPersistence()
    sink = ListSink()
    crashed: list[int] = []

    def check(v: int) -> int:
        if v == 7_000 and not crashed:
            crashed.append(v)
            raise Boom("once")
        return v

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("gen", IterSource(lambda: (i for i in range(10_000))))
            .map("check", check)
            .key_distribute("k", lambda v: v % 3)
            .stateful_op("sum", DumpAtEnd())
            .sink("out", sink)
        )

    rt = SingleThreadRuntime(build, persistence=p, snapshot_interval=0.0001)
    with job_fails_with(OperatorError):
        rt.execute()
    rt.execute()
    want: Counter[int] = Counter()
    for v in range(10_000):
        want[v % 3] += v
    assert dict(r.value for r in sink.records) == dict(want)


class EmitAtEnd:
    def on_data(self, record: Any, output: Any) -> None:
        output.emit(record.value)

    def on_epoch(self, epoch: Any, output: Any) -> None:
        if epoch is MAX:
            output.emit("END")


def test_end_of_stream_hooks_do_not_run_again_after_a_restore(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    crashed: list[int] = []

    def check(v: int) -> int:
        if v == 15_000 and not crashed:
            crashed.append(v)
            raise Boom(v)
        return v

    def build(provider: Any) -> None:
        ended = (
            provider.new_stream().source("empty", IterSource([])).stateless_op("end", EmitAtEnd())
        )
        nums = provider.new_stream().source("nums", IterSource(range(20_000))).map("check", check)
        ended.union("u", nums).sink("file", FileSink(out))

    p = LocalDiskPersistence(tmp_path / "snap")
    rt = SingleThreadRuntime(build, persistence=p, snapshot_interval=0.0005)
    with job_fails_with(OperatorError):
        rt.execute()
    assert p.last_committed() is not None
    rt.execute()
    lines = out.read_text().splitlines()
    assert lines.count("END") == 1
    assert sorted(int(x) for x in lines if x != "END") == list(range(20_000))
