#!/usr/bin/env bash
# Create .venv and install malstrom into it (editable). Idempotent: a second run with an
# unchanged pyproject.toml installs nothing.
#
#   bash scripts/setup.sh                  the library and the development toolchain (tests)
#   bash scripts/setup.sh --lib            the library only (what the demo needs)
#   bash scripts/setup.sh --lib --extras objectstore,kafka    the library with extras
#
# The container image (Dockerfile) installs with this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=dev
extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) kind=dev ;;
    --lib) kind=lib ;;
    --extras) extras="${2:?--extras needs a comma-separated list}"; shift ;;
    --extras=*) extras="${1#*=}" ;;
    *) echo "usage: scripts/setup.sh [--dev | --lib] [--extras a,b]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$kind" = dev ]; then
  extras="dev${extras:+,$extras}"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "malstrom setup: creating .venv with $("$PY" --version 2>&1)" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi

# What was installed, and from which build inputs: skip the install when it is current.
# The development install includes the library, so it also satisfies a --lib request.
# setup.py and the C sources count too: a change there must rebuild the extension
# (the editable install picks up Python changes by itself, not compiled ones).
build_inputs=(pyproject.toml)
for f in setup.py src/malstrom/keyed/_croute.c src/malstrom/engine/_cpack.c; do
  [ -f "$f" ] && build_inputs+=("$f")
done
digest=$(cat "${build_inputs[@]}" | sha256sum | cut -c1-16)
stamp_dir=.venv/.malstrom-setup
stamp="$stamp_dir/installed${extras:+-$extras}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
  exit 0
fi
if [ "$kind" = lib ] && [ -z "$extras" ] && [ -f "$stamp_dir/installed-dev" ] \
    && [ "$(cat "$stamp_dir/installed-dev")" = "$digest" ]; then
  exit 0
fi

if [ "$kind" = dev ]; then
  what="the library and the development toolchain (pytest, ruff, mypy, test servers)"
else
  what="the library${extras:+ with extras $extras}"
fi
echo "malstrom setup: installing $what into .venv ..." >&2
start=$SECONDS
# pip's progress (one line per package) goes to stderr, so `demo.sh > out` keeps only the
# demo's output; the whole log stays in .venv for when something fails.
mkdir -p "$stamp_dir"
# The editable install builds the C extensions (router, record packing) into src/ (optional: skipped without a compiler).
# Drop the last build first, so a failed rebuild falls back to Python instead of leaving an
# extension built from older source.
rm -f src/malstrom/keyed/_croute.*.so src/malstrom/engine/_cpack.*.so
set +e
.venv/bin/python -m pip install --progress-bar off -e "$spec" 2>&1 | tee "$stamp_dir/pip.log" \
  | grep --line-buffered -E '^ *(Collecting|Downloading|Installing|Successfully)' >&2
code=${PIPESTATUS[0]}
set -e
if [ "$code" -ne 0 ]; then
  tail -n 25 "$stamp_dir/pip.log" >&2
  echo "malstrom setup: pip install -e '$spec' failed (log: $stamp_dir/pip.log)" >&2
  exit 1
fi
echo "$digest" > "$stamp"
echo "malstrom setup: done in $((SECONDS - start)) s" >&2
