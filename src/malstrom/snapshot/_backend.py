"""The persistence backend protocol: versioned blobs, written then committed atomically.

A snapshot *version* is a set of named blobs (one per worker, plus anything the coordinator
adds) and a :class:`Manifest` that lists them with their sizes and CRC-32 checksums. A version
exists for readers only once :meth:`Persistence.commit` has stored its manifest atomically;
blobs of uncommitted versions are never read and are removed by pruning.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from malstrom.errors import SnapshotCorruptError, SnapshotFormatError, SnapshotsDamagedError

__all__ = [
    "FORMAT_VERSION",
    "BlobInfo",
    "Manifest",
    "Persistence",
    "SnapshotCorruptError",
    "SnapshotFormatError",
    "SnapshotsDamagedError",
]

log = logging.getLogger("malstrom.snapshot")

FORMAT_VERSION = 1
"""Snapshot format written by this release. A snapshot with another format is refused."""


@dataclass(frozen=True)
class BlobInfo:
    """Size and CRC-32 of a stored blob, recorded in the manifest to detect damage."""

    size: int
    crc32: int


@dataclass
class Manifest:
    """What a committed version holds: its blobs and the coordinator's metadata."""

    version: int
    blobs: dict[str, BlobInfo]
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": self.format,
                "version": self.version,
                "blobs": {n: [b.size, b.crc32] for n, b in sorted(self.blobs.items())},
                "meta": self.meta,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            fmt = int(raw["format"])
        except Exception as e:  # any parse problem means the manifest is damaged
            raise SnapshotCorruptError(f"unreadable snapshot manifest: {e}") from e
        if fmt != FORMAT_VERSION:
            raise SnapshotFormatError(
                f"snapshot format {fmt} is not supported by this malstrom "
                f"(it reads format {FORMAT_VERSION}); refusing to restore from it"
            )
        try:
            return cls(
                version=int(raw["version"]),
                blobs={n: BlobInfo(int(s), int(c)) for n, (s, c) in raw["blobs"].items()},
                meta=dict(raw.get("meta", {})),
                format=fmt,
            )
        except Exception as e:
            raise SnapshotCorruptError(f"malformed snapshot manifest: {e}") from e


class Persistence(ABC):
    """Where snapshots live. Subclass it to add a storage backend.

    Every method may be called from any worker process of the job; implementations keep no
    state that matters across calls except what they store.
    """

    retain: int = 3
    """How many committed versions to keep; older ones are pruned after each commit."""

    @property
    def stores(self) -> bool:
        """False for backends that keep nothing (barriers still run)."""
        return True

    @abstractmethod
    def committed_versions(self) -> list[int]:
        """All committed versions, ascending (damaged ones included)."""

    @abstractmethod
    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        """Store a blob of an uncommitted version durably; returns its size and CRC-32."""

    @abstractmethod
    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        """Read a blob (or the byte range ``[offset, offset+length)``) of a committed version."""

    @abstractmethod
    def _store_manifest(self, version: int, data: bytes) -> None:
        """Atomically make ``version`` committed with this manifest."""

    @abstractmethod
    def _read_manifest(self, version: int) -> bytes:
        """The raw manifest of a committed version."""

    @abstractmethod
    def _delete_version(self, version: int) -> None:
        """Remove a version's blobs and manifest (committed or not)."""

    @abstractmethod
    def _all_versions(self) -> list[int]:
        """Every version with any stored data, committed or not."""

    def commit(self, manifest: Manifest) -> None:
        """Commit ``manifest.version`` atomically, then prune old and partial versions."""
        self._store_manifest(manifest.version, manifest.to_bytes())
        self.prune()

    def manifest(self, version: int) -> Manifest:
        """The manifest of a committed version (raises on damage or foreign format)."""
        try:
            raw = self._read_manifest(version)
        except (OSError, KeyError) as e:
            raise SnapshotCorruptError(f"version {version}: manifest unreadable: {e}") from e
        return Manifest.from_bytes(raw)

    def verify(self, version: int) -> Manifest:
        """Check that every blob of ``version`` is present, complete and intact."""
        import zlib

        m = self.manifest(version)
        for name, info in m.blobs.items():
            try:
                data = self.read_blob(version, name)
            except Exception as e:
                raise SnapshotCorruptError(
                    f"version {version}: blob {name!r} unreadable: {e}"
                ) from e
            if len(data) != info.size or zlib.crc32(data) != info.crc32:
                raise SnapshotCorruptError(
                    f"version {version}: blob {name!r} is damaged "
                    f"(size {len(data)} / expected {info.size}, checksum mismatch)"
                )
        return m

    def latest_restorable(self) -> Manifest | None:
        """The newest committed version that verifies; damaged ones are skipped with a warning.

        A snapshot in a foreign format raises :class:`SnapshotFormatError`: it is never misread
        and never silently skipped (that would lose the job's progress).
        """
        for version in reversed(self.committed_versions()):
            try:
                return self.verify(version)
            except SnapshotCorruptError as e:
                log.warning("skipping damaged snapshot: %s", e)
        return None

    def restore_point(self, after: int | None = None) -> Manifest | None:
        """The snapshot a job resumes from: the newest committed version above ``after``
        (all if None) that verifies; damaged ones are skipped with a warning.

        None if there is no such version; :class:`SnapshotsDamagedError` if there are some
        but every one is damaged; :class:`SnapshotFormatError` for a foreign format.
        """
        versions = [v for v in self.committed_versions() if after is None or v > after]
        damage: dict[int, str] = {}
        for version in reversed(versions):
            try:
                return self.verify(version)
            except SnapshotCorruptError as e:
                log.warning("skipping damaged snapshot: %s", e)
                damage[version] = str(e)
        if damage:
            raise SnapshotsDamagedError(repr(self), damage)
        return None

    def last_committed(self) -> int | None:
        """The newest committed version, or None."""
        versions = self.committed_versions()
        return versions[-1] if versions else None

    def prune(self) -> None:
        """Keep the newest ``retain`` committed versions; drop older and abandoned partial ones."""
        committed = self.committed_versions()
        keep = set(committed[-self.retain :]) if self.retain > 0 else set(committed)
        newest = committed[-1] if committed else -1
        for v in self._all_versions():
            # A partial version above the newest commit may still be being written.
            if v not in keep and (v in committed or v < newest):
                self._delete_version(v)
