#!/usr/bin/env bash
# Valgrind memcheck smoke run: every kernel (every algorithm and state layout, float32/float64,
# each ISA valgrind's virtual CPU reports, 1 and 2 threads, SIMD bodies and scalar tails, multi-
# tensor lists, the optimizer classes, the FlatParams arena) plus the error paths of the bindings,
# once each, under `valgrind --tool=memcheck`.
#
#   scripts/valgrind_smoke.sh [python]     # default: the venv's python, else python3
#
# Uses the *installed* fusedopt of that interpreter. Fails (exit 1) if memcheck reports any error
# whose stack passes through fusedopt's extension (_core*.so), or if the script itself fails.
# Errors elsewhere (CPython, NumPy, libc start-up noise) are counted and printed, not fatal.
# Valgrind does not emulate AVX-512: its virtual CPU reports at most AVX2, so the avx512 kernels
# are covered by scripts/sanitize.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${1:-}
if [ -z "$PY" ]; then
  if [ -x .venv-ci/bin/python ]; then PY=.venv-ci/bin/python; else PY=python3; fi
fi
command -v valgrind >/dev/null || { echo "valgrind_smoke.sh: valgrind not installed (apt-get install valgrind)" >&2; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/smoke.py" <<'PY'
import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt import functional as F
from fusedopt import reference as R

isas = list(_core.supported_isas())
print("valgrind smoke: supported ISAs", isas, "openmp", bool(_core.openmp_enabled))
rng = np.random.default_rng(0)
SIZES = [1, 7, 33, 1000]  # tails of every vector width, and a body


def arrays(dtype, k, n):
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


CALLS = {
    "sgd": (lambda p, g, s, th: F.sgd(p, g, lr=0.1, weight_decay=0.01, maximize=True, threads=th), 0),
    "sgd-momentum": (lambda p, g, s, th: F.sgd(p, g, s[0], lr=0.1, momentum=0.9, nesterov=True, threads=th), 1),
    "sgd-first": (lambda p, g, s, th: F.sgd(p, g, s[0], lr=0.1, momentum=0.9, dampening=0.1, first_step=True, threads=th), 1),
    "momentum": (lambda p, g, s, th: F.momentum(p, g, s[0], step=3, lr=0.1, bias_correction=True, weight_decay=0.1, threads=th), 1),
    "rmsprop": (lambda p, g, s, th: F.rmsprop(p, g, [abs(x) for x in s[0]], lr=0.01, threads=th), 1),
    "rmsprop-centered-momentum": (lambda p, g, s, th: F.rmsprop(p, g, [abs(x) for x in s[0]], s[1], s[2], lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, maximize=True, threads=th), 3),
    "adam": (lambda p, g, s, th: F.adam(p, g, s[0], [abs(x) for x in s[1]], step=2, lr=0.01, weight_decay=0.1, threads=th), 2),
    "adam-amsgrad": (lambda p, g, s, th: F.adam(p, g, s[0], [abs(x) for x in s[1]], [abs(x) for x in s[2]], step=2, amsgrad=True, maximize=True, threads=th), 3),
    "adamw": (lambda p, g, s, th: F.adamw(p, g, s[0], [abs(x) for x in s[1]], step=5, threads=th), 2),
    "adagrad": (lambda p, g, s, th: F.adagrad(p, g, [abs(x) for x in s[0]], step=4, lr_decay=0.1, weight_decay=0.1, threads=th), 1),
}

n_calls = 0
for isa in isas:
    _core._force_isa(isa)
    for dtype in (np.float32, np.float64):
        for name, (call, n_state) in CALLS.items():
            for th in (1, 2):
                params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
                grads = [rng.standard_normal(n).astype(dtype) for n in SIZES]
                states = [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(n_state)]
                call(params, grads, states, th)
                n_calls += 1
_core._force_isa(None)

# optimizer classes, the arena, state dicts
for cls, kw in [(fusedopt.SGD, dict(lr=0.1, momentum=0.9)), (fusedopt.Momentum, dict(lr=0.1)),
                (fusedopt.RMSprop, dict(centered=True, momentum=0.9)), (fusedopt.Adam, dict(amsgrad=True)),
                (fusedopt.AdamW, {}), (fusedopt.Adagrad, dict(initial_accumulator_value=0.1))]:
    ps = arrays(np.float32, 3, 257)
    opt = cls(ps, **kw)
    for _ in range(3):  # the first step is general, the others run on the native Plan
        opt.step([rng.standard_normal(257).astype(np.float32) for _ in range(3)])
    for key, value in list(opt.state[0].items()):  # replaced arrays: the Plan falls back
        if isinstance(value, np.ndarray):
            opt.state[0][key] = value.copy()
    opt.step([rng.standard_normal(257).astype(np.float32) for _ in range(3)])
    opt.load_state_dict(opt.state_dict())
    arena = fusedopt.FlatParams(arrays(np.float64, 4, 100))
    aopt = cls(arena, **kw)
    arena.flat_grad[...] = 1.0
    aopt.step()
    n_calls += 5

# error paths of the bindings (exceptions thrown from C++ while arrays are held)
p = np.ones(10, np.float32)
bad = [
    lambda: F.adam([p, np.ones(10, np.float32)], [p.copy()], [p.copy()], [p.copy()], step=1),
    lambda: F.adam(p, p.astype(np.float64), p.copy(), p.copy(), step=1),
    lambda: F.adam(p, p[::-1], p.copy(), p.copy(), step=1),
    lambda: F.adam(p, p, p.copy(), p.copy(), step=1),
    lambda: F.sgd([p, p], [p.copy(), p.copy()], lr=0.1),
    lambda: F.sgd(p, np.ones(11, np.float32), lr=0.1),
    lambda: F.sgd(p, [1.0] * 10, lr=0.1),
    lambda: F.sgd(p, np.ones(10, np.float32), lr=0.1, threads=0),
]
for f in bad:
    try:
        f()
    except (TypeError, ValueError):
        n_calls += 1
    else:
        raise SystemExit("an invalid call was accepted")
print("valgrind smoke: calls", n_calls, "ok")
PY

mkdir -p build
LOG=build/valgrind-memcheck.log
echo "== valgrind memcheck: $PY $WORK/smoke.py"
set +e
PYTHONMALLOC=malloc OMP_NUM_THREADS=2 valgrind --tool=memcheck --leak-check=no --track-origins=yes \
  --num-callers=30 --error-limit=no --log-file="$LOG" "$PY" "$WORK/smoke.py"
rc=$?
set -e
total=$(grep -E "ERROR SUMMARY" "$LOG" | tail -1)
echo "memcheck: $total"
# Error records are blocks of '==pid== ' lines separated by empty '==pid== ' lines.
# An error of ours has a frame in the extension: "(in .../fusedopt/_core.cpython-*.so)" without
# debug info, fusedopt:: symbols or cpp/ sources with it.
OURS='_core\.cpython|fusedopt::|/cpp/(kernels|bindings|dispatch|common)/|(kernels|adam|sgd|rmsprop|adagrad|momentum)\.inl|arrays\.cpp'
ours=$(awk -v re="$OURS" '/^==[0-9]+== $/ { if (blk ~ re) n++; blk=""; next }
            { blk = blk "\n" $0 }
            END { print n + 0 }' "$LOG")
echo "memcheck errors in fusedopt code: $ours (full log: $LOG)"
if [ "$ours" != "0" ]; then
  awk -v re="$OURS" '/^==[0-9]+== $/ { if (blk ~ re) print blk; blk=""; next }
       { blk = blk "\n" $0 }' "$LOG" | head -200
  exit 1
fi
if [ "$rc" != "0" ]; then
  tail -40 "$LOG"
  echo "valgrind_smoke.sh: the smoke script failed (exit $rc)" >&2
  exit 1
fi
echo "== valgrind smoke clean"
