"""Kafka word count: Kafka in, event-time windows, Kafka out, exactly-once, on 2 workers.

Reads sentences from the topic ``sentences``, counts words per 10-second window of event
time (the Kafka timestamp of each sentence) and writes ``"<word> <count>"`` per window to the
topic ``word-counts`` (keyed by word), with exactly-once Kafka transactions committed as the
job's snapshots commit. Then it reads ``word-counts`` back (as a ``read_committed`` consumer)
and prints what it found::

    python examples/kafka_wordcount.py                      # starts a mock Kafka cluster
    python examples/kafka_wordcount.py --bootstrap-servers HOST:9092

Without ``--bootstrap-servers`` it starts librdkafka's mock cluster (a Kafka-protocol broker
on loopback) and writes the example's sentences into it first. The output::

    [0s, 10s) a: 2
    [0s, 10s) and: 1
    ...
    [10s, 20s) the: 2
    [20s, 30s) quick: 3
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from typing import Any

from malstrom import MultiProcessRuntime, StreamProvider
from malstrom.connectors.kafka import KafkaSink, KafkaSource, MockCluster
from malstrom.snapshot import LocalDiskPersistence
from malstrom.windows import Count, Tumbling

SENTENCES = [  # (seconds of event time, sentence)
    (1, "the quick brown fox"),
    (4, "jumps over the lazy dog"),
    (8, "a fox and a dog"),
    (12, "the dog sleeps"),
    (15, "the fox runs"),
    (23, "quick quick quick"),
]
START_MS = 1_700_000_000_000  # event time of second 0


def build(provider: StreamProvider, bootstrap: str) -> None:
    on_time, _late = (
        provider.new_stream()
        .source(
            "sentences",
            KafkaSource(bootstrap, "sentences", deserialize="str", timestamp="kafka", bounded=True),
        )
        .flat_map("words", lambda m: m.value.split())
        .key_distribute("by-word", lambda word: word)
        # Sentences of different partitions interleave: allow 30 s of disorder. A worker whose
        # partitions go quiet is idle after 2 s, so it does not hold back the other's windows.
        .limit_out_of_orderness("event-time", 30_000, idle_timeout=2.0)
    )
    counts, _too_late = on_time.window("per-10s", Tumbling(10_000, offset=START_MS), Count())
    counts.map("format", describe).sink(
        "word-counts", KafkaSink(bootstrap, "word-counts", key=lambda r: r.key)
    )


def describe(result: Any) -> str:
    """``"<start s> <end s> <count>"`` (seconds from START_MS)."""
    start, end = (result.start - START_MS) // 1000, (result.end - START_MS) // 1000
    return f"{start} {end} {result.value}"


def write_sentences(bootstrap: str) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for i, (second, sentence) in enumerate(SENTENCES):
        producer.produce(
            "sentences", sentence.encode(), partition=i % 4, timestamp=START_MS + second * 1000
        )
    producer.flush(30)


def read_counts(bootstrap: str) -> list[tuple[int, int, str, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kafka-wordcount-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    parts = consumer.list_topics("word-counts", timeout=10).topics["word-counts"].partitions
    consumer.assign([TopicPartition("word-counts", p, 0) for p in parts])
    out, ended, deadline = [], set(), time.monotonic() + 30
    while len(ended) < len(parts) and time.monotonic() < deadline:
        for m in consumer.consume(100, 0.5):
            if m.error() is None:
                start, end, count = map(int, m.value().decode().split())
                out.append((start, end, m.key().decode(), count))
            else:
                ended.add(m.partition())
    consumer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", help="Kafka brokers (default: a mock cluster)")
    args = parser.parse_args()
    mock = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        mock = MockCluster()
        mock.create_topic("sentences", 4)
        mock.create_topic("word-counts", 4)
        bootstrap = mock.bootstrap_servers
    try:
        write_sentences(bootstrap)
        with tempfile.TemporaryDirectory() as snapshots:
            MultiProcessRuntime(
                functools.partial(build, bootstrap=bootstrap),
                parallelism=2,
                persistence=LocalDiskPersistence(snapshots),
                snapshot_interval=0.5,
            ).execute()
        for start, end, word, count in sorted(read_counts(bootstrap)):
            print(f"[{start}s, {end}s) {word}: {count}")
    finally:
        if mock is not None:
            mock.close()


if __name__ == "__main__":
    main()
