"""Snapshots: where a job's state is stored so it can restart or rescale without loss.

Pick a backend and pass it to the runtime (``persistence=...``):

- :class:`NoPersistence` keeps nothing (barriers still run); a job always starts afresh.
- :class:`InMemoryPersistence` keeps snapshots in this process; reuse one instance across
  runs in tests to resume a job.
- :class:`LocalDiskPersistence` keeps them in a directory (created if missing) that survives
  restarts; every worker process must see the same directory.

Each snapshot is a *version*: the workers write their blobs, then the coordinator commits a
manifest atomically. Only committed versions are ever restored, so a crash mid-snapshot
resumes from the previous one; a damaged version is skipped with a warning, and a snapshot
written in another format raises :class:`SnapshotFormatError` instead of being misread.
After each commit only the newest ``retain`` versions (default 3) are kept.

Subclass :class:`Persistence` to add another storage backend.
"""

from malstrom.snapshot._backend import Persistence, SnapshotCorruptError, SnapshotFormatError
from malstrom.snapshot._local import LocalDiskPersistence
from malstrom.snapshot._memory import InMemoryPersistence, NoPersistence

__all__ = [
    "InMemoryPersistence",
    "LocalDiskPersistence",
    "NoPersistence",
    "Persistence",
    "SnapshotCorruptError",
    "SnapshotFormatError",
]
