"""What an operator may know about its worker when it is built: :class:`BuildContext`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from malstrom.engine.exchange import Exchange
from malstrom.types import Partitioner

__all__ = ["ENDED_KEY", "BuildContext"]

ENDED_KEY = "::ended"
"""Snapshot entry listing the operators that had ended (seen MAX) on a worker."""


def _never_fenced() -> None:
    pass


@dataclass
class BuildContext:
    """What an operator may know about its worker when it is built.

    ``attempt`` is the job attempt the worker belongs to; ``fence()`` raises
    :class:`~malstrom.errors.AttemptFenced` once that attempt is over. Operators with side
    effects outside the job (sinks) call it before each one.
    """

    worker_id: int
    worker_set: tuple[int, ...]
    restore: Any = None  # a snapshot reader, or None on a fresh start
    exchange: Exchange | None = None  # None: a single worker, no peers
    attempt: int = 0
    fence: Callable[[], None] = _never_fenced

    def restore_keyed(self, operator: str, owner: Partitioner | None) -> Iterator[tuple[Any, Any]]:
        """The ``(key, state)`` pairs of ``operator`` that this worker owns now."""
        if self.restore is None:
            return iter(())
        return self.restore.keyed(operator, owner, self.worker_id, self.worker_set)

    def restored_ended(self, operator: str) -> bool:
        """Whether ``operator`` had seen the end of stream in the snapshot restored from."""
        if self.restore is None:
            return False
        ended = self.restore.worker_scoped(ENDED_KEY)
        if self.worker_id in ended:
            return operator in ended[self.worker_id]
        return bool(ended) and all(operator in names for names in ended.values())

    def restore_worker(self, operator: str) -> dict[int, Any]:
        """Per-worker (unkeyed) state of ``operator``, by the worker id that stored it."""
        if self.restore is None:
            return {}
        return self.restore.worker_scoped(operator)
