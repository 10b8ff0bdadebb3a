"""Lazy re-exports: a package names some of its public classes without importing their
modules until first use (so optional dependencies load only when needed)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], lazy: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` for the module whose globals are
    ``namespace``: each name in ``lazy`` is imported from its module path on first access,
    then cached in ``namespace``; ``dir()`` lists the lazy names alongside the loaded ones.

    Use as ``__getattr__, __dir__ = lazy_exports(globals(), {"Name": "pkg.module"})``.
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *lazy])

    return __getattr__, __dir__
