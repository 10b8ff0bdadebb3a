#!/usr/bin/env bash
# The whole test suite, as CI runs it: install (library + development toolchain), lint,
# type-check, test. Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the
# soak tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Debian packages the tests need: iproute2 (the multi-host tests build network namespaces,
# as root), the PostgreSQL server (the PostgresSink tests start a throw-away server) and
# chromium (the dashboard test).
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  || need+=(postgresql)
# Chromium: the dashboard test opens the page in a real (headless) browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== apt-get install ${need[*]}"
  log=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi
echo "== ruff"; .venv/bin/ruff check src tests examples bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"
