# The C router (src/malstrom/keyed/_croute.c); the contract: malstrom.keyed._route.
from collections.abc import Mapping, Sequence
from typing import Any

def split(
    route: Sequence[Any],
    keys: Sequence[Any],
    values: Sequence[Any],
    timestamps: Sequence[Any],
    cache: Mapping[Any, int],
    workers: Sequence[int],
    /,
) -> int | list[tuple[int, list[Any], list[Any], list[Any]]] | None: ...
