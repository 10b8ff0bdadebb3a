"""KafkaSource: one part per topic partition; the next offset to read is the part's state."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from malstrom.connectors.kafka._message import KafkaMessage, resolve_deserializer
from malstrom.sources._protocols import StatefulSource

__all__ = ["KafkaSource"]

log = logging.getLogger("malstrom.kafka")

_make = tuple.__new__
_QUIET = {KafkaError._PARTITION_EOF}
_WARN_EVERY = 10.0  # seconds between repeated warnings of one kind


class _Reader:
    """The one consumer of a source on a worker: assigned the partitions of the parts built
    here, polled without blocking, its records sorted into per-partition buffers."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.consumer = Consumer(conf)
        self.buffers: dict[tuple[str, int], list[Any]] = {}
        self._warned: dict[int, float] = {}

    def assign(self, tp: tuple[str, int], offset: int) -> None:
        self.buffers[tp] = []
        self.consumer.incremental_assign([TopicPartition(tp[0], tp[1], offset)])

    def unassign(self, tp: tuple[str, int]) -> None:
        self.buffers.pop(tp, None)
        self.consumer.incremental_unassign([TopicPartition(tp[0], tp[1])])

    def fill(self, n: int) -> None:
        msgs = self.consumer.consume(n, 0)
        if not msgs:
            return
        buffers = self.buffers
        for m in msgs:
            err = m.error()
            if err is not None:
                self._on_error(err, m)
                continue
            buf = buffers.get((m.topic(), m.partition()))  # type: ignore[arg-type,unused-ignore]
            if buf is not None:  # else: a partition unassigned since it was fetched
                buf.append(m)

    def _on_error(self, err: KafkaError, m: Any) -> None:
        if err.fatal():
            raise KafkaException(err)
        code = err.code()
        if code in _QUIET:
            return
        now = time.monotonic()
        if now - self._warned.get(code, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[code] = now
            where = f" ({m.topic()}[{m.partition()}])" if m.topic() else ""
            log.warning("Kafka consumer: %s%s (retrying)", err.str(), where)


class _KafkaPart:
    """Reads one partition; its state is the offset of the next record to emit."""

    __slots__ = (
        "_buf",
        "_deser",
        "_kafka_ts",
        "_max",
        "_next",
        "_on_error",
        "_reader",
        "_stop",
        "tp",
    )

    def __init__(
        self,
        reader: _Reader,
        tp: tuple[str, int],
        offset: int,
        stop: int | None,
        deser: Callable[[bytes | None], Any] | None,
        on_error: str,
        kafka_ts: bool,
        max_records: int | None = None,
    ) -> None:
        self._reader = reader
        self._max = max_records
        self.tp = tp
        self._next = offset
        self._stop = stop
        self._deser = deser
        self._on_error = on_error
        self._kafka_ts = kafka_ts
        reader.assign(tp, offset)
        self._buf = reader.buffers[tp]

    def poll(self) -> tuple[Any, Any] | None:
        values, stamps = self._poll_columns(1)
        return (values[0], stamps[0]) if values else None

    def _poll_columns(self, n: int) -> tuple[list[Any], list[Any]]:
        if self._max is not None and n > self._max:
            n = self._max
        buf = self._buf
        if not buf:
            if self.is_finished():
                return [], []
            self._reader.fill(n)
            buf = self._buf
            if not buf:
                return [], []
        if len(buf) > n:
            msgs = buf[:n]
            del buf[:n]
        else:
            msgs = buf[:]
            buf.clear()
        stop = self._stop
        if stop is not None and msgs[-1].offset() >= stop:
            msgs = [m for m in msgs if m.offset() < stop]
        topic, partition = self.tp
        values: list[Any] = []
        stamps: list[Any] = []
        add, stamp = values.append, stamps.append
        deser = self._deser
        kafka_ts = self._kafka_ts
        for m in msgs:
            off = m.offset()
            kind, ts = m.timestamp()
            ts_ms = ts if kind else None
            raw = m.value()
            err = None
            if deser is not None:
                try:
                    value = deser(raw)
                except Exception as e:
                    if self._on_error == "fail":
                        self._next = off  # the failing record is read again after a restore
                        raise ValueError(
                            f"cannot deserialize the value of {topic}[{partition}] at offset "
                            f"{off}: {type(e).__name__}: {e}"
                        ) from e
                    if self._on_error == "skip":
                        log.warning(
                            "skipped %s[%d] offset %d: cannot deserialize: %s: %s",
                            topic,
                            partition,
                            off,
                            type(e).__name__,
                            e,
                        )
                        continue
                    value, err = raw, f"{type(e).__name__}: {e}"
            else:
                value = raw
            add(
                _make(
                    KafkaMessage, (m.key(), value, topic, partition, off, ts_ms, m.headers(), err)
                )
            )
            stamp((ts_ms if ts_ms is not None else 0) if kafka_ts else off)
        if msgs:
            self._next = msgs[-1].offset() + 1
        return values, stamps

    def is_finished(self) -> bool:
        stop = self._stop
        return stop is not None and self._next >= stop and not self._buf

    def lag(self) -> int | None:
        """Records in the partition after the next one this part emits (None if unknown):
        the high watermark last seen by the consumer minus the next offset.

        It never calls the broker: the consumer caches the watermarks its fetches bring
        back, so this is cheap enough to ask once a second. Before the first record of a
        part read from the beginning, the next offset is the low watermark. While the
        consumer's fetch queue is full (the job is far behind) the cached high watermark is
        the one of its last fetch, so the lag shown may lag behind itself. In a topic
        written by transactions, commit markers take offsets too: a part at the end shows a
        record of lag per marker after its last record."""
        try:
            low, high = self._reader.consumer.get_watermark_offsets(
                TopicPartition(*self.tp), cached=True
            )
        except KafkaException:
            return None
        nxt = self._next
        if nxt == OFFSET_BEGINNING and low is not None and low >= 0:
            nxt = low
        if high is None or high < 0 or nxt < 0:
            return None
        return max(0, high - nxt)

    def snapshot(self) -> object:
        return (self._next, self._stop)

    def collect(self) -> object:
        self._reader.unassign(self.tp)
        return (self._next, self._stop)


class KafkaSource(StatefulSource):
    """Reads Kafka topics: one part per topic partition, keyed ``(topic, partition)``.

    Each record's value is a :class:`KafkaMessage`; its timestamp is the offset, or the Kafka
    timestamp in milliseconds with ``timestamp="kafka"`` (then ``limit_out_of_orderness``
    gives event-time epochs straight away). A part's snapshot is the offset of the next record
    to emit, and a restore seeks there: records are replayed exactly from the last committed
    snapshot, whatever the consumer group has committed (the source commits nothing).

    ``start`` applies to the first start of the job: ``"earliest"``, ``"latest"``, or a
    timestamp (epoch milliseconds or an aware ``datetime``: the first record at or after it).
    Partitions that appear later (added to a topic while the job runs, listed every
    ``discover_interval`` seconds, or missing from the snapshot restored from) are read from
    their beginning. With ``bounded=True`` each partition ends at the high watermark it had
    when first read (the job completes: for tests, backfills and benchmarks).

    ``deserialize`` turns each value's bytes into the record's value: ``"bytes"`` (default:
    as they are), ``"str"``, ``"json"`` or a function. When it raises, ``on_error`` decides:
    ``"fail"`` (the job fails, naming topic, partition and offset), ``"skip"`` (logged), or
    ``"emit"``: the record is emitted with the raw bytes as ``value`` and the reason in
    ``KafkaMessage.error``, so a ``split`` can route it to a dead-letter sink.
    ``max_poll_records`` caps the records a part emits per poll (for slow per-record work:
    smaller batches let barriers and rescales through sooner).

    The worker never waits on Kafka: each worker has one consumer for the partitions it owns
    and reads what it has fetched in the background. ``config`` adds librdkafka consumer
    settings (e.g. security). Unreachable brokers fail the job's start after
    ``metadata_timeout`` seconds with an error naming them.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: str | list[str],
        *,
        start: Literal["earliest", "latest"] | int | datetime.datetime = "earliest",
        config: dict[str, Any] | None = None,
        deserialize: str | Callable[[bytes | None], Any] | None = None,
        on_error: Literal["fail", "skip", "emit"] = "fail",
        timestamp: Literal["offset", "kafka"] = "offset",
        discover_interval: float | None = 5.0,
        bounded: bool = False,
        metadata_timeout: float = 10.0,
        max_poll_records: int | None = None,
    ) -> None:
        super().__init__(self)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ValueError(f"KafkaSource: topics must be topic names, got {topics!r}")
        if not (start in ("earliest", "latest") or isinstance(start, int | datetime.datetime)):
            raise ValueError(
                f"KafkaSource: start must be 'earliest', 'latest', epoch milliseconds or a "
                f"datetime, not {start!r}"
            )
        if isinstance(start, datetime.datetime) and start.tzinfo is None:
            raise ValueError("KafkaSource: start datetime must be timezone-aware")
        if on_error not in ("fail", "skip", "emit"):
            raise ValueError(f"KafkaSource: on_error must be fail, skip or emit: {on_error!r}")
        if timestamp not in ("offset", "kafka"):
            raise ValueError(f"KafkaSource: timestamp must be 'offset' or 'kafka': {timestamp!r}")
        self.bootstrap_servers = bootstrap_servers
        self.start = start
        self.config = dict(config or {})
        self._deser = resolve_deserializer(deserialize)
        self.on_error = on_error
        self.timestamp = timestamp
        self.relist_interval = discover_interval
        self.bounded = bounded
        self.metadata_timeout = metadata_timeout
        if max_poll_records is not None and max_poll_records < 1:
            raise ValueError(f"KafkaSource: max_poll_records must be >= 1: {max_poll_records!r}")
        self.max_poll_records = max_poll_records
        self._reader: _Reader | None = None
        self._listed = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # a consumer belongs to one process
        return state

    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": "malstrom-" + "-".join(self.topics),  # required; nothing is committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a snapshot offset gone by retention
            "isolation.level": "read_committed",
            "queued.max.messages.kbytes": 16384,
            "logger": log,
        }
        conf.update(self.config)
        return conf

    def reader(self) -> _Reader:
        if self._reader is None:
            self._reader = _Reader(self._conf())
        return self._reader

    def list_parts(self) -> list[Hashable]:
        """Every ``(topic, partition)`` of the topics, from the cluster's metadata."""
        first = not self._listed
        try:
            parts = self._list()
        except Exception as e:
            if first:
                raise
            log.warning("KafkaSource: listing partitions failed (retrying later): %s", e)
            return []
        self._listed = True
        return parts

    def _list(self) -> list[Hashable]:
        consumer = self.reader().consumer
        parts: list[Hashable] = []
        for topic in self.topics:
            try:
                meta = consumer.list_topics(topic, timeout=self.metadata_timeout)
            except KafkaException as e:
                raise ConnectionError(
                    f"KafkaSource: no answer from the brokers {self.bootstrap_servers} within "
                    f"{self.metadata_timeout:g} s ({e.args[0].str() if e.args else e})"
                ) from None
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                why = tmeta.error.str() if tmeta is not None and tmeta.error else "no partitions"
                raise LookupError(f"KafkaSource: topic {topic!r} is not readable: {why}")
            parts.extend((topic, p) for p in sorted(tmeta.partitions))
        return parts

    def new_part_state(self, part: Any) -> object:
        """A partition that appeared after the job started is read from its beginning."""
        return (OFFSET_BEGINNING, None)

    def build_part(self, part: Any, state: object | None) -> _KafkaPart:
        """Assign the partition to this worker's consumer at the snapshotted offset (or at
        ``start`` on the first start of the job)."""
        tp = (part[0], int(part[1]))
        reader = self.reader()
        if state is None:
            offset = self._start_offset(reader, tp)
            stop = None
        else:
            offset, stop = state  # type: ignore[misc]
        if self.bounded:
            low, high = reader.consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=self.metadata_timeout
            )
            if stop is None:
                stop = int(high)
            if offset < 0:  # a logical offset: where it points now, to compare with stop
                offset = low if offset == OFFSET_BEGINNING else high
        return _KafkaPart(
            reader,
            tp,
            int(offset),
            stop,
            self._deser,
            self.on_error,
            self.timestamp == "kafka",
            self.max_poll_records,
        )

    def _start_offset(self, reader: _Reader, tp: tuple[str, int]) -> int:
        start = self.start
        if start == "earliest":
            return OFFSET_BEGINNING
        if start == "latest":
            _, high = reader.consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=self.metadata_timeout
            )
            return int(high)  # the end now, not whenever the consumer first fetches
        ms = int(start.timestamp() * 1000) if isinstance(start, datetime.datetime) else int(start)
        (found,) = reader.consumer.offsets_for_times(
            [TopicPartition(tp[0], tp[1], ms)], timeout=self.metadata_timeout
        )
        if found.error is not None:
            raise KafkaException(found.error)
        if found.offset < 0:  # no record at or after the timestamp: start at the end
            _, high = reader.consumer.get_watermark_offsets(
                TopicPartition(*tp), timeout=self.metadata_timeout
            )
            return int(high)
        return int(found.offset)

    def __repr__(self) -> str:
        return f"KafkaSource({self.bootstrap_servers!r}, {self.topics!r})"
