"""Fencing in cluster mode, with real ``malstrom coordinator`` / ``malstrom worker`` processes:
a worker of a failed attempt that lives on (paused, or slow to build the next graph) must not
add a single line to output files that a later attempt has cut back and written since."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jobs import mp_sums
from test_cli import APP, MALSTROM, env, free_port

pytestmark = pytest.mark.timeout(300)


class Job:
    """A coordinator and its workers, each a separate process; killed at the end."""

    def __init__(self, tmp: Path, workers: int, delay: float) -> None:
        self.tmp = tmp
        self.addr = f"127.0.0.1:{free_port()}"
        self.env = env(tmp, delay, MALSTROM_JOB="fence-test", MALSTROM_TOKEN="s3cret")
        self.procs: list[subprocess.Popen[str]] = []
        self.coord = self.spawn(
            "coordinator",
            APP,
            "-w",
            str(workers),
            "--listen",
            self.addr,
            "--persistence",
            str(tmp / "snap"),
            "--snapshot-interval",
            "0.2",
            "--heartbeat-timeout",
            "5",
            "--max-restarts",
            "6",
        )

    def spawn(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [*MALSTROM, *args],
            env={**self.env, **extra_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def worker(self, reconnect: float = 20, **extra_env: str) -> subprocess.Popen[str]:
        return self.spawn(
            "worker",
            APP,
            "--coordinator",
            self.addr,
            "--reconnect-timeout",
            str(reconnect),
            **extra_env,
        )

    def status(self) -> dict[str, Any] | None:
        r = subprocess.run(
            [*MALSTROM, "status", "--json", "--coordinator", self.addr],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while True:
            st = self.status()
            if st is not None and pred(st):
                return st
            assert self.coord.poll() is None, f"coordinator ended while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
            time.sleep(0.1)

    def finish(self) -> str:
        """Wait for the coordinator to end; its stderr."""
        try:
            _, err = self.coord.communicate(timeout=180)
        finally:
            self.close()
        if self.coord.returncode != 0:
            print(err)
            for p in self.procs[1:]:
                print("--- worker", p.args, p.stderr.read() if p.stderr else "")
        assert self.coord.returncode == 0, err
        return err

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()


def check_exactly_once(work: Path) -> None:
    totals, updates = mp_sums.read_results(str(work))
    assert totals == mp_sums.expected_totals()
    got = {k: Counter(v) for k, v in updates.items()}
    want = {k: Counter(v) for k, v in mp_sums.expected_updates().items()}
    dup = sum(sum((got.get(k, Counter()) - c).values()) for k, c in want.items())
    lost = sum(sum((c - got.get(k, Counter())).values()) for k, c in want.items())
    assert (dup, lost) == (0, 0), f"{dup} duplicated and {lost} lost update lines"
    assert got == want


def test_paused_worker_of_an_aborted_attempt_adds_nothing_to_the_output(tmp_path: Path) -> None:
    """Coordinator with -w 2 and a spare third worker. SIGSTOP a worker while it holds
    buffered output; the job restarts on the other two, cuts the files back to the snapshot
    and writes on; SIGCONT: nothing the paused worker still had reaches the files."""
    job = Job(tmp_path, workers=2, delay=0.1)
    try:
        for _ in range(3):
            job.worker()
        st = job.wait_status(
            lambda s: s["phase"] in ("running", "snapshotting") and (s["last_committed"] or 0) >= 2,
            "the first snapshots",
        )
        time.sleep(0.3)  # some lines written since the last snapshot, still buffered
        victim = int(st["pids"]["0"])
        os.kill(victim, signal.SIGSTOP)
        try:
            # The new attempt runs without the paused worker; it has cut the files back to
            # its snapshot and written and committed past it.
            job.wait_status(
                lambda s: (
                    s["restarts"] >= 1
                    and victim not in {int(p) for p in s["pids"].values()}
                    and s["phase"] in ("running", "snapshotting")
                    and s["last_committed"] is not None
                    and s["last_committed"] >= (s["restored_from"] or 0) + 3
                ),
                "snapshots of the new attempt",
            )
        finally:
            os.kill(victim, signal.SIGCONT)
        job.finish()
    finally:
        job.close()
    check_exactly_once(tmp_path)


@pytest.mark.parametrize("round_", [1, 2])
def test_survivor_with_a_slow_build_adds_nothing_to_the_output(tmp_path: Path, round_: int) -> None:
    """SIGKILL one of 2 workers and start a replacement. The survivor takes 4 s to build the
    next attempt's graph (the replacement builds at once and cuts the files back first): the
    survivor's output of the failed attempt must never reach the files."""
    job = Job(tmp_path, workers=2, delay=0.1)
    try:
        # Garbage collections now and then: whatever the survivor dropped of the failed
        # attempt is finalized while the new attempt runs.
        slow = {"MALSTROM_TEST_BUILD_DELAY": "4", "MALSTROM_TEST_GC_EVERY": "300"}
        job.worker(**slow)
        job.worker(**slow)
        st = job.wait_status(
            lambda s: s["phase"] in ("running", "snapshotting") and (s["last_committed"] or 0) >= 2,
            "the first snapshots",
        )
        time.sleep(0.3)
        # Kill worker 0: the survivor (worker 1) rejoins first and becomes worker 0, so the
        # files it wrote as worker 1 go to the replacement.
        os.kill(int(st["pids"]["0"]), signal.SIGKILL)
        job.worker(MALSTROM_TEST_GC_EVERY="300")  # the replacement builds at once
        job.finish()
    finally:
        job.close()
    check_exactly_once(tmp_path)


def test_worker_rejoins_after_running_longer_than_its_reconnect_timeout(tmp_path: Path) -> None:
    """--reconnect-timeout bounds how long a worker tries to rejoin after an attempt ends,
    not its whole life: a worker that ran for longer still rejoins the next attempt."""
    job = Job(tmp_path, workers=2, delay=0.1)
    try:
        survivor = job.worker(reconnect=2)
        job.worker(reconnect=2)
        st = job.wait_status(lambda s: s["phase"] in ("running", "snapshotting"), "running")
        time.sleep(3)  # longer than the reconnect timeout
        pids = {int(p) for p in st["pids"].values()}
        assert survivor.pid in pids
        os.kill(next(p for p in pids if p != survivor.pid), signal.SIGKILL)
        job.worker(reconnect=2)
        job.wait_status(lambda s: s["restarts"] >= 1, "the restart")
        time.sleep(3)
        assert survivor.poll() is None, "the survivor gave up instead of rejoining"
        job.finish()
    finally:
        job.close()
    check_exactly_once(tmp_path)
