"""A job for CLI and multi-host tests: keyed running sums over a partitioned, throttled,
resumable source; exactly-once file outputs in $MALSTROM_TEST_OUT."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import mp_sums


def build(provider: Any) -> None:
    mp_sums.build(
        provider,
        workdir=os.environ["MALSTROM_TEST_OUT"],
        delay=float(os.environ.get("MALSTROM_TEST_DELAY", "0")),
    )
