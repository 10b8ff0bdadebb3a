"""Snapshots: where a job's state is stored so it can restart or rescale without loss.

Pick a backend and pass it to the runtime (``persistence=...``):

- :class:`NoPersistence` keeps nothing (barriers still run); a job always starts afresh.
- :class:`InMemoryPersistence` keeps snapshots in this process; reuse one instance across
  runs in tests to resume a job.
- :class:`LocalDiskPersistence` keeps them in a directory (created if missing) that survives
  restarts; every worker process must see the same directory.
- :class:`ObjectStorePersistence` keeps them in an object store: ``s3://``, ``gs://``,
  ``az://`` or ``file://`` URLs, one object per blob, a version committed by putting its
  manifest object (``pip install 'malstrom[objectstore]'``).
- :class:`SlateDbPersistence` keeps them in SlateDB databases in a directory or on S3: one
  database per writer, since SlateDB allows a single writer per database
  (``pip install 'malstrom[slatedb]'``).

The command line's ``--persistence URL`` picks one: ``none``, a directory or ``file://PATH``
(LocalDisk), ``s3://``, ``gs://``, ``az://`` (ObjectStore), ``slatedb://PATH`` or
``slatedb+s3://BUCKET/PREFIX`` (SlateDB). The last two load their optional dependency on
first use; a store that cannot be reached raises ``StoreUnavailableError`` naming its URL.

Each snapshot is a *version*: the workers write their blobs, then the coordinator commits a
manifest atomically. Only committed versions are ever restored, so a crash mid-snapshot
resumes from the previous one; a damaged version is skipped with a warning, and a snapshot
written in another format raises :class:`SnapshotFormatError` instead of being misread. If
every snapshot is damaged the job refuses to start (:class:`SnapshotsDamagedError` names the
versions) rather than silently starting over; ``fresh_start=True`` (``--fresh-start``) starts
over on purpose. A store call that fails or hangs while the job runs fails the attempt with a
:class:`StorageError` naming the backend, its location and the cause.
After each commit only the newest ``retain`` versions (default 3) are kept.

Subclass :class:`Persistence` to add another storage backend.
"""

from malstrom._lazy import lazy_exports as _lazy_exports
from malstrom.snapshot._backend import (
    Persistence,
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotsDamagedError,
)
from malstrom.snapshot._errors import StorageError
from malstrom.snapshot._local import LocalDiskPersistence
from malstrom.snapshot._memory import InMemoryPersistence, NoPersistence

__all__ = [
    "InMemoryPersistence",
    "LocalDiskPersistence",
    "NoPersistence",
    "ObjectStorePersistence",
    "Persistence",
    "SlateDbPersistence",
    "SnapshotCorruptError",
    "SnapshotFormatError",
    "SnapshotsDamagedError",
    "StorageError",
    "StoreUnavailableError",
]

# Backends with optional dependencies load on first use, so importing malstrom.snapshot
# never needs obstore or slatedb. They are importable from here like the others.
__getattr__, __dir__ = _lazy_exports(
    globals(),
    {
        "ObjectStorePersistence": "malstrom.snapshot._objectstore",
        "SlateDbPersistence": "malstrom.snapshot._slatedb",
        "StoreUnavailableError": "malstrom.snapshot._errors",
    },
)
