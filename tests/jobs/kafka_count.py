"""Kafka in, keyed running count, Kafka out: for each word read, the sink writes
``"<word> <count so far>"``. Exactly-once means every such line appears once."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


def build(
    provider: Any,
    bootstrap: str,
    source_topic: str,
    sink_topic: str,
    exactly_once: bool = True,
    delay: float = 0.0,  # seconds of work per record
    discover_interval: float | None = 0.5,
    bounded: bool = True,
) -> None:
    from malstrom.connectors.kafka import KafkaSink, KafkaSource

    def word(m: Any) -> str:
        if delay:
            time.sleep(delay)
        return str(m.value)

    (
        provider.new_stream()
        .source(
            "in",
            KafkaSource(
                bootstrap,
                source_topic,
                deserialize="str",
                bounded=bounded,
                discover_interval=discover_interval,
                # Small batches: with slow records, snapshots still commit mid-run.
                max_poll_records=10 if delay else None,
            ),
        )
        .map("word", word)
        .key_distribute("by-word", lambda w: w)
        .stateful_map("count", lambda k, w, n: (f"{w} {n + 1}", n + 1), initial=int)
        .sink(
            "out",
            KafkaSink(bootstrap, sink_topic, key=lambda r: r.key, exactly_once=exactly_once),
        )
    )


def words(n: int, vocabulary: int = 50) -> list[str]:
    return [f"w{(i * 7919) % vocabulary}" for i in range(n)]


def expected(ws: list[str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    out: Counter[str] = Counter()
    for w in ws:
        seen[w] += 1
        out[f"{w} {seen[w]}"] += 1
    return out
