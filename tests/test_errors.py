"""Build mistakes raise BuildError; failures at run time raise JobFailed, caused by an
OperatorError naming the operator."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from job_errors import job_fails_with

from malstrom import (
    BuildError,
    NoKey,
    OperatorError,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StatelessLogic,
    StatelessSink,
    StatelessSource,
    Stream,
    StreamProvider,
)
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence
from malstrom.sources import IterSource

Build = Callable[[StreamProvider], None]


def run(build: Build, **kw: Any) -> None:
    SingleThreadRuntime(build, **kw).execute()


def build_error(build: Build) -> BuildError:
    with pytest.raises(BuildError) as info:
        run(build)
    assert isinstance(info.value, ValueError)
    return info.value


def operator_error(build: Build, **kw: Any) -> OperatorError:
    with job_fails_with(OperatorError) as info:
        run(build, **kw)
    return info.value


def src(p: StreamProvider, values: Any = (1, 2, 3), name: str = "src") -> Stream:
    return p.new_stream().source(name, IterSource(list(values)))


class Boom(Exception):
    """The user's own exception."""


# ----- build errors ---------------------------------------------------------------------------


def test_duplicate_operator_name_is_refused_naming_it() -> None:
    def build(p: StreamProvider) -> None:
        src(p).map("twice", str).map("twice", str)

    assert "twice" in str(build_error(build))


def test_duplicate_name_across_streams_and_kinds() -> None:
    def build(p: StreamProvider) -> None:
        src(p, name="same").sink("out", ListSink())
        src(p, name="other").filter("same", bool).sink("out2", ListSink())

    assert "same" in str(build_error(build))

    def build2(p: StreamProvider) -> None:
        src(p).sink("dup", ListSink())
        src(p, name="src2").sink("dup", ListSink())

    assert "dup" in str(build_error(build2))


@pytest.mark.parametrize("name", ["a::b", "::", "x::", "::internal"])
def test_name_with_double_colon_is_refused(name: str) -> None:
    def build(p: StreamProvider) -> None:
        src(p).map(name, str)

    assert name in str(build_error(build))


def test_double_colon_refused_for_sources_and_sinks() -> None:
    with pytest.raises(BuildError, match="a::src"):
        run(lambda p: src(p, name="a::src"))
    with pytest.raises(BuildError, match="a::sink"):
        run(lambda p: src(p).sink("a::sink", ListSink()))


def test_second_source_on_a_stream_is_refused() -> None:
    def build(p: StreamProvider) -> None:
        s = p.new_stream()
        s.source("first", IterSource([1]))
        s.source("second", IterSource([2]))

    assert "second" in str(build_error(build))


def test_source_on_a_stream_with_operators_is_refused() -> None:
    def build(p: StreamProvider) -> None:
        p.new_stream().map("m", str).source("late_source", IterSource([1]))

    assert "late_source" in str(build_error(build))

    def build2(p: StreamProvider) -> None:
        s = src(p)
        s.map("m", str)
        s.source("again", IterSource([1]))

    assert "again" in str(build_error(build2))


def test_source_must_be_a_source() -> None:
    def build(p: StreamProvider) -> None:
        p.new_stream().source("bad", [1, 2, 3])  # type: ignore[arg-type]

    assert "bad" in str(build_error(build))


def test_sink_must_be_a_sink() -> None:
    def build(p: StreamProvider) -> None:
        src(p).sink("bad_sink", print)  # type: ignore[arg-type]

    assert "bad_sink" in str(build_error(build))


NON_CALLABLE: list[tuple[str, Callable[[Stream], Any]]] = [
    ("map", lambda s: s.map("op", 3)),
    ("filter", lambda s: s.filter("op", None)),
    ("filter_map", lambda s: s.filter_map("op", "x")),
    ("flat_map", lambda s: s.flat_map("op", [1])),
    ("inspect", lambda s: s.inspect("op", 1)),
    ("inspect_frontier", lambda s: s.inspect_frontier("op", 1)),
    ("key_local", lambda s: s.key_local("op", "k")),
    ("key_distribute", lambda s: s.key_distribute("op", "k")),
    ("key_distribute partitioner", lambda s: s.key_distribute("op", str, 5)),
    ("stateful_map", lambda s: s.stateful_map("op", {})),
    ("stateful_map initial", lambda s: s.stateful_map("op", lambda k, v, st: (v, st), 0)),
    ("ttl_map", lambda s: s.ttl_map("op", 1)),
    ("assign_timestamps", lambda s: s.assign_timestamps("op", 1)),
    ("generate_epochs", lambda s: s.generate_epochs("op", 1)),
    ("split", lambda s: s.split("op", 2, 1)),
    ("stateful_op", lambda s: s.stateful_op("op", object())),
    ("stateless_op", lambda s: s.stateless_op("op", object())),
]


@pytest.mark.parametrize("case", NON_CALLABLE, ids=[c[0] for c in NON_CALLABLE])
def test_non_callable_function_is_a_build_error(
    case: tuple[str, Callable[[Stream], Any]],
) -> None:
    calls: list[int] = []

    def build(p: StreamProvider) -> None:
        case[1](p.new_stream().source("src", IterSource(lambda: calls.append(1) or [1])))

    err = build_error(build)
    assert "'op'" in str(err)
    assert calls == []  # refused at build time, before anything ran


def test_bad_split_and_cloned_counts() -> None:
    with pytest.raises(BuildError, match="sp"):
        run(lambda p: src(p).split("sp", 0, lambda r, o: None))
    with pytest.raises(BuildError, match="cl"):
        run(lambda p: src(p).cloned("cl", 0))


def test_union_with_a_non_stream_is_refused() -> None:
    with pytest.raises(BuildError, match="'u'"):
        run(lambda p: src(p).union("u", [1, 2]))  # type: ignore[arg-type]


# ----- user exceptions ------------------------------------------------------------------------


def check_user_error(err: OperatorError, op: str, cause: BaseException, value: Any) -> None:
    msg = str(err)
    assert repr(op) in msg or op in msg
    assert err.operator == op
    assert err.__cause__ is cause
    assert repr(value) in msg  # small record: shown in full


def failing(*fail_on: Any) -> tuple[Callable[..., Any], list[BaseException]]:
    """A function raising Boom on the given (last positional) argument values."""
    raised: list[BaseException] = []

    def fn(*args: Any) -> Any:
        arg = args[0] if len(args) == 1 else args[1]
        value = arg.value if isinstance(arg, Record) else arg
        if value in fail_on:
            e = Boom(f"cannot handle {value!r}")
            raised.append(e)
            raise e
        return value

    return fn, raised


def test_map_error_names_operator_record_and_chains_cause() -> None:
    fn, raised = failing("bad")

    def build(p: StreamProvider) -> None:
        src(p, ["ok", "bad", "ok2"]).map("upper", fn).sink("sink", ListSink())

    err = operator_error(build)
    check_user_error(err, "upper", raised[0], "bad")
    assert err.record == Record(NoKey, "bad", 1)
    assert "Boom" in str(err)


def test_filter_error() -> None:
    fn, raised = failing(7)

    def build(p: StreamProvider) -> None:
        src(p, range(10)).filter("keep", fn).sink("sink", ListSink())

    err = operator_error(build)
    check_user_error(err, "keep", raised[0], 7)
    assert err.record == Record(NoKey, 7, 7)


def test_filter_map_flat_map_key_local_errors() -> None:
    for method in ("filter_map", "flat_map", "key_local", "assign_timestamps"):
        fn, raised = failing(2)

        def build(p: StreamProvider, method: str = method, fn: Any = fn) -> None:
            f = (lambda v: [fn(v)]) if method == "flat_map" else fn
            getattr(src(p, [1, 2, 3]), method)("the_op", f)

        err = operator_error(build)
        check_user_error(err, "the_op", raised[0], 2)


def test_stateful_map_error() -> None:
    raised: list[BaseException] = []

    def fn(key: Any, value: Any, state: Any) -> tuple[Any, Any]:
        if value == "x":
            raised.append(KeyError("x"))
            raise raised[-1]
        return value, (state or 0) + 1

    def build(p: StreamProvider) -> None:
        src(p, ["a", "x"]).key_local("k", str).stateful_map("counter", fn).sink("s", ListSink())

    err = operator_error(build)
    check_user_error(err, "counter", raised[0], "x")
    assert err.record == Record("x", "x", 1)


def test_stateful_op_error_in_on_data() -> None:
    raised: list[BaseException] = []

    class Logic(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            if record.value == 3:
                raised.append(ZeroDivisionError("three"))
                raise raised[-1]
            return 1

    def build(p: StreamProvider) -> None:
        src(p, [1, 2, 3, 4]).stateful_op("custom", Logic()).sink("s", ListSink())

    err = operator_error(build)
    check_user_error(err, "custom", raised[0], 3)


def test_stateful_op_error_in_on_epoch_and_on_schedule() -> None:
    class OnEpoch(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return None

        def on_epoch(self, epoch: Any, states: Any, output: Output[Any]) -> None:
            raise Boom("epoch")

    err = operator_error(lambda p: src(p).stateful_op("ep", OnEpoch()))
    assert err.operator == "ep" and "'ep'" in str(err)
    assert isinstance(err.__cause__, Boom)

    class OnSchedule(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return None

        def on_schedule(self, states: Any, output: Output[Any]) -> None:
            raise Boom("schedule")

    err = operator_error(lambda p: src(p).stateful_op("sched", OnSchedule()))
    assert err.operator == "sched"
    assert isinstance(err.__cause__, Boom)


def test_stateless_op_error() -> None:
    class Logic(StatelessLogic):
        def on_data(self, record: Any, output: Output[Any]) -> None:
            raise Boom("stateless")

    err = operator_error(lambda p: src(p, ["v"]).stateless_op("sl", Logic()))
    assert err.operator == "sl"
    assert isinstance(err.__cause__, Boom)
    assert "'v'" in str(err)


def test_sink_error() -> None:
    raised: list[BaseException] = []

    class Bad:
        def sink(self, record: Record) -> None:
            if record.value == "poison":
                raised.append(OSError("disk full"))
                raise raised[-1]

    def build(p: StreamProvider) -> None:
        src(p, ["fine", "poison"]).sink("writer", StatelessSink(Bad()))

    err = operator_error(build)
    check_user_error(err, "writer", raised[0], "poison")


def test_inspect_error() -> None:
    fn, raised = failing(2)

    def build(p: StreamProvider) -> None:
        src(p, [1, 2, 3]).inspect("look", lambda r, ctx: fn(r)).sink("s", ListSink())

    err = operator_error(build)
    check_user_error(err, "look", raised[0], 2)
    assert err.record == Record(NoKey, 2, 1)


def test_inspect_frontier_and_split_errors() -> None:
    def bad_front(t: Any, ctx: Any) -> None:
        raise Boom("frontier")

    err = operator_error(lambda p: src(p).inspect_frontier("front", bad_front))
    assert err.operator == "front" and isinstance(err.__cause__, Boom)

    def bad_route(r: Record, outs: list[bool]) -> None:
        outs[5] = True  # IndexError

    err = operator_error(lambda p: src(p, ["r"]).split("router", 2, bad_route))
    assert err.operator == "router" and isinstance(err.__cause__, IndexError)
    assert "'r'" in str(err)


def test_generate_epochs_gen_error() -> None:
    def gen(rec: Record, prev: Any) -> Any:
        raise Boom("gen")

    err = operator_error(lambda p: src(p, ["g"]).generate_epochs("epochs", gen))
    assert err.operator == "epochs" and isinstance(err.__cause__, Boom)


def test_source_error() -> None:
    class Part:
        def poll(self) -> Any:
            raise Boom("source")

        def is_finished(self) -> bool:
            return False

    class Src:
        def list_parts(self) -> list[Any]:
            return [0]

        def build_part(self, part: Any) -> Part:
            return Part()

    err = operator_error(lambda p: p.new_stream().source("reader", StatelessSource(Src())))
    assert err.operator == "reader" and isinstance(err.__cause__, Boom)


@pytest.mark.parametrize("where", ["map", "filter", "stateful_map", "inspect", "sink"])
def test_huge_record_is_truncated_in_the_message(where: str) -> None:
    huge = "x" * 1_000_000

    def boom(*a: Any) -> Any:
        raise Boom("no")

    def build(p: StreamProvider) -> None:
        s = src(p, [huge])
        if where == "map":
            s.map("op", boom)
        elif where == "filter":
            s.filter("op", boom)
        elif where == "stateful_map":
            s.stateful_map("op", boom)
        elif where == "inspect":
            s.inspect("op", boom)
        else:

            class Sink:
                def sink(self, record: Record) -> None:
                    boom()

            s.sink("op", StatelessSink(Sink()))

    err = operator_error(build)
    msg = str(err)
    assert len(msg) < 1000
    assert "'op'" in msg
    assert "xxxx" in msg  # some of the record is shown
    assert "Record(" in msg
    assert isinstance(err.__cause__, Boom)
    assert err.record is not None and err.record.value is huge


def test_record_with_failing_repr_still_reports() -> None:
    class Ugly:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    def boom(v: Any) -> Any:
        raise Boom("fails")

    err = operator_error(lambda p: src(p, [Ugly()]).map("op", boom))
    assert "'op'" in str(err)
    assert isinstance(err.__cause__, Boom)


# ----- unserializable state -------------------------------------------------------------------


@pytest.mark.parametrize("interval", [0.001, None])
@pytest.mark.parametrize("make_state", [threading.Lock, lambda: lambda: 1], ids=["lock", "lambda"])
def test_unserializable_stateful_map_state(interval: Any, make_state: Callable[[], Any]) -> None:
    def build(p: StreamProvider) -> None:
        src(p, range(100)).stateful_map("holder", lambda k, v, st: (v, make_state())).sink(
            "s", ListSink()
        )

    err = operator_error(build, persistence=InMemoryPersistence(), snapshot_interval=interval)
    assert err.operator == "holder"
    assert "'holder'" in str(err)
    assert "serializ" in str(err)
    assert err.__cause__ is not None


def test_unserializable_stateful_op_state_at_periodic_snapshot() -> None:
    class Slow:
        """Records trickle in, so periodic snapshots happen while the job runs."""

        def __init__(self) -> None:
            self.i = 0

        def poll(self) -> Any:
            got = self.poll_batch(1)
            return got[0] if got else None

        def poll_batch(self, n: int) -> list[Any]:
            time.sleep(0.001)
            self.i += 1
            return [(self.i, self.i)]

        def is_finished(self) -> bool:
            return self.i >= 10_000  # the snapshot fails long before

    class Src:
        def list_parts(self) -> list[Any]:
            return ["p"]

        def build_part(self, part: Any) -> Slow:
            return Slow()

    class Logic(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return threading.Lock()

    def build(p: StreamProvider) -> None:
        p.new_stream().source("src", StatelessSource(Src())).stateful_op("locker", Logic())

    err = operator_error(build, persistence=InMemoryPersistence(), snapshot_interval=0.005)
    assert err.operator == "locker"
    assert isinstance(err.__cause__, TypeError)


# ----- timestamps -----------------------------------------------------------------------------


class _OneByOne:
    def __init__(self, stamps: list[Any]) -> None:
        self.stamps = stamps

    def list_parts(self) -> list[Any]:
        return [NoKey]

    def build_part(self, part: Any) -> Any:
        stamps = self.stamps

        class Part:
            i = 0

            def poll(self) -> Any:
                return None

            def poll_batch(self, n: int) -> list[Any]:
                if self.i >= len(stamps):
                    return []
                self.i += 1
                return [(stamps[self.i - 1], stamps[self.i - 1])]

            def is_finished(self) -> bool:
                return self.i >= len(stamps)

        return Part()


@pytest.mark.parametrize("one_batch", [True, False])
def test_incomparable_timestamps_in_limit_out_of_orderness(one_batch: bool) -> None:
    stamps: list[Any] = [1, 2, "three", 4]

    def build(p: StreamProvider) -> None:
        if one_batch:
            s = src(p, stamps).assign_timestamps("ts", lambda v: v)
        else:
            s = p.new_stream().source("src", StatelessSource(_OneByOne(stamps)))
        s.limit_out_of_orderness("bounded", 0)

    err = operator_error(build)
    assert err.operator == "bounded"
    assert "'bounded'" in str(err)
    assert isinstance(err.__cause__, TypeError)
    assert "three" in str(err)


def test_incomparable_timestamps_str_then_int_in_generate_epochs() -> None:
    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", StatelessSource(_OneByOne(["a", "b", 3])))
        s.generate_epochs("gen", lambda rec, prev: rec.timestamp)

    err = operator_error(build)
    assert err.operator == "gen"
    assert isinstance(err.__cause__, TypeError)


# ----- Output.emit ----------------------------------------------------------------------------


def test_emit_without_key_in_stateful_on_epoch_is_an_operator_error() -> None:
    class Logic(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return 1

        def on_epoch(self, epoch: Any, states: Any, output: Output[Any]) -> None:
            output.emit("no key")

    err = operator_error(lambda p: src(p).stateful_op("flusher", Logic()).sink("s", ListSink()))
    assert err.operator == "flusher"
    assert "key" in str(err)


def test_emit_without_key_or_timestamp_in_on_schedule_is_an_operator_error() -> None:
    class NoKeyGiven(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return None

        def on_schedule(self, states: Any, output: Output[Any]) -> None:
            output.emit("v", timestamp=1)

    err = operator_error(lambda p: src(p).stateful_op("sched1", NoKeyGiven()))
    assert err.operator == "sched1" and "key" in str(err)

    class NoTsGiven(StatefulLogic[Any, Any, Any, Any]):
        def on_data(self, record: Record, state: Any, output: Output[Any]) -> Any:
            return None

        def on_schedule(self, states: Any, output: Output[Any]) -> None:
            output.emit("v", key="k")

    err = operator_error(lambda p: src(p).stateful_op("sched2", NoTsGiven()))
    assert err.operator == "sched2" and "timestamp" in str(err)


def test_emit_in_stateless_on_epoch_needs_no_key() -> None:
    class Logic(StatelessLogic):
        def on_data(self, record: Any, output: Output[Any]) -> None:
            pass

        def on_epoch(self, epoch: Any, output: Output[Any]) -> None:
            output.emit("end")

    sink = ListSink()
    run(lambda p: src(p).stateless_op("sl", Logic()).sink("s", sink))
    assert sink.values == ["end"]


# ----- runs after an error --------------------------------------------------------------------


def test_error_does_not_poison_the_next_run() -> None:
    calls = {"n": 0}

    def flaky(v: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("once")
        return v

    sink = ListSink()

    def build(p: StreamProvider) -> None:
        src(p, [1, 2, 3]).map("flaky", flaky).sink("s", sink)

    with job_fails_with(OperatorError):
        run(build)
    sink.records.clear()
    run(build)
    assert sink.values == [1, 2, 3]
