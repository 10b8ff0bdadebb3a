"""Log setup for the command line and worker processes: text or JSON lines, and every
record of a worker carries its job, worker id and the operator running at the time.

The format is chosen by ``--log-format`` (``text`` or ``json``); worker processes inherit it
through the ``MALSTROM_LOG_FORMAT`` environment variable. In text, a worker's lines start
with ``[job J worker W operator O]`` (what is known: a worker started by hand learns its id
when it joins); in JSON they have ``job``, ``worker`` and ``operator`` fields. The operator
is the one the worker's loop thread runs (``CURRENT``): lines logged by other threads of the
process (the network's) name none.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from malstrom.observe import _user

__all__ = ["LOG_FORMATS", "set_log_context", "setup_logging"]

LOG_FORMATS = ("text", "json")


class _Context(logging.Filter):
    """Adds ``job``, ``worker`` and ``operator`` (the one the worker loop runs now), and
    ``context``: the same as a ``[job J worker W operator O] `` prefix for text lines."""

    def __init__(self, job: str | None, worker: int | None) -> None:
        super().__init__()
        self.job = job
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = self.job
        record.worker = self.worker
        op = _user.CURRENT[0] if record.thread == _user.LOOP_THREAD[0] else ""
        record.operator = op or None
        parts = []
        if self.job:
            parts.append(f"job {self.job}")
        if self.worker is not None:
            parts.append(f"worker {self.worker}")
        if op:
            parts.append(f"operator {op}")
        record.context = f"[{' '.join(parts)}] " if parts else ""
        return True


_context = _Context(None, None)


def set_log_context(job: str | None = None, worker: int | None = None) -> None:
    """Name the job and worker in this process's log lines from now on (a worker learns its
    id when it joins the coordinator)."""
    if job is not None:
        _context.job = job
    if worker is not None:
        _context.worker = worker


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, job/worker/operator, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job", "worker", "operator"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(
    level: int,
    log_format: str | None = None,
    *,
    job: str | None = None,
    worker: int | None = None,
) -> None:
    """Configure the root logger (replacing its handlers) for this process."""
    fmt = log_format or os.environ.get("MALSTROM_LOG_FORMAT") or "text"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(LOG_FORMATS)}")
    os.environ["MALSTROM_LOG_FORMAT"] = fmt  # worker processes log alike
    handler = logging.StreamHandler()
    _context.job, _context.worker = job, worker
    handler.addFilter(_context)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif worker is not None:  # a worker process of MultiProcessRuntime: short lines
        handler.setFormatter(logging.Formatter("%(context)s%(levelname)s %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(name)s %(levelname)s %(context)s%(message)s")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
