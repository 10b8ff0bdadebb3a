"""rendezvous_select and stable_hash: deterministic, stable across processes, minimal movement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from malstrom import NoKey, rendezvous_select
from malstrom.keyed.partitioners import stable_hash

# Computed once with the current implementation: a change of hashing (which would move every
# key's state to another worker after an upgrade) must be deliberate.
EXPECTED: list[tuple[Any, list[int]]] = [
    (0, [0, 1, 2, 2, 4]),
    (1, [0, 0, 2, 2, 6]),
    (42, [0, 1, 2, 2, 2]),
    ("a", [0, 0, 0, 0, 4]),
    ("hello", [0, 1, 1, 1, 5]),
    ((1, "x"), [0, 0, 0, 0, 5]),
    (NoKey, [0, 0, 0, 0, 0]),
    (b"bytes", [0, 1, 2, 3, 4]),
    (3.5, [0, 0, 0, 0, 0]),
]
SIZES = (1, 2, 3, 4, 7)

EXPECTED_HASHES: dict[Any, int] = {
    0: 6733129340534055452,
    "a": 17186288517549944797,
    (1, "x"): 6815095094277369496,
    NoKey: 3585264986532722557,
    b"bytes": 10287199086650560424,
}

keys = st.one_of(
    st.integers(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.tuples(st.integers(), st.text(max_size=5)),
    st.booleans(),
    st.none(),
    st.just(NoKey),
    st.floats(allow_nan=False),
)
worker_sets = st.lists(st.integers(0, 1000), min_size=1, max_size=12, unique=True)


@pytest.mark.parametrize(("key", "owners"), EXPECTED, ids=lambda x: repr(x))
def test_rendezvous_select_hard_coded_outputs(key: Any, owners: list[int]) -> None:
    assert [rendezvous_select(key, list(range(n))) for n in SIZES] == owners


@pytest.mark.parametrize(("key", "h"), list(EXPECTED_HASHES.items()), ids=repr)
def test_stable_hash_hard_coded_outputs(key: Any, h: int) -> None:
    assert stable_hash(key) == h
    assert 0 <= stable_hash(key) < 2**64


def test_rendezvous_select_is_deterministic() -> None:
    for k in range(200):
        first = rendezvous_select(k, [0, 1, 2, 3])
        assert all(rendezvous_select(k, [0, 1, 2, 3]) == first for _ in range(3))
        assert rendezvous_select(k, (0, 1, 2, 3)) == first


def test_rendezvous_select_single_worker() -> None:
    for k in ["a", 1, NoKey, (1, 2)]:
        assert rendezvous_select(k, [7]) == 7


def test_rendezvous_select_empty_worker_set_is_an_error() -> None:
    with pytest.raises(ValueError):
        rendezvous_select("k", [])


def test_equal_keys_go_to_the_same_worker() -> None:
    # 1 == 1.0 == True as dict keys, so they must have one owner.
    for n in (2, 3, 5, 8):
        ws = list(range(n))
        assert rendezvous_select(1, ws) == rendezvous_select(1.0, ws) == rendezvous_select(True, ws)
        assert (
            rendezvous_select(0, ws) == rendezvous_select(0.0, ws) == rendezvous_select(False, ws)
        )
        assert rendezvous_select(-5, ws) == rendezvous_select(-5.0, ws)


@settings(max_examples=300, deadline=None)
@given(keys, worker_sets)
def test_result_is_in_the_worker_set_and_independent_of_its_order(key: Any, ws: list[int]) -> None:
    w = rendezvous_select(key, ws)
    assert w in ws
    assert rendezvous_select(key, sorted(ws)) == w
    assert rendezvous_select(key, list(reversed(ws))) == w


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, min_size=1, max_size=50), worker_sets, st.integers(0, 1000))
def test_adding_a_worker_moves_only_keys_to_it(ks: list[Any], ws: list[int], new: int) -> None:
    if new in ws:
        return
    for k in ks:
        before = rendezvous_select(k, ws)
        after = rendezvous_select(k, [*ws, new])
        assert after in (before, new)


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, min_size=1, max_size=50), worker_sets.filter(lambda w: len(w) > 1), st.data())
def test_removing_a_worker_moves_only_its_keys(ks: list[Any], ws: list[int], data: Any) -> None:
    gone = data.draw(st.sampled_from(ws))
    rest = [w for w in ws if w != gone]
    for k in ks:
        before = rendezvous_select(k, ws)
        after = rendezvous_select(k, rest)
        if before != gone:
            assert after == before
        else:
            assert after in rest


def test_adding_a_worker_moves_about_one_over_n() -> None:
    n_keys = 20_000
    for n in (2, 4, 8):
        moved = sum(
            rendezvous_select(k, list(range(n))) != rendezvous_select(k, list(range(n + 1)))
            for k in range(n_keys)
        )
        share = moved / n_keys
        assert 0.5 / (n + 1) < share < 1.5 / (n + 1), (n, share)


@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["int", "str"])
def test_roughly_balanced(n: int, kind: str) -> None:
    n_keys = 20_000
    ks: list[Any] = list(range(n_keys)) if kind == "int" else [f"user-{i}" for i in range(n_keys)]
    counts = Counter(rendezvous_select(k, list(range(n))) for k in ks)
    assert set(counts) == set(range(n))
    fair = n_keys / n
    for w, c in counts.items():
        assert 0.7 * fair < c < 1.3 * fair, (w, c, counts)


def test_worker_ids_need_not_be_contiguous() -> None:
    ws = [3, 17, 90]
    counts = Counter(rendezvous_select(k, ws) for k in range(3000))
    assert set(counts) == set(ws)


# ----- stability across processes -------------------------------------------------------------

_PROBE = r"""
import json, sys
from datetime import datetime, timezone
from malstrom import NoKey, rendezvous_select
from malstrom.keyed.partitioners import stable_hash
keys = [
    "a", "hello world", "", "ünïcödé", 0, 1, -1, 2**70, 1.5, True, None, b"raw",
    (1, "x", (2.5, None)), ("nested", ("tuple",)), NoKey,
    frozenset({"a", "b", "c", "d", "e", "f"}), frozenset({1, 2, 3}),
    datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), (2**70, -(2**80), "big"),
]
print(json.dumps([[stable_hash(k), [rendezvous_select(k, list(range(n))) for n in (2, 3, 5, 9)]]
                  for k in keys]))
"""

_KEYS: list[Any] = [
    "a", "hello world", "", "ünïcödé", 0, 1, -1, 2**70, 1.5, True, None, b"raw",
    (1, "x", (2.5, None)), ("nested", ("tuple",)), NoKey,
    frozenset({"a", "b", "c", "d", "e", "f"}), frozenset({1, 2, 3}),
    datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), (2**70, -(2**80), "big"),
]  # fmt: skip


def _local() -> list[list[Any]]:
    return [
        [stable_hash(k), [rendezvous_select(k, list(range(n))) for n in (2, 3, 5, 9)]]
        for k in _KEYS
    ]


@pytest.mark.parametrize("seed", ["0", "1", "12345", "random"])
def test_stable_hash_is_the_same_in_a_process_with_another_hash_seed(seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == _local()


def test_tuples_with_ints_beyond_64_bits_are_keys() -> None:
    # e.g. 128-bit ids (UUID ints) inside a composite key
    key = (2**100 + 7, "tenant")
    assert stable_hash(key) != stable_hash((2**100 + 8, "tenant"))
    assert rendezvous_select(key, [0, 1, 2]) in (0, 1, 2)
    assert stable_hash((-(2**64), 1)) != stable_hash((2**64, 1))


def test_frozenset_hash_ignores_iteration_order() -> None:
    a = frozenset(f"k{i}" for i in range(20))
    b = frozenset(reversed([f"k{i}" for i in range(20)]))
    assert stable_hash(a) == stable_hash(b)


def test_unhashable_key_type_is_refused_clearly() -> None:
    class Custom:
        pass

    with pytest.raises(TypeError, match="Custom"):
        stable_hash(Custom())  # type: ignore[arg-type]


# -- source parts: dealt out evenly ----------------------------------------------------------

part_keys = st.one_of(
    st.integers(-(2**40), 2**40),
    st.text(max_size=6),
    st.tuples(st.integers(0, 9), st.text(max_size=3)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(part_keys, unique=True, max_size=40),
    st.sets(st.integers(0, 20), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_part_owners_are_even_and_independent_of_listing_order(
    parts: list[Any], workers: set[int], rnd: Any
) -> None:
    from malstrom.keyed._parts import part_owners

    ws = sorted(workers)
    owners = part_owners(parts, ws)
    if len(parts) == 1:  # nothing to even out: rendezvous_select's choice
        assert owners == {parts[0]: rendezvous_select(parts[0], ws)}
    assert set(owners) == set(parts) and set(owners.values()) <= workers
    counts = Counter(owners.values())
    low = len(parts) // len(ws)
    assert all(low <= counts.get(w, 0) <= low + 1 for w in ws), counts
    shuffled_parts, shuffled_workers = parts[:], ws[:]
    rnd.shuffle(shuffled_parts)
    rnd.shuffle(shuffled_workers)
    assert part_owners(shuffled_parts, shuffled_workers) == owners


def test_part_owners_beat_rendezvous_on_few_parts() -> None:
    """Why parts are dealt out: rendezvous per part puts 3 of 4 parts on one of 2 workers."""
    from malstrom.keyed._parts import part_owners

    parts = list(range(4))
    assert sorted(Counter(rendezvous_select(p, [0, 1]) for p in parts).values()) == [1, 3]
    assert sorted(Counter(part_owners(parts, [0, 1]).values()).values()) == [2, 2]
    # Pinned like EXPECTED above: changing the deal moves parts after an upgrade.
    assert part_owners(list(range(6)), [0, 1, 2]) == {0: 2, 1: 2, 2: 0, 3: 0, 4: 1, 5: 1}
    assert part_owners(["a", "b", "c", "d"], [0, 1]) == {"a": 1, "b": 0, "c": 1, "d": 0}
