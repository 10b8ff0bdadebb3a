"""The public surface: each public module exports exactly its ``__all__``, and every public
name has a docstring."""

from __future__ import annotations

import ast
import importlib
import inspect
from functools import cache
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

import malstrom

PUBLIC_MODULES = [
    "malstrom",
    "malstrom.errors",
    "malstrom.types",
    "malstrom.stream",
    "malstrom.sources",
    "malstrom.sinks",
    "malstrom.snapshot",
    "malstrom.windows",
    "malstrom.formats",
    "malstrom.transport",
    "malstrom.testing",
    "malstrom.keyed.partitioners",
    "malstrom.connectors.kafka",
    "malstrom.connectors.postgres",
    "malstrom.k8s",
    "malstrom.observe",
]

SRC = Path(malstrom.__file__).parent


def exported(module: ModuleType) -> set[str]:
    """Public names ``module`` itself provides: classes and functions defined in it (or, for a
    package, in its submodules) and values it assigns. Names it merely imports to use are not
    exports; type variables are typing machinery, not API."""
    own = module.__name__
    assigned = _assigned(Path(module.__file__ or ""))
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, ModuleType | TypeVar):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            origin = value.__module__
            is_package = hasattr(module, "__path__")
            if origin == own or (is_package and origin.startswith(own + ".")):
                names.add(name)
        elif name in assigned:
            names.add(name)
    return names


def _assigned(path: Path) -> set[str]:
    found = set()
    for stmt in ast.parse(path.read_text()).body:
        if isinstance(stmt, ast.Assign):
            found.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            found.add(stmt.target.id)
    return found - {"__all__"}


@cache
def attribute_docs() -> set[str]:
    """Names assigned at module level in malstrom and followed by a docstring."""
    found = set()
    for path in SRC.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for stmt, nxt in pairwise(body):
            documented = (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            )
            if not documented:
                continue
            if isinstance(stmt, ast.Assign):
                found.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                found.add(stmt.target.id)
    return found


def has_doc(name: str, value: Any) -> bool:
    if inspect.isclass(value):  # its own, not one inherited from a base
        return bool((value.__dict__.get("__doc__") or "").strip())
    if inspect.isroutine(inspect.unwrap(value)):  # functions, also behind functools wrappers
        return bool((inspect.getdoc(value) or "").strip())
    return name in attribute_docs()


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exports_equal_all(name: str) -> None:
    module = importlib.import_module(name)
    declared = set(module.__all__)
    extra = exported(module) - declared
    assert not extra, f"{name} exports names missing from __all__ (make them private): {extra}"
    missing = {n for n in declared if not hasattr(module, n)}
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    undocumented = sorted(n for n in module.__all__ if not has_doc(n, getattr(module, n)))
    assert not undocumented, f"{name}: public names without a docstring: {undocumented}"


def test_every_error_derives_from_malstrom_error() -> None:
    import malstrom.errors as errors

    for n in errors.__all__:
        assert issubclass(getattr(errors, n), errors.MalstromError), n
    assert issubclass(errors.BuildError, ValueError)
    assert issubclass(errors.OperatorError, RuntimeError)
    assert issubclass(errors.JobFailed, RuntimeError)
