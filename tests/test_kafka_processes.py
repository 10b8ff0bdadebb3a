"""Kafka end to end on worker processes: topic -> keyed count -> topic, checked by a
``read_committed`` reader of the output: every expected record exactly once after a worker
is SIGKILLed, across a live rescale, and after the input topic gained partitions (while the
job ran, and between a stop and a restore)."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import kafka_support
import pytest
from jobs import kafka_count as job
from kafka_support import end_offsets, produce, read_all, topic, values

from malstrom import MultiProcessRuntime
from malstrom.connectors.kafka import MockCluster
from malstrom.snapshot import LocalDiskPersistence

pytestmark = pytest.mark.timeout(240)

kafka = pytest.fixture(scope="module")(kafka_support.cluster)


def start(kafka: MockCluster, tmp: Path, n: int, **kw: Any) -> tuple[Any, str, str, list[str]]:
    src, dst = topic("in"), topic("out")
    kafka.create_topic(src, 4)
    ws = job.words(kw.pop("words", 4000))
    produce(kafka.bootstrap_servers, src, [(w.encode(), w.encode(), None) for w in ws])
    build = functools.partial(
        job.build,
        bootstrap=kafka.bootstrap_servers,
        source_topic=src,
        sink_topic=dst,
        delay=kw.pop("delay", 0.001),
        bounded=kw.pop("bounded", True),
    )
    rt = MultiProcessRuntime(
        build,
        parallelism=n,
        persistence=LocalDiskPersistence(tmp / "snap"),
        snapshot_interval=0.2,
        **kw,
    )
    return rt.start(), src, dst, ws


def wait_output(kafka: MockCluster, dst: str, at_least: int, handle: Any) -> None:
    """Until some snapshots committed (and so their transactions): mid-run, not at the end."""
    deadline = time.monotonic() + 60
    while end_offsets(kafka.bootstrap_servers, dst) < at_least:
        assert handle.running and time.monotonic() < deadline, handle.status()
        time.sleep(0.02)


def test_sigkill_a_worker_mid_run_output_is_exactly_once(
    kafka: MockCluster, tmp_path: Path
) -> None:
    handle, _, dst, ws = start(kafka, tmp_path, 2)
    try:
        wait_output(kafka, dst, 200, handle)
        os.kill(handle.status()["pids"][1], signal.SIGKILL)
        handle.wait(180)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] >= 1
    assert values(kafka.bootstrap_servers, dst) == job.expected(ws)


def test_rescale_2_to_3_mid_run_output_is_exactly_once(kafka: MockCluster, tmp_path: Path) -> None:
    handle, _, dst, ws = start(kafka, tmp_path, 2)
    try:
        wait_output(kafka, dst, 200, handle)
        handle.rescale(3)
        assert handle.status()["workers"] == [0, 1, 2]
        handle.wait(180)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    assert values(kafka.bootstrap_servers, dst) == job.expected(ws)


def test_restore_after_the_topic_gained_partitions(kafka: MockCluster, tmp_path: Path) -> None:
    handle, src, dst, ws = start(kafka, tmp_path, 2)
    try:
        wait_output(kafka, dst, 200, handle)
        handle.stop()
    finally:
        if handle.running:
            handle.kill()
    assert 0 < len(read_all(kafka.bootstrap_servers, dst)) < len(ws)
    kafka.grow_topic(src, 6)
    more = job.words(600, vocabulary=60)
    items = [(w.encode(), w.encode(), 4 + i % 2) for i, w in enumerate(more)]
    produce(kafka.bootstrap_servers, src, items)
    build = functools.partial(
        job.build, bootstrap=kafka.bootstrap_servers, source_topic=src, sink_topic=dst
    )
    MultiProcessRuntime(
        build, parallelism=2, persistence=LocalDiskPersistence(tmp_path / "snap")
    ).execute()
    assert values(kafka.bootstrap_servers, dst) == job.expected(ws + more)


def test_partitions_added_while_running_are_read(kafka: MockCluster, tmp_path: Path) -> None:
    # Unbounded: the job runs until every expected record is out, however slow the machine
    # (a bounded job could end before the new partition is listed).
    handle, src, dst, ws = start(kafka, tmp_path, 2, delay=0.002, bounded=False)
    more = job.words(300, vocabulary=60)
    want = job.expected(ws + more)
    try:
        wait_output(kafka, dst, 200, handle)
        kafka.grow_topic(src, 5)
        produce(kafka.bootstrap_servers, src, [(w.encode(), w.encode(), 4) for w in more])
        deadline = time.monotonic() + 180
        # (end offsets count the transactions' commit markers too: read the records)
        while sum(values(kafka.bootstrap_servers, dst).values()) < sum(want.values()):
            assert handle.running and time.monotonic() < deadline, handle.status()
            time.sleep(0.5)
        handle.stop()
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    assert values(kafka.bootstrap_servers, dst) == want
