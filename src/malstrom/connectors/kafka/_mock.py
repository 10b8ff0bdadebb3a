"""A Kafka-protocol cluster on loopback for tests and examples: librdkafka's mock cluster.

The mock cluster is part of librdkafka (shipped inside confluent-kafka's wheel): brokers that
speak the Kafka protocol on loopback ports, with topics, consumer offsets, idempotent and
transactional producers. Topics are created on first use with 4 partitions, or explicitly
with :meth:`MockCluster.create_topic`.

What it does not do, unlike a real broker (checked against librdkafka 2.16): fetch requests
return aborted and still-open transactional records to ``read_committed`` consumers too (the
last stable offset is the high watermark); ``init_transactions`` with a transactional id
already in use does not fence the earlier producer; transactional offset commits are not
stored; partitions cannot be added to a topic (:meth:`MockCluster.grow_topic` re-creates it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["MockCluster"]


class MockCluster:
    """A mock Kafka cluster of ``brokers`` brokers on loopback, served by a child process.

    Use it as a context manager; :attr:`bootstrap_servers` is what clients connect to. The
    child process exits when this object is closed or its parent dies.
    """

    def __init__(self, brokers: int = 3) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "malstrom.connectors.kafka._mock_server", str(brokers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("bootstrap "):
            self.close()
            raise RuntimeError(f"the mock Kafka cluster did not start: {line!r}")
        self.bootstrap_servers: str = line.split(" ", 1)[1]
        self._lock = threading.Lock()

    def _call(self, *args: Any) -> None:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        with self._lock:
            proc.stdin.write(json.dumps(args) + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"mock cluster: {args[0]} {args[1:]!r} failed: {answer}")

    def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions (it must not exist)."""
        self._call("create", topic, int(partitions))

    def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` and its records."""
        self._call("delete", topic)

    def grow_topic(self, topic: str, partitions: int, timeout: float = 30.0) -> None:
        """Give ``topic`` ``partitions`` partitions, keeping every record at its offset.

        The mock cannot add partitions, so this copies the records out, re-creates the topic
        and writes them back in order: offsets stay the same as long as the topic holds no
        transactional records (whose commit markers take offsets too). Clients reading the
        topic meanwhile see it vanish for a moment.
        """
        from confluent_kafka import Consumer, Producer, TopicPartition

        conf = {"bootstrap.servers": self.bootstrap_servers}
        consumer = Consumer({**conf, "group.id": "malstrom-mock-grow", "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            old = sorted(meta.partitions)
            saved: dict[int, list[Any]] = {}
            for p in old:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout)
                rows: list[Any] = []
                if hi > lo:
                    consumer.assign([TopicPartition(topic, p, lo)])
                    deadline = time.monotonic() + timeout
                    while len(rows) < hi - lo:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"could not read {topic}[{p}] back")
                        for m in consumer.consume(1000, 0.2):
                            if m.error() is None:
                                rows.append((m.key(), m.value(), m.headers(), m.timestamp()[1]))
                    consumer.unassign()
                saved[p] = rows
        finally:
            consumer.close()
        if partitions < len(old):
            raise ValueError(f"{topic} has {len(old)} partitions: a topic cannot shrink")
        self.delete_topic(topic)
        self.create_topic(topic, partitions)
        producer = Producer({**conf, "max.in.flight.requests.per.connection": 1})
        for p, rows in saved.items():
            for key, value, headers, ts in rows:
                producer.produce(
                    topic, value, key, partition=p, headers=headers, timestamp=max(ts, 0)
                )
                producer.poll(0)
        if producer.flush(timeout):
            raise TimeoutError(f"could not write {topic} back")

    def close(self) -> None:
        """Stop the cluster (its records are gone)."""
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdout, proc.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MockCluster({self.bootstrap_servers!r})"
