"""A keyed job whose key regions fan out and meet again, for rescale tests.

One ``key_distribute`` reaches stateful operators by two paths (``split`` then ``union``;
``cloned`` then two filters into both inputs of a join), joins and unions are fed by two
distributors, and epochs are generated after a ``key_distribute`` (in-order input, bound 0).
Every output is exactly determined by the input: ``check`` compares each with its oracle, so a
rescale that installs moved state twice, loses it, or turns an on-time record late fails.

``make_build(sink)`` takes ``sink(name) -> StatefulSink``: in-process tests record into lists
(:class:`Outputs`), process tests write files (:func:`file_sink`, :func:`read_files`).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from jobs.rescale_job import Recorder

from malstrom import MAX, StatefulLogic, StatefulSink, StatefulSource, StreamProvider
from malstrom.stream import Stream
from malstrom.windows import Count, Session, Sliding, Sum, Tumbling, WindowResult

PARTS = 3
PER_PART = 1_200
KEYS = 11
BURST = 40  # a part emits this many records of one key in a row (sessions end between bursts)
CHUNK = 30  # records per poll: the job runs for many worker turns
BOUND = 20 * CHUNK * PARTS  # a moved part lags a few turns behind the others
WINDOW = 150
GAP = 20
LOWER, UPPER = -7, 7  # interval join bounds
J_WINDOW = 12  # window join size

ORDERED = 2_400  # records of the in-order source (one part, timestamps 0, 1, 2, ...)
O_BURST = 7
O_WINDOW = 50
O_GAP = 4
O_LATENESS = 30

OUTPUTS = (
    "counts",  # stateful_map after a fan-out of one distributor meets again in a union
    "op-totals",  # stateful_op after the same union: one total per key at the end
    "ttl",  # ttl_map after the same union
    "tumble",  # Tumbling window after the same union
    "slide",  # Sliding window with allowed lateness after the same union
    "sess",  # Session window after the same union
    "ij",  # interval_join of the two paths of that fan-out
    "wj",  # window join of the same two paths
    "ij2",  # interval_join fed by two distributors
    "mix",  # stateful_map after a union of two distributors
    "o-tumble",  # Tumbling window after epochs generated after key_distribute
    "o-sess",  # Session window (with lateness) after the same generator
    "late",  # every late stream: must stay empty
)


def value(part: int, i: int) -> tuple[int, int]:
    """Record ``i`` of ``part``: (key, event time). Parts are interleaved in time."""
    return (((i // BURST) * 7 + part * 3) % KEYS, i * PARTS + part)


def ordered_value(i: int) -> tuple[int, int]:
    return ((i // O_BURST) % KEYS, i)


class _Part:
    """Records ``fn(0), fn(1), ...``, at most :data:`CHUNK` a poll.

    Paced (``pace = (go_file, per_second)``, for worker processes): nothing until ``go_file``
    exists, then record ``i`` is due ``i / per_second`` seconds after the file was made. Every
    part progresses at the same rate wherever it runs (a moved one catches up), and the test
    starts the stream once every worker runs."""

    def __init__(
        self,
        fn: Callable[[int], tuple[int, int]],
        n: int,
        nxt: int,
        pace: tuple[str, float] | None = None,
    ) -> None:
        self.fn, self.n, self.nxt, self.pace = fn, n, nxt, pace
        self.t0: float | None = None

    def poll(self) -> Any:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, k: int) -> list[tuple[Any, int]]:
        due = self.n
        if self.pace is not None:
            go, rate = self.pace
            if self.t0 is None:
                try:
                    self.t0 = os.stat(go).st_mtime
                except FileNotFoundError:
                    return []
            due = min(due, int((time.time() - self.t0) * rate))
        stop = min(due, self.nxt + min(k, CHUNK))
        out = []
        for i in range(self.nxt, stop):
            v = self.fn(i)
            out.append((v, v[1]))
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= self.n

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Parts:
    def __init__(self, pace: tuple[str, float] | None = None) -> None:
        self.pace = pace

    def list_parts(self) -> list[int]:
        return list(range(PARTS))

    def build_part(self, part: int, state: object | None) -> _Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return _Part(lambda i: value(part, i), PER_PART, nxt, self.pace)


class Ordered:
    def __init__(self, pace: tuple[str, float] | None = None) -> None:
        self.pace = pace

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, part: str, state: object | None) -> _Part:
        nxt = 0 if state is None else int(state)  # type: ignore[call-overload]
        return _Part(ordered_value, ORDERED, nxt, self.pace)


class _Totals(StatefulLogic[Any, Any, int, Any]):
    """Counts per key; emits ``(key, total)`` once, at the end of the stream."""

    def on_data(self, record: Any, state: int | None, output: Any) -> int:
        return (state or 0) + 1

    def on_epoch(self, epoch: Any, states: Any, output: Any) -> None:
        if epoch is MAX:
            for k in sorted(states):
                output.emit(states[k], key=k)


def _ttl(k: Any, v: Any, t: Any, m: Any) -> tuple[int, Any]:
    n = m.get("n", 0) + 1
    m.insert("n", n, t + 10**9)  # expires only at the end: a running count
    return n, m


def _count(k: Any, v: Any, s: int) -> tuple[int, int]:
    return s + 1, s + 1


STATE_KINDS = ("counts", "op-totals", "ttl", "tumble", "slide", "sess")
"""Single-input keyed operators (one each), fed by two paths of one distributor."""
JOIN_KINDS = ("ij", "wj")
"""Joins whose both inputs come from one distributor by two paths."""
SHAPES = ("split", "cloned")
"""How the keyed stream fans out: ``split`` by parity, or ``cloned`` then two filters."""


def make_build(
    sink: Callable[[str], StatefulSink],
    kinds: Iterable[str] = OUTPUTS,
    shape: str = "split",
    lead: float | None = None,
) -> Callable[[StreamProvider], None]:
    """The job with the outputs ``kinds`` only (and ``late``), the fan-out made by ``shape``;
    ``lead``: the distributors' ``max_epoch_lead`` (epoch alignment)."""

    def build(provider: StreamProvider) -> None:
        build_into(provider, sink, set(kinds), shape, lead=lead)

    return build


def build_into(
    provider: StreamProvider,
    sink: Callable[[str], StatefulSink],
    kinds: set[str],
    shape: str = "split",
    go: str | None = None,
    lead: float | None = None,
) -> None:
    """The job (``go``: paced, once that file exists: the numbers source in 6 s, the
    in-order source in 7 s)."""
    lates: list[Stream] = []
    on_time, late = (
        provider.new_stream()
        .source("numbers", StatefulSource(Parts(None if go is None else (go, PER_PART / 6))))
        .assign_timestamps("ts", lambda v: v[1])
        .limit_out_of_orderness("time", BOUND)
    )
    lates.append(late)
    keyed = on_time.key_distribute("by-key", lambda v: v[0], max_epoch_lead=lead)

    # One distributor, two paths (even and odd timestamps).
    if shape == "split":
        evens, odds = keyed.split("parity", 2, _by_parity)
    else:
        c1, c2 = keyed.cloned("fan", 2)
        evens = c1.filter("evens", lambda v: v[1] % 2 == 0)
        odds = c2.filter("odds", lambda v: v[1] % 2 == 1)

    # ... meeting in a union: every kind of single-input keyed state after it.
    if kinds & set(STATE_KINDS):
        both = evens.union("both", odds)
        if "counts" in kinds:
            both.stateful_map("count", _count, initial=int).sink("counts", sink("counts"))
        if "op-totals" in kinds:
            both.stateful_op("op", _Totals()).sink("op-totals", sink("op-totals"))
        if "ttl" in kinds:
            both.ttl_map("ttl-count", _ttl).sink("ttl", sink("ttl"))
        for name, assigner, lateness in (
            ("tumble", Tumbling(WINDOW), 0),
            ("slide", Sliding(WINDOW, WINDOW // 2), WINDOW),
            ("sess", Session(GAP), 0),
        ):
            if name in kinds:
                res, wl = both.window(f"{name}-win", assigner, Count(), allowed_lateness=lateness)
                res.sink(name, sink(name))
                lates.append(wl)

    # ... meeting in both inputs of a join.
    if "ij" in kinds:
        evens.interval_join("ij-op", odds, LOWER, UPPER).sink("ij", sink("ij"))
    if "wj" in kinds:
        evens.join("wj-op", odds, Tumbling(J_WINDOW)).sink("wj", sink("wj"))

    # Two distributors into one join and one union.
    if kinds & {"ij2", "mix"}:
        keyed2 = on_time.key_distribute("by-key-2", lambda v: v[0], max_epoch_lead=lead)
        thirds = keyed2.filter("thirds", lambda v: v[1] % PARTS == 2)
        if "ij2" in kinds:
            evens.interval_join("ij2-op", thirds, LOWER, UPPER).sink("ij2", sink("ij2"))
        if "mix" in kinds:
            (
                odds.union("mixed", thirds)
                .stateful_map("mix-count", _count, initial=int)
                .sink("mix", sink("mix"))
            )

    # Epochs generated after key_distribute, from in-order input with bound 0.
    if kinds & {"o-tumble", "o-sess"}:
        o_on, o_late = (
            provider.new_stream()
            .source("ordered", StatefulSource(Ordered(None if go is None else (go, ORDERED / 7))))
            .assign_timestamps("o-ts", lambda v: v[1])
            .key_distribute("o-by-key", lambda v: v[0], max_epoch_lead=lead)
            .limit_out_of_orderness("o-time", 0)
        )
        lates.append(o_late)
        o_values = o_on.map("o-value", lambda v: v[1])
        if "o-tumble" in kinds:
            res, wl = o_values.window("o-tumble-win", Tumbling(O_WINDOW), Sum())
            res.sink("o-tumble", sink("o-tumble"))
            lates.append(wl)
        if "o-sess" in kinds:
            res, wl = o_values.window(
                "o-sess-win", Session(O_GAP), Count(), allowed_lateness=O_LATENESS
            )
            res.sink("o-sess", sink("o-sess"))
            lates.append(wl)

    lates[0].union("lates", *lates[1:]).sink("late", sink("late"))


def _by_parity(record: Any, outputs: list[bool]) -> None:
    outputs[record.value[1] % 2] = True


# ----- the oracle ----------------------------------------------------------------------------


def normal(key: Any, value: Any, ts: Any) -> str:
    """A record as one comparable line (the files of process tests hold these)."""
    if isinstance(value, WindowResult):
        value = ["W", value.start, value.end, value.value]
    elif isinstance(value, tuple):
        value = [list(x) if isinstance(x, tuple) else x for x in value]
    return json.dumps([key, value, ts if isinstance(ts, int) else str(ts)])


def all_values() -> list[tuple[int, int]]:
    return [value(p, i) for p in range(PARTS) for i in range(PER_PART)]


def _sessions(stamps: Iterable[int], gap: int) -> list[tuple[int, int, int]]:
    out: list[list[int]] = []
    for t in sorted(stamps):
        if out and t < out[-1][1]:
            out[-1][1] = max(out[-1][1], t + gap)
            out[-1][2] += 1
        else:
            out.append([t, t + gap, 1])
    return [(s, e, n) for s, e, n in out]


def _windows(recs: list[tuple[int, int]], size: int, slide: int) -> Counter[str]:
    acc: Counter[tuple[int, int, int]] = Counter()
    for k, t in recs:
        s = t - t % slide
        while s > t - size:
            acc[(k, s, s + size)] += 1
            s -= slide
    return Counter(normal(k, WindowResult(s, e, n), e) for (k, s, e), n in acc.items())


def _pairs(
    lefts: list[tuple[int, int]], rights: list[tuple[int, int]], window: int | None
) -> Counter[str]:
    out: Counter[str] = Counter()
    by_key: dict[int, list[tuple[int, int]]] = {}
    for r in rights:
        by_key.setdefault(r[0], []).append(r)
    for lv in lefts:
        for rv in by_key.get(lv[0], ()):
            lt, rt = lv[1], rv[1]
            ok = lt // window == rt // window if window else lt + LOWER <= rt <= lt + UPPER
            if ok:
                out[normal(lv[0], (lv, rv), max(lt, rt))] += 1
    return out


def _running(recs: list[tuple[int, int]]) -> dict[int, list[int]]:
    n = Counter(k for k, _ in recs)
    return {k: list(range(1, c + 1)) for k, c in n.items()}


@lru_cache(maxsize=1)
def expected() -> dict[str, Any]:
    """Each output's exact content: a Counter of lines, or per key the sorted values."""
    recs = all_values()
    per_key = Counter(k for k, _ in recs)
    by_key: dict[int, list[int]] = {}
    for k, t in recs:
        by_key.setdefault(k, []).append(t)
    evens = [r for r in recs if r[1] % 2 == 0]
    odds = [r for r in recs if r[1] % 2 == 1]
    thirds = [r for r in recs if r[1] % PARTS == 2]
    ordered = [ordered_value(i) for i in range(ORDERED)]
    o_sums: Counter[tuple[int, int]] = Counter()
    o_by_key: dict[int, list[int]] = {}
    for k, t in ordered:
        o_sums[(k, t - t % O_WINDOW)] += t
        o_by_key.setdefault(k, []).append(t)
    return {
        "counts": _running(recs),
        "op-totals": Counter(normal(k, c, MAX) for k, c in per_key.items()),
        "ttl": _running(recs),
        "tumble": _windows(recs, WINDOW, WINDOW),
        "slide": _windows(recs, WINDOW, WINDOW // 2),
        "sess": Counter(
            normal(k, WindowResult(s, e, n), e)
            for k, ts in by_key.items()
            for s, e, n in _sessions(ts, GAP)
        ),
        "ij": _pairs(evens, odds, None),
        "wj": _pairs(evens, odds, J_WINDOW),
        "ij2": _pairs(evens, thirds, None),
        "mix": _running(odds + thirds),
        "o-tumble": Counter(
            normal(k, WindowResult(s, s + O_WINDOW, v), s + O_WINDOW)
            for (k, s), v in o_sums.items()
        ),
        "o-sess": Counter(
            normal(k, WindowResult(s, e, n), e)
            for k, ts in o_by_key.items()
            for s, e, n in _sessions(ts, O_GAP)
        ),
        "late": Counter(),
    }


RUNNING = ("counts", "ttl", "mix")
"""Outputs of running counts: per key exactly ``1..c`` (order across keys is free)."""


def check_lines(got: dict[str, list[str]], kinds: Iterable[str] = OUTPUTS) -> None:
    """Compare the outputs ``kinds`` (lines made by :func:`normal`) with the oracle."""
    want = expected()
    for name in [*kinds, "late"]:
        lines = got.get(name, [])
        if name in RUNNING:
            per_key: dict[int, list[int]] = {}
            for line in lines:
                k, v, _ = json.loads(line)
                per_key.setdefault(k, []).append(v)
            have = {k: sorted(v) for k, v in per_key.items()}
            assert have == want[name], (name, _first_diff(have, want[name]))
        else:
            have_c = Counter(lines)
            assert have_c == want[name], (
                name,
                "missing",
                list((want[name] - have_c).items())[:3],
                "extra",
                list((have_c - want[name]).items())[:3],
            )


def _first_diff(a: dict[Any, Any], b: dict[Any, Any]) -> Any:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k, (a.get(k) or [])[-3:], (b.get(k) or [])[-3:]
    return None


def check_no_repeats(got: dict[str, list[str]]) -> None:
    """No running count appears twice (holds at any moment of a run)."""
    for name in RUNNING:
        seen: set[tuple[Any, Any]] = set()
        for line in got.get(name, []):
            k, v, _ = json.loads(line)
            assert (k, v) not in seen, (name, k, v)
            seen.add((k, v))


# ----- in-process outputs ----------------------------------------------------------------------


class Outputs:
    """Every output as an exactly-once :class:`~jobs.rescale_job.Recorder`."""

    def __init__(
        self, kinds: Iterable[str] = OUTPUTS, shape: str = "split", lead: float | None = None
    ) -> None:
        self.kinds = tuple(kinds)
        self.shape = shape
        self.lead = lead
        self.recorders = {name: Recorder() for name in OUTPUTS}

    def build(self) -> Callable[[StreamProvider], None]:
        return make_build(
            lambda name: StatefulSink(self.recorders[name]), self.kinds, self.shape, self.lead
        )

    def lines(self) -> dict[str, list[str]]:
        return {
            name: [normal(r.key, r.value, r.timestamp) for r in rec.records]
            for name, rec in self.recorders.items()
        }

    def check(self) -> None:
        check_lines(self.lines(), self.kinds)

    def check_no_repeats(self) -> None:
        for name in RUNNING:
            seen: set[tuple[Any, Any]] = set()
            for r in self.recorders[name].records:
                assert (r.key, r.value) not in seen, (name, r)
                seen.add((r.key, r.value))


# ----- process outputs -------------------------------------------------------------------------


def file_sink(work: str) -> Callable[[str], StatefulSink]:
    from malstrom.sinks import FileSink

    def sink(name: str) -> StatefulSink:
        return FileSink(Path(work) / f"{name}.txt", fmt=lambda r: normal(*r))

    return sink


def build_files(provider: StreamProvider, workdir: str, shape: str = "split") -> None:
    """The job for worker processes (``functools.partial(build_files, workdir=...)``): its
    sources start once :func:`go` was called."""
    build_into(provider, file_sink(workdir), set(OUTPUTS), shape, str(Path(workdir) / "go"))


def go(workdir: str) -> None:
    """Start the sources of :func:`build_files`."""
    (Path(workdir) / "go").touch()


def read_files(workdir: str) -> dict[str, list[str]]:
    out = {}
    for name in OUTPUTS:
        f = Path(workdir) / f"{name}.txt"
        out[name] = f.read_text().splitlines() if f.exists() else []
    return out
