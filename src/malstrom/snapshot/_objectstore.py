"""Snapshots in an object store: :class:`ObjectStorePersistence` (S3, GCS, Azure, local files).

Built on `obstore <https://developmentseed.org/obstore/>`_ (Python bindings of the Rust
``object_store`` crate); install it with ``pip install 'malstrom[objectstore]'``.

Layout under the URL's prefix (the same as :class:`~malstrom.snapshot.LocalDiskPersistence`)::

    v00000000000000000007/w0.1733140000000000.blob  one object per blob, written by the
    v00000000000000000007/w1.1733140000000000.blob  worker (and job attempt) that made it
    v00000000000000000007/MANIFEST     the commit: present only once the version is committed

Guarantees:

- A single-object put is atomic in every object store (a reader sees the old object, the
  whole new one or nothing), so a version is committed exactly when its ``MANIFEST`` object
  exists. Blobs are put first and the coordinator puts the manifest only after every worker's
  put returned, so a committed version never lacks a blob; a crash before the manifest leaves
  a partial version that is never read and is pruned later.
- The manifest is put with ``mode="create"`` (a conditional put, If-None-Match): a version is
  committed at most once; a second, different manifest for it is refused rather than
  silently replacing a committed snapshot. Stores without conditional puts fall back to a
  plain put (with a warning).
- S3, GCS and Azure Blob Storage are strongly consistent for reads and listings after a
  write, which the listing of committed versions relies on.
- ``file://`` URLs use obstore's local store (write to a staging file, then rename) and are
  then fsynced (file, version directory, root), so a returned write is durable. A crash in
  the instant between rename and fsync can leave a torn object: in a blob that is harmless
  (the version is not committed yet), in a manifest it is detected (unreadable manifest) and
  the previous version is restored.
- Blob reads use ranged GETs, so a restoring worker fetches a blob's index and only the
  segments it owns. Blobs over 5 MB are uploaded in parts (multipart upload, completed
  atomically); a process killed mid-upload can leave an incomplete upload in the bucket,
  invisible to readers: a lifecycle rule that aborts incomplete uploads cleans those up.
- Tested against S3 (a loopback S3 server) and local files; ``gs://`` and ``az://`` go through
  the same obstore calls but were not run against those services.
- A store that cannot be reached (network, timeout, bad credentials, missing bucket) raises
  :class:`~malstrom.snapshot._errors.StoreUnavailableError` naming the URL; restoring never
  mistakes that for a damaged snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from malstrom.snapshot._backend import BlobInfo, Persistence
from malstrom.snapshot._errors import (
    StoreUnavailableError,
    _brief,
    _UnavailableIsNotDamage,
    unavailable,
)
from malstrom.snapshot._local import _BLOB_NAME, _VERSION_DIGITS, _check_range, _fsync_dir

__all__ = ["ObjectStorePersistence"]

log = logging.getLogger("malstrom.snapshot")

SCHEMES = ("s3", "gs", "az", "file")
_MANIFEST = "MANIFEST"
_BLOB_SUFFIX = ".blob"
_VERSION_DIR = re.compile(r"v(\d{20})")

# Fail in seconds, not minutes, when a store is unreachable (obstore's defaults retry for up
# to 3 minutes). Both can be overridden with the ``client_options`` / ``retry_config`` options.
_DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {"connect_timeout": "5s", "timeout": "300s"}
_DEFAULT_RETRY_CONFIG: dict[str, Any] = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}


def _import_obstore() -> Any:
    try:
        import obstore
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ObjectStorePersistence needs the 'obstore' package: "
            "pip install 'malstrom[objectstore]'"
        ) from e
    return obstore


def _remove_staging_leftovers(directory: Path) -> None:
    """``file://`` only: obstore stages writes as ``NAME#N`` files, which its listing hides; a
    crash mid-write can leave one behind. Remove them and the emptied version directory."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if "#" in entry.name and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        with contextlib.suppress(OSError):
            directory.rmdir()


class ObjectStorePersistence(_UnavailableIsNotDamage, Persistence):
    """Keeps snapshots in an object store: ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``,
    ``az://CONTAINER/PREFIX`` (see obstore for Azure URL forms) or ``file:///PATH``.

    ``options`` go to :func:`obstore.store.from_url` (for example ``endpoint``,
    ``access_key_id``, ``secret_access_key``, ``region``, ``client_options={"allow_http":
    True}``, ``retry_config``); credentials not given are taken from the environment as
    obstore does. The instance holds only the URL and options and connects lazily, so it
    pickles to worker processes (the options must be picklable; they are never shown in
    ``repr`` or in error messages). Keeps the newest ``retain`` committed versions (0 keeps
    all).
    """

    def __init__(self, url: str, *, retain: int = 3, **options: Any) -> None:
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in SCHEMES:
            raise ValueError(
                f"ObjectStorePersistence URL {url!r}: use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
                "az://CONTAINER/PREFIX or file:///PATH"
            )
        self.retain = retain
        self.url = url
        self.options = dict(options)
        self._local_root: str | None = None
        if scheme.lower() == "file":
            if self.options:
                raise ValueError(f"{url!r}: file:// URLs take no options, got {sorted(options)}")
            root = Path(rest).expanduser().resolve()
            root.mkdir(parents=True, exist_ok=True)
            self._local_root = str(root)
        self._store_handle: Any = None
        self._committed: set[int] = set()

    def __repr__(self) -> str:
        return f"ObjectStorePersistence({self.url!r}, retain={self.retain})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store_handle"] = None  # reconnect lazily in the receiving process
        state["_committed"] = set()
        return state

    # -- connection ---------------------------------------------------------------------------

    @property
    def _store(self) -> Any:
        if self._store_handle is None:
            self._store_handle = self._connect()
        return self._store_handle

    def _connect(self) -> Any:
        _import_obstore()
        from obstore.exceptions import BaseError
        from obstore.store import LocalStore, from_url

        if self._local_root is not None:
            return LocalStore(self._local_root, mkdir=True, automatic_cleanup=True)
        opts = dict(self.options)
        client = {**_DEFAULT_CLIENT_OPTIONS, **(opts.pop("client_options", None) or {})}
        retry = opts.pop("retry_config", None) or _DEFAULT_RETRY_CONFIG
        try:
            make: Any = from_url  # options are the user's: checked by obstore, not by mypy
            return make(self.url, client_options=client, retry_config=retry, **opts)
        except (BaseError, ValueError, TypeError) as e:
            raise ValueError(f"cannot configure object store {self.url}: {_brief(e)}") from e

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn obstore failures into :class:`StoreUnavailableError` naming the URL.

        :class:`FileNotFoundError` (a missing object) passes through unchanged.
        """
        obstore = _import_obstore()
        exc = obstore.exceptions
        try:
            yield
        except FileNotFoundError:
            raise
        except (exc.PermissionDeniedError, exc.UnauthenticatedError) as e:
            raise StoreUnavailableError(
                f"object store {self.url} refused the credentials while {what}: {_brief(e)}"
            ) from e
        except (exc.BaseError, OSError) as e:
            raise unavailable(f"object store {self.url}", what, e) from e

    def _sync_local(self, key: str) -> None:
        """For ``file://`` stores: make a just-written object durable (obstore does not fsync)."""
        if self._local_root is None or os.name != "posix":
            return
        path = Path(self._local_root, key)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
        _fsync_dir(Path(self._local_root))

    # -- layout -------------------------------------------------------------------------------

    @staticmethod
    def _version_dir(version: int) -> str:
        if not isinstance(version, int) or not 0 <= version < 10**_VERSION_DIGITS:
            raise ValueError(f"snapshot version must be an int in [0, 1e20), got {version!r}")
        return f"v{version:0{_VERSION_DIGITS}d}"

    def _blob_key(self, version: int, name: str) -> str:
        if not isinstance(name, str) or not _BLOB_NAME.fullmatch(name):
            raise ValueError(
                f"invalid blob name {name!r}: use letters, digits, '_', '.' and '-' only"
            )
        return f"{self._version_dir(version)}/{name}{_BLOB_SUFFIX}"

    def _manifest_key(self, version: int) -> str:
        return f"{self._version_dir(version)}/{_MANIFEST}"

    def _listing(self) -> dict[int, list[str]]:
        """Every stored object under a version prefix, by version; other objects are ignored."""
        obstore = _import_obstore()
        out: dict[int, list[str]] = {}
        with self._errors("listing snapshots"):
            for batch in obstore.list(self._store, None, chunk_size=1000):
                for meta in batch:
                    head, _, tail = meta["path"].partition("/")
                    m = _VERSION_DIR.fullmatch(head)
                    if m and tail:
                        out.setdefault(int(m.group(1)), []).append(meta["path"])
        return out

    def _require_committed(self, version: int) -> None:
        """FileNotFoundError unless ``version`` is committed (positive answers are cached:
        a committed version number is never reused for other data)."""
        if version in self._committed:
            return
        obstore = _import_obstore()
        with self._errors(f"checking version {version}"):
            try:
                obstore.head(self._store, self._manifest_key(version))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"snapshot version {version} is not committed in {self.url}"
                ) from None
        self._committed.add(version)

    # -- Persistence --------------------------------------------------------------------------

    def _all_versions(self) -> list[int]:
        """Every version with any stored object, committed or not, ascending."""
        versions = set(self._listing())
        if self._local_root is not None:  # also directories holding only staging leftovers
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self._local_root):
                    m = _VERSION_DIR.fullmatch(entry.name)
                    if m and entry.is_dir():
                        versions.add(int(m.group(1)))
        return sorted(versions)

    def committed_versions(self) -> list[int]:
        """Versions whose ``MANIFEST`` object exists, ascending."""
        committed = sorted(
            v
            for v, paths in self._listing().items()
            if f"{self._version_dir(v)}/{_MANIFEST}" in paths
        )
        self._committed.update(committed)
        return committed

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Put blob ``name`` of ``version`` (atomic; multipart for large blobs)."""
        obstore = _import_obstore()
        key = self._blob_key(version, name)
        with self._errors(f"writing blob {name!r} of version {version}"):
            obstore.put(self._store, key, data)
        self._sync_local(key)
        return BlobInfo(len(data), zlib.crc32(data))

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Read blob ``name`` of committed ``version``, or only ``[offset, offset+length)``.

        Raises :class:`FileNotFoundError` if the version is not committed or lacks the blob.
        """
        obstore = _import_obstore()
        _check_range(offset, length)
        key = self._blob_key(version, name)
        self._require_committed(version)
        what = f"reading blob {name!r} of version {version}"
        if length == 0:
            with self._errors(what):
                obstore.head(self._store, key)  # FileNotFoundError if the blob is missing
            return b""
        try:
            with self._errors(what):
                if length < 0 and offset == 0:
                    data = obstore.get(self._store, key).bytes()
                elif length < 0:
                    data = obstore.get(self._store, key, options={"range": {"offset": offset}})
                    data = data.bytes()
                else:
                    data = obstore.get_range(self._store, key, start=offset, length=length)
        except StoreUnavailableError:
            if offset == 0:
                raise
            # Stores refuse a range that starts at or past the end; the contract says b"".
            with self._errors(what):
                size = obstore.head(self._store, key)["size"]
            if offset >= size:
                return b""
            raise
        return bytes(data)

    def _store_manifest(self, version: int, data: bytes) -> None:
        """Commit ``version``: put its ``MANIFEST`` object, at most once (conditional put)."""
        obstore = _import_obstore()
        exc = obstore.exceptions
        key = self._manifest_key(version)
        with self._errors(f"committing version {version}"):
            try:
                obstore.put(self._store, key, data, mode="create")
            except exc.AlreadyExistsError:
                # A retried put whose first attempt landed, or a second committer.
                existing = bytes(obstore.get(self._store, key).bytes())
                if existing != bytes(data):
                    raise RuntimeError(
                        f"snapshot version {version} is already committed in {self.url} with "
                        "another manifest; refusing to replace a committed snapshot (is another "
                        "coordinator writing to this store?)"
                    ) from None
            except (exc.NotSupportedError, NotImplementedError):
                log.warning(
                    "object store %s has no conditional put; committing version %d with a "
                    "plain put",
                    self.url,
                    version,
                )
                obstore.put(self._store, key, data)
        self._sync_local(key)
        self._committed.add(version)

    def _read_manifest(self, version: int) -> bytes:
        """The raw ``MANIFEST`` of ``version`` (FileNotFoundError if it is not committed)."""
        obstore = _import_obstore()
        with self._errors(f"reading the manifest of version {version}"):
            return bytes(obstore.get(self._store, self._manifest_key(version)).bytes())

    def _delete_version(self, version: int) -> None:
        """Remove the version: its ``MANIFEST`` first (uncommit), then every other object."""
        obstore = _import_obstore()
        vdir = self._version_dir(version)
        self._committed.discard(version)
        with self._errors(f"deleting version {version}"):
            with contextlib.suppress(FileNotFoundError):
                obstore.delete(self._store, f"{vdir}/{_MANIFEST}")
            if self._local_root is not None:
                with contextlib.suppress(OSError):
                    _fsync_dir(Path(self._local_root, vdir))
            paths = [m["path"] for batch in obstore.list(self._store, vdir) for m in batch]
            try:
                obstore.delete(self._store, paths)  # one bulk request where the store has it
            except FileNotFoundError:  # removed concurrently (another pruner): go one by one
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        obstore.delete(self._store, path)
        if self._local_root is not None:
            _remove_staging_leftovers(Path(self._local_root, vdir))
