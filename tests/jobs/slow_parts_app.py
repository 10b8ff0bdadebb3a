"""``slow_parts`` as an APP for the command line: parts of $SLOW_COUNT records, 1 ms per poll,
output in $MALSTROM_TEST_OUT, source batches of at most $SLOW_MAX_BATCH records."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import slow_parts


def build(provider: Any) -> None:
    limit = os.environ.get("SLOW_MAX_BATCH")
    slow_parts.build(
        provider,
        workdir=os.environ["MALSTROM_TEST_OUT"],
        count=int(os.environ["SLOW_COUNT"]),
        max_batch=int(limit) if limit else None,
    )
