"""Errors shared by the remote persistence backends (object stores, SlateDB)."""

from __future__ import annotations

from typing import Any

__all__ = ["StoreUnavailableError"]


class StoreUnavailableError(RuntimeError):
    """The snapshot store could not be reached or refused the request (network, credentials,
    missing bucket, timeout). The message names the store's URL.

    It is deliberately not an :class:`OSError`: a store that cannot be reached says nothing
    about whether a snapshot is damaged, so restoring never skips a version because of it
    (it would silently fall back to an older snapshot); the job fails and is retried instead.
    """


class _UnavailableIsNotDamage:
    """Mixin for remote backends: :meth:`verify` lets :class:`StoreUnavailableError` through.

    :meth:`Persistence.verify` reports any failure to read a blob as damage, which would make
    :meth:`~Persistence.latest_restorable` skip a perfectly good version during an outage.
    """

    def verify(self, version: int) -> Any:
        """As :meth:`Persistence.verify`; an unreachable store raises, it is not damage."""
        from malstrom.snapshot._backend import SnapshotCorruptError

        try:
            return super().verify(version)  # type: ignore[misc]
        except SnapshotCorruptError as e:
            if isinstance(e.__cause__, StoreUnavailableError):
                raise e.__cause__ from None
            raise
