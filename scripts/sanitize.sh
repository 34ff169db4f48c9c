#!/usr/bin/env bash
# Build fusedopt with AddressSanitizer + UndefinedBehaviorSanitizer into a separate venv and run
# the test suite under it. Exits non-zero on any sanitizer report (UBSan halts on the first
# error: -fno-sanitize-recover) or any test failure.
#
#   scripts/sanitize.sh                 # build (incremental in build/asan) + whole suite
#   scripts/sanitize.sh tests/test_fuzz.py -x   # extra args go to pytest instead of the default set
#
# Environment:
#   ASAN_VENV   venv to (re)use (default: build/asan-venv). Created if missing.
#   PYTHON      interpreter for the venv (default: python3).
#
# Notes
# - GCC only (libasan is LD_PRELOADed into an uninstrumented CPython, which must load it first).
# - detect_leaks=0: CPython and NumPy keep allocations alive until exit by design; leak reports
#   would be noise. Use-after-free, overflows (heap/stack/global), double free and UB all abort.
# - torch is not installed in the sanitizer venv: a libasan-preloaded process importing torch's
#   bundled libraries is slow and its own reports are not ours. Tests needing torch skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${ASAN_VENV:-build/asan-venv}
BUILD_DIR=build/asan

if ! command -v gcc >/dev/null || ! command -v g++ >/dev/null; then
  echo "sanitize.sh: needs gcc/g++" >&2
  exit 2
fi
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = libasan.so ]; then
  echo "sanitize.sh: libasan.so not found (install gcc's libasan)" >&2
  exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "scikit-build-core>=0.11" "pybind11>=3.0" "numpy>=1.23" \
  "pytest>=7" "hypothesis>=6" "threadpoolctl>=3.1"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "== building fusedopt with $SAN into $VENV (build dir $BUILD_DIR)"
CC=gcc CXX=g++ "$VENV/bin/python" -m pip install --quiet --no-build-isolation --force-reinstall --no-deps \
  -Cbuild-dir="$BUILD_DIR" \
  -Ccmake.build-type=RelWithDebInfo \
  -Ccmake.define.CMAKE_CXX_FLAGS="$SAN" \
  -Ccmake.define.CMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Ccmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Ccmake.define.FUSEDOPT_WERROR=OFF \
  .

# The extension must really be instrumented (else the run below proves nothing).
CORE=$("$VENV/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("fusedopt")
d = os.path.dirname(spec.origin)
print(next(os.path.join(d, f) for f in os.listdir(d) if f.startswith("_core") and f.endswith(".so")))
PY
)
# (nm into a variable first: `nm | grep -q` fails under pipefail when grep exits early.)
SYMS=$(nm -D "$CORE")
for sym in __asan_init __ubsan_handle; do
  if ! grep -q "$sym" <<<"$SYMS"; then
    echo "sanitize.sh: $CORE is not instrumented ($sym missing)" >&2
    exit 1
  fi
done

export LD_PRELOAD="$LIBASAN:$LIBUBSAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc   # route Python's small objects through ASan's allocator too
export PYTHONFAULTHANDLER=1
# The run must exercise the multi-threaded kernels even on a 1-CPU runner.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [ "$#" -gt 0 ]; then
  ARGS=("$@")
else
  # The whole suite, less what does not apply to an instrumented build: tests/test_build.py
  # disassembles the release kernel objects (ASan adds calls and symbols to them), and the
  # qemu-emulated-CPU import test cannot run an ASan process (shadow memory under qemu-user).
  # The slow marker is excluded for CI time; the opt-in large test skips itself.
  ARGS=(-q -p no:cacheprovider -m "not slow" tests
        --ignore=tests/test_build.py
        --deselect tests/test_wheel_layout.py::test_imports_and_runs_on_an_emulated_cpu)
fi

echo "== pytest ${ARGS[*]} (LD_PRELOAD=$LD_PRELOAD)"
start=$(date +%s)
"$VENV/bin/python" -c "import fusedopt; fusedopt.show_config()"
"$VENV/bin/python" -m pytest "${ARGS[@]}"
# Every ISA the CPU supports ran above (the `isa` fixture forces each one, SSE2 included); the
# fuzz tests also run with the baseline selected at import (the unforced dispatch path).
FUSEDOPT_DISABLE_ISA=avx512,avx2 "$VENV/bin/python" -m pytest -q -p no:cacheprovider -x tests/test_fuzz.py
echo "== sanitizer run clean ($(( $(date +%s) - start )) s of tests)"
