"""Log setup for the command line and worker processes: text or JSON lines, and every
record of a worker carries its job, worker id and the operator running at the time.

The format is chosen by ``--log-format`` (``text`` or ``json``); worker processes inherit it
through the ``MALSTROM_LOG_FORMAT`` environment variable.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from malstrom.observe import _user

__all__ = ["LOG_FORMATS", "setup_logging"]

LOG_FORMATS = ("text", "json")


class _Context(logging.Filter):
    """Adds ``job``, ``worker`` and ``operator`` (the one the worker loop runs now)."""

    def __init__(self, job: str | None, worker: int | None) -> None:
        super().__init__()
        self.job = job
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = self.job
        record.worker = self.worker
        record.operator = _user.CURRENT[0] or None
        return True


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
    handler.addFilter(_Context(job, worker))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif worker is not None:
        handler.setFormatter(
            logging.Formatter(
                f"[job {job} worker {worker}] %(levelname)s %(message)s"
                if job
                else f"[worker {worker}] %(levelname)s %(message)s"
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
