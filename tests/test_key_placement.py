"""KeyPlacement: the owners of keys under one worker set, looked up one batch at a time."""

from __future__ import annotations

import pytest

from malstrom.errors import OperatorError
from malstrom.keyed._placement import KeyPlacement
from malstrom.keyed.partitioners import rendezvous_select


@pytest.mark.parametrize("workers", [(0, 1), (2, 0, 5), (3, 300, 7)])
def test_owners_agree_with_the_partitioner(workers: tuple[int, ...]) -> None:
    keys = [f"k{i}" for i in range(500)] + [1, 2.0, None, ("a", 1)]
    placement = KeyPlacement(rendezvous_select, workers, workers[0], "d")
    want = [rendezvous_select(k, workers) for k in keys]
    assert placement.owners(keys) == want  # filling the cache
    assert placement.owners(keys) == want  # from the cache
    assert [placement.owner(k) for k in keys] == want
    assert placement.remotes == [w for w in workers if w != workers[0]]
    # split: the same owners, one part per owner (the whole batch when there is one owner).
    values = list(range(len(keys)))
    parts = placement.split(keys, keys, values, values)
    assert isinstance(parts, list)
    got = {w: k for w, k, v, t in parts}
    assert got == {w: [k for k, o in zip(keys, want) if o == w] for w in set(want)}
    assert placement.split(["k1"], ["k1"], [0], [0]) == want[1]


def test_a_custom_partitioner_runs_once_per_distinct_key() -> None:
    calls: list[object] = []

    def by_parity(key: int, workers: object) -> int:
        calls.append(key)
        return key % 2

    placement = KeyPlacement(by_parity, (0, 1), 0, "d")
    assert placement.owners([1, 2, 3, 1, 2]) == [1, 0, 1, 1, 0]
    assert placement.owners([3, 2]) == [1, 0]
    assert sorted(calls) == [1, 2, 3]


def test_errors_name_the_operator_and_the_key() -> None:
    placement = KeyPlacement(lambda key, workers: 9, (0, 1), 0, "by_word")
    with pytest.raises(OperatorError, match=r"'by_word'.*worker 9 for key 'x'.*\[0, 1\]"):
        placement.owners(["x"])
    with pytest.raises(OperatorError, match=r"'by_word'.*keys must be hashable"):
        KeyPlacement(rendezvous_select, (0, 1), 0, "by_word").owners([["unhashable"]])
    # split (the distributor's path) reports both alike, on a cache miss or a hit.
    with pytest.raises(OperatorError, match=r"'by_word'.*worker 9 for key 'x'.*\[0, 1\]"):
        placement.split(["x"], ["x"], [1], [None])
    placed = KeyPlacement(rendezvous_select, (0, 1), 0, "by_word")
    placed.owners(["a"])
    for route in (["a", ["unhashable"]], [["unhashable"], "a"]):
        with pytest.raises(OperatorError, match=r"'by_word'.*keys must be hashable"):
            placed.split(route, route, [1, 2], [None, None])
