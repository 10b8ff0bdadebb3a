"""Metrics: exact per-operator counts, aggregation across restarts, user counters, the HTTP
endpoint of SingleThreadRuntime (metrics, health, token-guarded actions), status text."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from malstrom import SingleThreadRuntime, StatelessSink, StreamProvider
from malstrom.observe import DEFAULT_BUCKETS, counter, histogram
from malstrom.observe._aggregate import JobObserver
from malstrom.observe._collect import numeric_time
from malstrom.observe._status import format_status, progress_line
from malstrom.sources import IterSource

N = 20_000


class Drop:
    def sink(self, record: Any) -> None:
        pass


def _odd(x: int) -> bool:
    if x % 2:
        counter("odd_seen", "odd values").inc()
    return bool(x % 2)


def build_counted(provider: StreamProvider) -> None:
    # Every 10th record jumps 1000 back in event time: late behind a bound of 10.
    events = [(i - 1000 if i % 10 == 9 and i > 1000 else i) for i in range(N)]
    on_time, late = (
        provider.new_stream()
        .source("events", IterSource(events))
        .assign_timestamps("stamp", lambda v: v)
        .limit_out_of_orderness("bound", 10)
    )
    on_time.filter("odd", _odd).key_distribute("by-mod", lambda v: v % 7).stateful_map(
        "count", lambda k, v, s: (s + 1, s + 1), initial=int
    ).sink("out", StatelessSink(Drop()))
    late.sink("late-out", StatelessSink(Drop()))


def _ops(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in state["operators"]}


def test_counts_are_exact_per_operator() -> None:
    rt = SingleThreadRuntime(build_counted)
    rt.execute()
    state = rt.state()
    assert state is not None
    ops = _ops(state)
    late = sum(1 for i in range(N) if i % 10 == 9 and i > 1000)
    assert ops["events"]["records_out"] == N
    assert ops["stamp"]["records_in"] == ops["stamp"]["records_out"] == N
    assert ops["bound"]["records_in"] == N
    assert ops["bound"]["late"] == late
    assert ops["bound"]["records_out"] == N - late
    assert ops["late-out"]["records_in"] == late
    on_time = [i for i in range(N) if not (i % 10 == 9 and i > 1000)]
    odd = sum(1 for v in on_time if v % 2)
    assert ops["odd"]["records_in"] == N - late
    assert ops["odd"]["records_out"] == odd == ops["out"]["records_in"]
    assert ops["count"]["keys"] == 7
    assert ops["count"]["batches"] >= 1 and ops["count"]["busy_seconds"] >= 0
    assert state["last_snapshot"]["final"] is True
    # The frontier reached the end (MAX): no numeric lag left to show.
    assert ops["out"]["lag"] is None
    # The source knows its size: the progress shows how much is done.
    assert 0.99 < state["done"] < 1
    assert progress_line(state).startswith("finished | 100.0% | ")


def test_metrics_off_reports_nothing() -> None:
    rt = SingleThreadRuntime(build_counted, metrics=False)
    rt.execute()
    assert rt.state() is None


def _report(ops: dict[str, list[Any]], user: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "t": time.time(),
        "ops": ops,
        "kinds": {},
        "peers": {1: [100, 50]},
        "routed": {1: [10, 4]},
        "backpressured": 0.5,
        "user": user or {},
    }


def test_totals_survive_worker_restarts_and_stay_monotonic() -> None:
    graph = {"nodes": [{"name": "src", "root": True}, {"name": "sink", "root": False}], "edges": []}
    obs = JobObserver("j", graph)
    row = lambda n: [n, n, n // 10, 0.5, 0, None, 0, None, False]  # noqa: E731
    obs.report(0, 1, _report({"src": row(100), "sink": row(100)}, {"u": [("sink", 5.0, "")]}))
    obs.report(0, 1, _report({"src": row(300), "sink": row(250)}, {"u": [("sink", 7.0, "")]}))
    # The process restarted (a new attempt): its counters start again from zero.
    obs.report(0, 2, _report({"src": row(40), "sink": row(40)}, {"u": [("sink", 1.0, "")]}))
    ops = _ops(obs.state())
    assert ops["src"]["records_out"] == 340
    assert ops["sink"]["records_in"] == 290
    text = _metrics_text(obs)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    sample = next(s for s in fams["malstrom_records_in"].samples if s.labels["operator"] == "sink")
    assert sample.value == 290 and sample.labels == {"job": "j", "worker": "0", "operator": "sink"}
    user = fams["malstrom_user_u"].samples[0]
    assert user.value == 8.0
    assert fams["malstrom_bytes_sent"].samples[0].value == 200  # 100 + 100 (restart)
    assert fams["malstrom_records_routed"].samples[0].value == 20
    assert fams["malstrom_backpressured_seconds"].samples[0].value == 1.0


def _metrics_text(obs: JobObserver) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class C:
        def collect(self) -> Any:
            return obs.prometheus_families()

    reg = CollectorRegistry(auto_describe=False)
    reg.register(C())  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def test_numeric_time() -> None:
    from datetime import datetime

    assert numeric_time(1_700_000_000) == 1_700_000_000.0
    assert numeric_time(1_700_000_000_000) == 1_700_000_000.0  # milliseconds
    assert numeric_time(datetime(2024, 1, 1, tzinfo=UTC)) == 1704067200.0
    assert numeric_time(("a", 1)) is None and numeric_time(True) is None


def _slow_events() -> Any:
    for i in range(10_000_000):
        if i % 2000 == 0:
            time.sleep(0.01)
        yield i


def build_slow(provider: StreamProvider) -> None:
    provider.new_stream().source("slow", IterSource(_slow_events())).filter("odd", _odd).sink(
        "out", StatelessSink(Drop())
    )


def _call(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_single_thread_http_endpoint() -> None:
    rt = SingleThreadRuntime(build_slow, http="127.0.0.1:0", token="tok")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rt.execute()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while rt.http_url is None and time.monotonic() < deadline:
            time.sleep(0.05)
        url = rt.http_url
        assert url is not None
        # Counters move between two scrapes.
        seen = []
        while len(seen) < 2 or seen[-1] <= seen[0]:
            assert time.monotonic() < deadline, seen
            code, body = _call(url + "metrics")
            assert code == 200
            fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
            if "malstrom_records_in" in fams:
                seen.append(
                    sum(
                        s.value
                        for s in fams["malstrom_records_in"].samples
                        if s.labels["operator"] == "out"
                    )
                )
            time.sleep(0.3)
        assert "malstrom_user_odd_seen" in fams
        code, body = _call(url + "healthz")
        assert code == 200 and json.loads(body) == {"ok": True, "phase": "running"}
        assert _call(url + "api/snapshot", "POST", token="nope")[0] == 401
        assert _call(url + "api/snapshot", "POST")[0] == 401
        code, body = _call(url + "api/rescale", "POST", token="tok", body={"workers": 2})
        assert code == 409 and b"cannot rescale" in body
        code, body = _call(url + "api/snapshot", "POST", token="tok")
        assert code == 200 and isinstance(json.loads(body)["result"], int)
        code, page = _call(url)
        assert code == 200 and b"dashboard.js" in page
        code, body = _call(url + "api/stop", "POST", token="tok")
        assert code == 200
        t.join(60)
        assert not t.is_alive() and not errors
    finally:
        if t.is_alive():
            _call(str(rt.http_url) + "api/stop", "POST", token="tok")
            t.join(60)


def test_status_text() -> None:
    status = {
        "phase": "running",
        "workers": [0, 1],
        "restarts": 1,
        "pids": {"0": 11, "1": 12},
        "last_committed": 3,
        "metrics": {
            "job": "wordcount",
            "throughput": 12345.0,
            "lag": 0.25,
            "rescales": 2,
            "last_snapshot": {"version": 3, "age": 1.5, "duration": 0.012, "size": 4096},
            "operators": [
                {
                    "name": "words",
                    "kind": "SourceOp",
                    "root": True,
                    "records_in": 0,
                    "records_out": 50000,
                    "rate": 12345.0,
                    "lag": None,
                    "source_lag": 1234,
                    "late": 0,
                    "queue": 0,
                    "keys": None,
                },
                {
                    "name": "count",
                    "kind": "StatefulMapOp",
                    "records_in": 50000,
                    "records_out": 50000,
                    "rate": 12000.0,
                    "lag": 0.25,
                    "late": 3,
                    "queue": 2,
                    "keys": 17,
                },
            ],
            "workers": [{"id": 0, "last_report_age": 0.4, "saturated_pipes": 0}],
        },
    }
    text = format_status(status)
    lines = text.splitlines()
    assert lines[0].split() == [
        "job",
        "wordcount",
        "phase",
        "running",
        "workers",
        "2",
        "restarts",
        "1",
        "rescales",
        "2",
    ]
    assert "v3, 1.5 s ago (took 12 ms, 4.0 KiB)" in text
    row = next(line for line in lines if line.startswith("count"))
    assert row.split() == [
        "count",
        "StatefulMapOp",
        "50.0k",
        "50.0k",
        "12.0k",
        "0.25",
        "-",
        "3",
        "2",
        "17",
    ]
    words = next(line for line in lines if line.startswith("words"))
    assert words.split()[5:7] == ["-", "1234"]  # no event-time lag; 1234 not read yet
    assert any(line.split()[:2] == ["1", "12"] for line in lines)
    line = progress_line({**status["metrics"], "status": status})
    assert line.startswith("running | 12.3k rec/s | 50.0k records read | lag 0.25 s")
    line = progress_line({**status["metrics"], "status": status, "done": 0.4})
    assert line.startswith("running | 40.0% | 12.3k rec/s")


@pytest.mark.parametrize("bad", ["", "1x", "a b", "a-b"])
def test_user_counter_names_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="counter name"):
        counter(bad)


def test_http_address_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rt = SingleThreadRuntime(build_counted, http=f"127.0.0.1:{port}")
        with pytest.raises(OSError, match=f"cannot serve http at 127.0.0.1:{port}"):
            rt.execute()
    with pytest.raises(ValueError, match="give HOST:PORT"):
        SingleThreadRuntime(build_counted, http="localhost")


# ----- user histograms ------------------------------------------------------------------------
class Sizes:
    def sink(self, record: Any) -> None:
        histogram("sink_values", buckets=(10, 100)).observe(record.value)


def _measured(x: int) -> int:
    histogram("values", "values seen", buckets=[1, 10, 100]).observe(x)
    counter("seen").inc()
    return x


def build_measured(provider: StreamProvider) -> None:
    provider.new_stream().source("numbers", IterSource(list(range(200)))).map(
        "measure", _measured
    ).sink("out", StatelessSink(Sizes()))


def test_user_histograms_from_functions_are_served_per_operator() -> None:
    # Twice in one process: a new job (or attempt) counts from zero, not from the last one.
    for _ in range(2):
        rt = SingleThreadRuntime(build_measured)
        rt.execute()
    text = _metrics_text(rt._observer)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["malstrom_user_values"]
    assert hist.type == "histogram" and hist.documentation == "values seen"
    got = {
        (s.name, s.labels.get("le")): s.value
        for s in hist.samples
        if s.labels["operator"] == "measure" and s.labels["worker"] == "0"
    }
    assert got == {
        ("malstrom_user_values_bucket", "1.0"): 2,  # 0 and 1
        ("malstrom_user_values_bucket", "10.0"): 11,
        ("malstrom_user_values_bucket", "100.0"): 101,
        ("malstrom_user_values_bucket", "+Inf"): 200,
        ("malstrom_user_values_count", None): 200,
        ("malstrom_user_values_sum", None): sum(range(200)),
    }
    sink = {s.labels.get("le"): s.value for s in fams["malstrom_user_sink_values"].samples}
    assert sink["100.0"] == 101 and sink["+Inf"] == 200
    assert fams["malstrom_user_seen"].samples[0].value == 200
    assert fams["malstrom_user_seen"].samples[0].labels["operator"] == "measure"


def test_histogram_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="buckets must increase"):
        histogram("h_bad", buckets=(2, 1))
    with pytest.raises(ValueError, match="histogram name"):
        histogram("a-b")
    histogram("h_once", buckets=(1, 2))
    with pytest.raises(ValueError, match="differ from"):
        histogram("h_once", buckets=(1, 3))
    counter("c_taken")
    with pytest.raises(ValueError, match="taken by a counter"):
        histogram("c_taken")
    assert histogram("h_default").bounds == DEFAULT_BUCKETS


def test_histogram_totals_survive_worker_restarts() -> None:
    graph = {"nodes": [{"name": "m", "root": False}], "edges": []}
    obs = JobObserver("j", graph)
    row = [0, 0, 0, 0.0, 0, None, 0, None, False]

    def rep(buckets: list[int], total: float) -> dict[str, Any]:
        entry = ("m", [1.0, 2.0], buckets, total, sum(buckets), "")
        return {**_report({"m": row}), "user_hist": {"h": [entry]}}

    obs.report(0, 1, rep([1, 0, 0], 0.5))
    obs.report(0, 1, rep([2, 1, 1], 5.0))
    obs.report(0, 2, rep([0, 0, 1], 3.0))  # a new attempt: from zero again
    fams = {f.name: f for f in text_string_to_metric_families(_metrics_text(obs))}
    got = {(s.name, s.labels.get("le")): s.value for s in fams["malstrom_user_h"].samples}
    assert got[("malstrom_user_h_bucket", "1.0")] == 2
    assert got[("malstrom_user_h_bucket", "2.0")] == 3
    assert got[("malstrom_user_h_bucket", "+Inf")] == 5
    assert got[("malstrom_user_h_count", None)] == 5
    assert got[("malstrom_user_h_sum", None)] == 8.0


# ----- source lag -------------------------------------------------------------------------------
def test_file_parts_tell_the_bytes_left() -> None:
    import tempfile
    from pathlib import Path

    from malstrom.formats import Csv
    from malstrom.sources import FileSource

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lines.txt"
        path.write_bytes(b"".join(b"line %03d\n" % i for i in range(100)))  # 9 bytes each
        part = FileSource(str(path)).build_part(str(path), None)
        assert part.lag() == 900
        values, _ = part._poll_columns(10)
        assert len(values) == 10 and part.lag() == 810
        resumed = FileSource(str(path)).build_part(str(path), part.snapshot())
        assert resumed.lag() == 810
        while not part.is_finished():
            part._poll_columns(1000)
        assert part.lag() == 0
        csv = Path(d) / "rows.csv"
        csv.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(10)))
        cpart = FileSource(str(csv), format=Csv()).build_part(str(csv), None)
        cpart._poll_columns(4)
        assert cpart.lag() == csv.stat().st_size - 4 - 4 * 4  # header, 4 rows of "i,i\n"
        # A directory source's file parts tell the same; files read to the end have none.
        from malstrom.sources import DirectorySource

        dpart = DirectorySource(d).build_part("lines.txt", None)
        assert dpart.lag() == 900
        assert DirectorySource(d).build_part("lines.txt", "done").lag() == 0


def test_parquet_parts_tell_the_rows_left(tmp_path: Any) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from malstrom.formats import Parquet
    from malstrom.sources import FileSource

    path = str(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"i": list(range(50))}), path, row_group_size=20)
    part = FileSource(path, format=Parquet()).build_part(path, None)
    assert part.lag() == 50
    values, _ = part._poll_columns(15)
    assert len(values) == 15 and part.lag() == 35
    assert FileSource(path, format=Parquet()).build_part(path, part.snapshot()).lag() == 35
    while not part.is_finished():
        part._poll_columns(100)
    assert part.lag() == 0


_release = threading.Event()


def _held(v: str) -> str:
    if not _release.is_set():
        time.sleep(0.002)  # slow until the test saw some lag, so there is some to see
    return v


def test_file_source_lag_is_reported_per_part_and_goes_to_zero(tmp_path: Any) -> None:
    from observe_support import Running, lag_samples, part_lags

    from malstrom.sources import FileSource

    paths = []
    for name in ("a.txt", "b.txt"):
        p = tmp_path / name
        p.write_bytes(b"".join(b"%06d\n" % i for i in range(3000)))
        paths.append(str(p))

    def build(provider: StreamProvider) -> None:
        provider.new_stream().source("files", FileSource(paths)).map("held", _held).sink(
            "out", StatelessSink(Drop())
        )

    _release.clear()
    with Running(build) as job:
        lags = job.wait(
            lambda s: (lag := part_lags(s, "files")) and all(v > 0 for v in lag.values()) and lag,
            "every file shows some bytes left",
        )
        assert set(lags) == set(paths) and all(v <= 21000 for v in lags.values())
        scraped = lag_samples(job.metrics())
        assert {part for (op, part) in scraped if op == "files"} == set(paths)
        assert job.state()["operators"][0]["source_lag"] > 0
        _release.set()
        job.join()
    state = job.state()
    # Read to the end: nothing left, and no series kept for finished parts.
    assert part_lags(state, "files") == {}
    assert state["operators"][0]["source_lag"] == 0
    assert state["operators"][1]["source_lag"] is None  # not a source


# ----- logs -------------------------------------------------------------------------------------
_user_log = logging.getLogger("user_code")


def _warns(v: int) -> int:
    if v == 7:
        _user_log.warning("odd record %d", v)
        done = threading.Event()

        def elsewhere() -> None:  # another thread of the process names no operator
            _user_log.warning("from another thread")
            done.set()

        threading.Thread(target=elsewhere).start()
        done.wait(10)
    return v


class WarnSink:
    def sink(self, record: Any) -> None:
        if record.value == 3:
            _user_log.error("sink saw %d", record.value)


def build_warns(provider: StreamProvider) -> None:
    provider.new_stream().source("numbers", IterSource(list(range(10)))).map("parse", _warns).sink(
        "out", StatelessSink(WarnSink())
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_from_operators_name_job_worker_and_operator(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from malstrom.observe._logs import setup_logging

    # setup_logging passes the format on to worker processes through the environment:
    # restored after the test.
    monkeypatch.setenv("MALSTROM_LOG_FORMAT", fmt)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging(logging.WARNING, fmt, job="logjob", worker=3)
        stream = io.StringIO()
        root.handlers[0].stream = stream  # type: ignore[attr-defined]
        SingleThreadRuntime(build_warns).execute()
        logging.getLogger("malstrom.test").warning("between jobs")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    if fmt == "text":
        assert "[job logjob worker 3 operator parse] WARNING odd record 7" in lines
        assert "[job logjob worker 3 operator out] ERROR sink saw 3" in lines
        assert "[job logjob worker 3] WARNING from another thread" in lines
        assert "[job logjob worker 3] WARNING between jobs" in lines
    else:
        got = {(d["message"], d.get("operator")) for d in map(json.loads, lines)}
        assert {
            ("odd record 7", "parse"),
            ("sink saw 3", "out"),
            ("from another thread", None),
            ("between jobs", None),
        } <= got
        assert all(d["job"] == "logjob" and d["worker"] == 3 for d in map(json.loads, lines))
