"""Finding a job's ``build`` function from a reference like ``path/to/job.py:build``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["check_importable", "load_app"]


def load_app(ref: str) -> Callable[[Any], None]:
    """Load ``file.py:name`` or ``package.module:name`` (``:build`` is the default name)."""
    target, _, attr = ref.partition(":")
    attr = attr or "build"
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.exists(path):
            raise FileNotFoundError(f"job file {target!r} does not exist")
        name = "__malstrom_app__"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {target!r} as Python code")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{target!r} has no {attr!r} (from {ref!r})") from None
    if not callable(obj):
        raise TypeError(f"{ref!r} is not a function build(provider)")
    fn: Callable[[Any], None] = obj
    return fn


def check_importable(build: Callable[..., Any]) -> None:
    """Refuse build functions that worker processes cannot import (lambdas, closures)."""
    import pickle

    qualname = getattr(build, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"build function {qualname!r} cannot be used by worker processes: define it at "
            "module level (a lambda or a nested function is not importable)"
        )
    try:
        pickle.dumps(build)
    except Exception as e:
        raise TypeError(
            f"build function {build!r} cannot be sent to worker processes: {e}; define it at "
            "module level"
        ) from e
