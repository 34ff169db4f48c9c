#!/usr/bin/env bash
# Install a built wheel into a fresh venv (with the test extra) and run the test suite against
# the installed package, from a directory where the source tree is not importable:
#
#   scripts/test_wheel.sh dist/fusedopt-<v>-<tags>.whl
#
# Two runs: the tests of the native library as the wheel ships it (WHEEL_TESTS: layout, dispatch,
# every kernel against the reference on every ISA the CPU has through the `isa` fixture, threads
# and the vendored libgomp beside torch's, fork/signals, low precision, 8-bit states, the torch
# front-end over the wheel's module) at the best ISA, then (x86-64) with
# FUSEDOPT_DISABLE_ISA=avx512,avx2 the tests of run-time dispatch and of the default (unforced)
# kernel path. The rest of the suite (Python logic: fuzzing, parity, distributed, checkpoints,
# benchmarks) ran in .ci/run's first stage over the same sources and compiler flags; the repaired
# wheel differs from that build by its grafted libgomp and RPATH, which these runs exercise
# (`scripts/test_wheel.sh WHEEL tests` runs the whole suite). The tests are copied to a temporary
# directory together with pyproject.toml, so pytest keeps the project's configuration
# (filterwarnings=error, --strict-markers, --import-mode=importlib) and nothing under python/ is on
# sys.path. Extra arguments after the wheel go to pytest in place of WHEEL_TESTS in the first run
# (`tests` for the whole suite; -x, -k ...) and before the file list in the second.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEEL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shift
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-wheel"

"$PYTHON" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${WHEEL}[test]"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/tests" "$WORK/tests"
cp "$ROOT/pyproject.toml" "$WORK/pyproject.toml"
find "$WORK/tests" -name __pycache__ -prune -exec rm -rf {} +
cd "$WORK"

# The package must come from the venv's site-packages, not from a source checkout.
"$VENV/bin/python" - <<'PY'
import sys, sysconfig, pathlib, fusedopt
where = pathlib.Path(fusedopt.__file__).resolve()
site = pathlib.Path(sysconfig.get_paths()["platlib"]).resolve()
assert site in where.parents, f"fusedopt imported from {where}, not from {site}"
print(f"testing fusedopt {fusedopt.__version__} installed at {where.parent}")
fusedopt.show_config()
PY

run_pytest() {
  # FUSEDOPT_TEST_INSTALLED_WHEEL: tests/test_wheel_layout.py checks the wheel's layout too.
  FUSEDOPT_TEST_INSTALLED_WHEEL=1 "$VENV/bin/python" -m pytest -p no:cacheprovider \
    -c "$WORK/pyproject.toml" --rootdir "$WORK" "$@"
}

WHEEL_TESTS=(tests/test_wheel_layout.py tests/test_dispatch.py tests/test_kernels_vs_reference.py
             tests/test_engine.py tests/test_functional_fast.py tests/test_threads.py
             tests/test_openmp_coexistence.py tests/test_reliability_runtime.py tests/test_concurrency.py
             tests/test_lowp.py tests/test_q8.py tests/test_split_calls.py tests/test_torch_tensors.py
             tests/test_torch_optim.py)

echo "--- pytest against the installed wheel (best ISA)"
if [ "$#" -gt 0 ]; then run_pytest "$@"; else run_pytest "${WHEEL_TESTS[@]}"; fi

case "$(uname -m)" in
  x86_64|AMD64|amd64)
    echo "--- pytest against the installed wheel, FUSEDOPT_DISABLE_ISA=avx512,avx2 (baseline SSE2)"
    FUSEDOPT_DISABLE_ISA=avx512,avx2 "$VENV/bin/python" -c \
      "import fusedopt._core as c; a = c.active_isa(); print('active ISA:', a); assert a == 'sse2', a"
    FUSEDOPT_DISABLE_ISA=avx512,avx2 run_pytest "$@" tests/test_dispatch.py tests/test_wheel_layout.py \
      tests/test_engine.py tests/test_functional_fast.py tests/test_kernels_vs_reference.py
    ;;
esac
