"""Snapshots in SlateDB databases: :class:`SlateDbPersistence`.

`SlateDB <https://slatedb.io>`_ is an embedded key-value store that keeps its data in an
object store (or a local directory). Install its Python binding with
``pip install 'malstrom[slatedb]'``.

**One writer per database.** SlateDB allows a single writer per database: opening a second
writer *fences* the first (its next write fails). A job's worker processes write blobs of the
same version concurrently, so they cannot share one database. The layout therefore gives every
writer its own database::

    <root>/manifests/      written only by the process that commits (the coordinator)
        m/<version:020d>            -> manifest bytes: the commit point of a version
    <root>/blobs/b-<name>/ one per blob name, written only by the process that writes that
                           blob (worker ``i`` writes blob ``w<i>``)
        h/<version:020d>            -> {"size", "crc", "chunk"}: the blob's header
        c/<version:020d>/<index:010d> -> the blob's bytes in chunks of at most 1 MiB

A blob name with a tag, ``<name>.<tag>`` (workers tag their blobs with their job attempt),
lives in the database of ``<name>`` under ``h/<version>/<tag>`` and
``c/<version>/<tag>/<index>``: blobs of one version written by different attempts never
overwrite each other, and a worker keeps one database however often the job restarts.

Readers (restoring workers, the coordinator verifying a version) open read-only
``DbReader``\\ s, which never fence a writer. A fenced writer (a zombie process, or this
process after another one took over a database) reopens once and retries, as a restarted
worker does.

Guarantees:

- The databases run without a write-ahead log: a write is made durable by flushing the
  memtable into an SST in the store, and awaited. A blob write is one or more atomic write
  batches, then that flush; ``write_blob`` returns only after it. The manifest is one ``put``
  made durable likewise, so a version is committed exactly when ``m/<version>`` exists, and
  its blobs were durable before. Uncommitted versions are never read. (With a WAL, every
  snapshot would add WAL files that each newly opened reader replays, up to thousands: an
  L0 flush per write keeps opening a reader cheap.)
- A version is committed at most once: a second, different manifest for it is refused, even
  from a process that took the manifests database over by fencing.
- Uncommitting a version (pruning deletes its manifest) is durable before its blobs go;
  blob deletions ride along with the database's next flush.
- Range reads fetch only the chunks that cover the range.
- A reader sees a database as of when it was opened. Readers are cached per process and
  reopened whenever a version is asked for that was not known to be committed when the reader
  opened, so a cached reader never serves data older than the commit it reads.

Limits (by design of the one-writer rule):

- Pruning: the committing process deletes manifests at once, and blob data in the databases
  it writes itself (everything, in a single-process runtime). Blob databases written by other
  processes are pruned by their own writer at its next ``write_blob`` (the same rule, read from
  the manifests database), so they hold at most one more snapshot than ``retain``; databases
  of blob names no longer written (a worker id gone after scaling down) keep their last
  versions until a writer of that name appears again.
- Only one process should commit and prune (the coordinator). A second committing process
  fences the first, which reopens at its next write (the newest writer wins); neither can
  replace a committed version.
- Tested on local directories and on S3 (a loopback S3 server); other SlateDB object stores
  (``gs://``, ``az://``) are passed through to SlateDB untested.
- The binding (slatedb 0.17) copies bytes into Rust one Python loop step per byte (~5 MB/s);
  on first use this module replaces that copy with a single ``memmove``, after checking on a
  sample that it produces the same bytes (see :func:`_speed_up_byte_lowering`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import importlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from malstrom.snapshot._backend import BlobInfo, Manifest, Persistence
from malstrom.snapshot._errors import (
    StorageError,
    StoreUnavailableError,
    _brief,
    _UnavailableIsNotDamage,
    unavailable,
)
from malstrom.snapshot._local import _BLOB_NAME, _VERSION_DIGITS, _check_range

__all__ = ["SlateDbPersistence"]

log = logging.getLogger("malstrom.snapshot")

T = TypeVar("T")

REMOTE_SCHEMES = ("s3", "gs", "az")
CHUNK = 1 << 20  # bytes per value: blobs are split so range reads fetch little
_BATCH_BYTES = 64 << 20  # bytes per write batch (bounded memory for large blobs)
# SlateDB retries failed object store calls forever by default: a rejected credential would
# hang every call until the timeout. Give up after a few (the store client retries beneath).
_RETRIES = 3


def _sdb() -> Any:
    try:
        return importlib.import_module("slatedb.uniffi")
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "SlateDbPersistence needs the 'slatedb' package: pip install 'malstrom[slatedb]'"
        ) from e


# -- the binding's byte copy ------------------------------------------------------------------

_patch_lock = threading.Lock()
_patched = False


def _speed_up_byte_lowering() -> None:
    """Copy bytes into the binding's Rust buffers with one memmove instead of one Python loop
    step per byte (the generated code manages ~5 MB/s; this brings writes to the store's own
    speed). Applied once per process and only if a round trip through the patched code gives
    back exactly the bytes put in; otherwise the binding is left as it is.
    """
    global _patched
    with _patch_lock:
        if _patched:
            return
        _patched = True
        try:
            gen = importlib.import_module("slatedb.uniffi._slatedb_uniffi.slatedb")
            builder = gen._UniffiRustBufferBuilder
            original = builder.write
        except (ImportError, AttributeError):  # pragma: no cover - another binding layout
            return

        def write(self: Any, value: Any) -> None:
            src = value if isinstance(value, bytes) else bytes(value)
            n = len(src)
            with self._reserve(n):
                if n:
                    dst = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
                    ctypes.memmove(dst + self.rbuf.len, src, n)

        builder.write = write
        try:
            b = builder()
            sample = bytes(range(256)) * 5
            b.write(sample)
            b.write(b"")
            b.write(memoryview(b"tail"))
            rbuf = b.finalize()
            try:
                ok = ctypes.string_at(rbuf.data, rbuf.len) == sample + b"tail"
            finally:
                rbuf.free()
        except Exception:  # pragma: no cover - defensive
            ok = False
        if not ok:  # pragma: no cover - defensive
            builder.write = original
            log.debug("slatedb binding: fast byte copy self-check failed; left unpatched")


# -- one event loop and the open databases, per process ---------------------------------------


class _Process:
    """This process's SlateDB state: an event loop thread running the binding's coroutines,
    the object stores, the writers (at most one per database: a second would fence the first)
    and cached readers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="malstrom-slatedb", daemon=True
        )
        self.thread.start()
        self.lock = threading.RLock()
        self.stores: dict[Any, Any] = {}
        self.writers: dict[tuple[Any, str], Any] = {}
        self.readers: dict[tuple[Any, str], tuple[Any, frozenset[int]]] = {}
        self.closed = False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        if self.closed:
            coro.close()
            raise StoreUnavailableError(f"{what}: SlateDB was shut down (the process is exiting)")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise StoreUnavailableError(f"{what}: no answer within {timeout:g} s") from None

    def close_handles(
        self, keep: Callable[[tuple[Any, str]], bool] = lambda key: False, timeout: float = 10.0
    ) -> None:
        """Shut down the writers and readers whose key ``keep`` rejects (all by default).

        Every write was already awaited to durability, so this loses nothing; it stops the
        handles' background work and releases the databases.
        """
        with self.lock:
            handles = [self.writers.pop(k) for k in list(self.writers) if not keep(k)]
            handles += [self.readers.pop(k)[0] for k in list(self.readers) if not keep(k)]
        if not handles:
            return

        async def shut() -> None:
            await asyncio.wait_for(
                asyncio.gather(*(h.shutdown() for h in handles), return_exceptions=True),
                timeout,
            )

        with contextlib.suppress(Exception):
            self.run(shut(), timeout + 5, "closing SlateDB")

    def close_all(self) -> None:
        """At exit: shut every handle down, then stop the loop."""
        if os.getpid() != self.pid:  # a forked child: the loop thread and handles are not ours
            return
        self.close_handles()
        self.closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


_proc: _Process | None = None
_proc_lock = threading.Lock()


def _process() -> _Process:
    global _proc
    with _proc_lock:
        if _proc is None or _proc.pid != os.getpid():  # new process (or a fork): start afresh
            _proc = _Process()
            atexit.register(_proc.close_all)
        return _proc


# -- coroutines run on the loop ---------------------------------------------------------------


def _everything() -> Any:
    return _sdb().KeyRange(start=None, start_inclusive=False, end=None, end_inclusive=False)


async def _scan(handle: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
    it = await handle.scan_prefix(prefix, _everything())
    out: list[tuple[bytes, bytes]] = []
    while True:
        batch = await it.next_batch(1024)
        if not batch:
            return out
        out.extend((bytes(kv.key), bytes(kv.value)) for kv in batch)


async def _durable(db: Any, handles: list[Any]) -> None:
    sdb = _sdb()  # no WAL (see _WRITER_SETTINGS): durable once the memtable is in L0
    await db.flush_with_options(sdb.FlushOptions(flush_type=sdb.FlushType.MEM_TABLE))
    for h in handles:
        await h.await_durable()


def _reader_builder(db_path: str, store: Any) -> Any:
    """A read-only reader that follows the latest state and never writes (no checkpoints)."""
    sdb = _sdb()
    builder = sdb.DbReaderBuilder(db_path, store)
    builder.with_reader_mode(sdb.ReaderMode.FOLLOW_LATEST())
    builder.with_options(
        sdb.ReaderOptions(
            manifest_poll_interval_ms=1_000,
            checkpoint_lifetime_ms=600_000,
            max_memtable_bytes=64 << 20,
            skip_wal_replay=False,  # writers keep no WAL; replay in case a database has one
            object_store_max_retries=_RETRIES,
        )
    )
    return builder


# Writer settings. Without a WAL, a write is made durable by flushing the memtable into an
# L0 table: readers then open from the manifest and read only the tables holding the keys
# they ask for. (With the WAL, every snapshot would add WAL files that each new reader
# replays in full until the next L0 flush, up to 4096 of them: readers get slower with every
# snapshot.) L0 may hold 32 tables, so that flushes rarely wait for a compaction.
_WRITER_SETTINGS: dict[str, Any] = {
    "wal_enabled": False,
    "l0_max_ssts": 32,
    "object_store_max_retries": _RETRIES,
}
# On a local directory polling is free: compact and notice compactions within 100 ms, so a
# flush never waits long for the manifest a compaction changed. On an object store every
# poll is a request, so SlateDB's defaults (seconds) stay.
_LOCAL_WRITER_SETTINGS: dict[str, Any] = {
    "compactor_options.poll_interval": "100ms",
    "compactor_options.worker.compactions_poll_interval": "100ms",
    "compactor_options.commit_compacted_interval": "100ms",
    "manifest_poll_interval": "100ms",
}


def _writer_builder(db_path: str, store: Any, local: bool) -> Any:
    sdb = _sdb()
    builder = sdb.DbBuilder(db_path, store)
    settings = sdb.Settings.default()
    chosen = {**_WRITER_SETTINGS, **(_LOCAL_WRITER_SETTINGS if local else {})}
    for key, value in chosen.items():
        settings.set(key, json.dumps(value))
    builder.with_settings(settings)
    return builder


def _is_missing_db(e: BaseException) -> bool:
    """A reader opened on a database that was never written."""
    sdb = _sdb()
    return isinstance(e, sdb.Error.Data) and "failed to find latest" in str(e)


def _is_fenced(e: BaseException) -> bool:
    return isinstance(e, _sdb().Error.Closed)


def _version_part(version: int) -> bytes:
    if not isinstance(version, int) or not 0 <= version < 10**_VERSION_DIGITS:
        raise ValueError(f"snapshot version must be an int in [0, 1e20), got {version!r}")
    return b"%020d" % version


def _head_key(version: int, tag: bytes = b"") -> bytes:
    return b"h/" + _version_part(version) + (b"/" + tag if tag else b"")


def _chunk_key(version: int, index: int, tag: bytes = b"") -> bytes:
    return b"c/" + _version_part(version) + (b"/" + tag if tag else b"") + b"/%010d" % index


def _parse_head_key(key: bytes) -> tuple[int, bytes]:
    """(version, tag) of a header key made by :func:`_head_key`."""
    version, _, tag = key[2:].partition(b"/")
    return int(version), tag


class SlateDbPersistence(_UnavailableIsNotDamage, Persistence):
    """Keeps snapshots in SlateDB databases under a local directory or an object store URL.

    ``path_or_url`` is a directory (created if missing; also ``file:///PATH``) or
    ``s3://BUCKET/PREFIX`` (``gs://``, ``az://`` are handed to SlateDB as they are). ``options``
    are object store settings for remote URLs, given to SlateDB's ``ObjectStoreBuilder``
    (for example ``aws_endpoint``, ``aws_allow_http``, ``aws_access_key_id``,
    ``aws_secret_access_key``, ``aws_region``); unset ones come from the environment as SlateDB
    reads it. ``timeout`` bounds every database operation in seconds. Keeps the newest
    ``retain`` committed versions (0 keeps all). See the module docs for the layout: one
    database for manifests, one per blob name, because SlateDB has one writer per database.
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        *,
        retain: int = 3,
        timeout: float = 300.0,
        **options: Any,
    ) -> None:
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.retain = retain
        self.timeout = float(timeout)
        self.options = {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()
        }
        text = os.fspath(path_or_url)
        scheme, sep, rest = text.partition("://")
        if sep and scheme.lower() in REMOTE_SCHEMES:
            bucket, _, prefix = rest.partition("/")
            if not bucket:
                raise ValueError(f"SlateDbPersistence URL {text!r} has no bucket")
            self.location = text
            self._store_url = f"{scheme.lower()}://{bucket}"
            self._base = prefix.strip("/")
        elif not sep or scheme.lower() == "file":
            if self.options:
                raise ValueError(f"{text!r}: local SlateDB stores take no options")
            root = Path(rest if sep else text).expanduser().resolve()
            root.mkdir(parents=True, exist_ok=True)
            self.location = str(root)
            self._store_url = "file:///"
            self._base = str(root).strip("/")
        else:
            raise ValueError(
                f"SlateDbPersistence {text!r}: use a directory, file:///PATH or s3://BUCKET/PREFIX"
            )
        self._committed: set[int] = set()
        self._rows_memo: list[tuple[bytes, bytes]] | None = None

    def __repr__(self) -> str:
        return f"SlateDbPersistence({self.location!r}, retain={self.retain})"

    def close(self) -> None:
        """Release this process's writers and readers of this location (they reopen when
        used again). Not needed for durability: every write is durable when it returns."""
        store, manifests, blobs = self._store_key, self._manifests, self._path("blobs") + "/"
        _process().close_handles(
            lambda key: key[0] != store or not (key[1] == manifests or key[1].startswith(blobs))
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_committed"] = set()
        state["_rows_memo"] = None
        return state

    # -- databases ----------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self._base, *parts) if p)

    @property
    def _manifests(self) -> str:
        return self._path("manifests")

    def _blob_db(self, name: str) -> tuple[str, bytes]:
        """The database of blob ``name`` and the tag of its keys there (see module docs)."""
        if not isinstance(name, str) or not _BLOB_NAME.fullmatch(name):
            raise ValueError(
                f"invalid blob name {name!r}: use letters, digits, '_', '.' and '-' only"
            )
        base, _, tag = name.partition(".")
        if not base:
            base, tag = name, ""
        return self._path("blobs", "b-" + base), tag.encode()

    @property
    def _store_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self._store_url, tuple(sorted(self.options.items())))

    def _store(self, proc: _Process) -> Any:
        key = self._store_key
        with proc.lock:
            store = proc.stores.get(key)
            if store is None:
                sdb = _sdb()
                _speed_up_byte_lowering()
                try:
                    if self._store_url == "file:///":
                        store = sdb.ObjectStore.resolve("file:///")
                    else:
                        builder = sdb.ObjectStoreBuilder.from_url(self._store_url)
                        for k, v in self.options.items():
                            builder.with_config(k, v)
                        store = builder.build()
                except sdb.Error as e:
                    raise ValueError(f"cannot configure SlateDB store {self.location}: {e}") from e
                proc.stores[key] = store
            return store

    def _run(self, proc: _Process, coro: Coroutine[Any, Any, T], what: str) -> T:
        return proc.run(coro, self.timeout, f"SlateDB at {self.location} while {what}")

    def _unavailable(self, e: BaseException, what: str) -> StoreUnavailableError:
        return unavailable(f"SlateDB at {self.location}", what, e)

    def _writer(self, proc: _Process, db_path: str, what: str) -> Any:
        """This process's writer of ``db_path`` (opened once: a second would fence the first)."""
        key = (self._store_key, db_path)
        with proc.lock:
            db = proc.writers.get(key)
            if db is None:
                builder = _writer_builder(db_path, self._store(proc), self._store_url == "file:///")
                try:
                    db = self._run(proc, builder.build(), what)
                except _sdb().Error as e:
                    raise self._unavailable(e, what) from e
                proc.writers[key] = db
            return db

    def _drop_writer(self, proc: _Process, db_path: str) -> None:
        with proc.lock:
            db = proc.writers.pop((self._store_key, db_path), None)
        if db is not None:
            with contextlib.suppress(Exception):
                self._run(proc, db.shutdown(), "closing a fenced writer")

    def _write(self, db_path: str, op: Callable[[Any], Coroutine[Any, Any, T]], what: str) -> T:
        """Run ``op(writer)`` on the loop; if another process fenced our writer, reopen (which
        fences it in turn: the newest writer wins) and retry once."""
        proc = _process()
        for attempt in (1, 2):
            db = self._writer(proc, db_path, what)
            try:
                return self._run(proc, op(db), what)
            except _sdb().Error as e:
                if not _is_fenced(e) or attempt == 2:
                    raise self._unavailable(e, what) from e
                log.warning(
                    "SlateDB %s/%s: this process's writer was fenced by another one; reopening",
                    self.location,
                    db_path,
                )
                self._drop_writer(proc, db_path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _with_fresh_reader(
        self, db_path: str, op: Callable[[Any], Coroutine[Any, Any, T]], what: str
    ) -> T | None:
        """Open a reader (it sees everything made durable so far), run ``op``, close it.
        None if the database was never written."""
        proc = _process()
        store = self._store(proc)

        async def go() -> T | None:
            sdb = _sdb()
            try:
                reader = await _reader_builder(db_path, store).build()
            except sdb.Error as e:
                if _is_missing_db(e):
                    return None
                raise
            try:
                return await op(reader)
            finally:
                with contextlib.suppress(Exception):
                    await reader.shutdown()

        return self._run(proc, go(), what)

    def _blob_reader(self, proc: _Process, db_path: str, version: int, fresh: bool) -> Any:
        """A cached reader of a blob database that was opened after ``version`` committed.

        None if the database was never written.
        """
        key = (self._store_key, db_path)
        with proc.lock:
            cached = proc.readers.get(key)
        if cached is not None and version in cached[1] and not fresh:
            return cached[0]
        seen = frozenset(self._committed)  # known committed *before* the reader opens
        store = self._store(proc)

        async def open_reader() -> Any:
            sdb = _sdb()
            try:
                return await _reader_builder(db_path, store).build()
            except sdb.Error as e:
                if _is_missing_db(e):
                    return None
                raise

        reader = self._run(proc, open_reader(), f"opening {db_path}")
        if reader is None:
            return None
        with proc.lock:
            old = proc.readers.get(key)
            proc.readers[key] = (reader, seen)
        if old is not None:
            asyncio.run_coroutine_threadsafe(old[0].shutdown(), proc.loop)
        return reader

    def _forget_readers(self) -> None:
        """Close this store's cached blob readers: the next reads see the databases afresh."""
        proc = _process()
        with proc.lock:
            mine = [k for k in proc.readers if k[0] == self._store_key]
            stale = [proc.readers.pop(k)[0] for k in mine]
        for reader in stale:
            asyncio.run_coroutine_threadsafe(reader.shutdown(), proc.loop)

    # -- Persistence --------------------------------------------------------------------------

    def verify(self, version: int) -> Manifest:
        """Check every blob of ``version`` against its manifest, reading the databases afresh
        (never through a reader cached before), so damage done since is seen."""
        self._forget_readers()
        result: Manifest = super().verify(version)
        return result

    def prune(self) -> None:
        """As :meth:`Persistence.prune`, reading the manifests database once, not twice."""
        self._rows_memo = self._manifest_rows()
        try:
            super().prune()
        finally:
            self._rows_memo = None

    def _manifest_rows(self) -> list[tuple[bytes, bytes]]:
        memo = getattr(self, "_rows_memo", None)
        if memo is not None:
            return memo
        what = "listing committed versions"
        try:
            rows = self._with_fresh_reader(self._manifests, lambda r: _scan(r, b"m/"), what)
        except _sdb().Error as e:
            raise self._unavailable(e, what) from e
        return rows or []

    def committed_versions(self) -> list[int]:
        """Versions whose manifest is stored, ascending (read afresh from the manifests DB)."""
        versions = sorted(int(k[2:]) for k, _ in self._manifest_rows())
        self._committed.update(versions)
        return versions

    def _require_committed(self, version: int) -> None:
        if version in self._committed:
            return
        try:
            self._read_manifest(version)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"snapshot version {version} is not committed in {self.location}"
            ) from None
        self._committed.add(version)

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Write blob ``name`` of ``version`` into this process's database for ``name``,
        durably; then drop this database's versions that pruning has retired."""
        db_path, tag = self._blob_db(name)
        hkey = _head_key(version, tag)
        view = memoryview(data).cast("B")
        size = len(view)
        crc = zlib.crc32(view)
        chunks = (size + CHUNK - 1) // CHUNK
        header = json.dumps({"size": size, "crc": crc, "chunk": CHUNK}).encode()

        async def op(db: Any) -> None:
            sdb = _sdb()
            batch = sdb.WriteBatch()
            old = await db.get(hkey)
            if old is not None:  # rewritten before its commit: drop chunks beyond the new end
                for i in range(chunks, _header_chunks(old)):
                    batch.delete(_chunk_key(version, i, tag))
            batch.put(hkey, header)
            handles, pending = [], 0
            for i in range(chunks):
                part = view[i * CHUNK : (i + 1) * CHUNK]
                batch.put(_chunk_key(version, i, tag), part)
                pending += len(part)
                if pending >= _BATCH_BYTES:
                    handles.append(await db.write(batch))
                    batch, pending = sdb.WriteBatch(), 0
            handles.append(await db.write(batch))
            await _durable(db, handles)

        self._write(db_path, op, f"writing blob {name!r} of version {version}")
        try:
            self._collect_own(db_path, writing=version)
        except Exception as e:  # the blob is written; pruning catches up at the next write
            cause = e.__cause__
            if isinstance(cause, (_sdb().Error.Data, _sdb().Error.Invalid)):
                # Damaged tables: the database's flushes and compactions stall on them, so
                # the next write would hang. Say so now, naming the damage.
                raise StorageError(
                    f"SlateDB at {self.location}: database {db_path} is damaged: "
                    f"{_brief(cause)} (found while pruning after writing blob {name!r} of "
                    f"version {version})"
                ) from e
            log.warning("SlateDB %s: pruning %s failed: %s", self.location, db_path, e)
        return BlobInfo(size, crc)

    def _doomed(self, versions: set[int], committed: list[int]) -> set[int]:
        """Of ``versions``, those that :meth:`prune` removes given ``committed``."""
        keep = set(committed[-self.retain :]) if self.retain > 0 else set(committed)
        newest = committed[-1] if committed else -1
        return {v for v in versions if v not in keep and (v in committed or v < newest)}

    def _collect_own(self, db_path: str, writing: int) -> None:
        """Delete the versions of a blob database this process writes that pruning retired
        (never ``writing``, the version just written: it is not committed yet)."""
        own = self._own_versions(db_path)
        doomed = self._doomed(set(own), self.committed_versions())
        doomed.discard(writing)
        if doomed:
            self._delete_blob_versions(db_path, {v: own[v] for v in doomed})

    def _own_versions(self, db_path: str) -> dict[int, dict[bytes, int]]:
        """Version -> {tag: chunk count} of a blob database written by this process."""

        async def op(db: Any) -> dict[int, dict[bytes, int]]:
            out: dict[int, dict[bytes, int]] = {}
            for k, v in await _scan(db, b"h/"):
                version, tag = _parse_head_key(k)
                out.setdefault(version, {})[tag] = _header_chunks(v)
            return out

        return self._write(db_path, op, f"listing versions of {db_path}")

    def _delete_blob_versions(self, db_path: str, versions: dict[int, dict[bytes, int]]) -> None:
        """Delete versions of a blob database this process writes, in one atomic batch
        (``versions``: version -> {tag: chunk count}, as :meth:`_own_versions` lists them).

        Not flushed: the deletion becomes durable with the next write (or at exit). Until
        then a crash only brings retired data back, and the next pruning deletes it again.
        """

        async def op(db: Any) -> None:
            batch = _sdb().WriteBatch()
            for v, tags in sorted(versions.items()):
                for tag, chunks in tags.items():
                    batch.delete(_head_key(v, tag))
                    for i in range(chunks):
                        batch.delete(_chunk_key(v, i, tag))
            await db.write(batch)

        self._write(db_path, op, f"deleting versions {sorted(versions)} of {db_path}")

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Read blob ``name`` of committed ``version``, or only ``[offset, offset+length)``,
        fetching only the chunks that cover the range.

        Raises :class:`FileNotFoundError` if the version is not committed or lacks the blob.
        """
        _check_range(offset, length)
        db_path, tag = self._blob_db(name)
        hkey = _head_key(version, tag)
        self._require_committed(version)
        what = f"reading blob {name!r} of version {version}"
        proc = _process()

        async def op(reader: Any) -> bytes | None:
            raw = await reader.get(hkey)
            if raw is None:
                return None
            head = json.loads(raw)
            size, chunk = int(head["size"]), int(head["chunk"])
            end = size if length < 0 else min(size, offset + length)
            if offset >= end:
                return b""
            first, last = offset // chunk, (end - 1) // chunk
            parts = []
            for i in range(first, last + 1):
                part = await reader.get(_chunk_key(version, i, tag))
                if part is None:
                    raise FileNotFoundError(
                        f"version {version}, blob {name!r}: chunk {i} is missing"
                    )
                parts.append(part)
            start = offset - first * chunk
            return b"".join(parts)[start : start + end - offset]

        for attempt in (1, 2):
            try:
                reader = self._blob_reader(proc, db_path, version, fresh=attempt == 2)
                data = None if reader is None else self._run(proc, op(reader), what)
            except _sdb().Error as e:
                if attempt == 1:  # e.g. files of a long-cached reader were compacted away
                    continue
                if isinstance(e, (_sdb().Error.Data, _sdb().Error.Invalid)):
                    raise OSError(f"SlateDB at {self.location}: {what}: {e}") from e
                raise self._unavailable(e, what) from e
            if data is None:
                raise FileNotFoundError(
                    f"snapshot version {version} has no blob {name!r} in {self.location}"
                )
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _store_manifest(self, version: int, data: bytes) -> None:
        """Commit ``version``: one durable ``put`` of its manifest, at most once.

        The writer is the database's only one (SlateDB fences any other), so reading before
        writing is race-free: a second, different manifest for a committed version (from a
        coordinator that lost its writer to another one and reopened) is refused.
        """
        key = b"m/" + _version_part(version)
        payload = bytes(data)

        async def op(db: Any) -> None:
            existing = await db.get(key)
            if existing is not None:
                if bytes(existing) == payload:
                    return  # a retry of a commit that landed
                raise RuntimeError(
                    f"snapshot version {version} is already committed in {self.location} with "
                    "another manifest; refusing to replace a committed snapshot (is another "
                    "coordinator writing to this store?)"
                )
            await _durable(db, [await db.put(key, payload)])

        self._write(self._manifests, op, f"committing version {version}")
        self._committed.add(version)

    def _read_manifest(self, version: int) -> bytes:
        """The raw manifest of ``version`` (FileNotFoundError if it is not committed)."""
        key = b"m/" + _version_part(version)
        what = f"reading the manifest of version {version}"

        async def op(reader: Any) -> bytes | None:
            value = await reader.get(key)
            return None if value is None else bytes(value)

        try:
            raw = self._with_fresh_reader(self._manifests, op, what)
        except _sdb().Error as e:
            if isinstance(e, (_sdb().Error.Data, _sdb().Error.Invalid)):
                raise OSError(f"SlateDB at {self.location}: {what}: {e}") from e
            raise self._unavailable(e, what) from e
        if raw is None:
            raise FileNotFoundError(
                f"snapshot version {version} is not committed in {self.location}"
            )
        return raw

    def _written_here(self) -> list[str]:
        """Blob databases this process holds the writer of."""
        proc = _process()
        prefix = self._path("blobs", "b-")
        with proc.lock:
            return [
                path
                for (store, path) in proc.writers
                if store == self._store_key and path.startswith(prefix)
            ]

    def _delete_version(self, version: int) -> None:
        """Uncommit ``version`` (delete its manifest), then delete its blobs in the databases
        this process writes; other writers drop theirs at their next write."""
        key = b"m/" + _version_part(version)

        async def op(db: Any) -> None:
            await _durable(db, [await db.delete(key)])

        self._write(self._manifests, op, f"deleting version {version}")
        self._committed.discard(version)
        for db_path in self._written_here():
            own = self._own_versions(db_path)
            if version in own:
                self._delete_blob_versions(db_path, {version: own[version]})

    def _all_versions(self) -> list[int]:
        """Committed versions and the versions held by blob databases this process writes."""
        versions = {int(k[2:]) for k, _ in self._manifest_rows()}
        for db_path in self._written_here():
            versions.update(self._own_versions(db_path))
        return sorted(versions)


def _header_chunks(raw: bytes) -> int:
    """Number of chunks a stored blob header declares (0 if it is unreadable)."""
    try:
        head = json.loads(raw)
        size, chunk = int(head["size"]), int(head["chunk"])
    except Exception:
        return 0
    return (size + chunk - 1) // chunk if chunk > 0 else 0
