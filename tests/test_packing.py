"""Record columns packed for the wire (malstrom.engine.packing): a pickled batch whose records
are instances of user classes, dicts or plain values rebuilds exactly what plain pickle would
have rebuilt, in C and in pure Python alike; classes whose pickling is their own are left to
pickle."""

from __future__ import annotations

import abc
import dataclasses
import os
import pickle
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from malstrom.engine import packing as P
from malstrom.engine.batch import Batch

PURE = os.environ.get("MALSTROM_PURE_PYTHON") == "1"


# ----- record classes, module level so that pickle finds them -------------------------------
@dataclass
class Plain:
    a: int
    b: str = ""


@dataclass(frozen=True)
class Frozen:
    a: int
    b: Any = None


@dataclass(slots=True)
class Slotted:
    a: int
    b: Any = None


@dataclass(frozen=True, slots=True)
class FrozenSlotted:
    a: int
    b: Any = None
    limit: ClassVar[int] = 3


class Point(NamedTuple):
    x: int
    y: Any = None


Pair = namedtuple("Pair", "left right")


class Hand:
    """A plain class: state in __dict__."""

    def __init__(self, a: int, b: Any = None) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: object) -> bool:
        return type(other) is Hand and vars(other) == vars(self)


class HandSlots:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: Any = None) -> None:
        self.a = a
        self.b = b

    def __eq__(self, other: object) -> bool:
        return type(other) is HandSlots and (other.a, other.b) == (self.a, self.b)


@dataclass
class Base(abc.ABC):
    a: int


@dataclass
class Derived(Base):
    b: int = 0


# Classes that pickle their own way: never packed.
class Reduced:
    def __init__(self, a: int) -> None:
        self.a = a

    def __reduce__(self) -> Any:
        return (Reduced, (self.a,))

    def __eq__(self, other: object) -> bool:
        return type(other) is Reduced and other.a == self.a


class WithState:
    def __init__(self, a: int) -> None:
        self.a = a

    def __getstate__(self) -> Any:
        return {"a": self.a, "seen": True}

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state)


class WithNew:
    def __new__(cls, *args: Any) -> WithNew:
        return super().__new__(cls)

    def __init__(self, a: int) -> None:
        self.a = a


class Guarded:
    """Slots with a __setattr__ of its own: pickle would call it, so packing must not skip it."""

    __slots__ = ("a",)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value * 2)


class MyError(Exception):
    pass


class SubPoint(Point):
    pass


PACKED = [Plain, Frozen, Slotted, FrozenSlotted, Point, Pair, Hand, HandSlots, Derived]
NOT_PACKED = [int, str, tuple, list, dict, Reduced, WithState, WithNew, Guarded, MyError, SubPoint]


def make(cls: type, i: int, b: Any = None) -> Any:
    return cls(i, b) if cls is not Derived else Derived(i, i + 1)


def same(x: Any, y: Any) -> bool:
    """Equal objects of the same type, with the same attributes in the same order."""
    if type(x) is not type(y):
        return False
    if isinstance(x, tuple):
        return tuple(x) == tuple(y)
    if hasattr(x, "__dict__"):
        return list(vars(x).items()) == list(vars(y).items())
    slots = P.plan_of(type(x))
    names = slots.names if slots else ()
    missing = object()
    return all(getattr(x, n, missing) == getattr(y, n, missing) for n in names)


def roundtrip(col: list[Any]) -> list[Any]:
    batch = Batch(list(range(len(col))), col, [None] * len(col))
    back = pickle.loads(pickle.dumps(batch, 5))
    assert back.keys == batch.keys and back.timestamps == batch.timestamps
    return list(back.values)


# ----- which classes pack -----------------------------------------------------------------
@pytest.mark.parametrize("cls", PACKED, ids=lambda c: c.__name__)
def test_record_classes_pack(cls: type) -> None:
    assert P.plan_of(cls) is not None
    col = [make(cls, i, f"v{i}") for i in range(10)]
    assert isinstance(P.pack(col), P.Packed)
    back = roundtrip(col)
    assert all(same(x, y) for x, y in zip(back, col, strict=True))


@pytest.mark.parametrize("cls", NOT_PACKED, ids=lambda c: c.__name__)
def test_classes_that_pickle_their_own_way_do_not(cls: type) -> None:
    assert P.plan_of(cls) is None


def test_a_custom_setstate_still_runs() -> None:
    col = [WithState(i) for i in range(8)]
    back = roundtrip(col)
    assert [vars(x) for x in back] == [{"a": i, "seen": True} for i in range(8)]


def test_a_custom_setattr_still_runs() -> None:
    col = []
    for i in range(8):
        g = Guarded()
        g.a = i
        col.append(g)
    assert [g.a for g in roundtrip(col)] == [2 * 2 * i for i in range(8)]  # set twice: x4


def test_frozen_slotted_dataclass_with_a_non_field_slot_is_left_to_pickle() -> None:
    @dataclass(frozen=True)
    class Mixed:
        __slots__ = ("a", "cache")
        a: int

    assert P.plan_of(Mixed) is None


def test_init_is_not_run_like_pickle() -> None:
    @dataclass
    class Counting:
        a: int
        calls: ClassVar[list[int]] = []

        def __post_init__(self) -> None:
            Counting.calls.append(self.a)

    globals()["Counting"] = Counting
    Counting.__qualname__ = "Counting"
    col = [Counting(i) for i in range(6)]
    Counting.calls.clear()
    assert [c.a for c in roundtrip(col)] == list(range(6))
    assert Counting.calls == []  # neither pickle nor packing runs __init__/__post_init__


# ----- columns that pack partly ---------------------------------------------------------------
def test_mixed_types_keep_their_order() -> None:
    col: list[Any] = []
    for i in range(40):
        col.append([Plain(i), FrozenSlotted(i), (i, "t"), Point(i), i, None, Reduced(i)][i % 7])
    packed = P.pack(col)
    assert isinstance(packed, P.Packed) and packed.codes is not None
    back = roundtrip(col)
    assert all(same(x, y) for x, y in zip(back, col, strict=True))


def test_an_unset_slot_leaves_the_group_to_pickle() -> None:
    col = [Slotted(i) for i in range(8)]
    del col[3].b
    back = roundtrip(col)
    assert not hasattr(back[3], "b") and all(same(x, y) for x, y in zip(back, col, strict=True))


def test_dicts_with_other_attributes_are_left_to_pickle() -> None:
    col = [Plain(i) for i in range(8)]
    col[5].extra = "x"  # type: ignore[attr-defined]
    back = roundtrip(col)
    assert list(vars(back[5])) == ["a", "b", "extra"]
    assert all(same(x, y) for x, y in zip(back, col, strict=True))


def test_short_columns_and_tuples_holding_more_than_plain_values_are_not_wrapped() -> None:
    assert P.pack([Plain(1), Plain(2)]) == [Plain(1), Plain(2)]
    assert P.pack(["a", "b"]) == ["a", "b"]
    shared: list[int] = []
    nested = [(i, shared) for i in range(10)]  # one list in every record
    assert P.pack(nested) is nested
    back = roundtrip(nested)
    assert back == nested and all(t[1] is back[0][1] for t in back)  # still one list


def test_tuples_of_plain_values_travel_flat() -> None:
    col = [(i, f"w{i}", 1.5, None, (i,)) for i in range(10)]
    assert P.pack(col) is col  # a tuple inside a tuple: pickled as it is
    col2 = [(i, f"w{i}", 1.5, None, b"x", True) for i in range(10)]
    assert isinstance(P.pack(col2), P.Flat)
    assert roundtrip(col2) == col2


def test_tuples_among_records_of_a_class_travel_by_group() -> None:
    # Nexmark q4 sends auctions (frozen slotted dataclasses) and bids cut down to tuples in
    # one column: the auctions travel as field columns, the tuples as plain values.
    col: list[Any] = [(i, 2 * i, "b") if i % 5 else FrozenSlotted(i, f"x{i}") for i in range(40)]
    packed = P.pack(col)
    assert isinstance(packed, P.Packed) and packed.types == (FrozenSlotted, tuple)
    assert packed.groups[0][0] == P.SLOTS
    assert packed.groups[1][0] == 0 and isinstance(packed.groups[1][2][0], P.Flat)
    back = roundtrip(col)
    assert all(same(x, y) for x, y in zip(back, col, strict=True))
    tuple_first = col[1:]
    assert isinstance(P.pack(tuple_first), P.Packed)
    assert all(same(x, y) for x, y in zip(roundtrip(tuple_first), tuple_first, strict=True))
    nested: list[Any] = [(i, [i]) if i % 5 else FrozenSlotted(i) for i in range(40)]
    assert isinstance(P.pack(nested), P.Packed)  # the tuples hold lists: pickled as they are
    assert roundtrip(nested) == nested


# ----- plain values, dicts, and columns that are the keys ----------------------------------
class Tag(str):
    pass


def test_plain_values_travel_flat_and_come_back_with_their_types() -> None:
    col = [1, 2**80, -3, 1.5, True, False, None, b"\x00b", "s", "", "ü" * 3, 0.0]
    assert isinstance(P.pack(col), P.Flat)
    back = roundtrip(col)
    assert back == col and [type(x) for x in back] == [type(x) for x in col]
    assert back[4] is True and back[6] is None


def test_a_str_subclass_keeps_its_class() -> None:
    col = ["a", "b", Tag("c"), "d", "e"]
    assert not isinstance(P.pack(col), P.Flat | P.Strs)
    back = roundtrip(col)
    assert type(back[2]) is Tag and back == col


STRS = ["w1", "", "ü" * 3, "日本", "x" * 64, "y" * 65, "z" * 300, "a\x00b", "\U0001f600", "w1"]


def test_columns_of_str_travel_as_utf8_and_come_back_equal() -> None:
    packed = P.pack(STRS)
    assert isinstance(packed, P.Strs)
    assert packed.data == "".join(STRS).encode()
    back = roundtrip(STRS)
    assert back == STRS and all(type(s) is str for s in back)
    # A lone surrogate has no UTF-8: that column is pickled (which keeps it) instead.
    odd = [*STRS, "a\ud800"]
    assert isinstance(P.pack(odd), P.Flat) and roundtrip(odd) == odd
    # str and other plain values together: pickled.
    assert isinstance(P.pack([*STRS, 1]), P.Flat)


def test_decoding_str_columns_rejects_sizes_that_do_not_fit_the_data() -> None:
    sizes, data = P.encode_strs_py(STRS) or (b"", b"")
    for bad in ((sizes, data + b"x"), (sizes, data[:-1]), (sizes + b"\xff\x01", data)):
        with pytest.raises(ValueError, match="sizes do not match"):
            P.unpack_column(P.Strs(*bad))


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C twins are not in use")
def test_a_short_ascii_key_that_arrives_again_is_the_same_object() -> None:
    # Keys cross batch after batch: the receiver reuses the string it made the first time
    # (no allocation, and its hash is already known where the key is looked up).
    def keys_back(keys: list[str]) -> list[str]:
        back = pickle.loads(pickle.dumps(Batch(keys, list(range(len(keys))), [0] * len(keys))))
        return list(back.keys)

    first = keys_back([f"key{i}" for i in range(8)])
    again = keys_back([f"key{i}" for i in reversed(range(8))])
    assert again == first[::-1] and all(map(lambda a, b: a is b, again, reversed(first)))
    long_or_not_ascii = ["k" * 65, "üx", "k" * 65, "üx"]
    back = keys_back(long_or_not_ascii)
    assert back == long_or_not_ascii and back[0] is not back[2] and back[1] is not back[3]
    # Values are not cached: strings of fields often never repeat (digests, ids).
    values = roundtrip([f"key{i}" for i in range(8)])
    assert values == first and not any(map(lambda a, b: a is b, values, first))


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C twins are not in use")
@given(st.lists(st.text(max_size=80) | st.text(alphabet="ab", max_size=300), max_size=40))
@settings(max_examples=200, deadline=None)
def test_the_c_str_codec_answers_like_the_python_one(col: list[str]) -> None:
    from malstrom.engine import _cpack

    enc = _cpack.encode_strs(col)
    assert enc == P.encode_strs_py(col)
    if enc is not None:
        assert _cpack.decode_strs(*enc) == P.decode_strs_py(*enc) == col
        assert _cpack.decode_strs(*enc, True) == col  # through the cache of keys
        for bad in ((enc[0], enc[1] + b"x"), (enc[0] + b"\x05", enc[1])):
            with pytest.raises(ValueError):
                _cpack.decode_strs(*bad)
            with pytest.raises(ValueError):
                P.decode_strs_py(*bad)


def test_dict_records_travel_as_field_columns() -> None:
    col = [{"user": f"u{i}", "amount": i, "tags": [i], "n": None} for i in range(20)]
    packed = P.pack(col)
    assert isinstance(packed, P.Packed) and packed.groups[0][0] == P.MAPPING
    assert packed.groups[0][1] == ("user", "amount", "tags", "n")
    back = roundtrip(col)
    assert back == col and [list(d) for d in back] == [list(d) for d in col]
    back[0]["tags"].append(99)  # the records are new objects, not views of one another
    assert back[1]["tags"] == [1]


def test_dicts_that_differ_in_keys_or_order_or_class_pickle_as_they_are() -> None:
    from collections import OrderedDict, defaultdict

    reordered = [{"a": i, "b": i} for i in range(8)]
    reordered[3] = {"b": 3, "a": 3}
    fewer = [{"a": i, "b": i} for i in range(8)]
    del fewer[5]["b"]
    int_keys = [{1: i, 2: i} for i in range(8)]
    for col in (reordered, fewer, int_keys):
        back = roundtrip(col)
        assert back == col and [list(d) for d in back] == [list(d) for d in col]
    for col in ([OrderedDict(a=i) for i in range(8)], [defaultdict(int, a=i) for i in range(8)]):
        back = roundtrip(col)
        assert back == col and all(type(x) is type(y) for x, y in zip(back, col, strict=True))
    empties: list[dict[str, int]] = [{} for _ in range(8)]
    assert roundtrip(empties) == empties


def test_a_column_of_the_keys_refers_to_them() -> None:
    words = [f"w{i % 3}" for i in range(12)]
    events = [{"user": w, "n": i} for i, w in enumerate(words)]
    for values, where in ((list(words), lambda p: p), (events, lambda p: p.groups[0][2][0])):
        batch = Batch(words, values, [None] * 12)
        _, (keys, packed, _) = batch.__reduce__()
        assert isinstance(keys, P.Strs) and isinstance(where(packed), P.Same)
        back = pickle.loads(pickle.dumps(batch, 5))
        assert back.keys == words and back.values == values
        assert back.values is not back.keys


def test_a_column_of_one_object_travels_once_and_stays_one_object() -> None:
    shared = {"tags": [1]}
    batch = Batch(["k"] * 6, [shared] * 6, [None] * 6)
    _, (keys, values, stamps) = batch.__reduce__()
    assert (
        keys == P.Repeat("k", 6) and values == P.Repeat(shared, 6) and stamps == P.Repeat(None, 6)
    )
    back = pickle.loads(pickle.dumps(batch, 5))
    assert back.keys == ["k"] * 6 and back.timestamps == [None] * 6
    assert back.values == [shared] * 6 and all(v is back.values[0] for v in back.values)
    # Equal is not enough: these are six objects (and two types), as pickle would keep them.
    big = [2**80 + 0 * i for i in range(6)]
    mixed = [1, 1, 1.0, 1, True, 1]
    for col in (big, mixed):
        assert not isinstance(P.pack(col), P.Repeat)
        back_col = roundtrip(col)
        assert back_col == col and [type(x) for x in back_col] == [type(x) for x in col]
    assert len({id(x) for x in roundtrip(big)}) == 6


def test_equal_but_not_identical_keys_are_not_taken_for_the_values() -> None:
    keys = [1, 2, 3, 4, 5]
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # == the keys, not the same objects (nor types)
    back = pickle.loads(pickle.dumps(Batch(keys, values, [None] * 5), 5))
    assert [type(v) for v in back.values] == [float] * 5


def test_mixed_columns_with_dicts_keep_their_order() -> None:
    col: list[Any] = []
    for i in range(30):
        col.append([{"a": i, "b": str(i)}, Plain(i), i, "s", (i,)][i % 5])
    packed = P.pack(col, [str(i) for i in range(30)])
    assert isinstance(packed, P.Packed) and packed.codes is not None
    back = roundtrip(col)
    assert all(same(x, y) if not isinstance(x, dict) else x == y for x, y in zip(back, col))


def test_a_class_that_differs_on_the_receiver_is_a_clear_error() -> None:
    col = [Slotted(i) for i in range(6)]
    packed = P.pack(col)
    assert isinstance(packed, P.Packed)
    layout, _names, columns = packed.groups[0]
    forged = P.Packed(packed.types, None, ((layout, ("a", "zzz"), columns),))
    with pytest.raises(ValueError, match="differs between the sending and the receiving"):
        P.unpack(forged)


# ----- C and Python twins ---------------------------------------------------------------------
values = st.one_of(
    st.integers(), st.text(max_size=5), st.none(), st.floats(allow_nan=False), st.binary(max_size=4)
)


@st.composite
def record_columns(draw: Any) -> list[Any]:
    kinds = draw(
        st.lists(st.sampled_from([*PACKED, Reduced, int, tuple, dict]), min_size=1, max_size=4)
    )
    n = draw(st.integers(0, 30))
    col = []
    for i in range(n):
        cls = draw(st.sampled_from(kinds))
        v = draw(values)
        if cls is int:
            col.append(v)
        elif cls is tuple:
            col.append((v, i))
        elif cls is dict:
            col.append({"a": v, "i": i} if draw(st.integers(0, 9)) else {"i": i, "a": v})
        elif cls is Reduced:
            col.append(Reduced(i))
        else:
            col.append(make(cls, i, v))
    return col


@given(record_columns())
@settings(max_examples=150, deadline=None)
def test_pack_then_pickle_rebuilds_what_pickle_would(col: list[Any]) -> None:
    plain = pickle.loads(pickle.dumps(col, 5))
    back = roundtrip(col)
    assert len(back) == len(plain)
    assert all(same(x, y) for x, y in zip(back, plain, strict=True))
    assert [list(x.items()) for x in back if type(x) is dict] == [
        list(x.items()) for x in plain if type(x) is dict
    ]


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C twins are not in use")
def test_this_install_packs_in_c() -> None:
    assert P.NATIVE


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C twins are not in use")
@given(record_columns())
@settings(max_examples=150, deadline=None)
def test_the_c_twins_answer_like_the_python_ones(col: list[Any]) -> None:
    from malstrom.engine import _cpack

    got_c, got_py = _cpack.group(col), P.group_py(col)
    assert got_c is not None and got_py is not None
    assert got_c[0] == got_py[0] and got_c[1] == got_py[1]
    assert [list(g) for g in got_c[2]] == got_py[2]
    for t, objs in zip(got_py[0], got_py[2], strict=True):
        if t is dict:
            names = tuple(objs[0])
            cols_c = _cpack.extract_map(objs, names)
            assert cols_c == P.extract_map_py(objs, names)
            if cols_c is not None:
                a = _cpack.build_map(names, cols_c, len(objs))
                b = P.build_map_py(names, cols_c, len(objs))
                assert [list(x.items()) for x in a] == [list(x.items()) for x in b]
            continue
        plan = P.plan_of(t)
        if plan is None:
            continue
        if plan.layout == P.SLOTS:
            cols_c = _cpack.extract_slots(objs, plan.descriptors)
            assert cols_c == P.extract_slots_py(objs, plan.descriptors)
            if cols_c is not None:
                a = _cpack.build_slots(t, plan.descriptors, cols_c, len(objs))
                b = P.build_slots_py(t, plan.descriptors, cols_c, len(objs))
                assert all(same(x, y) for x, y in zip(a, b, strict=True))
        elif plan.layout == P.DICT:
            names = tuple(vars(objs[0]))
            cols_c = _cpack.extract_dict(objs, names)
            assert cols_c == P.extract_dict_py(objs, names)
            if cols_c is not None:
                a = _cpack.build_dict(t, names, cols_c, len(objs))
                b = P.build_dict_py(t, names, cols_c, len(objs))
                assert all(same(x, y) for x, y in zip(a, b, strict=True))
    if got_py[1] is not None:
        assert _cpack.interleave(got_py[1], got_py[2]) == P.interleave_py(got_py[1], got_py[2])
    assert _cpack.atoms(col) == P.atoms_py(col)
    for c in (col, col[:1] * len(col), []):
        assert _cpack.uniform(c) == P.uniform_py(c)
    for other in (col, list(col), col[:-1], list(reversed(col))):
        assert _cpack.same(col, other) == P.same_py(col, other)


@pytest.mark.skipif(PURE, reason="MALSTROM_PURE_PYTHON=1: the C twins are not in use")
def test_the_c_twins_refuse_bad_input() -> None:
    from malstrom.engine import _cpack

    plan = P.plan_of(Slotted)
    assert plan is not None
    with pytest.raises(ValueError, match="column"):
        _cpack.build_slots(Slotted, plan.descriptors, [[1, 2]], 3)
    with pytest.raises(TypeError):
        _cpack.build_slots(Plain, plan.descriptors, [[1], [2]], 1)  # descriptor of another class
    with pytest.raises(ValueError, match="no record left"):
        _cpack.interleave(b"\x00\x00", [[1]])
    with pytest.raises(TypeError, match="names must be str"):
        _cpack.extract_map([{1: 2}], (1,))
    with pytest.raises(ValueError, match="column"):
        _cpack.build_map(("a", "b"), [[1]], 1)
    with pytest.raises(TypeError):
        _cpack.same([1], (1,))
    assert _cpack.atoms((1, 2)) is False and P.atoms_py((1, 2)) is False  # lists only
    assert _cpack.group(list(range(3))) == ([int], None, [[0, 1, 2]])
    many = [type(f"T{i}", (), {})() for i in range(256)]
    assert _cpack.group(many) is None and P.group_py(many) is None


def test_dataclass_fields_helper_is_public_api() -> None:
    # The rules lean on dataclasses.fields and the names of dataclasses' state functions.
    assert dataclasses.is_dataclass(FrozenSlotted)
    state = FrozenSlotted.__getstate__  # type: ignore[attr-defined]
    assert state.__module__ == "dataclasses" and state.__qualname__ == "_dataclass_getstate"
    assert field  # imported for the record classes' defaults


# ----- end to end -------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_user_class_records_cross_worker_processes_intact(tmp_path: Any, carrier: str) -> None:
    import functools

    from jobs import records_job

    from malstrom.runtime._multi import MultiProcessRuntime

    build = functools.partial(records_job.build, workdir=str(tmp_path))
    MultiProcessRuntime(build, parallelism=2, max_restarts=0).execute()
    assert records_job.read(str(tmp_path)) == records_job.expected()


@pytest.mark.timeout(240)
def test_user_class_records_cross_a_live_rescale_exactly_once(tmp_path: Any) -> None:
    import functools
    import time

    from jobs import records_job

    from malstrom.runtime._multi import MultiProcessRuntime
    from malstrom.snapshot import LocalDiskPersistence

    build = functools.partial(records_job.build, workdir=str(tmp_path), delay=0.05)
    handle = MultiProcessRuntime(
        build,
        parallelism=2,
        max_restarts=0,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.3,
    ).start()
    try:
        deadline = time.monotonic() + 60
        while handle.status().get("phase") != "running":
            assert time.monotonic() < deadline, handle.status()
            time.sleep(0.02)
        for n in (3, 1, 2):
            time.sleep(0.3)
            handle.rescale(n)
            assert handle.status()["workers"] == list(range(n))
        # Records were still flowing at every rescale, not only during the first.
        st = handle.status()
        assert handle.running and not st["drained"], st
        handle.wait(180)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    assert records_job.read(str(tmp_path)) == records_job.expected()
