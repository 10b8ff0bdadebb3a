"""The progress of ``malstrom run``: a line rewritten in place on a terminal, a log line
every so often otherwise."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import IO, Any

from malstrom.observe._status import progress_line

__all__ = ["start_progress"]

log = logging.getLogger("malstrom.progress")


def start_progress(
    state: Callable[[], dict[str, Any]],
    done: threading.Event,
    stream: IO[str],
    *,
    tty: bool,
    interval: float | None = None,
) -> threading.Thread:
    """Report ``state()`` until ``done`` is set, on a daemon thread (returned)."""
    every = interval if interval is not None else (0.5 if tty else 10.0)
    log.setLevel(logging.INFO)  # shown at the default (warning) level of the command line

    def run() -> None:
        width = 0
        while not done.wait(every):
            try:
                line = progress_line(state())
            except Exception:  # a report must never take the job down
                continue
            if tty:
                stream.write("\r" + line.ljust(width))
                stream.flush()
                width = len(line)
            else:
                log.info("progress: %s", line)
        if tty and width:
            stream.write("\r" + " " * width + "\r")
            stream.flush()

    t = threading.Thread(target=run, name="malstrom-progress", daemon=True)
    t.start()
    return t
