"""64-bit sizes: one step over a float32 buffer of more than 2**31 elements (opt-in).

Run with ``FUSEDOPT_TEST_LARGE=1`` (not in default CI: it needs ~9 GB of free memory and a few
seconds per pass). SGD with weight decay and no momentum is the lightest algorithm that changes
every element: the parameters are the only large array that is written. The gradients are a
``np.zeros`` buffer of the same size of which only a few pages are ever written, so the rest stays
mapped to the kernel's shared zero page and costs no memory.

Checks, bitwise against fusedopt.reference on copies: elements at both ends, around 2**31 - 1 /
2**31 (a 32-bit index would wrap there) and at the very end, for one tensor alone and for a
multi-tensor call [small, huge, small] (offsets summed over tensors in 64 bits), single- and
multi-threaded; plus a sample every 2**20 elements proving the whole range was updated once.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from fusedopt import functional as F
from fusedopt import reference as R

pytestmark = pytest.mark.skipif(
    os.environ.get("FUSEDOPT_TEST_LARGE") != "1", reason="opt-in: set FUSEDOPT_TEST_LARGE=1 (needs ~9 GB of memory)"
)

N = (1 << 31) + (1 << 20) + 7  # past 2**31, odd tail
LR, WD = 0.25, 0.5


def _mem_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: try


def _check_indices(n: int) -> np.ndarray:
    edge = [0, 1, 2, 3, 15, 16, 17]
    mid = [(1 << 31) + d for d in range(-9, 10)] + [(1 << 30) - 1, 1 << 30]
    end = [n - 1 - d for d in range(0, 20)]
    return np.array(sorted({i for i in edge + mid + end if 0 <= i < n}), dtype=np.int64)


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    need = N * 4 + (1 << 30)
    if _mem_available() < need:
        pytest.skip(f"needs ~{need / 2**30:.1f} GiB of available memory")
    return np.empty(N, dtype=np.float32)


@pytest.mark.parametrize("threads", [None, 1], ids=["threads=default", "threads=1"])
def test_sgd_step_past_2_pow_31(big: np.ndarray, threads: object) -> None:
    p = big
    p.fill(1.0)
    g = np.zeros(N, dtype=np.float32)  # untouched pages: the shared zero page
    idx = _check_indices(N)
    rng = np.random.default_rng(0)
    p[idx] = rng.standard_normal(idx.size).astype(np.float32)
    g[idx] = rng.standard_normal(idx.size).astype(np.float32)
    want_p, want_g = p[idx].copy(), g[idx].copy()
    R.sgd(want_p, want_g, lr=LR, weight_decay=WD)
    ones, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    R.sgd(ones, zero, lr=LR, weight_decay=WD)  # every other element: 1 -> 1 - lr*wd*1

    F.sgd(p, g, lr=LR, weight_decay=WD, threads=threads)  # type: ignore[arg-type]

    got = p[idx]
    assert got.tobytes() == want_p.tobytes(), [
        (int(i), float(a), float(b)) for i, a, b in zip(idx, got, want_p) if a != b
    ][:10]
    sample = p[:: 1 << 20].copy()
    sample_idx = np.arange(0, N, 1 << 20)
    mask = ~np.isin(sample_idx, idx)
    assert (sample[mask] == ones[0]).all(), "some elements were not updated exactly once"
    assert float(p[-1]) == float(want_p[-1])


def test_multi_tensor_call_past_2_pow_31(big: np.ndarray) -> None:
    """[small, huge, small] in one call: the huge tensor's elements past 2**31 and the tensor after it."""
    p = big
    p.fill(2.0)
    g = np.zeros(N, dtype=np.float32)
    rng = np.random.default_rng(1)
    idx = _check_indices(N)
    p[idx] = rng.standard_normal(idx.size).astype(np.float32)
    g[idx] = rng.standard_normal(idx.size).astype(np.float32)
    small = [rng.standard_normal(1000).astype(np.float32) for _ in range(2)]
    small_g = [rng.standard_normal(1000).astype(np.float32) for _ in range(2)]
    want_small = [s.copy() for s in small]
    for s, sg in zip(want_small, small_g):
        R.sgd(s, sg, lr=LR, weight_decay=WD)
    want_p = p[idx].copy()
    R.sgd(want_p, g[idx].copy(), lr=LR, weight_decay=WD)

    F.sgd([small[0], p, small[1]], [small_g[0], g, small_g[1]], lr=LR, weight_decay=WD)

    assert p[idx].tobytes() == want_p.tobytes()
    for s, w in zip(small, want_small):
        assert s.tobytes() == w.tobytes()
    two = np.full(1, 2.0, np.float32)
    R.sgd(two, np.zeros(1, np.float32), lr=LR, weight_decay=WD)
    sample_idx = np.arange(0, N, 1 << 20)
    mask = ~np.isin(sample_idx, idx)
    assert (p[:: 1 << 20][mask] == two[0]).all()
