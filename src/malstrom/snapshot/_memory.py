"""Backends that live in the process: :class:`NoPersistence` and :class:`InMemoryPersistence`."""

from __future__ import annotations

import threading
import zlib

from malstrom.snapshot._backend import BlobInfo, Persistence

__all__ = ["InMemoryPersistence", "NoPersistence"]


def _check_range(offset: int, length: int) -> None:
    """Refuse a negative offset or a length below -1 (-1 means "to the end")."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length < -1:
        raise ValueError(f"length must be >= 0 or -1 (to the end), got {length}")


class NoPersistence(Persistence):
    """Keeps nothing: snapshot barriers still run (their cost is measurable), nothing is stored.

    A job run with it always starts from scratch.
    """

    def __repr__(self) -> str:
        return "NoPersistence()"

    @property
    def stores(self) -> bool:
        """Always False: this backend stores nothing."""
        return False

    def committed_versions(self) -> list[int]:
        """Always empty: nothing is ever committed."""
        return []

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Compute the blob's size and CRC-32 and discard it."""
        return BlobInfo(len(data), zlib.crc32(data))

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Always raises :class:`KeyError`: no version is ever committed."""
        raise KeyError(f"NoPersistence stores nothing (version {version}, blob {name!r})")

    def _store_manifest(self, version: int, data: bytes) -> None:
        """Discard the manifest: the version is not kept."""

    def _read_manifest(self, version: int) -> bytes:
        """Always raises :class:`KeyError`: no version is ever committed."""
        raise KeyError(f"NoPersistence stores nothing (version {version})")

    def _delete_version(self, version: int) -> None:
        """Nothing to delete."""

    def _all_versions(self) -> list[int]:
        """Always empty: nothing is stored."""
        return []


class InMemoryPersistence(Persistence):
    """Keeps snapshots in dictionaries of this process; meant for tests.

    One instance may be passed to several runs in the same process: a later run resumes from
    the last version an earlier run committed. Snapshots are lost when the process exits, and
    worker processes do not share it (use :class:`~malstrom.snapshot.LocalDiskPersistence`).
    Thread-safe.
    """

    def __init__(self, retain: int = 3) -> None:
        """Keep the newest ``retain`` committed versions (0 keeps all)."""
        if retain < 0:
            raise ValueError(f"retain must be >= 0, got {retain}")
        self.retain = retain
        self._lock = threading.Lock()
        self._blobs: dict[int, dict[str, bytes]] = {}
        self._manifests: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"InMemoryPersistence(retain={self.retain})"

    def committed_versions(self) -> list[int]:
        """All versions whose manifest is stored, ascending."""
        with self._lock:
            return sorted(self._manifests)

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Store a copy of ``data`` as blob ``name`` of ``version``."""
        data = bytes(data)
        info = BlobInfo(len(data), zlib.crc32(data))
        with self._lock:
            self._blobs.setdefault(version, {})[name] = data
        return info

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Read blob ``name`` of committed ``version``, or its range ``[offset, offset+length)``.

        Raises :class:`KeyError` if the version is not committed or has no such blob.
        """
        _check_range(offset, length)
        with self._lock:
            if version not in self._manifests:
                raise KeyError(f"version {version} is not committed")
            try:
                data = self._blobs.get(version, {})[name]
            except KeyError:
                raise KeyError(f"version {version} has no blob {name!r}") from None
        return data[offset:] if length < 0 else data[offset : offset + length]

    def _store_manifest(self, version: int, data: bytes) -> None:
        """Commit ``version``: storing its manifest is a single dictionary assignment."""
        with self._lock:
            self._manifests[version] = bytes(data)

    def _read_manifest(self, version: int) -> bytes:
        """The stored manifest of ``version``; :class:`KeyError` if it is not committed."""
        with self._lock:
            try:
                return self._manifests[version]
            except KeyError:
                raise KeyError(f"version {version} is not committed") from None

    def _delete_version(self, version: int) -> None:
        """Forget ``version``: manifest first, so it is never seen committed without blobs."""
        with self._lock:
            self._manifests.pop(version, None)
            self._blobs.pop(version, None)

    def _all_versions(self) -> list[int]:
        """Every version with a blob or a manifest, ascending."""
        with self._lock:
            return sorted(self._blobs.keys() | self._manifests.keys())
