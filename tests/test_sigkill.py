"""Fault test: SIGKILL a running job mid-stream, run it again, and check exactly-once results
in keyed state and in the (exactly-once) file sinks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

JOB = Path(__file__).parent / "jobs" / "slow_sums.py"
N, KEYS = 20_000, 13


def expected_updates() -> Counter[str]:
    sums = [0] * KEYS
    out: Counter[str] = Counter()
    for v in range(N):
        k = v % KEYS
        sums[k] += v
        out[f"{k} {v} {sums[k]}"] += 1
    return out


def expected_totals() -> list[str]:
    sums = [0] * KEYS
    for v in range(N):
        sums[v % KEYS] += v
    return [f"{k} {sums[k]}" for k in range(KEYS)]


def run_job(work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(JOB), str(work)], stderr=subprocess.PIPE)


def kill_when(work: Path, proc: subprocess.Popen[bytes], min_lines: int) -> None:
    updates = work / "updates.txt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if updates.exists() and updates.stat().st_size > min_lines * 12:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_stream_then_resume_is_exactly_once(tmp_path: Path) -> None:
    for min_lines in (2_000, 9_000, 15_000):
        proc = run_job(tmp_path)
        kill_when(tmp_path, proc, min_lines)
    assert not (tmp_path / "totals.txt").exists() or (tmp_path / "totals.txt").read_text() == ""
    final = run_job(tmp_path)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    assert (tmp_path / "totals.txt").read_text().splitlines() == expected_totals()
    got = Counter((tmp_path / "updates.txt").read_text().splitlines())
    assert got == expected_updates()
