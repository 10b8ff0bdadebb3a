"""Live rescaling with real worker processes (same-host links, and gRPC where a test asks for
it): MultiProcessRuntime.rescale, SIGKILL during a rescale, and the cluster CLI's
``malstrom rescale``."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from jobs import fanout_job, mp_sums
from test_cli import APP, MALSTROM, Cluster
from test_multiprocess import check_results, children, runtime

from malstrom import MultiProcessRuntime, OperationRefused
from malstrom.snapshot import LocalDiskPersistence

pytestmark = pytest.mark.timeout(240)


def wait_running(handle: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while handle.status().get("phase") != "running":
        assert time.monotonic() < deadline, handle.status()
        time.sleep(0.02)


def test_rescale_1_4_2_3_while_running_is_exactly_once(tmp_path: Path, carrier: str) -> None:
    rt = runtime(
        tmp_path,
        1,
        delay=0.03,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.3,
    )
    handle = rt.start()
    try:
        wait_running(handle)
        for n in (4, 2, 3):
            time.sleep(0.3)
            handle.rescale(n)
            st = handle.status()
            assert st["workers"] == list(range(n)), st
            assert len(st["pids"]) == n
        with pytest.raises(OperationRefused, match="stop"):
            handle.rescale(0)
        handle.wait(180)
    finally:
        if handle.running:
            handle.kill()
    assert handle.status()["restarts"] == 0
    check_results(tmp_path)
    for pid in children():  # removed workers exited and were reaped
        assert b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_fanned_out_regions_and_generated_epochs_rescale_exactly(tmp_path: Path) -> None:
    """Worker processes, rescaled 2 -> 3 -> 2 live: keyed state reached by two paths of one
    distributor (a union of split branches, both inputs of joins), joins and unions fed by
    two distributors, and epochs generated after key_distribute from in-order input. Every
    output equals its oracle: state moved once, nothing late, every window fired once."""
    rt = MultiProcessRuntime(
        functools.partial(fanout_job.build_files, workdir=str(tmp_path)),
        parallelism=2,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.5,
    )
    handle = rt.start()
    try:
        wait_running(handle)
        fanout_job.go(str(tmp_path))  # the stream takes 7 s from here
        for n in (3, 2):
            time.sleep(0.5)
            handle.rescale(n)
            assert handle.status()["workers"] == list(range(n))
        handle.wait(180)
        st = handle.status()
    finally:
        if handle.running:
            handle.kill()
    assert st["restarts"] == 0, st
    fanout_job.check_lines(fanout_job.read_files(str(tmp_path)))


@pytest.mark.parametrize(("start", "target", "phase"), [(2, 3, "joining"), (3, 1, "rescaling")])
def test_sigkill_during_a_rescale_restarts_from_the_last_snapshot(
    tmp_path: Path, start: int, target: int, phase: str
) -> None:
    """A worker killed while new workers join, or while keys move: the job restarts from
    the last committed snapshot (at the new size) with exact results."""
    rt = runtime(
        tmp_path,
        start,
        delay=0.03,
        persistence=LocalDiskPersistence(tmp_path / "snap"),
        snapshot_interval=0.2,
    )
    handle = rt.start()
    try:
        wait_running(handle)
        time.sleep(0.5)
        victim = handle.status()["pids"][1]
        result: list[Any] = []

        def rescale() -> None:
            try:
                handle.rescale(target)
                result.append("done")
            except Exception as e:
                result.append(e)

        t = threading.Thread(target=rescale)
        t.start()
        deadline = time.monotonic() + 30
        while handle.status()["phase"] != phase and not result:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        os.kill(victim, signal.SIGKILL)
        t.join(120)
        handle.wait(180)
        st = handle.status()
    finally:
        if handle.running:
            handle.kill()
    assert st["restarts"] >= 1, st
    assert result == ["done"], result
    assert st["workers"] == list(range(target))
    check_results(tmp_path)


def test_cli_rescale_a_cluster_up_and_down(tmp_path: Path) -> None:
    c = Cluster(tmp_path, delay=0.1)
    try:
        c.start()
        c.wait_up()
        bad = c.admin_args("rescale", "0")
        assert bad.returncode == 2 and "at least 1" in bad.stderr
        # A third worker joins the cluster, then the job is rescaled onto it.
        c.worker_procs.append(c._spawn("worker", *c.worker_args()))
        up = c.admin_args("rescale", "3")
        assert up.returncode == 0, up.stderr
        assert json.loads(c.admin("status").stdout)["workers"] == [0, 1, 2]
        down = c.admin_args("rescale", "1")
        assert down.returncode == 0, down.stderr
        assert json.loads(c.admin("status").stdout)["workers"] == [0]
        assert c.wait() == [0, 0, 0, 0]  # coordinator and all three workers, cleanly
    finally:
        c.close()
    totals, updates = mp_sums.read_results(str(tmp_path))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART


def test_coordinator_killed_during_a_cli_rescale_workers_rejoin_a_new_one(
    tmp_path: Path,
) -> None:
    """The coordinator dies while keys move: workers abort the attempt and rejoin a new
    coordinator, which restarts the job from the last committed snapshot; exact results."""
    c = Cluster(tmp_path, delay=0.05)
    try:
        c.start()
        c.wait_up()
        c.worker_procs.append(c._spawn("worker", *c.worker_args()))
        time.sleep(1.0)
        rescale = subprocess.Popen(
            [*MALSTROM, "rescale", "3", "--coordinator", c.addr],
            env=c.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            st = c.admin("status")
            phase = json.loads(st.stdout)["phase"] if st.returncode == 0 else None
            if phase in ("joining", "rescaling") or rescale.poll() is not None:
                break
            assert time.monotonic() < deadline
        c.coord.kill()
        c.coord.wait()
        c.procs.remove(c.coord)
        rescale.wait(60)
        c.coord = c._spawn(
            "coordinator",
            APP,
            "-w",
            "3",
            "--listen",
            c.addr,
            "--persistence",
            str(tmp_path / "snap"),
            "--snapshot-interval",
            "0.2",
        )
        assert c.wait() == [0, 0, 0, 0]
    finally:
        c.close()
    totals, updates = mp_sums.read_results(str(tmp_path))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART
