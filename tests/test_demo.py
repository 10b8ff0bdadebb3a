"""The README's main job (examples/wordcount.py) on local worker processes: exact counts,
exactly-once output files, and a second run that resumes a completed job at once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


def run(work: Path) -> str:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wordcount.py"), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_demo_counts_exactly_and_resumes_a_completed_job(tmp_path: Path) -> None:
    out = run(tmp_path)
    assert "counted 800,000 words (21 distinct) on 2 worker processes" in out
    words = Counter(
        w for f in sorted((tmp_path / "input").glob("*.txt")) for w in f.read_text().split()
    )
    totals = dict(
        line.rsplit(" ", 1) for line in (tmp_path / "totals.txt").read_text().split("\n") if line
    )
    assert {w: int(c) for w, c in totals.items()} == dict(words)
    updates = (tmp_path / "updates.txt").read_text().splitlines()
    assert len(updates) == 800_000 and len(set(updates)) == 800_000
    again = run(tmp_path)
    assert again.startswith("resumed from snapshot version")
    assert (tmp_path / "updates.txt").read_text().splitlines() == updates
