#!/usr/bin/env bash
# The whole test suite, as CI runs it: install (library + development toolchain), lint,
# type-check, test. Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the
# soak tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# The multi-host tests build network namespaces with iproute2 (they need root).
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
fi
echo "== ruff"; .venv/bin/ruff check src tests examples bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"
