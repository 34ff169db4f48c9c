#!/usr/bin/env bash
# ruff (pyproject [tool.ruff]) on the whole repository and mypy --strict on python/fusedopt
# (pyproject [tool.mypy]), in a scratch venv (.venv-lint/) holding the `lint` dependency group.
# Nothing is built: mypy reads python/fusedopt/_core.pyi for the compiled module.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-lint"
cd "$ROOT"
if [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/mypy" ]; then
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --group lint
fi
status=0
echo "--- ruff check"
"$VENV/bin/ruff" check . || status=1
echo "--- mypy (strict) on python/fusedopt"
"$VENV/bin/mypy" || status=1
exit "$status"
