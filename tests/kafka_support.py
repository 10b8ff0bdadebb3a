"""Kafka test support: a mock cluster fixture (its own process) and topic helpers."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from malstrom.connectors.kafka import MockCluster

_names = itertools.count()


def cluster() -> Iterator[MockCluster]:
    """For a module's ``kafka`` fixture: one mock cluster (topics are unique per test)."""
    with MockCluster(brokers=3) as mock:
        yield mock


def topic(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def produce(bootstrap: str, topic: str, items: list[tuple[Any, Any, int | None]]) -> None:
    """Write ``(key, value, partition)`` items in order."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, part in items:
        while True:
            try:
                p.produce(topic, value, key, -1 if part is None else part)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(30) == 0


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` (a ``read_committed`` consumer), up to the current end."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "malstrom-tests-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        meta = c.list_topics(topic, timeout=timeout).topics[topic]
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in meta.partitions
        }
        todo = {p for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    out.append(m)
                elif m.offset() >= ends[m.partition()]:  # end of partition (past any marker)
                    todo.discard(m.partition())
        return out
    finally:
        c.close()


def values(bootstrap: str, topic: str) -> Counter[str]:
    return Counter(m.value().decode() for m in read_all(bootstrap, topic))


def end_offsets(bootstrap: str, topic: str) -> int:
    """The sum of the partitions' end offsets (0 while the topic does not exist)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "malstrom-tests-reader"})
    try:
        meta = c.list_topics(topic, timeout=5).topics.get(topic)
        if meta is None or meta.error is not None:
            return 0
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in meta.partitions
        )
    finally:
        c.close()
