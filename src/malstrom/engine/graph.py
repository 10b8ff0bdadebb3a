"""The job graph: what :mod:`malstrom.stream` builds and every worker instantiates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from malstrom.engine.context import BuildContext
from malstrom.engine.operator import Operator
from malstrom.errors import BuildError

__all__ = ["Factory", "Graph", "Node", "check_name"]

Factory = Callable[[BuildContext], Operator]
"""Builds one node's operator on a worker."""


@dataclass(eq=False)
class Node:
    """One operator of the job: every worker builds its own instance with ``factory``."""

    name: str
    factory: Factory
    inputs: list[tuple[Node, int]]
    ports: int = 1
    is_root: bool = False
    distributes: bool = False  # made by key_distribute: keys here are placed by a partitioner
    aligns_region: bool = False  # several inputs, every one keyed by a distributor (rescales align)
    # Keeps keyed state in place (not placed by a partitioner, so it cannot move): the job
    # cannot lose workers. Its opposite on the operator is Operator.migrates.
    pinned: bool = False


@dataclass(eq=False)
class Graph:
    """The job as :class:`~malstrom.stream.StreamProvider` described it: nodes in build
    (topological) order."""

    nodes: list[Node] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    roots: int = 0

    def pinned(self) -> list[str]:
        """Operators whose keyed state stays on its worker (a rescale cannot remove workers)."""
        return [n.name for n in self.nodes if n.pinned]

    def add(
        self,
        name: str,
        factory: Factory,
        inputs: list[tuple[Node, int]],
        ports: int = 1,
        internal: bool = False,
        is_root: bool = False,
    ) -> Node:
        if not internal:
            check_name(name)
        if name in self.names:
            raise BuildError(f"operator name {name!r} is used twice; names must be unique")
        self.names.add(name)
        node = Node(name, factory, inputs, ports, is_root)
        self.nodes.append(node)
        return node


def check_name(name: object) -> None:
    """Reject operator names users may not choose (empty, or with the reserved ``::``)."""
    if not isinstance(name, str) or not name:
        raise BuildError(f"operator names must be non-empty strings, got {name!r}")
    if "::" in name:
        raise BuildError(f"operator name {name!r} contains '::', which is reserved for malstrom")
