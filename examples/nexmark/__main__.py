"""Run one Nexmark query and print its results.

    cd examples
    python -m nexmark q5                          # 100,000 events on SingleThreadRuntime
    python -m nexmark q3 --events 20000 --seed 1  # other events
    python -m nexmark q8 --workers 2              # MultiProcessRuntime(parallelism=2)

Results are printed as records (``StdOutSink``, one per worker process).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from functools import partial

from malstrom import MultiProcessRuntime, SingleThreadRuntime

from .generator import GeneratorConfig

QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nexmark", description=__doc__.split("\n")[0])
    ap.add_argument("query", choices=QUERIES)
    ap.add_argument("--events", type=int, default=100_000, help="events to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second of event time")
    ap.add_argument("--parts", type=int, default=0, help="source parts (default: 2 * workers)")
    ap.add_argument("--workers", type=int, default=0, help="worker processes (0: one thread)")
    args = ap.parse_args(argv)
    module = importlib.import_module(f"nexmark.{args.query}")
    config = GeneratorConfig(seed=args.seed, max_events=args.events, events_per_second=args.rate)
    parts = args.parts or max(1, 2 * args.workers)
    build = partial(module.build, config=config, parts=parts)
    if args.workers:
        MultiProcessRuntime(build, parallelism=args.workers).execute()
    else:
        SingleThreadRuntime(build).execute()
    return 0


if __name__ == "__main__":
    sys.exit(main())
