"""Snapshots in a local (or shared, POSIX) directory: :class:`LocalDiskPersistence`.

Layout::

    <root>/v00000000000000000007/      one directory per version (zero-padded to 20 digits)
        w0.1733140000000000.blob       one file per blob (worker 0's, of that job attempt)
        w1.1733140000000000.blob
        MANIFEST                       present only once the version is committed

Every file is written to a temporary file in the same directory, flushed and fsynced, renamed
into place with :func:`os.replace` and the directory is fsynced: a file is either absent or
complete, and a version is either committed (``MANIFEST`` present) or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

from malstrom.snapshot._backend import BlobInfo, Persistence

__all__ = ["LocalDiskPersistence"]

_MANIFEST = "MANIFEST"
_BLOB_SUFFIX = ".blob"
_VERSION_DIGITS = 20
_VERSION_DIR = re.compile(r"v(\d{20})")
_BLOB_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _fsync_dir(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable (no-op where unsupported)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(directory: Path, target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` durably and atomically (temp file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _check_range(offset: int, length: int) -> None:
    """Refuse a negative offset or a length below -1 (-1 means "to the end")."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length < -1:
        raise ValueError(f"length must be >= 0 or -1 (to the end), got {length}")


class LocalDiskPersistence(Persistence):
    """Keeps snapshots in a directory, created (with its parents) if missing.

    Several worker processes may write blobs of the same version concurrently; all writes
    are durable (fsync) and atomic (rename), so a crash leaves either a committed version or
    a partial one that is never read and is pruned later. A new instance on the same path
    (for example after a restart) sees the versions committed before.
    """

    def __init__(self, path: str | os.PathLike[str], retain: int = 3) -> None:
        """Use directory ``path``; keep the newest ``retain`` committed versions (0 keeps all)."""
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        self.retain = retain
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalDiskPersistence({str(self.path)!r}, retain={self.retain})"

    # -- layout -------------------------------------------------------------------------------

    def _version_dir(self, version: int) -> Path:
        """The directory of ``version``; ValueError if it is not a non-negative int."""
        if not isinstance(version, int) or not 0 <= version < 10**_VERSION_DIGITS:
            raise ValueError(f"snapshot version must be an int in [0, 1e20), got {version!r}")
        return self.path / f"v{version:0{_VERSION_DIGITS}d}"

    def _blob_path(self, version: int, name: str) -> Path:
        """The file of blob ``name``; ValueError for names outside ``[A-Za-z0-9_.-]``."""
        if not isinstance(name, str) or not _BLOB_NAME.fullmatch(name):
            raise ValueError(
                f"invalid blob name {name!r}: use letters, digits, '_', '.' and '-' only"
            )
        return self._version_dir(version) / (name + _BLOB_SUFFIX)

    def _ensure_version_dir(self, version: int) -> Path:
        """Create the version's directory if needed (safe when processes race to do it)."""
        vdir = self._version_dir(version)
        if not vdir.is_dir():
            vdir.mkdir(exist_ok=True)
            _fsync_dir(self.path)
        return vdir

    # -- Persistence --------------------------------------------------------------------------

    def _all_versions(self) -> list[int]:
        """Every version directory, committed or not, ascending; other entries are ignored."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        versions = []
        for entry in entries:
            m = _VERSION_DIR.fullmatch(entry.name)
            if m and entry.is_dir():
                versions.append(int(m.group(1)))
        return sorted(versions)

    def committed_versions(self) -> list[int]:
        """Versions whose directory holds a ``MANIFEST``, ascending."""
        return [v for v in self._all_versions() if (self._version_dir(v) / _MANIFEST).is_file()]

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Write blob ``name`` of ``version`` durably and atomically; returns size and CRC-32."""
        target = self._blob_path(version, name)
        vdir = self._ensure_version_dir(version)
        _atomic_write(vdir, target, data)
        return BlobInfo(len(data), zlib.crc32(data))

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Read blob ``name`` of committed ``version``, or only ``[offset, offset+length)``.

        Raises :class:`FileNotFoundError` if the version is not committed or lacks the blob.
        """
        _check_range(offset, length)
        target = self._blob_path(version, name)
        if not (target.parent / _MANIFEST).is_file():
            raise FileNotFoundError(f"snapshot version {version} is not committed in {self.path}")
        with open(target, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read(length)

    def _store_manifest(self, version: int, data: bytes) -> None:
        """Commit ``version`` by writing its ``MANIFEST`` atomically."""
        vdir = self._ensure_version_dir(version)
        _atomic_write(vdir, vdir / _MANIFEST, data)

    def _read_manifest(self, version: int) -> bytes:
        """The raw ``MANIFEST`` of ``version`` (FileNotFoundError if it is not committed)."""
        return (self._version_dir(version) / _MANIFEST).read_bytes()

    def _delete_version(self, version: int) -> None:
        """Remove the version: its ``MANIFEST`` first (uncommit), then the whole directory."""
        vdir = self._version_dir(version)
        with contextlib.suppress(FileNotFoundError):
            (vdir / _MANIFEST).unlink()
            _fsync_dir(vdir)
        _rmtree(vdir)


def _ignore_missing(func: object, path: str, exc: BaseException) -> None:
    """``shutil.rmtree`` error handler: a file or directory already gone is fine."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _rmtree(directory: Path) -> None:
    """Remove ``directory`` and its contents; entries removed concurrently are ignored."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=_ignore_missing)
    else:
        shutil.rmtree(directory, onerror=lambda f, p, ei: _ignore_missing(f, p, ei[1]))
