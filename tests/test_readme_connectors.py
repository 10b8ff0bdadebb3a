"""The README's connector examples run as scripts and do what the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

pytestmark = pytest.mark.timeout(180)


def example(heading: str) -> str:
    code = re.search(rf"### {heading}\n\n```python\n(.*?)```", README, re.S)
    assert code is not None, heading
    return code.group(1)


def run(code: str, cwd: Path, **env: str) -> None:
    script = cwd / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr


def test_files_example(tmp_path: Path) -> None:
    run(example("Files"), tmp_path)
    files = sorted((tmp_path / "big-orders").iterdir())
    assert files and all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files)
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert sorted(rows, key=lambda r: r["amount"]) == [
        {"customer": "ann", "amount": 120.0},
        {"customer": "ann", "amount": 250.5},
    ]


def test_postgres_example(tmp_path: Path, pg: str) -> None:
    code = example("PostgreSQL")
    with psycopg.connect(pg, autocommit=True) as c:
        for stmt in re.findall(r"# (CREATE TABLE .*?);", code):
            c.execute(stmt)
    run(code, tmp_path, PG_DSN=pg)
    with psycopg.connect(pg) as c:
        assert c.execute("SELECT count(*), sum(n) FROM readings").fetchone() == (
            10_000,
            sum(range(10_000)),
        )
        totals = dict(c.execute("SELECT sensor, total FROM totals").fetchall())
    want = {f"sensor-{k}": sum(n for n in range(10_000) if n % 10 == k) for k in range(10)}
    assert totals == want
