"""Readable text for ``malstrom status`` and the progress line of ``malstrom run``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_status", "progress_line"]


def _num(n: Any, digits: int = 0) -> str:
    if n is None:
        return "-"
    if not isinstance(n, int | float):
        return str(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:.{digits}f}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = []
    for i, row in enumerate([list(header), *rows]):
        cells = [
            str(c).ljust(w) if j == 0 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _snapshot_text(last: dict[str, Any] | None, committed: Any) -> str:
    if last is None:
        return f"v{committed}" if committed is not None else "none"
    return (
        f"v{last['version']}, {_ago(last.get('age'))} ago "
        f"(took {last['duration'] * 1000:.0f} ms, {_size(last.get('size', 0))})"
    )


def format_status(status: dict[str, Any]) -> str:
    """The admin ``status`` reply as a few lines and two tables (operators, workers)."""
    m = status.get("metrics") or {}
    workers = status.get("workers", [])
    head = [
        f"job {m.get('job') or status.get('job', '?')}   phase {status.get('phase', '?')}   "
        f"workers {len(workers)}   restarts {status.get('restarts', 0)}   "
        f"rescales {m.get('rescales', 0)}",
        f"last snapshot {_snapshot_text(m.get('last_snapshot'), status.get('last_committed'))}",
    ]
    if m:
        lag = m.get("lag")
        head.append(
            f"throughput {_num(m.get('throughput'))} records/s   event-time lag "
            f"{'-' if lag is None else f'{lag:.2f} s'}"
        )
    if status.get("failure") or status.get("error"):
        head.append(f"error: {status.get('failure') or status.get('error')}")
    lines = [*head]
    ops = m.get("operators") or []
    if ops:
        lines.append("")
        lines += _table(
            [
                "operator",
                "kind",
                "in",
                "out",
                "records/s",
                "lag (s)",
                "unread",
                "late",
                "queue",
                "keys",
            ],
            [
                [
                    o["name"],
                    o.get("kind", ""),
                    _num(o.get("records_in")),
                    _num(o.get("records_out")),
                    _num(o.get("rate")),
                    _num(o.get("lag"), 2),
                    _num(o.get("source_lag")),
                    _num(o.get("late")),
                    _num(o.get("queue")),
                    _num(o.get("keys")),
                ]
                for o in ops
            ],
        )
    pids = {str(k): v for k, v in (status.get("pids") or {}).items()}
    reports = {str(w["id"]): w for w in m.get("workers") or []}
    if workers:
        lines.append("")
        lines += _table(
            ["worker", "pid", "last report", "saturated pipes"],
            [
                [
                    str(w),
                    str(pids.get(str(w), "-")),
                    f"{_ago(reports[str(w)]['last_report_age'])} ago" if str(w) in reports else "-",
                    str(reports.get(str(w), {}).get("saturated_pipes", "-")),
                ]
                for w in workers
            ],
        )
    return "\n".join(lines)


def progress_line(state: dict[str, Any]) -> str:
    """One line: phase, records/s, records read, event-time lag, last snapshot, workers."""
    status = state.get("status") or {}
    ops = state.get("operators") or []
    read = sum(o.get("records_out", 0) for o in ops if o.get("root"))
    lag = state.get("lag")
    last = state.get("last_snapshot")
    snap = f"v{last['version']} {_ago(last.get('age'))} ago" if last else "none"
    done = state.get("done")
    if done is not None and status.get("phase") == "finished":
        done = 1.0
    pct = f"{done * 100:.1f}% | " if done is not None else ""
    return (
        f"{status.get('phase', 'starting')} | {pct}{_num(state.get('throughput'))} rec/s | "
        f"{_num(read)} records read | lag {'-' if lag is None else f'{lag:.2f} s'} | "
        f"snapshot {snap} | {len(status.get('workers', []))} workers"
    )
