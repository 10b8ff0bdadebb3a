"""The malstrom command: local runs, a cluster of separate processes on loopback, admin
commands, authentication errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jobs import mp_sums

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]
APP = f"{ROOT / 'tests' / 'jobs' / 'cluster_app.py'}:build"
MALSTROM = [sys.executable, "-m", "malstrom.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(out: Path, delay: float = 0.0, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(MALSTROM_TEST_OUT=str(out), MALSTROM_TEST_DELAY=str(delay), **extra)
    return e


def check(out: Path) -> None:
    totals, updates = mp_sums.read_results(str(out))
    assert totals == mp_sums.expected_totals()
    assert sum(len(v) for v in updates.values()) == mp_sums.PARTS * mp_sums.PER_PART


def test_run_locally_with_snapshots(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            *MALSTROM,
            "run",
            APP,
            "-w",
            "2",
            "--persistence",
            str(tmp_path / "snap"),
            "--snapshot-interval",
            "0.1",
        ],
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    check(tmp_path)


def test_bad_app_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [*MALSTROM, "run", "nope/missing.py:build"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "does not exist" in r.stderr


class Cluster:
    def __init__(self, tmp: Path, workers: int = 2, delay: float = 0.01) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.env = env(tmp, delay, MALSTROM_JOB="cli-test", MALSTROM_TOKEN="s3cret")
        self.workers = workers
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        self.coord = self._spawn(
            "coordinator",
            APP,
            "-w",
            str(self.workers),
            "--listen",
            self.addr,
            "--persistence",
            str(self.tmp / "snap"),
            "--snapshot-interval",
            "0.2",
        )
        self.worker_procs = [
            self._spawn("worker", APP, "--coordinator", self.addr) for _ in range(self.workers)
        ]

    def _spawn(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [*MALSTROM, *args],
            env=kw.get("env", self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.admin("status").returncode != 0:
            assert time.monotonic() < deadline, "coordinator did not come up"
            time.sleep(0.1)

    def worker_args(self) -> list[str]:
        return [APP, "--coordinator", self.addr]

    def admin_args(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MALSTROM, *args, "--coordinator", self.addr],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def admin(self, command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        json_out = ["--json"] if command == "status" else []
        return subprocess.run(
            [*MALSTROM, command, *json_out, "--coordinator", self.addr],
            env=kw.get("env", self.env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def wait(self) -> list[int]:
        codes = []
        for p in self.procs:
            try:
                p.wait(timeout=150)
            finally:
                if p.poll() is None:
                    p.kill()
            codes.append(p.returncode)
        return codes

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_cluster_admin_snapshot_status_stop_then_resume(tmp_path: Path) -> None:
    # Slow enough (about 5 s of input) that the job is still running when `stop` arrives.
    c = Cluster(tmp_path, delay=0.05)
    try:
        c.start()
        deadline = time.monotonic() + 60
        while True:
            st = c.admin("status")
            if st.returncode == 0 and json.loads(st.stdout)["phase"] in ("running", "snapshotting"):
                break
            assert time.monotonic() < deadline, st.stderr
            time.sleep(0.1)
        status = json.loads(st.stdout)
        assert status["workers"] == [0, 1]
        snap = c.admin("snapshot")
        assert snap.returncode == 0, snap.stderr
        assert isinstance(json.loads(snap.stdout)["version"], int)
        stop = c.admin("stop")
        assert stop.returncode == 0, stop.stderr
        assert c.wait() == [0, 0, 0]
        assert "job stopped" in c.coord.stdout.read()  # type: ignore[union-attr]
    finally:
        c.close()
    # Resume the stopped job to completion with a fresh set of processes.
    c2 = Cluster(tmp_path, delay=0.0)
    try:
        c2.start()
        assert c2.wait() == [0, 0, 0]
    finally:
        c2.close()
    check(tmp_path)


def test_wrong_token_and_wrong_job_are_refused_clearly(tmp_path: Path) -> None:
    c = Cluster(tmp_path, workers=1, delay=0.02)
    try:
        c.start()
        c.wait_up()
        bad = dict(c.env, MALSTROM_TOKEN="wrong")
        r = c.admin("status", env=bad)
        assert r.returncode == 1 and "bad token" in r.stderr
        other = dict(c.env, MALSTROM_JOB="other-job")
        w = c._spawn("worker", APP, "--coordinator", c.addr, env=other)
        assert w.wait(timeout=60) == 2
        assert "runs job 'cli-test', you are from job 'other-job'" in w.stderr.read()  # type: ignore[union-attr]
        c.procs.remove(w)
        assert c.wait() == [0, 0]
    finally:
        c.close()


def test_coordinator_killed_mid_run_workers_rejoin_a_new_one(tmp_path: Path) -> None:
    c = Cluster(tmp_path, delay=0.03)
    try:
        c.start()
        time.sleep(2.5)
        assert c.coord.poll() is None
        c.coord.kill()
        c.coord.wait()
        c.procs.remove(c.coord)
        time.sleep(0.5)
        c.coord = c._spawn(
            "coordinator",
            APP,
            "-w",
            "2",
            "--listen",
            c.addr,
            "--persistence",
            str(tmp_path / "snap"),
            "--snapshot-interval",
            "0.2",
        )
        assert c.wait() == [0, 0, 0]
    finally:
        c.close()
    check(tmp_path)
