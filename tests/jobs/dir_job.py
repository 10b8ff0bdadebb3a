"""A multi-process job for the DirectorySink / DirectorySource fault tests: keyed running sums
(the source of jobs/pg_job.py) written as JSON Lines part files into WORKDIR/out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.pg_job import KEYS, PARTS, PER_PART, Parts

from malstrom import StatefulSource


def build(provider: Any, workdir: str, delay: float = 0.01) -> None:
    from malstrom.formats import JsonLines
    from malstrom.sinks import DirectorySink

    (
        provider.new_stream()
        .source("numbers", StatefulSource(Parts(delay)))
        .key_distribute("by-key", lambda v: v % KEYS)
        .stateful_map("running", lambda k, v, s: ((k, v, s + v), s + v), initial=int)
        .sink("out", DirectorySink(Path(workdir) / "out", JsonLines(), parts=4))
    )


def published(workdir: str) -> list[Any]:
    out: list[Any] = []
    for f in sorted((Path(workdir) / "out").glob("part-*")):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def check(workdir: str) -> None:
    """Every value exactly once, running sums consistent per key, nothing left hidden."""
    rows = published(workdir)
    assert sorted(v for _, v, _ in rows) == list(range(PARTS * PER_PART))
    running: dict[int, int] = {}
    for k, v, s in sorted(rows, key=lambda r: (r[0], r[2])):
        running[k] = running.get(k, 0) + v
        assert s == running[k], (k, v, s)
    assert not [p for p in (Path(workdir) / "out").iterdir() if p.name.startswith(".")]
