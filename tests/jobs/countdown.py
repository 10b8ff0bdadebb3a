"""A source part for operator-level tests: ``n`` records ``(i, i)``, then finished."""

from __future__ import annotations

from typing import Any


class CountdownPart:
    """Hands out its remaining records (values ``0, 1, ...``, timestamps the same) in the
    batch sizes asked for; finished once none is left; its state is what is left."""

    def __init__(self, n: int) -> None:
        self.n = n

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, k: int) -> list[Any]:
        out = [(i, i) for i in range(min(k, self.n))]
        self.n -= len(out)
        return out

    def is_finished(self) -> bool:
        return self.n == 0

    def snapshot(self) -> object:
        return self.n
