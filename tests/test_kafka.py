"""KafkaSource and KafkaSink against a Kafka-protocol broker (librdkafka's mock cluster, in its
own process): message fields, (de)serializers, start positions, offsets in snapshots, lag,
bad input, and the exactly-once sink's recovery of pending batches."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections import Counter
from typing import Any

import kafka_support
import pytest
from job_errors import job_fails_with
from kafka_support import produce, read_all, topic, values

from malstrom import OperatorError, Record, SingleThreadRuntime, StreamProvider
from malstrom.connectors.kafka import KafkaMessage, KafkaSink, KafkaSource, MockCluster
from malstrom.connectors.kafka._message import default_serialize
from malstrom.sinks import ListSink
from malstrom.snapshot import InMemoryPersistence

pytestmark = pytest.mark.timeout(120)

kafka = pytest.fixture(scope="module")(kafka_support.cluster)


def read_part(part: Any, n: int, timeout: float = 20.0) -> list[Any]:
    """Poll a source part (as the worker does, never blocking) until ``n`` records came."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} records"
        values_, _ = part._poll_columns(n - len(out))
        out.extend(values_)
        if not values_:
            time.sleep(0.01)
    return out


def run_collect(source: KafkaSource, **rt: Any) -> ListSink:
    sink = ListSink()

    def build(provider: StreamProvider) -> None:
        provider.new_stream().source("kafka", source).sink("list", sink)

    SingleThreadRuntime(build, **rt).execute()
    return sink


# ----- serializers ------------------------------------------------------------------------------
def test_default_serializer_bytes_as_is_str_utf8_else_json() -> None:
    assert default_serialize(b"\x00raw") == b"\x00raw"
    assert default_serialize(bytearray(b"ab")) == b"ab"
    assert default_serialize("héllo") == "héllo".encode()
    assert default_serialize(None) is None
    assert json.loads(default_serialize({"a": [1, 2.5, None]}) or b"") == {"a": [1, 2.5, None]}
    with pytest.raises(TypeError, match="serialize="):
        default_serialize(object())


# ----- the source ---------------------------------------------------------------------------
def test_message_fields_key_value_headers_timestamp(kafka: MockCluster) -> None:
    from confluent_kafka import Producer

    t = topic("fields")
    kafka.create_topic(t, 2)
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    p.produce(t, b"v0", b"k0", 1, headers=[("h", b"x")], timestamp=1_700_000_000_123)
    p.produce(t, None, None, 1, timestamp=1_700_000_000_456)
    assert p.flush(10) == 0
    got = run_collect(KafkaSource(kafka.bootstrap_servers, t, bounded=True)).records
    assert [r.key for r in got] == [(t, 1), (t, 1)]
    assert [r.timestamp for r in got] == [0, 1]  # offsets by default
    first, second = (r.value for r in got)
    assert first == KafkaMessage(b"k0", b"v0", t, 1, 0, 1_700_000_000_123, [("h", b"x")])
    assert (second.key, second.value, second.offset, second.headers) == (None, None, 1, None)
    with_ts = run_collect(KafkaSource(kafka.bootstrap_servers, t, bounded=True, timestamp="kafka"))
    assert [r.timestamp for r in with_ts.records] == [1_700_000_000_123, 1_700_000_000_456]


@pytest.mark.parametrize(
    ("deserialize", "raw", "value"),
    [
        (None, b"\xffbytes", b"\xffbytes"),
        ("str", "é".encode(), "é"),
        ("json", b'{"n": 1}', {"n": 1}),
        (lambda raw: raw[::-1], b"abc", b"cba"),
    ],
)
def test_deserializers(kafka: MockCluster, deserialize: Any, raw: bytes, value: Any) -> None:
    t = topic("deser")
    kafka.create_topic(t, 1)
    produce(kafka.bootstrap_servers, t, [(None, raw, 0)])
    src = KafkaSource(kafka.bootstrap_servers, t, bounded=True, deserialize=deserialize)
    assert [r.value.value for r in run_collect(src).records] == [value]


def test_deserializer_error_names_topic_partition_offset_or_is_routed(kafka: MockCluster) -> None:
    t = topic("bad")
    kafka.create_topic(t, 3)
    produce(kafka.bootstrap_servers, t, [(None, b'{"ok": 1}', 2), (None, b"{not json", 2)])
    with job_fails_with(OperatorError, match=rf"{t}\[2\] at offset 1: JSONDecodeError") as e:
        run_collect(KafkaSource(kafka.bootstrap_servers, t, bounded=True, deserialize="json"))
    assert "'kafka'" in str(e.value)  # the operator
    skipped = run_collect(
        KafkaSource(kafka.bootstrap_servers, t, bounded=True, deserialize="json", on_error="skip")
    )
    assert [r.value.value for r in skipped.records] == [{"ok": 1}]
    # "emit": bad records flow on with the raw bytes and the reason, for a dead-letter sink
    good, dead = ListSink(), ListSink()
    src = KafkaSource(kafka.bootstrap_servers, t, bounded=True, deserialize="json", on_error="emit")

    def build(provider: StreamProvider) -> None:
        def route(r: Record, out: list[bool]) -> None:
            out[r.value.error is not None] = True

        ok, bad = provider.new_stream().source("kafka", src).split("dead-letters", 2, route)
        ok.sink("good", good)
        bad.sink("dead", dead)

    SingleThreadRuntime(build).execute()
    assert [r.value.value for r in good.records] == [{"ok": 1}]
    (d,) = dead.values
    assert (d.value, d.partition, d.offset) == (b"{not json", 2, 1)
    assert d.error is not None and d.error.startswith("JSONDecodeError")


def test_start_earliest_latest_and_timestamp(kafka: MockCluster) -> None:
    from confluent_kafka import Producer

    t = topic("start")
    kafka.create_topic(t, 1)
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for i in range(5):
        p.produce(t, b"old%d" % i, None, 0, timestamp=1_000_000 + i * 1000)
    assert p.flush(10) == 0
    bs = kafka.bootstrap_servers
    earliest = KafkaSource(bs, t)
    latest = KafkaSource(bs, t, start="latest")
    # Timestamps after every record so far: the first record at or after them is a new one.
    # (The mock broker cannot look up earlier timestamps: its ListOffsets answers -1 to any
    # timestamp, which a real broker gives only when no record is at or after it.)
    at_ts = KafkaSource(bs, t, start=1_500_000)
    at_dt = KafkaSource(bs, t, start=datetime.datetime.fromtimestamp(1500, datetime.UTC))
    parts = {s: s.build_part(s.list_parts()[0], None) for s in (earliest, latest, at_ts, at_dt)}
    for i in range(2):
        p.produce(t, b"new%d" % i, None, 0, timestamp=2_000_000 + i)
    assert p.flush(10) == 0
    expect = {
        earliest: [b"old0", b"old1", b"old2", b"old3", b"old4", b"new0", b"new1"],
        latest: [b"new0", b"new1"],
        at_ts: [b"new0", b"new1"],
        at_dt: [b"new0", b"new1"],
    }
    for source, part in parts.items():
        assert [m.value for m in read_part(part, len(expect[source]))] == expect[source]
        time.sleep(0.1)
        assert part._poll_columns(10) == ([], [])  # and nothing more
    with pytest.raises(ValueError, match="timezone-aware"):
        KafkaSource(bs, t, start=datetime.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="start must be"):
        KafkaSource(bs, t, start="middle")  # type: ignore[arg-type]


def test_snapshot_is_the_next_offset_and_restore_seeks_there(kafka: MockCluster) -> None:
    t = topic("seek")
    kafka.create_topic(t, 2)
    produce(kafka.bootstrap_servers, t, [(None, b"%d" % i, 1) for i in range(10)])
    src = KafkaSource(kafka.bootstrap_servers, t)
    part = src.build_part((t, 1), None)
    assert [m.offset for m in read_part(part, 4)] == [0, 1, 2, 3]
    state = part.snapshot()
    assert state == (4, None)
    # A worker restoring the part (another process: another consumer) resumes at offset 4,
    # whatever its consumer would do by itself.
    other = KafkaSource(kafka.bootstrap_servers, t, start="latest")
    again = other.build_part((t, 1), state)
    assert [m.value for m in read_part(again, 6)] == [b"%d" % i for i in range(4, 10)]
    moved = again.collect()
    assert moved == (10, None)


def test_snapshot_restore_through_the_engine(kafka: MockCluster) -> None:
    t = topic("engine")
    kafka.create_topic(t, 3)
    produce(kafka.bootstrap_servers, t, [(None, b"%d" % i, i % 3) for i in range(30)])
    persistence = InMemoryPersistence()
    src = KafkaSource(kafka.bootstrap_servers, t, bounded=True)
    first = run_collect(src, persistence=persistence)
    assert sorted(int(r.value.value) for r in first.records) == list(range(30))
    produce(kafka.bootstrap_servers, t, [(None, b"%d" % i, i % 3) for i in range(30, 45)])
    # The job completed: running it again resumes at its end and reads nothing twice.
    again = run_collect(src, persistence=persistence)
    assert again.records == []


def test_lag_per_partition(kafka: MockCluster) -> None:
    t = topic("lag")
    kafka.create_topic(t, 1)
    produce(kafka.bootstrap_servers, t, [(None, b"x", 0)] * 50)
    part = KafkaSource(kafka.bootstrap_servers, t).build_part((t, 0), None)
    read_part(part, 20)
    deadline = time.monotonic() + 10
    while part.lag() != 30:
        assert time.monotonic() < deadline, part.lag()
        part._poll_columns(0)
        time.sleep(0.05)


_release = threading.Event()


def _slow_until_released(m: KafkaMessage) -> KafkaMessage:
    if not _release.is_set():
        time.sleep(0.005)  # behind the topic until the test saw the lag
    return m


def test_lag_is_served_per_partition_and_goes_to_zero(kafka: MockCluster) -> None:
    from observe_support import Running, lag_samples, part_lags

    t = topic("lag-served")
    kafka.create_topic(t, 2)
    n = 1000
    produce(kafka.bootstrap_servers, t, [(None, b"%d" % i, i % 2) for i in range(n)])
    src = KafkaSource(kafka.bootstrap_servers, t, max_poll_records=20)

    def build(provider: StreamProvider) -> None:
        provider.new_stream().source("kafka", src).map("slow", _slow_until_released).sink(
            "list", ListSink()
        )

    parts = {f"{t}:0", f"{t}:1"}
    _release.clear()
    with Running(build) as job:
        # Some records read, not all: the lag is what the partitions hold beyond them.
        lags = job.wait(
            lambda s: (
                (lag := part_lags(s, "kafka")).keys() == parts and 0 < sum(lag.values()) < n and lag
            ),
            "the partitions show some lag",
        )
        assert all(0 <= v <= n // 2 for v in lags.values())
        scraped = job.wait(
            lambda s: (got := lag_samples(job.metrics())) and got,
            "/metrics serves malstrom_source_lag",
        )
        assert {part for op, part in scraped if op == "kafka"} == parts
        _release.set()
        job.wait(
            lambda s: part_lags(s, "kafka") == {p: 0 for p in parts},
            "every partition read to its end",
        )
        assert lag_samples(job.metrics()) == {("kafka", p): 0 for p in parts}
        job.stop()


def test_unreachable_brokers_fail_fast_with_a_clear_error() -> None:
    src = KafkaSource("127.0.0.1:9", "nowhere", metadata_timeout=1.5)
    t0 = time.monotonic()
    no_answer = r"no answer from the brokers 127\.0\.0\.1:9 within 1\.5 s"
    with job_fails_with(OperatorError, match=no_answer):
        run_collect(src)
    assert time.monotonic() - t0 < 30  # bounded: no hang
    sink = KafkaSink("127.0.0.1:9", "nowhere", timeout=1.5)
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9 within 1\.5 s"):
        sink.build_part(0, None)


def test_missing_topic_is_a_clear_error(kafka: MockCluster) -> None:
    src = KafkaSource(
        kafka.bootstrap_servers, topic("missing"), config={"allow.auto.create.topics": False}
    )
    with job_fails_with(OperatorError, match="is not readable"):
        run_collect(src)


# ----- the sink ---------------------------------------------------------------------------------
def _records(n: int, offset: int = 0) -> list[Record]:
    return [Record(f"k{i % 5}", {"i": i}, i) for i in range(offset, offset + n)]


def test_sink_key_value_headers_and_partition_options(kafka: MockCluster) -> None:
    t = topic("opts")
    kafka.create_topic(t, 4)
    sink = KafkaSink(
        kafka.bootstrap_servers,
        t,
        key=lambda r: r.key,
        partition=lambda r: r.value["i"] % 4,
        headers=lambda r: [("ts", str(r.timestamp).encode())],
    )
    part = sink.build_part(0, None)
    for r in _records(8):
        part.sink(r)
    part.snapshot()
    assert read_all(kafka.bootstrap_servers, t) == []  # nothing before the snapshot commits
    part.commit(1)
    got = read_all(kafka.bootstrap_servers, t)
    assert sorted((m.partition(), m.key(), json.loads(m.value())["i"]) for m in got) == sorted(
        (i % 4, f"k{i % 5}".encode(), i) for i in range(8)
    )
    for m in got:
        names = [h[0] for h in m.headers()]
        assert names == ["malstrom.txn", "ts"]


def test_pending_batch_recovered_after_the_snapshot_committed_but_commit_did_not_run(
    kafka: MockCluster,
) -> None:
    t = topic("recover")
    kafka.create_topic(t, 3)
    sink = KafkaSink(kafka.bootstrap_servers, t, key=lambda r: r.key)
    sink.bind_operator("out")
    part = sink.build_part(1, None)
    for r in _records(20):
        part.sink(r)
    state = part.snapshot()  # the snapshot commits; the worker dies before commit(version)
    restored = sink.build_part(1, state)  # another worker, same transactional id
    assert len(read_all(kafka.bootstrap_servers, t)) == 20
    # ... and after a restart from the same snapshot again, nothing is sent twice
    sink.build_part(1, state)
    assert Counter(json.loads(m.value())["i"] for m in read_all(kafka.bootstrap_servers, t)) == (
        Counter(range(20))
    )
    # the restored part goes on from there
    for r in _records(5, offset=20):
        restored.sink(r)
    restored.snapshot()
    restored.commit(2)
    assert sorted(json.loads(m.value())["i"] for m in read_all(kafka.bootstrap_servers, t)) == list(
        range(25)
    )


def test_committed_batch_is_not_sent_again_and_a_half_written_one_is_completed(
    kafka: MockCluster,
) -> None:
    t = topic("half")
    kafka.create_topic(t, 2)
    sink = KafkaSink(kafka.bootstrap_servers, t, key=lambda r: r.key)
    part = sink.build_part(0, None)
    for r in _records(10):
        part.sink(r)
    state = part.snapshot()
    part.commit(1)  # committed, then the worker died before the next snapshot
    sink.build_part(0, state)
    assert sorted(json.loads(m.value())["i"] for m in read_all(kafka.bootstrap_servers, t)) == list(
        range(10)
    )
    # A crash in the middle of writing a batch (the mock broker shows the half-written
    # transaction, as a real one would not): the restore sends exactly the rest.
    for r in _records(10, offset=10):
        part.sink(r)
    state = part.snapshot()
    seq, _, rows = part.pending[0]
    part._write(seq, rows, range(0, 10, 3))
    sink.build_part(0, state)
    assert Counter(json.loads(m.value())["i"] for m in read_all(kafka.bootstrap_servers, t)) == (
        Counter(range(20))
    )


def test_at_least_once_sink_delivers_at_the_barrier(kafka: MockCluster) -> None:
    t = topic("alo")
    kafka.create_topic(t, 2)
    sink = KafkaSink(kafka.bootstrap_servers, t, exactly_once=False)
    part = sink.build_part(0, None)
    for r in _records(7):
        part.sink(r)
    assert part.snapshot() is None  # every record delivered when this returns
    got = read_all(kafka.bootstrap_servers, t)
    assert sorted(json.loads(m.value())["i"] for m in got) == list(range(7))
    assert all(not m.headers() for m in got)


def test_sink_serializer_error_names_the_operator_and_record(kafka: MockCluster) -> None:
    t = topic("badser")
    sink = KafkaSink(kafka.bootstrap_servers, t)

    def build(provider: StreamProvider) -> None:
        from malstrom.sources import IterSource

        provider.new_stream().source("items", IterSource([object()])).sink("kafka-out", sink)

    with job_fails_with(OperatorError, match=r"'kafka-out'.*cannot serialize object"):
        SingleThreadRuntime(build).execute()


def test_single_process_job_is_exactly_once(kafka: MockCluster) -> None:
    import functools

    from jobs import kafka_count as job

    src, dst = topic("count-in"), topic("count-out")
    kafka.create_topic(src, 4)
    ws = job.words(3000)
    produce(kafka.bootstrap_servers, src, [(w.encode(), w.encode(), None) for w in ws])
    SingleThreadRuntime(
        functools.partial(
            job.build, bootstrap=kafka.bootstrap_servers, source_topic=src, sink_topic=dst
        ),
        persistence=InMemoryPersistence(),
        snapshot_interval=0.1,
    ).execute()
    assert values(kafka.bootstrap_servers, dst) == job.expected(ws)
