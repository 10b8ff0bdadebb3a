"""The distributor's router (malstrom.keyed._route): the C one and the pure-Python one split
every batch alike, this install runs the C one, and a keyed job runs on the Python one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from malstrom.keyed import _route

ROOT = Path(__file__).resolve().parents[1]
PURE = os.environ.get("MALSTROM_PURE_PYTHON") == "1"


def _native() -> Any:
    from malstrom.keyed import _croute

    return _croute.split


def reference(
    route: Any, keys: Any, values: Any, stamps: Any, cache: Any, workers: Any
) -> tuple[str, Any]:
    """What either router must answer, one record at a time."""
    if not (len(route) == len(keys) == len(values) == len(stamps)):
        return ("error", ValueError)
    stray = False
    owners = []
    for k in route:
        try:
            o = cache[k]
        except KeyError:
            return ("result", None)
        except TypeError:
            return ("error", TypeError)
        stray = stray or o not in workers
        owners.append(o)
    if stray:
        return ("error", ValueError)
    if not owners:
        return ("result", [])
    if len(set(owners)) == 1:
        return ("result", owners[0])
    parts = []
    for w in workers:
        mine = [i for i, o in enumerate(owners) if o == w]
        if mine:
            parts.append(
                (
                    w,
                    [keys[i] for i in mine],
                    [values[i] for i in mine],
                    [stamps[i] for i in mine],
                )
            )
    return ("result", parts)


def outcome(split: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("result", split(*args))
    except (TypeError, ValueError) as e:
        return ("error", type(e))


keys_st = st.one_of(
    st.text(max_size=3),
    st.integers(-5, 40),
    st.tuples(st.integers(0, 3), st.text(max_size=2)),
)
workers_st = st.lists(
    st.one_of(st.integers(0, 6), st.integers(250, 1200)), min_size=1, max_size=5, unique=True
)


@st.composite
def batches(draw: Any) -> tuple[Any, ...]:
    workers = draw(workers_st)
    rows = draw(
        st.lists(
            st.tuples(keys_st, keys_st, st.integers(), st.one_of(st.none(), st.integers())),
            max_size=60,
        )
    )
    # route keys are the record keys themselves (key_distribute) or something else (part_of)
    by_key = draw(st.booleans())
    route = [r[1] if by_key else r[0] for r in rows]
    keys = [r[1] for r in rows]
    values = [r[2] for r in rows]
    stamps = [r[3] for r in rows]
    distinct = list(dict.fromkeys(route))
    if draw(st.booleans()):  # all records to one worker (on one worker: everything local)
        w = draw(st.sampled_from(workers))
        cache: dict[Any, Any] = dict.fromkeys(distinct, w)
    else:
        cache = {k: draw(st.sampled_from(workers)) for k in distinct}
    if distinct and draw(st.integers(0, 9)) == 0:  # a key never placed: a cache miss
        del cache[draw(st.sampled_from(distinct))]
    if distinct and draw(st.integers(0, 19)) == 0:  # an owner the router was not told of
        cache[draw(st.sampled_from(distinct))] = draw(st.sampled_from([9999, -1, "x"]))
    if draw(st.integers(0, 19)) == 0:  # an unhashable route key
        route = [*route, []]
        keys, values, stamps = [*keys, 0], [*values, 0], [*stamps, None]
    if draw(st.integers(0, 4)) == 0:  # any sequence, not only lists
        route, keys, values, stamps = tuple(route), tuple(keys), tuple(values), tuple(stamps)
    w_seq = tuple(workers) if draw(st.booleans()) else workers
    return route, keys, values, stamps, cache, w_seq


# a busy machine must not fail the test: generating is slow then, not wrong
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_python_router_splits_like_the_reference(batch: tuple[Any, ...]) -> None:
    assert outcome(_route.split_py, *batch) == reference(*batch)


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C router is not in use")
# a busy machine must not fail the test: generating is slow then, not wrong
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_c_router_splits_like_the_python_one(batch: tuple[Any, ...]) -> None:
    want = reference(*batch)
    assert outcome(_native(), *batch) == want
    assert outcome(_route.split_py, *batch) == want
    if want[0] == "result" and isinstance(want[1], int):
        assert _native()(*batch) is want[1]  # the worker object itself: no copy anywhere


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C router is not in use")
def test_this_install_routes_in_c() -> None:
    # CI installs with scripts/setup.sh: the extension must have been built there.
    assert _route.NATIVE
    assert _route.split is _native()


def test_errors_and_lengths() -> None:
    for split in [_route.split_py] + ([] if PURE else [_native()]):
        with pytest.raises(ValueError):
            split([1, 2], [1, 2], [1], [1], {1: 0, 2: 0}, (0,))
        with pytest.raises(ValueError):
            split([], [], [], [], {}, ())
        with pytest.raises(TypeError):
            split([[1]], [1], [1], [1], {}, (0,))
        assert split([1, 2, 1], "abc", [1, 2, 3], [None] * 3, {1: 0, 2: 1}, [0, 1]) == [
            (0, ["a", "c"], [1, 3], [None, None]),
            (1, ["b"], [2], [None]),
        ]


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1 already")
def test_keyed_routing_runs_on_the_python_router() -> None:
    """The distributor's own tests and keyed jobs on several workers (run_local_cluster),
    with the extension ruled out."""
    env = {**os.environ, "MALSTROM_PURE_PYTHON": "1"}
    check = "from malstrom.keyed import _route; assert not _route.NATIVE, 'still native'"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=60)
    tests = [
        "tests/test_routing.py",
        "tests/test_key_placement.py",
        "tests/test_route.py",
        "tests/test_cluster.py",
        "tests/test_rescale_cycle.py",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
