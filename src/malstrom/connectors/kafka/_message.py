"""KafkaMessage and the default (de)serializers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["KafkaMessage", "default_deserialize", "default_serialize", "resolve_deserializer"]


class KafkaMessage(NamedTuple):
    """One Kafka record, as :class:`KafkaSource` emits it (the record's value).

    ``key`` and ``value`` are the raw bytes (or None), unless ``deserialize`` turned the value
    into something else; ``timestamp_ms`` is the Kafka timestamp (create or log-append time)
    in milliseconds, or None if the record has none; ``headers`` is a list of
    ``(name, bytes)`` pairs, or None. ``error`` is set only on records that failed to
    deserialize when the source's ``on_error="emit"``: then ``value`` is the raw bytes.
    """

    key: bytes | None
    value: Any
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    headers: list[tuple[str, bytes]] | None
    error: str | None = None


def default_serialize(obj: Any) -> bytes | None:
    """bytes (and bytearray/memoryview) as they are, str as UTF-8, None as None (a Kafka null,
    e.g. a tombstone), anything else as compact JSON."""
    if obj is None or type(obj) is bytes:
        return obj
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    return json.dumps(obj, separators=(",", ":"), default=_not_json).encode()


def _not_json(obj: Any) -> Any:
    raise TypeError(
        f"cannot serialize {type(obj).__name__} as JSON; pass serialize= (a function "
        "returning bytes) to the Kafka sink"
    )


def _utf8(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _json(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def default_deserialize(raw: bytes | None) -> bytes | None:
    """The value as it is: bytes (or None)."""
    return raw


def resolve_deserializer(
    deserialize: str | Callable[[bytes | None], Any] | None,
) -> Callable[[bytes | None], Any] | None:
    """``None``/``"bytes"`` (no conversion), ``"str"`` (UTF-8), ``"json"`` or a function."""
    if deserialize is None or deserialize == "bytes":
        return None
    if deserialize == "str":
        return _utf8
    if deserialize == "json":
        return _json
    if callable(deserialize):
        return deserialize
    raise ValueError(
        f"deserialize must be 'bytes', 'str', 'json' or a function, not {deserialize!r}"
    )
