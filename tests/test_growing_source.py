"""Sources whose parts grow while the job runs (``relist_interval``): new parts are built by
their owner, are snapshotted, move on rescale, and appear on restore with
``new_part_state``."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from jobs import growing
from jobs.countdown import CountdownPart

from malstrom import MultiProcessRuntime, SingleThreadRuntime
from malstrom.snapshot import LocalDiskPersistence

pytestmark = pytest.mark.timeout(180)


def add_parts_later(work: Path, parts: str, after: float) -> threading.Thread:
    def add() -> None:
        time.sleep(after)
        with open(work / "parts.txt", "a") as f:
            f.write(f" {parts}")
        time.sleep(0.2)
        (work / "end").touch()

    t = threading.Thread(target=add)
    t.start()
    return t


def test_parts_listed_while_running_are_read_once(tmp_path: Path) -> None:
    (tmp_path / "parts.txt").write_text("0 1")
    adder = add_parts_later(tmp_path, "2 3", 0.2)
    SingleThreadRuntime(functools.partial(growing.build, workdir=str(tmp_path))).execute()
    adder.join()
    assert growing.read_values(str(tmp_path)) == list(range(4 * growing.PER_PART))
    assert sorted((tmp_path / "new-parts.txt").read_text().split()) == ["2", "3"]


def test_parts_listed_during_rescales_on_processes_are_read_once(tmp_path: Path) -> None:
    (tmp_path / "parts.txt").write_text("0 1 2")
    rt = MultiProcessRuntime(
        functools.partial(growing.build, workdir=str(tmp_path)),
        parallelism=2,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.2,
    )
    handle = rt.start()
    try:
        deadline = time.monotonic() + 60
        while handle.status().get("phase") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with open(tmp_path / "parts.txt", "a") as f:
            f.write(" 3 4")
        handle.rescale(3)
        with open(tmp_path / "parts.txt", "a") as f:
            f.write(" 5 6 7")
        time.sleep(0.1)
        handle.rescale(2)
        (tmp_path / "end").touch()
        handle.wait(120)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    assert growing.read_values(str(tmp_path)) == list(range(8 * growing.PER_PART))


def test_restore_builds_parts_added_since_the_snapshot(tmp_path: Path) -> None:
    (tmp_path / "parts.txt").write_text("0 1")
    build = functools.partial(growing.build, workdir=str(tmp_path), delay=0.02)
    persistence = LocalDiskPersistence(tmp_path / "snap")
    handle = MultiProcessRuntime(build, parallelism=2, persistence=persistence).start()
    try:
        deadline = time.monotonic() + 60
        while handle.status().get("phase") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        handle.stop()
    finally:
        if handle.running:
            handle.kill()
    done = growing.read_values(str(tmp_path))
    assert 0 < len(done) < 2 * growing.PER_PART
    with open(tmp_path / "parts.txt", "a") as f:
        f.write(" 2 3")
    (tmp_path / "end").touch()
    MultiProcessRuntime(build, parallelism=3, persistence=persistence).execute()
    assert growing.read_values(str(tmp_path)) == list(range(4 * growing.PER_PART))
    assert sorted((tmp_path / "new-parts.txt").read_text().split()) == ["2", "3"]


def test_an_idle_worker_that_lists_a_new_part_wakes_before_its_records() -> None:
    """Worker 0's only part finished (it told the job it was idle: IDLE); a part listed later
    is its own. Before that part's records it must say it is active again (MIN): merged
    epochs leave an idle worker out, so a peer that has not listed the part yet would end
    the stream (MAX) ahead of them."""
    from malstrom import StatefulSource
    from malstrom.engine.batch import Batch
    from malstrom.engine.context import BuildContext
    from malstrom.engine.messages import IDLE, Epoch
    from malstrom.operators.io import SourceOp
    from malstrom.types import MIN

    class Grows:
        relist_interval = 0.0  # every loop turn

        def __init__(self) -> None:
            self.parts = ["a", "c"]  # a: worker 0's, c: worker 1's (rendezvous over 0, 1)

        def list_parts(self) -> list[str]:
            return list(self.parts)

        def build_part(self, part: str, state: object | None) -> CountdownPart:
            return CountdownPart(0 if part == "a" else 5)

    class Sent:  # the exchange: nothing comes from worker 1
        def send(self, worker: int, operator: str, msg: Any) -> None:
            pass

        def recv(self, worker: int, operator: str) -> Any:
            return None

    impl = Grows()
    op = SourceOp("src", StatefulSource(impl), BuildContext(0, (0, 1), exchange=Sent()))
    out: list[Any] = []
    op.outs = [[out]]
    op.poll(time.monotonic() + 1)  # part a is empty: finished, and worker 0 has no other
    assert [m.ts for m in out if type(m) is Epoch] == [IDLE]
    impl.parts.append("b")  # worker 0's, listed while the job runs
    out.clear()
    op.schedule()
    op.poll(time.monotonic() + 1)
    kinds = [("epoch", m.ts) if type(m) is Epoch else "records" for m in out]
    assert kinds[:2] == [("epoch", MIN), "records"], kinds
    assert [v for m in out if type(m) is Batch for v in m.values][:1] == [0]  # b's first
