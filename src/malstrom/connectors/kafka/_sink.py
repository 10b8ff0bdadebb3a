"""KafkaSink: exactly-once through Kafka transactions committed with the job's snapshots, or
at-least-once through the idempotent producer.

Exactly-once, per sink part (one transactional producer, ``transactional.id`` =
``<prefix>-<part>``, stable across restarts and rescales):

1. Records are serialized as they arrive and kept in the part's buffer.
2. At a barrier the buffer is sealed: it becomes a *pending batch* and goes into the snapshot
   (the pre-commit: the batch is now as durable as the snapshot).
3. When that snapshot is committed (``commit(version)``) the batch is written in one Kafka
   transaction, every record tagged with a header ``malstrom.txn`` = (part, batch, index).
4. On restore, ``init_transactions`` fences any earlier producer of the part (a real broker
   aborts its open transaction), then each pending batch of the snapshot is looked up in the
   topic with a ``read_committed`` consumer, from the end offsets noted before the batch was
   written: the records found are not sent again, the missing ones are sent in a new
   transaction. A batch whose transaction committed before the crash is thus not duplicated,
   and one whose commit never happened (or half happened) is completed.

Why not stream records into an open transaction and only commit it at ``commit(version)``
(Flink's ``TwoPhaseCommitSinkFunction``)? A restarted worker must then *resume* that
transaction, and librdkafka cannot: it has no way to take over a producer id and epoch
(Flink's Java sink does it by reflection; KIP-939 is not in librdkafka). The records of a
pre-committed transaction therefore have to be in the snapshot anyway, so they are written at
commit time instead, which also keeps a transaction open only for the moment of the commit.
Costs: a part holds one snapshot interval of output in memory and in each snapshot, and
records reach Kafka (for ``read_committed`` readers, as with any transactional writer) only
after the snapshot that covers them commits; the commit runs on the worker's loop.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from malstrom.connectors.kafka._message import default_serialize
from malstrom.keyed.partitioners import stable_hash
from malstrom.sinks._protocols import StatefulSink
from malstrom.types import Record

__all__ = ["KafkaSink"]

log = logging.getLogger("malstrom.kafka")

TXN_HEADER = "malstrom.txn"
_TAG = struct.Struct(">QII")  # part tag, batch number, index in batch
_UA = -1  # let the producer's partitioner choose


def _kafka_error(e: BaseException) -> str:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        return str(e.args[0].str())
    return f"{type(e).__name__}: {e}"


class _Rows:
    """Serializes records into ``(key, value, partition, headers)`` rows."""

    def __init__(self, sink: KafkaSink) -> None:
        self.key = sink.key
        self.value = sink.serialize or default_serialize
        self.partition = sink.partition
        self.headers = sink.headers

    def row(self, record: Record) -> tuple[Any, Any, int, Any]:
        k = self.key
        p = self.partition
        h = self.headers
        return (
            None if k is None else default_serialize(k(record)),
            self.value(record.value),
            _UA if p is None else int(p(record)),
            None if h is None else list(h(record)),
        )


class _Errors:
    """Collects delivery failures (the producer reports only those)."""

    def __init__(self) -> None:
        self.first: str | None = None

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self.first is None:
            self.first = f"{err.str()} ({msg.topic()}[{msg.partition()}])"

    def check(self, what: str) -> None:
        if self.first is not None:
            raise RuntimeError(f"{what}: a record could not be delivered: {self.first}")


class _TxnPart:
    """One exactly-once part: a transactional producer and its pending batches."""

    def __init__(self, sink: KafkaSink, part: int, state: Any) -> None:
        self.owner = sink
        self.topic = sink.topic
        self.tid = f"{sink.transactional_prefix()}-{part}"
        self.tag = stable_hash(self.tid)
        self.rows = _Rows(sink)
        self.errors = _Errors()
        conf = sink.producer_conf()
        conf.update(
            {
                "transactional.id": self.tid,
                "delivery.report.only.error": True,
                "on_delivery": self.errors,
            }
        )
        conf.update(sink.config)
        self.producer = Producer(conf)
        try:
            # Fences every earlier producer of this id: a real broker aborts its open
            # transaction (or finishes committing it) before this returns.
            self.producer.init_transactions(sink.timeout)
        except KafkaException as e:
            raise ConnectionError(
                f"KafkaSink {self.tid!r}: could not start a transactional producer on "
                f"{sink.bootstrap_servers} within {sink.timeout:g} s: {_kafka_error(e)}"
            ) from None
        st = state or {}
        self.seq: int = st.get("seq", 0)
        self.buffer: list[Any] = list(st.get("buffer", ()))
        pending = list(st.get("pending", ()))
        self.scan_from: dict[int, int] = dict(st.get("scan_from") or {}) or sink.end_offsets()
        self.pending: list[Any] = []
        for batch in pending:
            self._recover(*batch)

    def sink(self, record: Record) -> None:
        self.buffer.append(self.rows.row(record))

    def snapshot(self) -> object:
        if self.buffer:
            self.pending.append((self.seq, dict(self.scan_from), self.buffer))
            self.seq += 1
            self.buffer = []
        return {
            "seq": self.seq,
            "pending": list(self.pending),
            "buffer": [],
            "scan_from": self.scan_from,
        }

    def collect(self) -> object:
        # Rescales run between snapshots, after the last commit: nothing is pending, and the
        # records since the last barrier move to the part's new owner with its state.
        state = {
            "seq": self.seq,
            "pending": list(self.pending),
            "buffer": self.buffer,
            "scan_from": self.scan_from,
        }
        self.buffer = []
        self.pending = []
        self.producer.flush(self.owner.timeout)
        return state

    def commit(self, version: int) -> None:
        if not self.pending:
            return
        for seq, _, rows in self.pending:
            self._write(seq, rows, range(len(rows)))
        self.pending = []
        self.scan_from = self.owner.end_offsets()

    def _write(self, seq: int, rows: list[Any], which: Any) -> None:
        p = self.producer
        produce = p.produce
        topic = self.topic
        pack = _TAG.pack
        tag = self.tag
        try:
            p.begin_transaction()
            for i in which:
                key, value, partition, headers = rows[i]
                h: list[Any] = [(TXN_HEADER, pack(tag, seq, i))]
                if headers:
                    h.extend(headers)
                while True:
                    try:
                        produce(topic, value, key, partition, headers=h)
                        break
                    except BufferError:  # the producer's queue is full: let it drain
                        p.poll(0.01)
            p.commit_transaction(self.owner.timeout)
        except KafkaException as e:
            raise RuntimeError(
                f"KafkaSink {self.tid!r}: committing batch {seq} ({len(rows)} records) to "
                f"{topic!r} failed: {_kafka_error(e)}"
            ) from e
        self.errors.check(f"KafkaSink {self.tid!r}")

    def _recover(self, seq: int, scan_from: dict[int, int], rows: list[Any]) -> None:
        """Complete a batch the snapshot holds as pending: send what the topic lacks."""
        found = self.owner.find_tagged(self.tag, seq, scan_from)
        missing = [i for i in range(len(rows)) if i not in found]
        if missing:
            log.info(
                "KafkaSink %r: batch %d: %d of %d records were not committed; sending them",
                self.tid,
                seq,
                len(missing),
                len(rows),
            )
            self._write(seq, rows, missing)
        self.scan_from = self.owner.end_offsets()


class _AtLeastOncePart:
    """An idempotent producer; everything sent before a barrier is delivered at it."""

    def __init__(self, sink: KafkaSink, part: int) -> None:
        self.owner = sink
        self.topic = sink.topic
        self.rows = _Rows(sink)
        self.errors = _Errors()
        conf = sink.producer_conf()
        conf.update(
            {
                "enable.idempotence": True,
                "delivery.report.only.error": True,
                "on_delivery": self.errors,
            }
        )
        conf.update(sink.config)
        self.producer = Producer(conf)
        self._n = 0

    def sink(self, record: Record) -> None:
        key, value, partition, headers = self.rows.row(record)
        p = self.producer
        while True:
            try:
                p.produce(self.topic, value, key, partition, headers=headers)
                break
            except BufferError:
                p.poll(0.01)
        self._n += 1
        if self._n >= 1000:
            self._n = 0
            p.poll(0)

    def snapshot(self) -> object:
        left = self.producer.flush(self.owner.timeout)
        if left:
            raise TimeoutError(
                f"KafkaSink: {left} records not delivered to {self.topic!r} on "
                f"{self.owner.bootstrap_servers} within {self.owner.timeout:g} s"
            )
        self.errors.check("KafkaSink")
        return None

    def collect(self) -> object:
        return self.snapshot()


class KafkaSink(StatefulSink):
    """Writes each record to the Kafka topic ``topic``.

    The Kafka value is ``serialize(record.value)`` (default: bytes as they are, str as UTF-8,
    None as null, anything else as JSON), the Kafka key ``key(record)`` serialized the same
    way (default: no key), the partition ``partition(record)`` (default: librdkafka's
    ``murmur2_random`` partitioner on the key, as Java clients place keys), and extra headers
    ``headers(record)`` (a list of ``(name, bytes)``).

    ``exactly_once=True`` (default): records are spread over ``parts`` transactional
    producers by their key; each writes the records of one snapshot interval in one
    transaction once the snapshot that covers them is committed, and after a crash completes
    (never repeats) what the last committed snapshot still held as pending. Readers must use
    ``isolation.level=read_committed`` (the Kafka default of librdkafka and Java consumers
    reading transactional topics). Records carry a ``malstrom.txn`` header (16 bytes) that the
    recovery uses to find them. A transactional id is ``<transactional_id>-<part>``: by
    default ``malstrom-<sink name>-<topic>``; give each job writing to ``topic`` through a
    sink of the same name its own ``transactional_id`` (two jobs sharing ids fence each
    other). Needs snapshots (``snapshot_interval``) for anything to be written before the
    end of the job.

    ``exactly_once=False``: an idempotent producer sends records as they come and waits for
    their delivery at each barrier: after a crash, records since the last snapshot are sent
    again (at-least-once), but no record is lost.

    ``config`` adds librdkafka producer settings; ``timeout`` bounds every blocking call
    (connecting, committing, recovering).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        exactly_once: bool = True,
        key: Callable[[Record], Any] | None = None,
        serialize: Callable[[Any], bytes | None] | None = None,
        config: dict[str, Any] | None = None,
        partition: Callable[[Record], int] | None = None,
        headers: Callable[[Record], list[tuple[str, bytes]]] | None = None,
        parts: int = 4,
        transactional_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(self)
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"KafkaSink: topic must be a topic name, got {topic!r}")
        if not isinstance(parts, int) or parts < 1:
            raise ValueError(f"KafkaSink: parts must be an int >= 1, got {parts!r}")
        for name, fn in (("key", key), ("serialize", serialize), ("partition", partition)):
            if fn is not None and not callable(fn):
                raise TypeError(f"KafkaSink: {name} must be a function, got {fn!r}")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.exactly_once = exactly_once
        self.key = key
        self.serialize = serialize
        self.partition = partition
        self.headers = headers
        self.config = dict(config or {})
        self.parts = parts
        self.transactional_id = transactional_id
        self.timeout = timeout
        self._operator = "sink"
        self._scanner: Consumer | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_scanner"] = None
        return state

    # ----- the StatefulSinkImpl protocol --------------------------------------------------
    def bind_operator(self, name: str) -> None:
        """Called by the engine with the sink operator's name (for transactional ids)."""
        self._operator = name

    def assign_part(self, key: Any) -> Hashable:
        """The part (transactional producer) a record with ``key`` goes to."""
        return stable_hash(key) % self.parts

    def build_part(self, part: Any, state: object | None) -> Any:
        """A transactional part (recovering its pending batches), or an idempotent one."""
        if self.exactly_once:
            return _TxnPart(self, int(part), state)
        return _AtLeastOncePart(self, int(part))

    # ----- shared helpers ------------------------------------------------------------------
    def transactional_prefix(self) -> str:
        return self.transactional_id or f"malstrom-{self._operator}-{self.topic}"

    def producer_conf(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "queue.buffering.max.messages": 500_000,
            "logger": log,
        }

    def scanner(self) -> Consumer:
        if self._scanner is None:
            conf = {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"{self.transactional_prefix()}-recovery",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "logger": log,
            }
            # The connection settings of the producer (security, SASL, TLS) apply here too.
            auth = ("security.", "sasl.", "ssl.", "client.")
            conf.update({k: v for k, v in self.config.items() if k.startswith(auth)})
            self._scanner = Consumer(conf)
        return self._scanner

    def end_offsets(self) -> dict[int, int]:
        """Every partition's end (the last stable offset): later writes come after it."""
        c = self.scanner()
        try:
            meta = c.list_topics(self.topic, timeout=self.timeout).topics[self.topic]
            out = {}
            for p in meta.partitions:
                _, high = c.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=self.timeout
                )
                out[p] = int(high)
        except KafkaException as e:
            raise ConnectionError(
                f"KafkaSink: could not read the end offsets of {self.topic!r} on "
                f"{self.bootstrap_servers} within {self.timeout:g} s: {_kafka_error(e)}"
            ) from None
        return out

    def find_tagged(self, tag: int, seq: int, scan_from: dict[int, int]) -> set[int]:
        """Indexes of batch ``seq`` of part ``tag`` that committed records of the topic hold,
        looking from ``scan_from`` to the current end of every partition."""
        c = self.scanner()
        end = self.end_offsets()
        start = {p: scan_from.get(p, OFFSET_BEGINNING) for p in end}
        todo = {p for p in end if end[p] > max(start[p], 0)}
        found: set[int] = set()
        if not todo:
            return found
        c.assign([TopicPartition(self.topic, p, start[p]) for p in sorted(todo)])
        unpack = _TAG.unpack
        deadline = time.monotonic() + self.timeout
        try:
            while todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"KafkaSink: recovery could not read {self.topic!r} partitions "
                        f"{sorted(todo)} to their end within {self.timeout:g} s"
                    )
                for m in c.consume(1000, 0.2):
                    err = m.error()
                    if err is not None:
                        part = int(m.partition() or 0)
                        at_end = int(m.offset() or 0) >= end.get(part, 0)
                        if err.code() == KafkaError._PARTITION_EOF and at_end:
                            todo.discard(part)
                        elif err.fatal():
                            raise KafkaException(err)
                        continue
                    headers: Any = m.headers()
                    for name, value in headers or ():
                        if name == TXN_HEADER and len(value) == _TAG.size:
                            t, s, i = unpack(value)
                            if t == tag and s == seq:
                                found.add(i)
                    if int(m.offset() or 0) >= end.get(int(m.partition() or 0), 0) - 1:
                        todo.discard(int(m.partition() or 0))
        finally:
            c.unassign()
        return found

    def __repr__(self) -> str:
        mode = "exactly-once" if self.exactly_once else "at-least-once"
        return f"KafkaSink({self.bootstrap_servers!r}, {self.topic!r}, {mode})"
