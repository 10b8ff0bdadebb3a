"""An idle worker sleeps until something wakes it instead of polling: the worker loop, the
operators' ``wake_at``, source parts' ``wake_in``, and real worker processes' CPU use."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from malstrom import MultiProcessRuntime, StreamProvider
from malstrom.runtime._process import run_worker_loop
from malstrom.runtime._worker import WorkerPhase
from malstrom.sources import PollingSource

pytestmark = pytest.mark.timeout(120)


class _Side:
    """An endpoint or exchange as the loop sees it: it only needs ``wake``."""

    closed = False

    def __init__(self) -> None:
        self.wake: Any = None


class _IdleWorker:
    """Never has work; asks for a turn at ``deadline`` (monotonic) at the latest."""

    def __init__(self, deadline: float) -> None:
        self.phase = WorkerPhase.RUNNING
        self.endpoint = _Side()
        self.exchange = _Side()
        self.deadline = deadline
        self.turns = 0
        self.turned = threading.Event()

    def turn(self) -> bool:
        self.turns += 1
        self.turned.set()
        return False

    def wake_deadline(self) -> float:
        return self.deadline


def _run(worker: Any) -> threading.Thread:
    t = threading.Thread(target=run_worker_loop, args=(worker,), daemon=True)
    t.start()
    return t


def test_an_idle_worker_stops_polling_after_a_short_ramp() -> None:
    worker = _IdleWorker(deadline=time.monotonic() + 3600)
    t = _run(worker)
    time.sleep(1.0)
    turns = worker.turns
    worker.phase = WorkerPhase.FINISHED
    worker.endpoint.wake()
    t.join(5)
    # The old loop polled every 4 ms at most (~250 turns in this second); now: the ramp
    # (20 idle turns, ~40 ms), then one long sleep of at most 0.5 s at a time.
    assert turns <= 25, turns
    assert not t.is_alive()


@pytest.mark.parametrize("side", ["endpoint", "exchange"])
def test_an_arrival_wakes_a_sleeping_worker(side: str) -> None:
    worker = _IdleWorker(deadline=time.monotonic() + 3600)
    t = _run(worker)
    time.sleep(0.3)  # past the ramp: in its long sleep
    wake = (worker.endpoint if side == "endpoint" else worker.exchange).wake
    worker.turned.clear()
    before = worker.turns
    wake()
    # Without the wake the loop would sleep until its 0.5 s cap, then again (the deadline
    # is an hour away); the wake makes it turn at once.
    assert worker.turned.wait(0.4)
    assert worker.turns == before + 1 or worker.turns > before
    worker.phase = WorkerPhase.FINISHED
    wake()
    t.join(5)


def test_the_loop_turns_when_the_worker_asks() -> None:
    worker = _IdleWorker(deadline=time.monotonic() + 0.25)
    t = _run(worker)
    time.sleep(0.15)
    worker.turned.clear()
    assert worker.turned.wait(2.0)  # the deadline came (nothing woke the loop)
    worker.phase = WorkerPhase.FINISHED
    worker.endpoint.wake()
    t.join(5)


def test_the_loop_keeps_polling_with_links_that_cannot_wake_it() -> None:
    worker = _IdleWorker(deadline=time.monotonic() + 3600)
    worker.endpoint = type("Plain", (), {"closed": False})()  # no ``wake``
    t = _run(worker)
    time.sleep(0.5)
    turns = worker.turns
    worker.phase = WorkerPhase.FINISHED
    t.join(5)
    assert turns > 25  # polled: nothing would have woken a sleep


def test_polling_source_parts_say_when_their_next_poll_is_due() -> None:
    src = PollingSource(lambda: 1, 3600)
    part = src.build_part(src.list_parts()[0], None)
    wait = part.wake_in()
    assert wait is not None and 0 <= wait <= 3600


def _idle_job(provider: StreamProvider) -> None:
    # One poll an hour: nothing to do for the whole test.
    (
        provider.new_stream()
        .source("tick", PollingSource(lambda: 1, 3600))
        .key_distribute("by-value", lambda v: v)
        .map("same", lambda v: v)
    )


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_whose_parts_finished_turns_again_when_a_peer_says_the_last_one_did() -> None:
    """Worker 0's parts finished first; it sleeps. A peer's PartDone for the last part wakes
    it, but that turn polled its source before the message was read (schedule() runs after
    poll()), so the source must ask for another turn at once: else the stream, and the job,
    ends a heartbeat later (seen: every 2-worker job whose parts ended unevenly took 0.5 s
    longer to finish)."""
    from jobs.countdown import CountdownPart

    from malstrom import StatefulSource
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import IDLE, Epoch
    from malstrom.keyed._parts import part_owners
    from malstrom.operators.io import PartDone, SourceOp
    from malstrom.types import MAX

    class Parts:
        def list_parts(self) -> list[str]:
            return ["a", "b", "c", "d"]

        def build_part(self, part: str, state: object | None) -> CountdownPart:
            return CountdownPart(3)

    inbox: list[Any] = []

    class Exchange:  # worker 1's messages, as worker 0's exchange hands them out
        def send(self, worker: int, operator: str, msg: Any) -> None:
            pass

        def recv(self, worker: int, operator: str) -> Any:
            return inbox.pop(0) if inbox else None

    op = SourceOp("src", StatefulSource(Parts()), BuildContext(0, (0, 1), exchange=Exchange()))
    out: list[Any] = []
    op.outs = [[out]]
    for _ in range(10):  # reads start small: a few polls read the parts' three records
        op.poll(time.monotonic() + 1)
    assert [m.ts for m in out if type(m) is Epoch] == [IDLE]  # its own two parts: done
    now = time.monotonic()
    assert op.wake_at(now) is None  # nothing to poll for: it may sleep
    peers = sorted(p for p, w in part_owners(["a", "b", "c", "d"], [0, 1]).items() if w == 1)
    inbox.extend(PartDone(p) for p in peers)
    op.poll(time.monotonic() + 1)  # the turn the message woke: poll() first...
    op.schedule()  # ...then the peer's news
    assert op.wake_at(now) == now
    op.poll(time.monotonic() + 1)
    assert [m.ts for m in out if type(m) is Epoch][-1] is MAX and op.ended
    assert op.wake_at(now) is None


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_idle_worker_processes_hardly_use_the_cpu() -> None:
    handle = MultiProcessRuntime(_idle_job, parallelism=2).start()
    try:
        deadline = time.monotonic() + 60
        while handle.status().get("phase") != "running":
            assert time.monotonic() < deadline, handle.status()
            time.sleep(0.1)
        time.sleep(1.0)  # past start-up
        pids = list(handle.status()["pids"].values())
        before = [_cpu_seconds(p) for p in pids]
        t0 = time.monotonic()
        time.sleep(3.0)
        spent = [_cpu_seconds(p) - b for p, b in zip(pids, before)]
        elapsed = time.monotonic() - t0
    finally:
        handle.stop()
    # Polling every 4 ms cost ~0.015-0.02 core per worker; sleeping until woken ~0.003. The
    # bound leaves room for a loaded machine (CPU time, not wall time, is what is counted).
    for used in spent:
        assert used / elapsed < 0.012, spent
