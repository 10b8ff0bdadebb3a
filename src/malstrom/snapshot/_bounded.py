"""Snapshot store calls with a time bound: :class:`BoundedPersistence`.

A worker that waits on its snapshot store is silent to the coordinator; if the store hangs
(a damaged database whose flush never returns, a network store that stopped answering), the
coordinator would report a hung worker after its heartbeat timeout and never say why. So
while a job runs, every store call of a worker (and the coordinator's commits) is bounded by
``STORAGE_SHARE`` of the heartbeat timeout: a call that takes longer fails the attempt with a
:class:`~malstrom.snapshot.StorageError` naming the backend, its location and the call,
before the heartbeat would. The worker keeps sending heartbeats while it waits (``tick``).

Calls run on one helper thread per bounded store; after a call timed out the thread may still
be stuck in it, so the store counts as broken and later calls fail at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from malstrom.snapshot._backend import BlobInfo, Manifest, Persistence
from malstrom.snapshot._errors import StorageError

__all__ = ["STORAGE_SHARE", "BoundedPersistence"]

T = TypeVar("T")

STORAGE_SHARE = 0.8
"""Share of the heartbeat timeout that one snapshot store call may take while a job runs."""

_TICK = 0.5  # seconds between ``tick`` calls while waiting


class _Caller:
    """Runs calls on a daemon helper thread and waits for each at most ``timeout`` seconds."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.broken: str | None = None

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def call(
        self, fn: Callable[[], T], timeout: float, what: str, tick: Callable[[], None] | None
    ) -> T:
        if self.broken is not None:
            raise StorageError(f"{what}: not tried, an earlier call hung ({self.broken})")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="malstrom-store", daemon=True)
            self._thread.start()
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return fut.result(max(0.0, min(_TICK, left)))
            except FutureTimeout:
                if left <= 0:
                    self.broken = f"{what}: no answer within {timeout:g} s"
                    raise StorageError(
                        f"{what}: no answer within {timeout:g} s (a snapshot store call may take "
                        f"at most {STORAGE_SHARE:g} x the heartbeat timeout while a job runs)"
                    ) from None
                if tick is not None:
                    tick()


class BoundedPersistence(Persistence):
    """Wraps a backend: each call runs with a time bound (see the module docs).

    ``tick`` is called about twice a second while a call is waited for (workers send a
    heartbeat from it). Errors a call raises pass through unchanged.
    """

    def __init__(
        self, inner: Persistence, timeout: float, tick: Callable[[], None] | None = None
    ) -> None:
        self.inner = inner
        self.timeout = timeout
        self.tick = tick
        self.retain = inner.retain
        self._caller = _Caller()

    def __repr__(self) -> str:
        return repr(self.inner)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return self._caller.call(fn, self.timeout, f"{self.inner!r}: {what}", self.tick)

    @property
    def stores(self) -> bool:
        return self.inner.stores

    def committed_versions(self) -> list[int]:
        return self._call("listing committed versions", self.inner.committed_versions)

    def write_blob(self, version: int, name: str, data: bytes) -> BlobInfo:
        return self._call(
            f"writing blob {name!r} of version {version}",
            lambda: self.inner.write_blob(version, name, data),
        )

    def read_blob(self, version: int, name: str, offset: int = 0, length: int = -1) -> bytes:
        return self._call(
            f"reading blob {name!r} of version {version}",
            lambda: self.inner.read_blob(version, name, offset, length),
        )

    def manifest(self, version: int) -> Manifest:
        return self._call(
            f"reading the manifest of version {version}", lambda: self.inner.manifest(version)
        )

    def verify(self, version: int) -> Manifest:
        return self._call(f"verifying version {version}", lambda: self.inner.verify(version))

    def commit(self, manifest: Manifest) -> None:
        self._call(f"committing version {manifest.version}", lambda: self.inner.commit(manifest))

    def prune(self) -> None:
        self._call("pruning old versions", self.inner.prune)

    def _store_manifest(self, version: int, data: bytes) -> None:
        self._call(
            f"committing version {version}", lambda: self.inner._store_manifest(version, data)
        )

    def _read_manifest(self, version: int) -> bytes:
        return self._call(
            f"reading the manifest of version {version}",
            lambda: self.inner._read_manifest(version),
        )

    def _delete_version(self, version: int) -> None:
        self._call(f"deleting version {version}", lambda: self.inner._delete_version(version))

    def _all_versions(self) -> list[int]:
        return self._call("listing versions", self.inner._all_versions)
