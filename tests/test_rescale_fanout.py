"""Live rescales of key regions that fan out and meet again, and of epochs generated after
``key_distribute`` (in-process harness; jobs/fanout_job.py holds the job and its oracle).

- One distributor reaching an operator by two paths delivers each hand-over message to it
  twice; every operator must act on it once (state installed once, keys reported once).
- Epoch generators after a distributor must not turn on-time records late while keys move,
  and windows moved to a worker whose frontier is ahead or behind must fire exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from jobs import fanout_job as fj

from malstrom import StatefulSource, StreamProvider
from malstrom.coordinator._coordinator import Coordinator, JobPhase
from malstrom.engine.batch import Batch
from malstrom.engine.messages import Acquire, Installed, Interrogate, Token
from malstrom.engine.operator import Operator
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.testing import LocalCluster, run_local_cluster
from malstrom.windows import Sum, Tumbling

pytestmark = pytest.mark.timeout(180)


def plan(steps: dict[int, int], log: list[Any]) -> Callable[[int, Coordinator], None]:
    def on_turn(n: int, coord: Coordinator) -> None:
        if n in steps:
            coord.request_rescale(steps[n], lambda v, e: log.append((v, e)))

    return on_turn


def run(out: fj.Outputs, start: int, steps: dict[int, int]) -> None:
    log: list[Any] = []
    coord = run_local_cluster(out.build(), start, on_turn=plan(steps, log))
    assert coord.phase is JobPhase.FINISHED
    assert log == [(n, None) for n in steps.values()], log
    out.check()


SEQUENCES = [(2, {5: 3, 15: 1, 25: 4}), (3, {2: 1, 4: 4, 6: 2, 8: 5, 10: 1})]


# ----- item: moved state is installed once per operator ---------------------------------------


@pytest.mark.parametrize(
    ("shape", "start", "steps"), [("split", *SEQUENCES[0]), ("cloned", *SEQUENCES[1])]
)
@pytest.mark.parametrize("kind", fj.STATE_KINDS + fj.JOIN_KINDS)
def test_state_reached_by_two_paths_moves_exactly_once(
    kind: str, shape: str, start: int, steps: dict[int, int]
) -> None:
    """A keyed stream split (or cloned and filtered) into two paths that meet again in a union
    before keyed state, or in both inputs of a join: its state moves whole and once."""
    run(fj.Outputs([kind], shape), start, steps)


@pytest.mark.parametrize("kind", ["ij2", "mix"])
@pytest.mark.parametrize(("start", "steps"), SEQUENCES)
def test_state_fed_by_two_distributors_moves_exactly_once(
    kind: str, start: int, steps: dict[int, int]
) -> None:
    """A join and a union whose inputs come from two distributors (one of them also reaching
    the operator through a fan-out)."""
    run(fj.Outputs([kind]), start, steps)


@pytest.mark.parametrize(
    ("shape", "start", "steps"),
    [("split", 1, {3: 4, 15: 2, 30: 3}), ("cloned", 2, {10: 3, 40: 2}), ("split", *SEQUENCES[1])],
)
def test_every_topology_at_once_is_exact(shape: str, start: int, steps: dict[int, int]) -> None:
    run(fj.Outputs(fj.OUTPUTS, shape), start, steps)


def test_an_operator_acts_once_on_a_message_reaching_it_by_two_paths() -> None:
    """The engine's rule, on its own: the second copy of a hand-over message that reached an
    operator by another input is consumed there (token kept exact), not acted on again, and
    not passed on a second time."""

    class Recording(Operator):
        migrates = True

        def __init__(self) -> None:
            super().__init__("op")
            self.installed: list[Any] = []
            self.moving: list[int] = []

        def install(self, states: dict[Any, Any]) -> None:
            self.installed.append(states)

        def keys_moving(self, version: int) -> None:
            self.moving.append(version)

    op = Recording()
    a, b = op.add_input(), op.add_input()
    out: Any = []
    op.outs = [[out]]
    ask = Interrogate(Token(2), 7)
    acq = Acquire(Token(2), {"op": {"k": 1}})
    done = Installed(Token(2), 7)
    a.extend([ask, acq, Batch(["x"], [1], [0]), done])
    b.extend([Batch(["y"], [2], [0]), ask, acq, done])
    op.drain()
    assert op.installed == [{"k": 1}]
    assert op.moving == [7]
    # Installed does not align at an operator outside a keyed fan-in: its copies are handled
    # like the others'.
    names = [type(m).__name__ for m in out]
    assert names == ["Interrogate", "Acquire", "Batch", "Installed", "Batch"]
    assert ask.token.pending == acq.token.pending == done.token.pending == 1  # one copy on
    # Where every input is keyed by a distributor, Installed aligns (here: two distributors'
    # messages, one goes on).
    op.aligns_region = True
    c, d = Installed(Token(1), 8), Installed(Token(1), 8)
    a.append(c)
    op.drain()
    assert out[-1] is not c  # waits for the other input
    b.append(d)
    op.drain()
    assert out[-1] is c and c.token.pending == 1 and d.token.pending == 0


# ----- item: epochs generated after key_distribute stay exact --------------------------------

O_KINDS = ("o-tumble", "o-sess")


@pytest.mark.parametrize(
    "steps",
    [{3: 3, 7: 2}, {11: 3, 24: 2}, {19: 3, 23: 2}, {27: 3, 40: 2}, {6: 4, 12: 1, 20: 3}],
)
def test_generated_epochs_after_key_distribute_survive_rescales(steps: dict[int, int]) -> None:
    """In-order input, epochs generated after key_distribute with bound 0, rescaled 2 -> 3 ->
    2: nothing goes late and every window's sum is exact (windows that moved to a worker ahead
    fire once, windows that fired on a worker ahead do not fire again)."""
    run(fj.Outputs(O_KINDS), 2, steps)


def test_the_reported_scenario_window_sums_and_no_late_record() -> None:
    """The scenario as reported: in-order data -> key_distribute -> limit_out_of_orderness(0)
    -> tumbling sums, rescaled 2 -> 3 -> 2, at many points of the run."""
    n, keys = 3_000, 13

    class Src:
        def list_parts(self) -> list[int]:
            return [0]

        def build_part(self, part: int, state: Any) -> Any:
            return fj._Part(lambda i: (i % keys, i), n, state or 0)

    def once(steps: dict[int, int]) -> tuple[dict[Any, int], int]:
        res, late = ListSink(), ListSink()

        def build(provider: StreamProvider) -> None:
            on_time, late_recs = (
                provider.new_stream()
                .source("src", StatefulSource(Src()))
                .assign_timestamps("ts", lambda v: v[1])
                .key_distribute("by-key", lambda v: v[0])
                .limit_out_of_orderness("epochs", 0)
            )
            late_recs.sink("late", late)
            sums, late2 = on_time.map("v", lambda v: v[1]).window("sum", Tumbling(100), Sum())
            sums.sink("sums", res)
            late2.sink("late2", late)

        log: list[Any] = []
        run_local_cluster(build, 2, on_turn=plan(steps, log))
        assert [e for _, e in log] == [None] * len(steps)
        got: dict[Any, int] = {}
        for r in res.records:
            assert (r.key, r.value.start) not in got, r
            got[(r.key, r.value.start)] = r.value.value
        return got, len(late.records)

    want: dict[Any, int] = {}
    for i in range(n):
        want[(i % keys, i - i % 100)] = want.get((i % keys, i - i % 100), 0) + i
    for t in range(2, 40, 9):
        got, late = once({t: 3, t + 9: 2})
        assert late == 0, t
        assert got == want, t


def test_a_frozen_generator_classifies_against_the_epoch_of_the_rescale_start() -> None:
    """While keys move, a generator after key_distribute emits no epoch and judges records by
    the epoch it had emitted when the rescale started; the epoch it gathered meanwhile follows
    the held records."""
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import Epoch, Released
    from malstrom.operators.time import GenerateEpochsOp

    gen = GenerateEpochsOp("g", None, 0, BuildContext(0, (0,)))
    (inp,) = [gen.add_input()]
    on_time: Any = []
    late: Any = []
    gen.outs = [[on_time], [late]]
    inp.extend([Batch(["a"], [1], [10]), Interrogate(Token(1), 1)])
    inp.extend([Batch(["a", "a"], [2, 3], [30, 12]), Batch(["b"], [4], [11])])
    gen.drain()
    assert not gen.rescale_done(1)
    epochs = [m.ts for m in on_time if type(m) is Epoch]
    assert epochs == [10]  # nothing while frozen
    got = [v for m in on_time if type(m) is Batch for v in m.values]
    assert got == [1, 2, 3, 4]  # 12 and 11 are after 10: on time, although 30 came first
    assert [v for m in late if type(m) is Batch for v in m.values] == []
    inp.extend([Batch(["c"], [5], [10]), Released(Token(1), 1, "d")])
    gen.drain()
    assert [v for m in late if type(m) is Batch for v in m.values] == [5]
    assert [m.ts for m in on_time if type(m) is Epoch] == [10, 30]
    assert type(on_time[-1]) is Released and gen.rescale_done(1)
    inp.append(Batch(["d"], [6], [29]))
    gen.drain()
    assert [v for m in late if type(m) is Batch for v in m.values] == [5, 6]


def test_windows_moved_between_workers_at_different_frontiers_fire_once() -> None:
    """A window that had not fired where it was fires at once on a worker whose frontier is
    past its end; one that had fired (kept for lateness) does not fire again on a worker whose
    frontier is behind, and late records update it as they would have where it was."""
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import Epoch
    from malstrom.operators.windows import WindowOp
    from malstrom.windows import Count

    def op(frontier: Any) -> tuple[WindowOp, Any]:
        w = WindowOp("w", Tumbling(10), Count(), 10, BuildContext(0, (0,)), owner=hash)
        w.frontier = frontier
        inp = w.add_input()
        out: Any = []
        w.outs = [[out], [[]]]
        return w, (inp, out)

    src, (s_in, s_out) = op(None)
    s_in.extend([Batch(["k", "k", "j"], [1, 1, 1], [3, 12, 5]), Epoch(10)])
    src.drain()
    fired = [tuple(r) for m in s_out if type(m) is Batch for r in m.records()]
    assert [(r[0], r[1].start) for r in fired] == [("k", 0), ("j", 0)]
    moved = src.extract(lambda keys: [k for k in keys if k == "k"])
    assert moved["k"][0] == 10 and len(moved["k"][1]) == 2  # fired up to 10; [0,10) kept

    ahead, (_, a_out) = op(25)  # [10, 20) has not fired on the source: due here
    ahead.install(moved)
    fired = [r for m in a_out if type(m) is Batch for r in m.records()]
    assert [(r.key, r.value.start, r.value.value) for r in fired] == [("k", 10, 1)]

    behind, (b_in, b_out) = op(5)  # [0, 10) fired on the source: not again here
    behind.install(moved)
    b_in.extend([Batch(["k"], [1], [4]), Epoch(20)])  # a late update of [0, 10) at once
    behind.drain()
    fired = [r for m in b_out if type(m) is Batch for r in m.records()]
    assert [(r.key, r.value.start, r.value.value) for r in fired] == [("k", 0, 2), ("k", 10, 1)]


def test_generators_after_key_distribute_restore_at_another_parallelism_exactly() -> None:
    """Windows fired on a worker ahead, kept for lateness, are snapshotted with how far they
    fired: restored at another parallelism (frontier: the least any worker had) they do not
    fire a second time."""
    p = InMemoryPersistence()
    out = fj.Outputs(O_KINDS)
    cluster = LocalCluster(out.build(), 3, persistence=p)
    for _ in range(25):
        cluster.step()
    cluster.coord.request_snapshot()
    for _ in range(5):
        cluster.step()
    assert p.committed_versions(), "no snapshot was committed"
    cluster = LocalCluster(out.build(), 2, persistence=p)  # a crash, restarted at 2
    while cluster.step():
        pass
    out.check()


@pytest.mark.parametrize("stamped", [False, True])
def test_a_worker_that_gets_a_part_is_no_longer_idle_to_its_peers(stamped: bool) -> None:
    """A worker without source parts is idle (left out of merged epochs). When a rescale moves
    a part to it, it must tell its peers it is active before its records go out: peers learn
    that the part finished straight from its reader, and would otherwise end the stream while
    that part's last records are still on their way (observed on processes: records after
    Epoch(MAX), end-of-stream totals missing them)."""
    from malstrom.engine.messages import IDLE
    from malstrom.keyed.distributor import DistributorOp
    from malstrom.keyed.partitioners import rendezvous_select

    assert rendezvous_select(0, [0, 1]) == 1 and rendezvous_select(0, [0, 1, 2]) == 2

    class Src:
        def list_parts(self) -> list[int]:
            return [0]

        def build_part(self, part: int, state: Any) -> Any:
            return fj._Part(lambda i: (i % 5, i), 3_000, state or 0)

    out = ListSink()

    def build(provider: StreamProvider) -> None:
        s = provider.new_stream().source("src", StatefulSource(Src()))
        if stamped:  # epochs generated after key_distribute
            s = s.assign_timestamps("ts", lambda v: v[1])
        s.key_distribute("by-key", lambda v: v[0]).sink("out", out)

    cluster = LocalCluster(build, 2)
    for _ in range(3):
        cluster.step()
    done: list[Any] = []
    cluster.coord.request_rescale(3, lambda v, e: done.append(e))
    while not done:
        cluster.step()
    assert done == [None]
    cluster.step()
    assert len(out.records) < 3_000  # the part is still being read, on worker 2
    (dist,) = [op for op in cluster.workers[0].ops if isinstance(op, DistributorOp)]
    assert dist._remote_frontier[2] is not IDLE
    while cluster.step():
        pass
    assert len(out.records) == 3_000


def test_an_aligning_union_names_both_distributors_in_the_released_it_passes_on() -> None:
    """Two distributors' Released meet in an aligning union: the one it passes on names both
    origins (a router downstream waits for both), and the original message, whose copies
    may travel other paths, keeps naming its own."""
    from malstrom.engine.messages import Released
    from malstrom.engine.operator import Operator

    union = Operator("both")
    union.aligns_region = True
    a_in, b_in = union.add_input(), union.add_input()
    out: list[Any] = []
    union.outs = [[out]]
    from_a, from_b = Released(Token(1), 3, "a"), Released(Token(1), 3, "b")
    a_in.append(from_a)
    b_in.append(from_b)
    union.drain()
    (passed,) = out
    assert type(passed) is Released and passed.origins == {"a", "b"} and passed.version == 3
    assert passed.token is from_a.token and from_a.token.pending == 1
    assert from_b.token.pending == 0  # consumed here
    assert from_a.origins == {"a"}
