#!/usr/bin/env bash
# Set up the virtualenv with the library (not the development toolchain) if needed, and run
# the main demo job: a resumable word count with local-disk snapshots. Run it twice to see it
# resume; pass --fresh to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --lib
exec .venv/bin/python examples/wordcount.py "$@"
