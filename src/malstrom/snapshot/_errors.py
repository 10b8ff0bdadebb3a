"""Errors of snapshot stores: calls that failed or hung (any backend), unreachable or
refusing remote stores (object stores, SlateDB)."""

from __future__ import annotations

from typing import Any

from malstrom.errors import StorageError, StoreUnavailableError

__all__ = ["StorageError", "StoreUnavailableError", "unavailable"]


def _brief(e: BaseException) -> str:
    """The first line of a store client's error (they append long debug dumps), bounded."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else type(e).__name__
    return first if len(first) <= 400 else first[:397] + "..."


def unavailable(store: str, what: str, e: BaseException) -> StoreUnavailableError:
    """A :class:`StoreUnavailableError` naming ``store``, saying plainly when the cause is a
    rejected credential (HTTP 401/403)."""
    text = str(e)
    if any(code in text for code in ("401 Unauthorized", "403 Forbidden")):
        return StoreUnavailableError(f"{store} refused the credentials while {what}: {_brief(e)}")
    return StoreUnavailableError(f"{store} failed while {what}: {_brief(e)}")


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
