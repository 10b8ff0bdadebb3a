"""Choosing a persistence backend from a command-line string."""

from __future__ import annotations

from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._local import LocalDiskPersistence
from malstrom.snapshot._memory import NoPersistence

__all__ = ["persistence_from_url"]


def persistence_from_url(url: str | None, retain: int = 3) -> Persistence:
    """``None``/``"none"`` -> NoPersistence; a path or ``file://`` URL -> LocalDiskPersistence."""
    if url is None or url.lower() == "none":
        return NoPersistence()
    if url.startswith("file://"):
        return LocalDiskPersistence(url[len("file://") :], retain=retain)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"persistence {url!r}: the {scheme}:// scheme is not supported yet; "
            "use a local directory (or file://PATH)"
        )
    return LocalDiskPersistence(url, retain=retain)
