"""A job for CLI and multi-host tests: keyed running sums over a partitioned, throttled,
resumable source; exactly-once file outputs in $MALSTROM_TEST_OUT.

$MALSTROM_TEST_DELAY slows the source (seconds per poll); $MALSTROM_TEST_BUILD_DELAY makes
building the graph take that many seconds (a slow import or connection setup);
$MALSTROM_TEST_GC_EVERY=N runs a full garbage collection every N records (as allocation-heavy
user code does now and then), so objects dropped earlier are finalized at once."""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import mp_sums


def build(provider: Any) -> None:
    time.sleep(float(os.environ.get("MALSTROM_TEST_BUILD_DELAY", "0")))
    every = int(os.environ.get("MALSTROM_TEST_GC_EVERY", "0"))
    pre = None
    if every:
        counter = itertools.count(1)

        def pre(v: int) -> int:
            if next(counter) % every == 0:
                gc.collect()
            return v

    mp_sums.build(
        provider,
        workdir=os.environ["MALSTROM_TEST_OUT"],
        delay=float(os.environ.get("MALSTROM_TEST_DELAY", "0")),
        pre=pre,
    )
