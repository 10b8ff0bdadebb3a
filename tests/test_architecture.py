"""The layering of the package: every module imports only its own layer or the layers below.

The table is the architecture (ARCHITECTURE.md explains each layer). A module that is not in
the table fails the test: a new package must be given its place, not slip in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Longest matching prefix wins ("malstrom.keyed.partitioners" before "malstrom.keyed").
LAYERS: dict[str, int] = {
    # 0: vocabulary every layer shares
    "malstrom.types": 0,
    "malstrom.errors": 0,
    "malstrom._repr": 0,
    "malstrom._lazy": 0,
    # 1: the engine core every worker runs
    "malstrom.engine": 1,
    # 2: building blocks on the engine: partitioners, user-facing protocols, storage, wire
    "malstrom.keyed.partitioners": 2,
    "malstrom.formats": 2,
    "malstrom.sources": 2,
    "malstrom.sinks": 2,
    "malstrom.snapshot": 2,
    "malstrom.transport": 2,
    "malstrom.windows": 2,
    # 3: operators (the keyed ones: distributors) and connectors to outside systems
    "malstrom.operators": 3,
    "malstrom.keyed": 3,
    "malstrom.connectors": 3,
    # 4: the fluent API that builds a graph from operators
    "malstrom.stream": 4,
    # 5: the coordinator (job-level protocols) and observation (counters, metrics, dashboard)
    "malstrom.coordinator": 5,
    "malstrom.observe": 5,
    # 6: workers, runtimes, the supervisor
    "malstrom.runtime": 6,
    # 7: entry points and tools on top of everything
    "malstrom.testing": 7,
    "malstrom.cli": 7,
    "malstrom.k8s": 7,
    "malstrom": 7,  # the package's __init__: the public names
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((SRC / "malstrom").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def layer_of(module: str) -> int:
    """The layer of ``module`` by its longest prefix in :data:`LAYERS`."""
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    if best is None:
        raise KeyError(module)
    return LAYERS[best]


def _package_of(module: str, is_init: bool) -> str:
    return module if is_init else module.rpartition(".")[0]


def imports_of(module: str, path: Path) -> set[str]:
    """The malstrom modules ``module`` imports (anywhere in the file, lazily too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "malstrom")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path.name == "__init__.py")
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] == "malstrom":
                found.add(target)
    return found


def test_every_module_has_a_layer() -> None:
    missing = []
    for module, _ in _modules():
        try:
            layer_of(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"give these modules a layer in tests/test_architecture.py: {missing}"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    mine = layer_of(module)
    upward = sorted(
        f"{target} (layer {layer_of(target)})"
        for target in imports_of(module, path)
        if layer_of(target) > mine
    )
    assert not upward, f"{module} (layer {mine}) imports upward: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # The test above must be able to fail: an engine module importing the runtime does.
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from malstrom.runtime._worker import Worker\n")
    (target,) = imports_of("malstrom.engine.bad", bad)
    assert layer_of(target) > layer_of("malstrom.engine.bad")
