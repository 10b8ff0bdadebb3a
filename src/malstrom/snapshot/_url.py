"""Choosing a persistence backend from a command-line string."""

from __future__ import annotations

from malstrom.snapshot._backend import Persistence
from malstrom.snapshot._local import LocalDiskPersistence
from malstrom.snapshot._memory import NoPersistence

__all__ = ["persistence_from_url"]

_OBJECT_STORES = ("s3", "gs", "az")


def persistence_from_url(url: str | None, retain: int = 3) -> Persistence:
    """The backend a ``--persistence`` string names.

    - ``None`` / ``"none"``: :class:`NoPersistence`
    - a path, or ``file://PATH``: :class:`LocalDiskPersistence`
    - ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``, ``az://CONTAINER/PREFIX``:
      :class:`~malstrom.snapshot.ObjectStorePersistence` (credentials and endpoint from the
      environment, as obstore reads them, e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT``)
    - ``slatedb://PATH`` (``slatedb:///abs/path`` or ``slatedb://relative/path``) or
      ``slatedb+s3://BUCKET/PREFIX``: :class:`~malstrom.snapshot.SlateDbPersistence`
    """
    if url is None or url.lower() == "none":
        return NoPersistence()
    if url.startswith("file://"):
        return LocalDiskPersistence(url[len("file://") :], retain=retain)
    if "://" not in url:
        return LocalDiskPersistence(url, retain=retain)
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in _OBJECT_STORES:
        from malstrom.snapshot._objectstore import ObjectStorePersistence

        return ObjectStorePersistence(url, retain=retain)
    if scheme == "slatedb" or scheme.startswith("slatedb+"):
        from malstrom.snapshot._slatedb import SlateDbPersistence

        inner = scheme[len("slatedb+") :] if "+" in scheme else ""
        if not rest:
            raise ValueError(f"persistence {url!r}: slatedb:// needs a path")
        return SlateDbPersistence(f"{inner}://{rest}" if inner else rest, retain=retain)
    raise ValueError(
        f"persistence {url!r}: the {scheme}:// scheme is not supported; use a directory "
        "(or file://PATH), s3://, gs://, az://, slatedb://PATH or slatedb+s3://BUCKET/PREFIX"
    )
