"""Fencing of job attempts, piece by piece: the coordinator ignores other attempts' messages,
peers refuse other attempts' data streams, blobs are named per attempt, FileSink refuses
writes of an older attempt and drops buffered lines on abort, and a worker whose attempt is
over neither writes nor commits. (End to end with real processes: test_fencing_cluster.py.)
"""

from __future__ import annotations

import gc
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from malstrom import Record, StatefulSink
from malstrom._errors import AttemptFenced
from malstrom.coordinator._coordinator import Coordinator, JobPhase
from malstrom.coordinator._messages import (
    Abort,
    BuildComplete,
    SnapshotCommitted,
    SnapshotComplete,
    StartBuild,
    StartExecution,
    TakeSnapshot,
    new_attempt_id,
)
from malstrom.runtime._single import build_graph
from malstrom.runtime._worker import Worker
from malstrom.sinks import FileSink
from malstrom.snapshot import InMemoryPersistence, LocalDiskPersistence, NoPersistence
from malstrom.snapshot._backend import Manifest
from malstrom.snapshot._layout import SnapshotReader, SnapshotWriter, blob_worker, worker_blob
from malstrom.sources import IterSource
from malstrom.transport._exchange import TransportError
from malstrom.transport._grpc_auth import JobAuth, new_token
from malstrom.transport._grpc_data import GrpcExchange
from malstrom.transport._local import local_pair

pytestmark = pytest.mark.timeout(60)


class Ep:
    """A coordinator-side endpoint fed by hand."""

    def __init__(self) -> None:
        self.inbox: deque[Any] = deque()
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def recv(self) -> Any:
        return self.inbox.popleft() if self.inbox else None


# -- attempt ids and the coordinator ------------------------------------------------------------


def test_attempt_ids_grow() -> None:
    ids = [new_attempt_id() for _ in range(1000)]
    assert ids == sorted(set(ids))
    assert new_attempt_id(after=ids[-1] + 10**9) > ids[-1] + 10**9


def test_coordinator_ignores_messages_of_another_attempt() -> None:
    p = InMemoryPersistence()
    ep = Ep()
    coord = Coordinator(p, {0: ep}, None)
    coord.start()
    (build,) = ep.sent
    assert isinstance(build, StartBuild) and build.attempt == coord.attempt
    stale = coord.attempt - 1
    ep.inbox.append(BuildComplete(0, stale))
    coord.poll()
    assert coord.phase is JobPhase.BUILDING  # a worker of another attempt built nothing here
    ep.inbox.append(BuildComplete(0, coord.attempt))
    coord.poll()
    assert coord.phase is JobPhase.RUNNING
    coord.request_snapshot()
    coord.poll()
    version = next(m.version for m in ep.sent if isinstance(m, TakeSnapshot))
    ep.inbox.append(SnapshotComplete(0, version, ("w0.1", 3, 0), stale))
    coord.poll()
    assert p.committed_versions() == []  # a stale completion commits nothing
    ep.inbox.append(SnapshotComplete(0, version, None, coord.attempt))
    coord.poll()
    assert p.committed_versions() == [version]
    assert p.manifest(version).meta["attempt"] == coord.attempt


def test_a_resumed_job_runs_a_later_attempt_than_the_snapshot_it_resumes() -> None:
    """A coordinator whose clock is behind the one that took the snapshot still moves on."""
    p = InMemoryPersistence()
    ahead = new_attempt_id() + 10**12
    p.commit(Manifest(0, {}, {"workers": [0], "final": False, "attempt": ahead}))
    coord = Coordinator(p, {0: Ep()}, None)
    coord.start()
    assert coord.restored_from == 0 and coord.attempt > ahead


# -- data plane -------------------------------------------------------------------------------


def test_peers_refuse_streams_of_another_attempt() -> None:
    auth = JobAuth("job-f", new_token())
    a, b, c = (GrpcExchange(i, auth, connect_timeout=5) for i in range(3))
    try:
        for x in (a, b, c):
            x.set_attempt(7)
        a.set_attempt(6)  # a worker of an earlier attempt, still running
        a.connect({1: b.address})
        c.connect({1: b.address})
        a.send(1, "op", "stale")
        c.send(1, "op", "fresh")
        deadline = time.monotonic() + 10
        refused = None
        while refused is None and time.monotonic() < deadline:
            try:
                a.flush()
                c.flush()
            except TransportError as e:
                refused = e
            time.sleep(0.01)
        assert refused is not None and "stale attempt" in str(refused)
        got = None
        while got is None and time.monotonic() < deadline:
            c.flush()  # a worker flushes every turn: what waited for the connection goes now
            got = b.recv(2, "op")
            time.sleep(0.01)
        assert got == "fresh"
        assert b.recv(0, "op") is None  # nothing of attempt 6 reached worker 1
        assert any("attempt 6" in r for r in b.rejections)
    finally:
        for x in (a, b, c):
            x.close()


# -- blobs ------------------------------------------------------------------------------------


def test_blob_names_carry_the_attempt(tmp_path: Path) -> None:
    assert worker_blob(3, 42) == "w3.42" and blob_worker("w3.42") == 3
    assert blob_worker("w3") == 3 and blob_worker("w3.x") is None and blob_worker("m") is None
    p = LocalDiskPersistence(tmp_path)
    w = SnapshotWriter(0)
    w.put_worker("op", "new")
    new = p.write_blob(5, worker_blob(0, 2), w.to_bytes())
    p.commit(Manifest(5, {worker_blob(0, 2): new}))
    # A worker of attempt 1 finishes its write of version 5 late: another blob, not this one.
    late = SnapshotWriter(0)
    late.put_worker("op", "stale")
    p.write_blob(5, worker_blob(0, 1), late.to_bytes())
    assert SnapshotReader(p, p.verify(5)).worker_scoped("op") == {0: "new"}


# -- FileSink ---------------------------------------------------------------------------------


def rec(v: Any) -> Record:
    return Record("k", v, 0)


def test_file_sink_refuses_writes_of_an_older_attempt(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    old = FileSink(out)
    old.begin_attempt(1)
    part1 = old.build_part(str(out), None)
    for v in ("a", "b"):
        part1.sink(rec(v))
    offset = part1.snapshot()
    part1.sink(rec("lost"))  # buffered when attempt 1 failed
    # Attempt 2 restores from the snapshot: cuts the file back and writes on.
    new = FileSink(out)
    new.begin_attempt(2)
    part2 = new.build_part(str(out), offset)
    part2.sink(rec("c"))
    part2.snapshot()
    part1.sink(rec("late"))
    with pytest.raises(AttemptFenced, match="attempt 2"):
        part1.snapshot()  # the stale part's flush
    assert out.read_text().splitlines() == ["a", "b", "c"]
    # A part of the older attempt cannot even be built (and cut the file) any more.
    with pytest.raises(AttemptFenced):
        old.build_part(str(out), offset)
    assert out.read_text().splitlines() == ["a", "b", "c"]
    assert (tmp_path / ".out.txt.malstrom-fence").exists()


def test_file_sink_abort_drops_buffered_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    sink = FileSink(out)
    sink.begin_attempt(1)
    part = sink.build_part(str(out), None)
    part.sink(rec("x"))
    part.abort()
    del part
    gc.collect()
    assert out.read_text() == ""


def test_file_sink_refuses_a_file_shorter_than_its_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    sink = FileSink(out)
    sink.begin_attempt(1)
    part = sink.build_part(str(out), None)
    part.sink(rec("hello"))
    offset = part.snapshot()
    out.write_text("")  # cut outside the job
    with pytest.raises(RuntimeError, match="holds 0 bytes but the snapshot"):
        sink.build_part(str(out), offset)


# -- the worker -------------------------------------------------------------------------------


def _file_job(out: Path) -> Any:
    def build(provider: Any) -> None:
        provider.new_stream().source("n", IterSource(range(1_000))).sink("f", FileSink(out))

    return build


def test_worker_drops_buffered_sink_output_on_abort(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    c_end, w_end = local_pair()
    worker = Worker(build_graph(_file_job(out)), 0, w_end, NoPersistence())
    c_end.send(StartBuild((0,), None, attempt=new_attempt_id()))
    c_end.send(StartExecution())
    for _ in range(50):
        worker.turn()
    assert out.read_text() == ""  # the lines are buffered: no snapshot has flushed them yet
    c_end.send(Abort("another worker died"))
    worker.turn()
    del worker
    gc.collect()
    assert out.read_text() == ""


class Recorder:
    """A two-phase sink that records its commits."""

    def __init__(self) -> None:
        self.commits: list[int] = []

    def assign_part(self, key: Any) -> str:
        return "only"

    def build_part(self, part: Any, state: Any) -> Any:
        owner = self

        class Part:
            def sink(self, record: Record) -> None:
                pass

            def snapshot(self) -> object:
                return None

            def collect(self) -> object:
                return None

            def commit(self, version: int) -> None:
                owner.commits.append(version)

        return Part()


def test_a_commit_notice_reaching_a_fenced_worker_commits_nothing() -> None:
    sink = Recorder()

    def build(provider: Any) -> None:
        provider.new_stream().source("n", IterSource(range(10))).sink("s", StatefulSink(sink))

    class Link:
        """The worker's end of a control link that can break."""

        def __init__(self) -> None:
            self.inbox: deque[Any] = deque()
            self.closed = False

        def send(self, msg: Any) -> None:
            pass

        def recv(self) -> Any:
            return self.inbox.popleft() if self.inbox else None

    link = Link()
    worker = Worker(build_graph(build), 0, link, NoPersistence())  # type: ignore[arg-type]
    link.inbox.extend([StartBuild((0,), None, attempt=5), StartExecution(), TakeSnapshot(0)])
    for _ in range(20):
        worker.turn()
    link.inbox.append(SnapshotCommitted(0))
    worker.turn()
    assert sink.commits == [0]
    link.inbox.append(TakeSnapshot(1))
    for _ in range(20):
        worker.turn()
    link.closed = True  # the attempt failed: the coordinator dropped this worker's link
    link.inbox.append(SnapshotCommitted(1))  # delivered before the link broke, read after
    with pytest.raises(AttemptFenced):
        worker.turn()
    assert sink.commits == [0]
