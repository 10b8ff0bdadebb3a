"""Record columns that pickle fast: instances of user classes travel as field columns.

Pickling an instance of a user class runs Python code per record: a dataclass costs ~1 us to
pickle and ~1 us to unpickle, a frozen slotted one ~2.5 us each way, a ``NamedTuple`` ~1 us
and ~0.6 us, against ~0.1 us for a tuple of the same fields. A batch that crosses to another
worker is pickled once and unpickled once, so for jobs whose records are such instances that
was most of what a second worker cost. :func:`pack` turns a column (a list of records) into
a :class:`Packed` one: the column's types, which type each record has, and per type either
its records' fields as columns of plain values (when the type's pickled form is known to be
just those fields, see :func:`plan_of`) or the records themselves (any other type: plain
pickle). :func:`unpack` rebuilds the very objects unpickling would have made: same type,
same attributes, same ``__dict__`` order, ``__init__`` not run (pickle does not run it
either).

A type is packed when its instances pickle by the default protocol and their state is
exactly their fields (see :func:`plan_of` for the rules):

- ``SLOTS``: a class with ``__slots__`` and no ``__dict__`` (``@dataclass(slots=True)``,
  frozen or not); rebuilt with ``object.__new__`` and the slots' descriptors;
- ``DICT``: a class with a ``__dict__`` and no other slots (``@dataclass``, plain classes);
  the group's attribute names travel once, and every instance must have exactly those, in
  that order;
- ``TUPLE``: a ``namedtuple`` / ``NamedTuple`` class; rebuilt with ``tuple.__new__``;
- ``MAPPING``: plain ``dict`` records (parsed JSON, say) whose keys are the same ``str``
  names in the same order; the names travel once and every record is rebuilt as a new dict.

Columns of plain values (exact ``str``, ``int``, ``float``, ``bool``, ``bytes``, ``None``,
or exact tuples of those: the keys, a field column, tuple records) travel as :class:`Flat`:
pickled on their own without pickle's memo. Pickle remembers every string and tuple it
writes so that a second reference to it costs a back-reference; that bookkeeping is most
of what pickling a column of short strings costs (~65 ns of ~85 per string each way,
measured; a tuple of four ints: 192 ns to pickle with it, 117 without), and values that
cannot be mutated gain nothing from it. A column of exact ``str`` only (keys, most often)
travels as :class:`Strs`: the strings' UTF-8 bytes one after another and their lengths. The
C decoder keeps a bounded cache of the short ASCII keys it made (32,768 of at most 64
bytes), so a key that crosses again comes back as the string made the first time: no
allocation, no free, and a hash already known where keyed state looks it up (the count of
pipeline (b) spent ~60 ns more per record on freshly unpickled keys than on its own). Only
the keys column goes through it: field columns often hold strings that never repeat
(digests, ids), which would cost a miss each and evict the keys.
Strings are immutable, so which equal object comes back is not observable but by ``is``.
A column holding the very same objects as the batch's keys column (a key that is the
record, or one of its fields) travels as :class:`Same`: a reference to the keys; one that
holds a single object (the timestamps of a job without event time, a field every record
shares) as :class:`Repeat`: the object once and a count (pickle would share it too).

Everything per record runs in C (``malstrom.engine._cpack``, built by ``setup.py`` when a
compiler is at hand); this module holds the rules and a pure-Python twin of every C function
with identical results (used when the extension is not built, or ``MALSTROM_PURE_PYTHON=1``).
"""

from __future__ import annotations

import abc
import dataclasses
import io
import os
import pickle
import types
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import is_
from typing import Any, NamedTuple

__all__ = [
    "DICT",
    "MAPPING",
    "NATIVE",
    "SLOTS",
    "TUPLE",
    "Flat",
    "Packed",
    "Repeat",
    "Same",
    "Strs",
    "pack",
    "plan_of",
    "unpack",
    "unpack_column",
]

SLOTS, DICT, TUPLE, MAPPING = 1, 2, 3, 4
"""How a packed type's records travel (see the module's docs)."""

MIN_RECORDS = 4
"""Columns shorter than this are pickled as they are (packing would cost more than it saves)."""

MAX_TYPES = 255
"""A column with more distinct types than this is pickled as it is (types are coded in bytes)."""

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type())
_object_getstate = getattr(object, "__getstate__", None)


class Plan(NamedTuple):
    """How one type packs: its layout, and for ``SLOTS`` its slot names and descriptors."""

    layout: int
    names: tuple[str, ...] = ()
    descriptors: tuple[Any, ...] = ()


class Packed(NamedTuple):
    """A packed column: what pickles in place of the list of records.

    ``types`` in order of first appearance; ``codes`` the index in ``types`` of every record
    (``None`` when there is one type); ``groups`` per type: ``(layout, names, columns)``, with
    ``layout`` 0 for records pickled as they are (``columns`` is then ``[records]``, the
    records as a field travels when they are plain values: tuples among dataclasses, say).
    """

    types: tuple[type, ...]
    codes: bytes | None
    groups: tuple[tuple[int, tuple[str, ...], list[list[Any]]], ...]


class Flat(NamedTuple):
    """A column of plain values, pickled without pickle's memo (see the module's docs)."""

    blob: bytes


class Same(NamedTuple):
    """A column that holds the very objects of the batch's keys column, in order."""


class Repeat(NamedTuple):
    """A column that holds one object ``n`` times (timestamps of a job without event time,
    the keys of a batch of one key)."""

    value: Any
    n: int


class Strs(NamedTuple):
    """A column of exact ``str``: their UTF-8 bytes one after another (``data``) and their
    lengths (``sizes``: one byte each below 255, else 255 and four bytes little-endian)."""

    sizes: bytes
    data: bytes


_ATOMS = frozenset({str, int, float, bool, bytes, type(None)})
_STR_LONG = 255  # in Strs.sizes: a length that takes the next four bytes
_PLANS: dict[type, Plan | None] = {}


def _is_dataclass_state(fn: Any, name: str) -> bool:
    """Whether ``fn`` is the ``__getstate__``/``__setstate__`` that dataclasses gives slotted
    frozen classes (state: the fields' values, in the order of ``fields()``)."""
    return (
        getattr(fn, "__module__", None) == "dataclasses"
        and getattr(fn, "__qualname__", "") == f"_dataclass_{name}"
    )


def _slot_names(cls: type) -> list[str] | None:
    """Every slot of ``cls`` and its bases but ``__dict__``/``__weakref__``; None if one is
    name-mangled (``__x``), which this module does not follow."""
    names: list[str] = []
    for base in cls.__mro__[:-1]:
        slots = base.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                return None
            names.append(name)
    return names


def plan_of(cls: type) -> Plan | None:
    """How ``cls`` packs, or None if its instances must be pickled as they are (cached).

    Packed only when pickle itself would rebuild an instance from exactly its fields: the
    class (and every base but ``object``) is a Python class; ``__reduce__``,
    ``__reduce_ex__``, ``__getnewargs__``, ``__getattribute__`` are not overridden; ``__new__``
    is ``object.__new__`` (``tuple.__new__`` wrapped by ``namedtuple`` for ``TUPLE``); and the
    state is the default one (``__dict__``, or the slots) or the fields of a slotted frozen
    dataclass. Slotted classes with the default state must not override ``__setattr__``
    (pickle would call it).
    """
    try:
        return _PLANS[cls]
    except KeyError:
        pass
    except TypeError:  # an unhashable metaclass instance: never packed
        return None
    plan = _plan(cls)
    _PLANS[cls] = plan
    return plan


def _plan(cls: type) -> Plan | None:
    if not isinstance(cls, type) or type(cls) not in (type, abc.ABCMeta):
        return None  # a metaclass of its own may change how instances pickle
    mro = cls.__mro__
    if (
        cls.__reduce_ex__ is not object.__reduce_ex__
        or cls.__reduce__ is not object.__reduce__
        or hasattr(cls, "__getnewargs_ex__")
    ):
        return None
    getstate = getattr(cls, "__getstate__", _object_getstate)
    setstate = getattr(cls, "__setstate__", None)
    if mro[1:] == (tuple, object):
        return _tuple_plan(cls, getstate, setstate)
    # Every class but object written in Python: a builtin base (Exception, dict, ...) pickles
    # state of its own.
    if mro[-1] is not object or not all(b.__flags__ & _HEAPTYPE for b in mro[:-1]):
        return None
    if (
        cls.__new__ is not object.__new__
        or cls.__getattribute__ is not object.__getattribute__
        or hasattr(cls, "__getnewargs__")
    ):
        return None
    names = _slot_names(cls)
    if names is None:
        return None
    has_dict = cls.__dictoffset__ != 0
    if getstate is _object_getstate and setstate is None:
        if has_dict:
            return Plan(DICT) if not names else None
        if cls.__setattr__ is not object.__setattr__:
            return None  # pickle sets slots with setattr(): it would run this
    elif _is_dataclass_state(getstate, "getstate") and _is_dataclass_state(setstate, "setstate"):
        if has_dict or not dataclasses.is_dataclass(cls):
            return None
        if sorted(f.name for f in dataclasses.fields(cls)) != sorted(names):
            return None  # a slot that is no field would not survive pickling
    else:
        return None
    if not names:
        return None
    descriptors = []
    for name in names:
        d = getattr(cls, name, None)
        if type(d) is not types.MemberDescriptorType:
            return None  # a slot shadowed by a property or method of a subclass
        descriptors.append(d)
    return Plan(SLOTS, tuple(names), tuple(descriptors))


def _tuple_plan(cls: type, getstate: Any, setstate: Any) -> Plan | None:
    # Only a class namedtuple made (``__new__`` and ``__getnewargs__`` are the generated
    # ones: the instance is its items), not a subclass of one (it may add a __dict__).
    new = cls.__dict__.get("__new__")
    getnewargs = cls.__dict__.get("__getnewargs__")
    if (
        "_fields" not in cls.__dict__
        or cls.__dictoffset__ != 0
        or setstate is not None
        or getstate is not _object_getstate
        or getattr(cls.__new__, "__module__", None) != f"namedtuple_{cls.__name__}"
        or getattr(getnewargs, "__module__", None) != "collections"
        or new is None
    ):
        return None
    return Plan(TUPLE)


# ----- the per-record work: pure Python (the C twins are in _cpack.c) ----------------------
def group_py(col: Sequence[Any]) -> tuple[list[type], bytes | None, list[list[Any]]] | None:
    """The column's types in order of first appearance, each record's type index (None when
    there is one type) and the records of each type, in order; None above MAX_TYPES types."""
    kinds: list[type] = []
    where: dict[type, int] = {}
    groups: list[list[Any]] = []
    codes = bytearray()
    for x in col:
        t = type(x)
        i = where.get(t)
        if i is None:
            if len(kinds) == MAX_TYPES:
                return None
            i = where[t] = len(kinds)
            kinds.append(t)
            groups.append([])
        groups[i].append(x)
        codes.append(i)
    return kinds, (bytes(codes) if len(kinds) > 1 else None), groups


def extract_slots_py(objs: Sequence[Any], descriptors: Sequence[Any]) -> list[list[Any]] | None:
    """Per descriptor, its value on every object; None if a slot is unset on one."""
    try:
        return [[d.__get__(o) for o in objs] for d in descriptors]
    except AttributeError:
        return None


def _item_columns(dicts: Iterable[Any], names: Sequence[str]) -> list[list[Any]] | None:
    """Per name, its value in every dict; None unless every one is a dict with exactly
    ``names``, in that order."""
    want = tuple(names)
    rows = []
    for d in dicts:
        if type(d) is not dict or tuple(d) != want:
            return None
        rows.append(tuple(d.values()))
    return [list(c) for c in zip(*rows)] if want else []


def extract_dict_py(objs: Sequence[Any], names: Sequence[str]) -> list[list[Any]] | None:
    """Per name, its value in every object's ``__dict__``; None unless every ``__dict__``
    has exactly ``names``, in that order."""
    return _item_columns((o.__dict__ for o in objs), names)


def extract_map_py(dicts: Sequence[Any], names: Sequence[str]) -> list[list[Any]] | None:
    """Per name, its value in every dict; None unless every one has exactly ``names``, in
    that order."""
    return _item_columns(dicts, names)


def atoms_py(col: Any) -> bool:
    """Whether ``col`` is a list of plain values only (exact str, int, float, bool, bytes,
    None), or exact tuples of those."""
    if type(col) is not list:
        return False
    atoms = _ATOMS
    for x in col:
        t = type(x)
        if t not in atoms and (t is not tuple or not all(type(y) in atoms for y in x)):
            return False
    return True


def encode_strs_py(col: Any) -> tuple[bytes, bytes] | None:
    """``(sizes, data)`` of a list of exact ``str`` (see :class:`Strs`), or None if ``col`` is
    not one, or a string holds a lone surrogate (which UTF-8 cannot hold)."""
    if type(col) is not list:
        return None
    sizes = bytearray()
    parts = []
    for s in col:
        if type(s) is not str:
            return None
        try:
            b = s.encode("utf-8")
        except UnicodeEncodeError:
            return None
        n = len(b)
        if n >= 1 << 32:
            return None
        if n < _STR_LONG:
            sizes.append(n)
        else:
            sizes.append(_STR_LONG)
            sizes += n.to_bytes(4, "little")
        parts.append(b)
    return bytes(sizes), b"".join(parts)


def decode_strs_py(sizes: bytes, data: bytes, cache: bool = False) -> list[str]:
    """The strings :func:`encode_strs_py` encoded (ValueError if sizes and data do not fit).
    ``cache`` (keys: return strings made before again) is the C decoder's alone."""
    out = []
    at = i = 0
    end = len(sizes)
    while i < end:
        n = sizes[i]
        i += 1
        if n == _STR_LONG:
            if end - i < 4:
                break
            n = int.from_bytes(sizes[i : i + 4], "little")
            i += 4
        if at + n > len(data):
            break
        out.append(data[at : at + n].decode("utf-8"))
        at += n
    else:
        if at == len(data):
            return out
    raise ValueError("decode_strs: the sizes do not match the data")


def uniform_py(col: Any) -> bool:
    """Whether ``col`` is a non-empty list whose items are all the very same object."""
    if type(col) is not list or not col:
        return False
    first = col[0]
    return all(x is first for x in col)


def same_py(a: list[Any], b: list[Any]) -> bool:
    """Whether lists ``a`` and ``b`` hold the very same objects, in the same order."""
    return len(a) == len(b) and all(map(is_, a, b))


def build_slots_py(
    cls: type, descriptors: Sequence[Any], columns: Sequence[Sequence[Any]], n: int
) -> list[Any]:
    """``n`` new instances of ``cls`` (``object.__new__``) with the slots set from the columns."""
    new = object.__new__
    out = []
    for i in range(n):
        o: Any = new(cls)
        for d, col in zip(descriptors, columns):
            d.__set__(o, col[i])
        out.append(o)
    return out


def build_dict_py(
    cls: type, names: Sequence[str], columns: Sequence[Sequence[Any]], n: int
) -> list[Any]:
    """``n`` new instances of ``cls`` whose ``__dict__`` holds ``names`` from the columns."""
    new = object.__new__
    out = []
    for i in range(n):
        o: Any = new(cls)
        if names:
            o.__dict__.update(zip(names, [c[i] for c in columns]))
        out.append(o)
    return out


def build_map_py(names: Sequence[str], columns: Sequence[Sequence[Any]], n: int) -> list[Any]:
    """``n`` new dicts holding ``names`` from the columns."""
    if not names:
        return [{} for _ in range(n)]
    return list(map(dict, map(zip, repeat(names), zip(*columns))))


def interleave_py(codes: bytes, groups: Sequence[Sequence[Any]]) -> list[Any]:
    """The records in column order again: record ``i`` is the next one of ``groups[codes[i]]``."""
    its = [iter(g) for g in groups]
    return [next(its[c]) for c in codes]


def _native() -> tuple[dict[str, Callable[..., Any]], bool]:
    py: dict[str, Callable[..., Any]] = {
        "group": group_py,
        "extract_slots": extract_slots_py,
        "extract_dict": extract_dict_py,
        "build_slots": build_slots_py,
        "build_dict": build_dict_py,
        "extract_map": extract_map_py,
        "build_map": build_map_py,
        "atoms": atoms_py,
        "same": same_py,
        "uniform": uniform_py,
        "interleave": interleave_py,
        "encode_strs": encode_strs_py,
        "decode_strs": decode_strs_py,
    }
    if os.environ.get("MALSTROM_PURE_PYTHON") == "1":
        return py, False
    try:
        from malstrom.engine import _cpack
    except ImportError:  # not built (no compiler at install time): same results, slower
        return py, False
    return {name: getattr(_cpack, name) for name in py}, True


_FNS, NATIVE = _native()
_group = _FNS["group"]
_extract_slots = _FNS["extract_slots"]
_extract_dict = _FNS["extract_dict"]
_build_slots = _FNS["build_slots"]
_build_dict = _FNS["build_dict"]
_interleave = _FNS["interleave"]
_extract_map = _FNS["extract_map"]
_build_map = _FNS["build_map"]
_atoms = _FNS["atoms"]
_same = _FNS["same"]
_uniform = _FNS["uniform"]
_encode_strs = _FNS["encode_strs"]
_decode_strs = _FNS["decode_strs"]


# ----- packing a column ----------------------------------------------------------------------
# Pickler.fast (no memo) is documented as deprecated, though nothing warns or removes it: a
# Python without it still gets the same bytes' meaning, with the memo.
_FAST_PICKLER = hasattr(pickle.Pickler(io.BytesIO()), "fast")


def _flat(col: list[Any]) -> Flat:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    if _FAST_PICKLER:
        pickler.fast = True  # no memo: plain values are immutable, and cannot form cycles
    pickler.dump(col)
    return Flat(buf.getvalue())


def _field(col: list[Any], alias: list[Any] | None) -> list[Any] | Flat | Same | Strs | Repeat:
    """A field column as it travels: :class:`Same`, :class:`Repeat`, :class:`Strs`,
    :class:`Flat`, or the list itself."""
    if alias is not None and _same(col, alias):
        return Same()
    if len(col) >= MIN_RECORDS:
        if _uniform(col):
            return Repeat(col[0], len(col))
        if type(col[0]) is str and (got := _encode_strs(col)) is not None:
            return Strs(*got)
        if _atoms(col):
            return _flat(col)
    return col


def pack(col: Sequence[Any], alias: Sequence[Any] | None = None) -> Any:
    """``col`` as it travels: :class:`Repeat` when it holds one object only, :class:`Same`
    when it holds the very objects of ``alias`` (the batch's keys), :class:`Strs` or
    :class:`Flat` when it holds plain values only, a :class:`Packed` column when records of
    it pack, else ``col`` itself."""
    if type(alias) is not list or len(alias) < MIN_RECORDS:
        alias = None
    if len(col) < MIN_RECORDS:
        return col
    first = type(col[0])
    if first in _ATOMS or first is tuple:
        if type(col) is not list:
            return col
        packed = _field(col, alias)  # Same, Repeat, Strs or Flat when one applies
        if packed is not col:
            return packed
        # A record that is no plain value: the column is grouped by type below (tuples and
        # instances of a user class together, say, each group travelling its own way).
    elif _uniform(col):  # one object n times: pickled once, shared n times, as pickle would
        return Repeat(col[0], len(col))
    elif first is not dict and plan_of(first) is None:
        return col  # a class that pickles its own way: pickle as is
    got = _group(col)
    if got is None:
        return col
    kinds, codes, members = got
    groups: list[tuple[int, tuple[str, ...], list[Any]]] = []
    packed_any = False
    if codes is not None:
        alias = None  # each group's columns are shorter than the keys
    for t, objs in zip(kinds, members):
        columns = None
        names: tuple[str, ...] = ()
        layout = 0
        if len(objs) >= MIN_RECORDS:
            if t is dict:
                names = tuple(objs[0])
                layout = MAPPING
                # Dicts without items, or with keys other than str, pickle as they are.
                if names and all(type(k) is str for k in names):
                    columns = _extract_map(objs, names)
            elif (plan := plan_of(t)) is not None:
                layout = plan.layout
                if plan.layout == SLOTS:
                    names = plan.names
                    columns = _extract_slots(objs, plan.descriptors)
                elif plan.layout == DICT:
                    names = tuple(objs[0].__dict__)
                    # Instances without attributes pickle as they are (no column counts them).
                    columns = _extract_dict(objs, names) if names else None
                else:  # TUPLE: the items as plain tuples
                    columns = [list(map(tuple, objs))]
        if columns is None:
            # Records pickled as they are, but a group of plain values travels as a field.
            raw = _field(objs, None) if t in _ATOMS or t is tuple else objs
            packed_any = packed_any or raw is not objs
            groups.append((0, (), [raw]))
        else:
            packed_any = True
            groups.append((layout, names, [_field(c, alias) for c in columns]))
    if not packed_any:
        return col
    return Packed(tuple(kinds), codes, tuple(groups))


def unpack_column(col: Any, alias: Sequence[Any] | None = None, keys: bool = False) -> Any:
    """What :func:`pack` made of a column, rebuilt (``alias``: the batch's keys, rebuilt;
    ``keys``: this is the keys column, whose strings come from the decoder's cache)."""
    t = type(col)
    if t is Repeat:
        return [col.value] * col.n
    if t is Strs:
        return _decode_strs(col.sizes, col.data, keys)
    if t is Flat:
        return pickle.loads(col.blob)
    if t is Same:
        if alias is None:
            raise ValueError("a column refers to the keys column, but there is none")
        return list(alias)
    if t is Packed:
        return unpack(col, alias)
    return col


def unpack(packed: Packed, alias: Sequence[Any] | None = None) -> list[Any]:
    """The records :func:`pack` packed, rebuilt (raises ValueError if this process's class no
    longer packs the way the sender's did: its definition differs between the two)."""
    kinds, codes, groups = packed
    out: list[list[Any]] = []
    for t, (layout, names, wire) in zip(kinds, groups, strict=True):
        if layout == 0:
            out.append(unpack_column(wire[0]))
            continue
        columns = [unpack_column(c, alias) for c in wire]
        n = len(columns[0]) if columns else 0
        if layout == MAPPING:
            out.append(_build_map(names, columns, n))
            continue
        plan = plan_of(t)
        if plan is None or plan.layout != layout or (layout == SLOTS and plan.names != names):
            raise ValueError(
                f"records of {t.__module__}.{t.__qualname__} were packed as fields "
                f"{names or '(tuple)'} but this process's class packs as "
                f"{'nothing' if plan is None else plan.names or plan.layout}: the class "
                "differs between the sending and the receiving process"
            )
        if layout == TUPLE:
            out.append(list(map(tuple.__new__, repeat(t), columns[0])))
        elif layout == SLOTS:
            out.append(_build_slots(t, plan.descriptors, columns, n))
        else:
            out.append(_build_dict(t, names, columns, n))
    if codes is None:
        return out[0]
    return _interleave(codes, out)
