"""One benchmark entry per public kernel and flag set: correctness against the reference, then timing.

    python benchmarks/bench_steps.py             # table: µs/step, GB/s, speedup over fusedopt.reference
    python -m pytest benchmarks/bench_steps.py   # the same cases as tests (add -s to see the timings)

Every case first makes one step with :mod:`fusedopt.functional` (threads=None) and with
:mod:`fusedopt.reference` on a copy, and requires every written array to match **bitwise** (the
grad unchanged), so a timing is never reported for a wrong result. It then times the kernel (median
of a few samples of >= 1 ms) and the reference (one step). ``test_every_public_kernel_has_an_entry``
fails when a function of ``fusedopt.functional.__all__`` has no entry here (NumPy's
``bench_ufunc.py`` coverage idea). Not in the default test run (``testpaths = ["tests"]``).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import pytest

from fusedopt import functional, reference

SIZES = [1 << 10, 1 << 16, 1 << 20]
DTYPES = [np.float32, np.float64]

# initial values of a state array: "m" ~ 0.1 N(0,1) (first moments, buffers), "avg" ~ 0.01 N(0,1)
# (centered RMSprop's grad average: keeps v - avg^2 > 0), "sq" = 0.1|N(0,1)| + 0.01 (squares)
_INIT = {
    "m": lambda x: 0.1 * x,
    "avg": lambda x: 0.01 * x,
    "sq": lambda x: 0.1 * np.abs(x) + 0.01,
}


class Entry(NamedTuple):
    kernel: str  # name in fusedopt.functional / fusedopt.reference
    variant: str  # readable id of the flag set
    state: Tuple[str, ...]  # init kind of each state array, in positional order
    kwargs: Dict[str, Any]  # hyperparameters (and step), identical for both sides


ENTRIES: List[Entry] = [
    Entry("sgd", "momentum", ("m",), {"lr": 1e-2, "momentum": 0.9}),
    Entry("sgd", "nesterov-wd", ("m",), {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    Entry("momentum", "default", ("m",), {"step": 10, "lr": 1e-2}),
    Entry("momentum", "biascorr-wd", ("m",), {"step": 3, "lr": 1e-2, "bias_correction": True, "weight_decay": 1e-4}),
    Entry("rmsprop", "default", ("sq",), {"lr": 1e-2}),
    Entry("rmsprop", "centered-momentum", ("sq", "avg", "m"), {"lr": 1e-2, "centered": True, "momentum": 0.9}),
    Entry("adam", "default", ("m", "sq"), {"step": 10}),
    Entry("adam", "amsgrad-wd-max", ("m", "sq", "sq"), {"step": 10, "amsgrad": True, "weight_decay": 1e-4, "maximize": True}),
    Entry("adamw", "default", ("m", "sq"), {"step": 10}),
    Entry("adagrad", "default", ("sq",), {"step": 10}),
    Entry("adagrad", "lrdecay-wd", ("sq",), {"step": 10, "lr_decay": 1e-3, "weight_decay": 1e-4}),
]  # fmt: skip


def _arrays(entry: Entry, n: int, dtype: Any, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)]
    out += [_INIT[kind](rng.standard_normal(n)).astype(dtype) for kind in entry.state]
    return out


def bytes_per_step(entry: Entry, n: int, dtype: Any) -> int:
    """Read param, grad and every state array; write param and every state array."""
    return (2 + 2 * len(entry.state) + 1) * n * np.dtype(dtype).itemsize


def check(entry: Entry, arrays: List[np.ndarray]) -> None:
    """One kernel step on ``arrays`` against the reference on a copy: bitwise, grad untouched."""
    want = [a.copy() for a in arrays]
    getattr(functional, entry.kernel)(*arrays, **entry.kwargs)
    getattr(reference, entry.kernel)(*want, **entry.kwargs)
    names = ["param", "grad"] + [f"state[{i}]" for i in range(len(entry.state))]
    for name, got, ref in zip(names, arrays, want):
        assert got.dtype == ref.dtype
        assert np.array_equal(got, ref, equal_nan=True), (
            f"{entry.kernel}[{entry.variant}] {got.dtype} n={got.size}: {name} differs from the reference "
            f"in {int(np.count_nonzero(got != ref))} elements"
        )


def _median_per_call(fn: Callable[[], None], min_seconds: float = 1e-3, samples: int = 5) -> float:
    k = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        if time.perf_counter() - t0 >= min_seconds or k >= 1 << 16:
            break
        k *= 4
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times)


def measure(entry: Entry, n: int, dtype: Any) -> Dict[str, float]:
    """Check once, then time the kernel and the reference on the same (live) arrays."""
    arrays = _arrays(entry, n, dtype)
    check(entry, arrays)
    kern = getattr(functional, entry.kernel)
    ref = getattr(reference, entry.kernel)
    t_kernel = _median_per_call(lambda: kern(*arrays, **entry.kwargs))
    t0 = time.perf_counter()
    ref(*arrays, **entry.kwargs)
    t_ref = time.perf_counter() - t0
    return {
        "us": t_kernel * 1e6,
        "gbps": bytes_per_step(entry, n, dtype) / t_kernel / 1e9,
        "ref_us": t_ref * 1e6,
        "speedup": t_ref / t_kernel,
    }


def _id(e: Entry) -> str:
    return f"{e.kernel}-{e.variant}"


# ---------------------------------------------------------------------------------------- pytest


def test_every_public_kernel_has_an_entry() -> None:
    covered = {e.kernel for e in ENTRIES}
    missing = sorted(set(functional.__all__) - covered)
    assert not missing, f"public kernels without a benchmark entry in benchmarks/bench_steps.py: {missing}"
    stale = sorted(covered - set(functional.__all__))
    assert not stale, f"entries for names that are not in fusedopt.functional.__all__: {stale}"


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_step(entry: Entry, dtype: Any, n: int) -> None:
    r = measure(entry, n, dtype)
    assert r["us"] > 0 and np.isfinite(r["us"])
    print(f"{_id(entry)} {np.dtype(dtype).name} n={n}: {r['us']:.2f} µs, {r['gbps']:.1f} GB/s, "
          f"{r['speedup']:.1f}x the reference")  # fmt: skip


# ---------------------------------------------------------------------------------------- script


def main() -> int:
    missing = sorted(set(functional.__all__) - {e.kernel for e in ENTRIES})
    if missing:
        print(f"public kernels without an entry: {missing}", file=sys.stderr)
        return 1
    print(f"{'kernel':<28} {'dtype':<8} {'n':>8} {'µs/step':>10} {'GB/s':>7} {'reference µs':>13} {'x ref':>7}")
    for entry in ENTRIES:
        for dtype in DTYPES:
            for n in SIZES:
                r = measure(entry, n, dtype)
                print(f"{_id(entry):<28} {np.dtype(dtype).name:<8} {n:>8} {r['us']:>10.2f} {r['gbps']:>7.1f} "
                      f"{r['ref_us']:>13.1f} {r['speedup']:>6.1f}x", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
