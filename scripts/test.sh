#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, lint, type-check, test.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the soak tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests examples bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"
