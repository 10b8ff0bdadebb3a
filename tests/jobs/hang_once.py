"""A job whose user code hangs forever once (a marker file records it), for heartbeat tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from jobs import mp_sums


def build(provider: Any, workdir: str) -> None:
    marker = Path(workdir) / "hung-once"

    def maybe_hang(v: int) -> int:
        if v == 7_777 and not marker.exists():
            marker.write_text(str(os.getpid()))
            while True:  # an infinite loop in user code: the worker never turns again
                time.sleep(1)
        return v

    mp_sums.build(provider, workdir=workdir, delay=0.005, pre=maybe_hang)
