"""A two-stage keyed job whose records are instances of user classes (dataclasses plain,
frozen and slotted, a NamedTuple, a plain class) and dicts mixed with tuples: what crosses between
worker processes is packed (malstrom.engine.packing), and every record is checked on
arrival to be exactly the object that was sent."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from malstrom import MAX, StatefulLogic, StatefulSource

PARTS = 4
PER_PART = 3_000
KEYS = 11


@dataclass
class Plain:
    id: int
    tag: str


@dataclass(frozen=True, slots=True)
class Frozen:
    id: int
    tag: str
    extra: tuple[int, ...] = ()


class Named(NamedTuple):
    id: int
    tag: str


class Hand:
    def __init__(self, id: int, tag: str) -> None:
        self.id = id
        self.tag = tag


KINDS = (Plain, Frozen, Named, Hand, tuple, dict)


def make(i: int) -> Any:
    kind = KINDS[i % len(KINDS)]
    if kind is tuple:
        return (i, f"t{i}")
    if kind is Frozen:
        return Frozen(i, f"t{i}", (i, i + 1))
    if kind is dict:
        return {"id": i, "tag": f"t{i}", "seen": [i]} if i % 600 != 5 else {"tag": f"t{i}", "id": i}
    return kind(i, f"t{i}")


def state_of(r: Any) -> Any:
    """What the record holds, whatever its class."""
    if isinstance(r, tuple):
        return tuple(r)
    if isinstance(r, dict):
        return list(r.items())
    if hasattr(r, "__dict__"):
        return list(vars(r).items())
    return (r.id, r.tag, r.extra)


def check(r: Any) -> int:
    """The record's id, after checking it is what ``make`` made for that id."""
    i = _id(r)
    want = make(i)
    if type(r) is not type(want) or state_of(r) != state_of(want):
        raise ValueError(f"record {i} arrived as {r!r}, sent as {want!r}")
    return i


class Part:
    def __init__(self, part: int, nxt: int, delay: float) -> None:
        self.part, self.nxt, self.delay = part, nxt, delay

    def poll_batch(self, n: int) -> list[tuple[Any, int]]:
        if self.delay:
            time.sleep(self.delay)
        # Slowed down, a part lasts PER_PART / 50 polls: a rescale costs a few polls' time,
        # so a test's three rescales (~3 s) end well before the job does (~7 s).
        stop = min(PER_PART, self.nxt + min(n, 50 if self.delay else 250))
        out = [(make(self.part * PER_PART + i), i + 1) for i in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= PER_PART

    def snapshot(self) -> object:
        return self.nxt


class Parts:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> Part:
        return Part(part, 0 if state is None else int(state), self.delay)  # type: ignore[call-overload]


class Totals(StatefulLogic[Any, Any, int, str]):
    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + check(record.value)

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k in sorted(states):
                output.emit(f"{k} {states[k]}", key=k)


def _id(r: Any) -> int:
    if isinstance(r, tuple):
        return int(r[0])
    return int(r["id"] if isinstance(r, dict) else r.id)


def key_of(r: Any) -> int:
    return _id(r) % KEYS


def regroup(r: Any) -> int:
    return _id(r) % 3


def build(provider: Any, workdir: str, delay: float = 0.0) -> None:
    from malstrom.sinks import FileSink

    (
        provider.new_stream()
        .source("records", StatefulSource(Parts(delay)))
        .key_distribute("by-key", key_of)
        .map("checked", lambda r: (check(r), r)[1])
        .key_distribute("regroup", regroup)
        .stateful_op("totals", Totals())
        .sink("out", FileSink(Path(workdir) / "totals", per_key=True))
    )


def expected() -> dict[str, str]:
    sums = [0] * 3
    for i in range(PARTS * PER_PART):
        sums[i % 3] += i
    return {str(k): f"{k} {sums[k]}" for k in range(3)}


def read(workdir: str) -> dict[str, str]:
    out = {}
    for f in (Path(workdir) / "totals").glob("*.txt"):
        lines = f.read_text().splitlines()
        assert len(lines) == 1, (f, lines)
        out[f.stem] = lines[0]
    return out
