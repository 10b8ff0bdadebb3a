"""The persistence contract for ObjectStorePersistence (local files and S3) and
SlateDbPersistence (local directory and S3), plus what is specific to each.

S3 is real: moto's standalone S3 server on 127.0.0.1, spoken to over HTTP by obstore's and
SlateDB's own S3 clients. End-to-end jobs crash or stop and resume from each backend with
exact results, in one process and on two worker processes.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import pickle
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from job_errors import job_fails_with

obstore = pytest.importorskip("obstore")
pytest.importorskip("slatedb")
moto_server = pytest.importorskip("moto.server")

import test_persistence as base  # noqa: E402
from jobs import mp_sums  # noqa: E402
from test_persistence import (  # noqa: E402,F401  (re-run here over the new backends)
    test_all_versions_damaged_gives_none,
    test_crash_while_writing_leaves_previous_commit,
    test_damaged_blob_is_skipped_with_warning,
    test_foreign_format_in_older_version_is_refused,
    test_foreign_format_is_refused_not_skipped,
    test_missing_blob_is_skipped,
    test_overwriting_a_blob_before_commit_keeps_the_last,
    test_prune_drops_old_partial_keeps_newer_partial,
    test_retention_keeps_newest_committed,
    test_retention_zero_keeps_all,
    test_several_versions_ascending,
    test_uncommitted_version_is_never_committed,
    test_write_commit_read_round_trip,
)

from malstrom import MAX, OperatorError, SingleThreadRuntime, StatefulLogic, StatefulSource  # noqa: E402
from malstrom.runtime._multi import MultiProcessRuntime  # noqa: E402
from malstrom.sinks import ListSink  # noqa: E402
from malstrom.snapshot import (  # noqa: E402
    LocalDiskPersistence,
    ObjectStorePersistence,
    Persistence,
    SlateDbPersistence,
    SnapshotCorruptError,
    StoreUnavailableError,
)
from malstrom.snapshot._backend import Manifest  # noqa: E402
from malstrom.snapshot._slatedb import _durable, _scan  # noqa: E402
from malstrom.snapshot._url import persistence_from_url  # noqa: E402

pytestmark = pytest.mark.timeout(120)

write_version = base.write_version
Factory = Callable[..., Persistence]
KEY_ID, SECRET, REGION = "testing", "testing", "us-east-1"


# -- a real S3 server on loopback ---------------------------------------------------------------


class S3:
    """moto's S3 server in this process, and the options that point each client at it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def bucket(self) -> str:
        import boto3

        name = f"snap-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        ).create_bucket(Bucket=name)
        return name

    def obstore_options(self, **over: Any) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "access_key_id": KEY_ID,
            "secret_access_key": SECRET,
            "region": REGION,
            "client_options": {"allow_http": True},
            **over,
        }

    def slatedb_options(self, **over: Any) -> dict[str, Any]:
        return {
            "aws_endpoint": self.endpoint,
            "aws_allow_http": True,
            "aws_access_key_id": KEY_ID,
            "aws_secret_access_key": SECRET,
            "aws_region": REGION,
            **over,
        }


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3(f"http://{host}:{port}")
    finally:
        # Release SlateDB's handles on this server while it still answers.
        from malstrom.snapshot._slatedb import _process

        _process().close_handles()
        server.stop()


# SlateDB on S3 runs a subset (test_slatedb_on_s3): every SlateDB reader opening is a dozen
# requests, and moto answers each in milliseconds of Python.
BACKENDS = ["objectstore-file", "objectstore-s3", "slatedb-local"]


def factory(kind: str, tmp_path: Path, s3: S3 | None) -> Factory:
    """Fresh instances on one storage location per test (like restarted processes)."""
    if kind == "objectstore-file":
        url = (tmp_path / "snap").as_uri()
        return lambda retain=3: ObjectStorePersistence(url, retain=retain)
    if kind == "slatedb-local":
        return lambda retain=3: SlateDbPersistence(tmp_path / "snap", retain=retain)
    assert s3 is not None
    bucket = s3.bucket()
    if kind == "objectstore-s3":
        return lambda retain=3: ObjectStorePersistence(
            f"s3://{bucket}/job", retain=retain, **s3.obstore_options()
        )
    assert kind == "slatedb-s3"
    return lambda retain=3: SlateDbPersistence(
        f"s3://{bucket}/job", retain=retain, **s3.slatedb_options()
    )


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    s3 = request.getfixturevalue("s3") if request.param.endswith("-s3") else None
    return factory(request.param, tmp_path, s3)


@pytest.fixture(autouse=True)
def _damage_through_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The imported contract tests damage a committed blob by replacing its bytes; for these
    backends do it by rewriting the stored blob, so its manifest's size/CRC no longer match."""

    def replace(p: Persistence, version: int, name: str, data: bytes) -> None:
        p.read_blob(version, name)  # it exists and is committed
        p.write_blob(version, name, data)

    monkeypatch.setattr(base, "replace_blob", replace)


def overwrite_manifest(p: Persistence, version: int, data: bytes) -> None:
    """Replace a committed manifest behind the backend's back."""
    if isinstance(p, ObjectStorePersistence):
        obstore.put(p._store, f"v{version:020d}/MANIFEST", data)  # plain put: no create-once
        return
    assert isinstance(p, SlateDbPersistence)

    async def put(db: Any) -> None:  # straight through the writer: no create-once check
        await _durable(db, [await db.put(b"m/%020d" % version, data)])

    p._write(p._manifests, put, "damaging a manifest")


# -- the contract, beyond the imported tests ---------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfegarbage", b"", b"{not json", b'{"format": 1}'])
def test_corrupt_manifest_is_skipped(
    make: Factory, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    p = make()
    write_version(p, 1)
    write_version(p, 2)
    overwrite_manifest(p, 2, garbage)
    assert make().committed_versions() == [1, 2]
    with pytest.raises(SnapshotCorruptError):
        make().manifest(2)
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        m = make().latest_restorable()
    assert m is not None and m.version == 1
    assert "skipping damaged snapshot" in caplog.text


def test_restart_sees_commits_and_never_reads_a_partial_version(make: Factory) -> None:
    p = make(retain=5)
    for v in (1, 2, 3):
        write_version(p, v)
    write_version(p, 4, commit=False)  # the "crash": blobs of 4 written, no manifest
    q = make(retain=5)  # a new instance, as after a restart
    assert q.committed_versions() == [1, 2, 3]
    m = q.latest_restorable()
    assert m is not None and m.version == 3 and m.meta == {"workers": 2, "v": 3}
    with pytest.raises((KeyError, FileNotFoundError)):
        q.read_blob(4, "w0")
    assert q.read_blob(3, "w1", 1, 1) == bytes([1])
    write_version(q, 4)  # the restarted job rewrites and commits version 4
    assert make().committed_versions() == [1, 2, 3, 4]
    assert make().read_blob(4, "w0") == b"state-0-of-4"


def test_pickle_round_trip(make: Factory) -> None:
    p = make(retain=4)
    write_version(p, 1)
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is type(p) and q.retain == 4
    assert q.committed_versions() == [1]
    assert q.read_blob(1, "w0") == b"state-0-of-1"
    write_version(q, 2)  # the unpickled copy writes and commits too
    assert p.committed_versions() == [1, 2]
    assert pickle.loads(pickle.dumps(q)).read_blob(2, "w0") == b"state-0-of-2"


def test_range_reads_of_a_large_blob(make: Factory) -> None:
    """Ranges within, across and past the ends of a blob larger than SlateDB's 1 MiB chunks."""
    p = make()
    data = bytes(range(251)) * (2_600_000 // 251)  # ~2.5 MiB: three chunks
    info = p.write_blob(1, "w0", data)
    p.commit(Manifest(1, {"w0": info}))
    q = make()
    mib = 1 << 20
    for off, n in [
        (0, 10),
        (mib - 3, 6),  # across the first chunk boundary
        (mib, mib),  # exactly the second chunk
        (5, 2 * mib),  # across two boundaries
        (len(data) - 7, 100),  # past the end: the rest
        (len(data), 5),
        (len(data) + 10, 5),
        (123, 0),
    ]:
        assert q.read_blob(1, "w0", off, n) == data[off : off + n], (off, n)
    assert q.read_blob(1, "w0", mib + 1) == data[mib + 1 :]
    assert q.read_blob(1, "w0") == data
    assert q.verify(1).blobs["w0"].crc32 == zlib.crc32(data)


def test_concurrent_writers_of_one_version_from_threads(make: Factory) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def worker(i: int) -> tuple[str, Any]:
        name = f"w{i}"
        return name, make().write_blob(1, name, bytes([i]) * (1000 + i))

    with ThreadPoolExecutor(4) as pool:
        infos = dict(pool.map(worker, range(6)))
    p = make()
    assert p.committed_versions() == []
    p.commit(Manifest(1, infos))
    m = make().latest_restorable()
    assert m is not None and len(m.blobs) == 6
    assert make().read_blob(1, "w5") == bytes([5]) * 1005


@pytest.mark.parametrize("cls", [ObjectStorePersistence, SlateDbPersistence])
@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "é", "x\x00", "w:0"])
def test_bad_blob_names_and_versions_are_refused(tmp_path: Path, cls: Any, name: str) -> None:
    p = cls(tmp_path.as_uri() if cls is ObjectStorePersistence else tmp_path)
    with pytest.raises(ValueError, match="blob name"):
        p.write_blob(1, name, b"data")
    with pytest.raises(ValueError):
        p.write_blob(-1, "w0", b"")
    assert p._all_versions() == []


def test_commit_is_create_once(make: Factory) -> None:
    p = make()
    m = write_version(p, 1)
    p._store_manifest(1, m.to_bytes())  # the same manifest again (a retried put): fine
    m.meta["other"] = True
    with pytest.raises(RuntimeError, match="already committed"):
        p._store_manifest(1, m.to_bytes())  # another manifest for a committed version: refused
    assert p.manifest(1).meta == {"workers": 2, "v": 1}


# -- ObjectStorePersistence --------------------------------------------------------------------


def test_object_store_layout_matches_local_disk(tmp_path: Path) -> None:
    """file:// objects are laid out like LocalDiskPersistence: either reads the other's."""
    p = ObjectStorePersistence((tmp_path / "s").as_uri())
    write_version(p, 1)
    d = LocalDiskPersistence(tmp_path / "s")
    assert d.latest_restorable() is not None and d.read_blob(1, "w0") == b"state-0-of-1"
    write_version(d, 2)
    assert p.committed_versions() == [1, 2] and p.read_blob(2, "w1", 1, 1) == bytes([1])


def test_object_store_file_prunes_staging_leftovers(tmp_path: Path) -> None:
    p = ObjectStorePersistence((tmp_path / "s").as_uri(), retain=1)
    write_version(p, 1, commit=False)
    leftover = tmp_path / "s" / f"v{1:020d}" / "w2.blob#1"  # obstore's staging name
    leftover.write_bytes(b"half a blob")
    write_version(p, 2)
    assert p._all_versions() == [2]
    assert not leftover.parent.exists()


def test_object_store_unreachable_is_a_clear_error_not_damage(s3: S3) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback there
    retry = {"max_retries": 1, "retry_timeout": timedelta(seconds=2)}
    p = ObjectStorePersistence(
        "s3://snapshots/job", **s3.obstore_options(endpoint=dead, retry_config=retry)
    )
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="s3://snapshots/job") as info:
        p.committed_versions()
    assert time.monotonic() - t < 10
    assert "listing snapshots" in str(info.value)
    with pytest.raises(StoreUnavailableError):
        p.write_blob(1, "w0", b"x")
    missing = ObjectStorePersistence(
        f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/j", **s3.obstore_options()
    )
    with pytest.raises(StoreUnavailableError, match="no-such-bucket"):
        missing.latest_restorable()


def test_object_store_outage_while_verifying_does_not_skip_versions(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = ObjectStorePersistence(f"s3://{s3.bucket()}/j", **s3.obstore_options())
    write_version(p, 1)
    write_version(p, 2)

    def down(*a: Any, **k: Any) -> bytes:
        raise StoreUnavailableError(f"object store {p.url} failed: connection reset")

    monkeypatch.setattr(p, "read_blob", down)
    with pytest.raises(StoreUnavailableError):  # not "skipping damaged snapshot" down to None
        p.latest_restorable()


def test_bad_credentials_are_a_clear_error_naming_the_url(s3: S3) -> None:
    import urllib.request

    bucket = s3.bucket()
    url = f"s3://{bucket}/j"

    def set_auth(count: str) -> None:
        req = urllib.request.Request(
            f"{s3.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would not reach moto
        )
        urllib.request.urlopen(req, timeout=10).read()

    set_auth("0")  # from now on moto checks every request's credentials
    try:
        p = ObjectStorePersistence(url, **s3.obstore_options(access_key_id="AKIAWRONGWRONG"))
        with pytest.raises(StoreUnavailableError, match=f"{url} refused the credentials"):
            p.write_blob(1, "w0", b"x")
        with pytest.raises(StoreUnavailableError, match=f"{url} refused the credentials"):
            p.latest_restorable()
        q = SlateDbPersistence(
            url, timeout=20, **s3.slatedb_options(aws_access_key_id="AKIAWRONGWRONG")
        )
        t = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"{url} refused the credentials"):
            q.committed_versions()
        with pytest.raises(StoreUnavailableError, match=f"{url} refused the credentials"):
            q.write_blob(1, "w0", b"x")
        assert time.monotonic() - t < 10  # SlateDB gives up instead of retrying forever
    finally:
        set_auth("inf")


def test_object_store_repr_and_errors_hide_secrets(s3: S3) -> None:
    p = ObjectStorePersistence("s3://b/j", **s3.obstore_options(secret_access_key="s3cr3t"))
    assert "s3cr3t" not in repr(p)
    assert "s3cr3t" not in repr(pickle.loads(pickle.dumps(p)))


@pytest.mark.parametrize("url", ["http://x/y", "b/j", "memory:///", "s3:/b"])
def test_object_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="s3://"):
        ObjectStorePersistence(url)


# -- SlateDbPersistence ------------------------------------------------------------------------


def _blob_writer_process(conn: Any, root: str, name: str, retain: int) -> None:
    """A stand-in worker process: writes blob ``name`` of each version it is sent."""
    p = SlateDbPersistence(root, retain=retain)
    while (version := conn.recv()) is not None:
        info = p.write_blob(version, name, bytes([version % 256]) * (50_000 + version))
        conn.send((name, info.size, info.crc32))


def blob_db_versions(p: SlateDbPersistence, name: str) -> list[int]:
    """The versions a blob database holds, read with a fresh reader (no writer is opened)."""

    async def scan(reader: Any) -> list[int]:
        return sorted(int(k[2:22]) for k, _ in await _scan(reader, b"h/"))

    return p._with_fresh_reader(p._blob_db(name)[0], scan, "test") or []


def test_slatedb_worker_processes_write_one_version_concurrently(tmp_path: Path) -> None:
    """Two processes write their blobs of each version at the same time, each into its own
    database; this process commits and reads them all. Each writer prunes its own database."""
    ctx = multiprocessing.get_context("spawn")
    root = str(tmp_path / "snap")
    p = SlateDbPersistence(root, retain=1)
    pipes, procs = [], []
    for i in range(2):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_blob_writer_process, args=(theirs, root, f"w{i}", 1))
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    try:
        for v in (1, 2, 3):
            for conn in pipes:
                conn.send(v)
            infos = {n: base.BlobInfo(s, c) for n, s, c in (conn.recv() for conn in pipes)}
            p.commit(Manifest(v, infos))
    finally:
        for conn in pipes:
            conn.send(None)
        for proc in procs:
            proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert p.committed_versions() == [3]
    m = SlateDbPersistence(root).latest_restorable()
    assert m is not None and m.version == 3
    assert p.read_blob(3, "w1", 10, 5) == bytes([3]) * 5
    # Their writers pruned version 1 when writing 3 (2 was still the newest commit then).
    assert blob_db_versions(p, "w0") == blob_db_versions(p, "w1") == [2, 3]


def test_slatedb_fenced_writer_reopens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another writer of the same database (a newer process) fences ours: ours reopens and
    the write still lands."""
    import asyncio

    from slatedb.uniffi import DbBuilder, ObjectStore

    p = SlateDbPersistence(tmp_path / "s")
    write_version(p, 1)
    db_path, _ = p._blob_db("w0")

    async def take_over() -> None:
        db = await DbBuilder(db_path, ObjectStore.resolve("file:///")).build()
        await db.shutdown()

    asyncio.run(take_over())
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        write_version(p, 2)
    assert "fenced" in caplog.text
    assert p.read_blob(2, "w0") == b"state-0-of-2"


def test_slatedb_close_releases_and_reopens(tmp_path: Path) -> None:
    from malstrom.snapshot._slatedb import _process

    p = SlateDbPersistence(tmp_path / "s")
    write_version(p, 1)
    other = SlateDbPersistence(tmp_path / "other")
    write_version(other, 1)
    p.close()
    held = {path for _, path in _process().writers}
    assert not any(path.startswith(p._base + "/") for path in held)  # p's writers released
    assert any(path.startswith(other._base + "/") for path in held)  # not other's
    assert p.read_blob(1, "w0") == b"state-0-of-1"
    write_version(p, 2)  # reopens its writers when used again
    assert p.committed_versions() == [1, 2]


def test_slatedb_unreachable_store_times_out_with_a_clear_error() -> None:
    p = SlateDbPersistence(
        "s3://snapshots/job",
        timeout=1.0,
        aws_endpoint="http://127.0.0.1:9",
        aws_allow_http=True,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        aws_region=REGION,
    )
    t = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="s3://snapshots/job"):
        p.committed_versions()
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("arg", ["http://x/y", "memory:///"])
def test_slatedb_refuses_other_urls(arg: str) -> None:
    with pytest.raises(ValueError, match="s3://"):
        SlateDbPersistence(arg)


# -- persistence_from_url ----------------------------------------------------------------------


def test_persistence_from_url_maps_the_new_schemes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    p = persistence_from_url("s3://bucket/prefix", retain=5)
    assert isinstance(p, ObjectStorePersistence) and p.url == "s3://bucket/prefix" and p.retain == 5
    assert isinstance(persistence_from_url("gs://b/p"), ObjectStorePersistence)
    assert isinstance(persistence_from_url("az://c/p"), ObjectStorePersistence)
    s = persistence_from_url("slatedb://snaps")
    assert isinstance(s, SlateDbPersistence) and s.location == str(tmp_path / "snaps")
    s = persistence_from_url(f"slatedb://{tmp_path}/abs")
    assert isinstance(s, SlateDbPersistence) and s.location == str(tmp_path / "abs")
    s = persistence_from_url("slatedb+s3://bucket/prefix")
    assert isinstance(s, SlateDbPersistence) and s.location == "s3://bucket/prefix"
    assert isinstance(persistence_from_url("file://d"), LocalDiskPersistence)
    with pytest.raises(ValueError, match="ftp://"):
        persistence_from_url("ftp://host/x")


# -- end to end --------------------------------------------------------------------------------

N = 6_000
KEYS = 17


class Part:
    def __init__(self, nxt: int, end: int, starts: list[int]) -> None:
        self.nxt, self.end = nxt, end
        starts.append(nxt)

    def poll(self) -> tuple[int, int] | None:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        time.sleep(0.001)
        stop = min(self.end, self.nxt + min(n, 50))
        out = [(v, v) for v in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= self.end

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Halves:
    def __init__(self, starts: list[int]) -> None:
        self.starts = starts

    def list_parts(self) -> list[str]:
        return ["low", "high"]

    def build_part(self, part: str, state: object | None) -> Part:
        lo, hi = (0, N // 2) if part == "low" else (N // 2, N)
        return Part(lo if state is None else int(state), hi, self.starts)  # type: ignore[call-overload]


class SumAtEnd(StatefulLogic[Any, int, int, Any]):
    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + record.value

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k, s in states.items():
                output.emit((k, s), key=k)


class Boom(Exception):
    pass


def run_sums(p: Persistence, crash_at: int | None) -> tuple[ListSink, list[int], list[int]]:
    sink, starts, seen = ListSink(), [], []

    def check(v: int) -> int:
        seen.append(v)
        if v == crash_at:
            raise Boom(v)
        return v

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(Halves(starts)))
            .map("check", check)
            .key_distribute("by-key", lambda v: v % KEYS)
            .stateful_op("sum", SumAtEnd())
            .sink("out", sink)
        )

    rt = SingleThreadRuntime(build, persistence=p, snapshot_interval=0.05)
    if crash_at is None:
        rt.execute()
    else:
        with job_fails_with(OperatorError):
            rt.execute()
    return sink, starts, seen


def test_single_thread_job_crashes_then_resumes_exactly(make: Factory) -> None:
    p = make()
    _, _, seen1 = run_sums(p, crash_at=int(N * 0.9))
    assert p.last_committed() is not None, "a snapshot must have committed before the crash"
    sink, starts, seen2 = run_sums(make(), crash_at=None)  # a fresh instance: a restart
    oracle: Counter[int] = Counter()
    for v in range(N):
        oracle[v % KEYS] += v
    assert dict(r.value for r in sink.records) == dict(oracle)
    assert starts[-2] > 0 or starts[-1] > N // 2  # resumed from a snapshot, not from 0
    assert len(seen2) < N and set(seen1) | set(seen2) == set(range(N))


def check_mp_results(work: Path) -> None:
    totals, updates = mp_sums.read_results(str(work))
    assert totals == mp_sums.expected_totals()
    want = mp_sums.expected_updates()
    assert {k: sorted(v, key=int) for k, v in updates.items()} == {
        k: sorted(v, key=int) for k, v in want.items()
    }


@pytest.mark.parametrize(
    "kind",
    [
        "objectstore-file",
        "objectstore-s3",
        "slatedb-local",
        # SlateDB's per-database polling makes this take several seconds against moto
        pytest.param("slatedb-s3", marks=pytest.mark.slow),
    ],
)
def test_two_worker_processes_stop_then_resume(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3") if kind.endswith("-s3") else None
    p = factory(kind, tmp_path, s3)()

    def runtime(delay: float) -> MultiProcessRuntime:
        return MultiProcessRuntime(
            functools.partial(mp_sums.build, workdir=str(tmp_path / "out"), delay=delay),
            parallelism=2,
            persistence=p,
            snapshot_interval=0.2,
        )

    handle = runtime(0.02).start()
    time.sleep(1.2)
    handle.stop(60)
    assert handle.status()["phase"] == "stopped"
    stopped_at = p.last_committed()
    assert stopped_at is not None
    handle = runtime(0.0).start()
    handle.wait(90)
    assert handle.status()["restored_from"] == stopped_at  # resumed from the final snapshot
    assert (p.last_committed() or 0) > stopped_at
    check_mp_results(tmp_path / "out")


@pytest.mark.parametrize(
    "contract",
    [
        test_write_commit_read_round_trip,
        test_restart_sees_commits_and_never_reads_a_partial_version,
        test_pickle_round_trip,
        test_range_reads_of_a_large_blob,
        test_single_thread_job_crashes_then_resumes_exactly,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_slatedb_on_s3(contract: Callable[[Factory], None], tmp_path: Path, s3: S3) -> None:
    from malstrom.snapshot._slatedb import _process

    try:
        contract(factory("slatedb-s3", tmp_path, s3))
    finally:
        # Shut this test's databases down: left open, their background polling of the
        # (single Python) moto server slows every later test on it, ~3 s -> 60 s and more.
        _process().close_handles()
