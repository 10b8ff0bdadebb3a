"""The bytes of one worker's part of a snapshot version, addressable by (operator, key group).

Layout of a worker blob::

    b"MALSTROM" | u32 format | u64 index length | index (msgpack) | segments (pickle)

The index maps each operator to either ``{"k": [[group, offset, length], ...]}`` (keyed state,
one pickled ``[(key, state), ...]`` list per key group) or ``{"w": [offset, length]}``
(per-worker state). A worker restoring at another parallelism reads the index of every old
worker's blob and then only the segments of the key groups it now owns.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgpack

from malstrom.engine.context import ENDED_KEY
from malstrom.errors import OperatorError
from malstrom.keyed.partitioners import group_owner, key_group, rendezvous_select
from malstrom.snapshot._backend import FORMAT_VERSION, Manifest, Persistence, SnapshotFormatError
from malstrom.types import Partitioner

__all__ = ["NullSnapshotWriter", "SnapshotReader", "SnapshotWriter", "blob_worker", "worker_blob"]

_MAGIC = b"MALSTROM"
_HEADER = struct.Struct(">8sIQ")
_UNGROUPED = -1  # keys with no stable hash: every restoring worker reads and filters them


def worker_blob(worker_id: int, attempt: int | None = None) -> str:
    """The blob name holding one worker's state: ``w<worker>.<attempt>``.

    The attempt is part of the name so that a late write by a worker of a failed attempt
    never replaces the blob of the same version written by a later attempt (the manifest
    lists the blobs of the attempt that committed it). ``w<worker>`` alone is read too.
    """
    return f"w{worker_id}" if attempt is None else f"w{worker_id}.{attempt}"


def blob_worker(name: str) -> int | None:
    """The worker id of a blob named by :func:`worker_blob` (None for other names)."""
    if not name.startswith("w"):
        return None
    head, _, tail = name[1:].partition(".")
    if not head.isdigit() or (tail and not tail.isdigit()):
        return None
    return int(head)


def _dumps(op: str, obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception as e:
        raise OperatorError(
            op, f"state cannot be serialized for a snapshot: {type(e).__name__}: {e}"
        ) from e


class SnapshotWriter:
    """Collects the state of every operator of one worker as a barrier passes them."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self._segments: list[bytes] = []
        self._pos = 0
        self._index: dict[str, Any] = {}
        self.ended: set[str] = set()

    def _add(self, data: bytes) -> list[int]:
        off = self._pos
        self._segments.append(data)
        self._pos += len(data)
        return [off, len(data)]

    def put_keyed(self, operator: str, states: Mapping[Any, Any]) -> None:
        """Store a keyed state map, grouped by key group."""
        # Group keys first and build one group's (key, state) pairs at a time, so a snapshot
        # of a million keys never holds a million extra tuples at once.
        groups: dict[int, list[Any]] = {}
        for k in states:
            try:
                g = key_group(k)
            except TypeError:
                g = _UNGROUPED
            bucket = groups.get(g)
            if bucket is None:
                groups[g] = [k]
            else:
                bucket.append(k)
        entries = []
        for g in sorted(groups):
            keys = groups.pop(g)
            entries.append([g, *self._add(_dumps(operator, [(k, states[k]) for k in keys]))])
        self._index[operator] = {"k": entries}

    def put_worker(self, operator: str, value: Any) -> None:
        """Store state that belongs to this worker rather than to a key."""
        self._index[operator] = {"w": self._add(_dumps(operator, value))}

    def to_bytes(self) -> bytes:
        self.put_worker(ENDED_KEY, sorted(self.ended))
        index = msgpack.packb(self._index, use_bin_type=True)
        return b"".join([_HEADER.pack(_MAGIC, FORMAT_VERSION, len(index)), index, *self._segments])


class NullSnapshotWriter(SnapshotWriter):
    """For backends that store nothing: barriers still flow and align, state is not encoded."""

    def put_keyed(self, operator: str, states: Mapping[Any, Any]) -> None:
        pass

    def put_worker(self, operator: str, value: Any) -> None:
        pass


class SnapshotReader:
    """Reads what one worker owns out of a committed version, lazily and by key group."""

    def __init__(self, persistence: Persistence, manifest: Manifest) -> None:
        self._p = persistence
        self.manifest = manifest
        self.version = manifest.version
        self._blobs = sorted(
            (wid, n) for n in manifest.blobs if (wid := blob_worker(n)) is not None
        )
        self._indexes: dict[str, tuple[int, dict[str, Any]]] = {}

    def _index(self, blob: str) -> tuple[int, dict[str, Any]]:
        cached = self._indexes.get(blob)
        if cached is None:
            head = self._p.read_blob(self.version, blob, 0, _HEADER.size)
            magic, fmt, n = _HEADER.unpack(head)
            if magic != _MAGIC:
                raise SnapshotFormatError(
                    f"blob {blob!r} of version {self.version} is not a malstrom snapshot"
                )
            if fmt != FORMAT_VERSION:
                raise SnapshotFormatError(
                    f"blob {blob!r} has snapshot format {fmt}; this malstrom reads {FORMAT_VERSION}"
                )
            index = msgpack.unpackb(
                self._p.read_blob(self.version, blob, _HEADER.size, n),
                raw=False,
                strict_map_key=False,
            )
            cached = (_HEADER.size + n, index)
            self._indexes[blob] = cached
        return cached

    def _load(self, blob: str, base: int, off: int, length: int) -> Any:
        return pickle.loads(self._p.read_blob(self.version, blob, base + off, length))

    def keyed(
        self,
        operator: str,
        owner: Partitioner | None,
        me: int,
        workers: Sequence[int],
    ) -> Iterator[tuple[Any, Any]]:
        """The ``(key, state)`` pairs of ``operator`` that worker ``me`` owns under ``owner``.

        ``owner=None`` means the state is not partitioned by key (it stays where it was made):
        only this worker's own blob is read.
        """
        if owner is None:
            orphaned = [
                wid
                for wid, blob in self._blobs
                if wid not in workers and self._index(blob)[1].get(operator, {}).get("k")
            ]
            if orphaned:
                raise OperatorError(
                    operator,
                    f"its state is keyed in place (key_local or a custom re-keying) and was "
                    f"held by worker(s) {orphaned}, which do not exist now (workers "
                    f"{list(workers)}): it cannot move to another worker. Restore with the "
                    "snapshot's parallelism, or key the stream with key_distribute",
                )
        for wid, blob in self._blobs:
            if owner is None and wid != me:
                continue
            base, index = self._index(blob)
            entry = index.get(operator)
            if entry is None or "k" not in entry:
                continue
            for g, off, length in entry["k"]:
                if owner is rendezvous_select and g != _UNGROUPED:
                    if group_owner(g, workers) != me:
                        continue
                    yield from self._load(blob, base, off, length)
                elif owner is None:
                    yield from self._load(blob, base, off, length)
                elif len(workers) == 1:
                    yield from self._load(blob, base, off, length)  # one worker owns all
                else:
                    for k, s in self._load(blob, base, off, length):
                        if owner(k, workers) == me:
                            yield k, s

    def worker_scoped(self, operator: str) -> dict[int, Any]:
        """Per-worker state of ``operator``, by the id of the worker that wrote it."""
        out: dict[int, Any] = {}
        for wid, blob in self._blobs:
            base, index = self._index(blob)
            entry = index.get(operator)
            if entry is not None and "w" in entry:
                out[wid] = self._load(blob, base, *entry["w"])
        return out
