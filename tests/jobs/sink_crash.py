"""A job that writes 0..N-1 into a two-phase-commit sink with frequent snapshots, and can die
(``os._exit``, no clean-up at all) at a chosen point of the sink's protocol:

    python sink_crash.py KIND WORKDIR [DSN] [--crash POINT:K]

KIND is ``pg`` (PostgresSink into table ``t``) or ``dir`` (DirectorySink into WORKDIR/out).
POINT is ``commit`` (the K-th commit that has something to commit, before it does: the
snapshot committed, its transactions/files are still pending) or ``prepare`` (right after the
K-th barrier that prepared something: the snapshot never commits).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from malstrom import SingleThreadRuntime, StatefulSource
from malstrom.snapshot import LocalDiskPersistence

N = 3000


class Part:
    def __init__(self, nxt: int) -> None:
        self.nxt = nxt

    def poll(self) -> tuple[int, int] | None:
        b = self.poll_batch(1)
        return b[0] if b else None

    def poll_batch(self, n: int) -> list[tuple[int, int]]:
        time.sleep(0.002)
        stop = min(N, self.nxt + min(n, 40))
        out = [(i, i) for i in range(self.nxt, stop)]
        self.nxt = stop
        return out

    def is_finished(self) -> bool:
        return self.nxt >= N

    def snapshot(self) -> object:
        return self.nxt

    def collect(self) -> object:
        return self.nxt


class Numbers:
    def list_parts(self) -> list[int]:
        return [0]

    def build_part(self, part: int, state: object | None) -> Part:
        return Part(0 if state is None else int(state))  # type: ignore[call-overload]


def crash_at(cls: Any, point: str, k: int, pending: Any) -> None:
    """Patch ``cls`` so the process dies at the K-th ``point`` that has work pending."""
    seen = [0]
    if point == "commit":
        orig = cls.commit

        def commit(self: Any, version: int) -> None:
            if pending(self):
                seen[0] += 1
                if seen[0] == k:
                    os._exit(9)
            orig(self, version)

        cls.commit = commit
    else:
        orig_snap = cls.snapshot

        def snapshot(self: Any) -> object:
            state = orig_snap(self)
            if state and state.get("pending"):
                seen[0] += 1
                if seen[0] == k:
                    os._exit(9)
            return state

        cls.snapshot = snapshot


def main() -> None:
    kind, work = sys.argv[1], sys.argv[2]
    dsn = sys.argv[3] if kind == "pg" else ""
    crash = sys.argv[sys.argv.index("--crash") + 1] if "--crash" in sys.argv else None
    if kind == "pg":
        from malstrom.connectors.postgres import PostgresSink, _PgPart

        sink: Any = PostgresSink(dsn, "t", row=lambda r: (r.value,), parts=2)
        part_cls: Any = _PgPart
    else:
        from malstrom.formats import JsonLines
        from malstrom.sinks import DirectorySink
        from malstrom.sinks._directory import _DirPart

        sink = DirectorySink(os.path.join(work, "out"), JsonLines(), parts=2)
        part_cls = _DirPart
    if crash is not None:
        point, k = crash.split(":")
        crash_at(part_cls, point, int(k), lambda p: bool(p._armed))

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("numbers", StatefulSource(Numbers()))
            .key_local("k", lambda v: v % 5)
            .sink("out", sink)
        )

    SingleThreadRuntime(
        build, persistence=LocalDiskPersistence(os.path.join(work, "snap")), snapshot_interval=0.02
    ).execute()


if __name__ == "__main__":
    main()
