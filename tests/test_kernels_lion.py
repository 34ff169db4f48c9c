"""The Lion kernel (``_core.lion``, cpp/kernels/lion.inl) against its specification,
:func:`fusedopt.reference.lion`, bitwise.

Every supported ISA x float32/float64 x threads 1, 2, 4 runs multi-step trajectories over edge
sizes (SIMD widths and their neighbours, thread-split boundaries, large odd sizes) with weight
decay, maximize, the gradient pre-processing, a learning-rate schedule with a zero step, zero
gradients (c == 0: the element does not move), signed zeros in the parameters, and NaN/Inf
gradients. After every step the parameter and exp_avg must be bit-for-bit equal (any NaN equals
any NaN; +0.0 differs from -0.0), the gradient unchanged and the memory around every array
untouched. The call goes straight to the compiled binding with the scalars of
:func:`fusedopt._scalars.lion_scalars`, as the functional layer does.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from fusedopt import _core, _scalars, reference

SIZES = [0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 1000, 16383, 16385, 100003]
THREADS = [1, 2, 4]
N_STEPS = 8
GUARD = 16

CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"weight_decay": 0.5, "maximize": True, "beta1": 0.5, "beta2": 0.9},
    {"grad_scale": 1024.0, "clip_coef": 0.5, "clip_value": 0.3, "weight_decay": 0.01},
]


def _id(c: Dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items()) or "defaults"


def kernel_lion(
    params: List[np.ndarray], grads: List[np.ndarray], exp_avgs: List[np.ndarray], *, lr: float, threads: int,
    beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0, maximize: bool = False,
    grad_scale: Optional[float] = None, clip_coef: Optional[float] = None, clip_value: Optional[float] = None,
) -> None:  # fmt: skip
    """One step through the compiled binding, called as the functional layer calls it."""
    s = _scalars.lion_scalars(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay)
    gs = _scalars.GradScalars(
        1.0 if grad_scale is None else grad_scale,
        1.0 if clip_coef is None else clip_coef,
        math.inf if clip_value is None else clip_value,
    )
    _core.lion(params, grads, exp_avgs, *s, *gs, maximize, threads)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Bitwise equal, except that any NaN equals any NaN."""
    same = (_bits(actual) == _bits(expected)) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(same):
        bad = np.flatnonzero(~same)
        sample = ", ".join(f"[{i}] got {actual[i]!r} want {expected[i]!r}" for i in bad[:5])
        pytest.fail(f"{what}: {bad.size} of {actual.size} elements differ: {sample}")


class Guarded:
    """A view of ``values`` inside a larger buffer with sentinel elements on each side."""

    def __init__(self, values: np.ndarray, lead: int) -> None:
        self.start = GUARD + lead
        self.base = np.full(self.start + values.size + GUARD, -4097.25, dtype=values.dtype)
        self.view = self.base[self.start : self.start + values.size]
        self.view[...] = values

    def intact(self) -> bool:
        return bool(np.all(self.base[: self.start] == -4097.25) and np.all(self.base[self.start + self.view.size :] == -4097.25))


def gradient(rng: np.random.Generator, n: int, dtype: np.dtype, t: int) -> np.ndarray:
    """Step t's gradient: N(0, scale^2) with ~10% exact zeros (some -0.0); step 1 all zeros (c == 0
    from m == 0: nothing moves but the decay); steps 4 and 6 hold NaN, +Inf and -Inf."""
    if t == 1:
        return np.zeros(n, dtype)
    g = (rng.standard_normal(n) * [1.0, 1e-3, 10.0, 0.3, 100.0, 1e-2, 3.0][t % 7]).astype(dtype)
    g[rng.random(n) < 0.05] = 0.0
    g[rng.random(n) < 0.05] = -0.0
    if t in (4, 6) and n:
        for value in (np.nan, np.inf, -np.inf):
            g[rng.integers(0, n, size=max(1, n // 64))] = value
    return g


def lr_at(t: int) -> float:
    return 0.0 if t == 3 else 1e-2 * (0.1 + 0.5 * (1.0 + math.cos(math.pi * t / N_STEPS)))


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_lion_kernel_matches_reference(isa: str, dtype: np.dtype, config: Dict[str, Any]) -> None:
    for n in SIZES:
        rng = np.random.default_rng(zlib.crc32(repr((_id(config), n, str(dtype))).encode()))
        p0 = rng.standard_normal(n).astype(dtype)
        p0[rng.random(n) < 0.05] = 0.0
        p0[rng.random(n) < 0.05] = -0.0  # a parameter that does not move keeps the sign of its zero
        m0 = np.zeros(n, dtype)
        m0[rng.random(n) < 0.1] = -0.0
        rp, rm = p0.copy(), m0.copy()
        runs = [(th, Guarded(p0, 1 + r), Guarded(m0, 3 + r)) for r, th in enumerate(THREADS)]
        for t in range(1, N_STEPS + 1):
            g = gradient(rng, n, dtype, t)
            lr = lr_at(t)
            with np.errstate(all="ignore"):
                reference.lion(rp, g.copy(), rm, lr=lr, **config)
            for th, kp, km in runs:
                kg = Guarded(g, 2)
                kernel_lion([kp.view], [kg.view], [km.view], lr=lr, threads=th, **config)
                where = f"{_id(config)} n={n} {dtype} threads={th} step {t}"
                assert _bits(kg.view).tobytes() == _bits(g).tobytes(), f"{where}: grads modified"
                assert_same(kp.view, rp, f"{where}: params")
                assert_same(km.view, rm, f"{where}: exp_avgs")
                assert kp.intact() and km.intact() and kg.intact(), f"{where}: memory around the arrays was written"
        if n >= 1000:  # the trajectory is not trivial
            assert not np.array_equal(rp, p0) and np.isnan(rp).any() and np.isfinite(rp).any()


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 8])
def test_lion_multi_tensor_equals_per_tensor_reference(isa: str, dtype: np.dtype, threads: int) -> None:
    """One call over a list of mixed sizes equals the reference per tensor, for any thread count."""
    rng = np.random.default_rng(5)
    shapes = [(), (0,), (1,), (15,), (17,), (3, 5), (4097,), (33,), (16, 16), (20000,), (2,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ms = [np.zeros(s, dtype) for s in shapes]
    rps, rms = [p.copy() for p in ps], [m.copy() for m in ms]
    for t in range(1, 5):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        kernel_lion(ps, gs, ms, lr=3e-3, weight_decay=0.1, threads=threads)
        for i in range(len(shapes)):
            reference.lion(rps[i], gs[i], rms[i], lr=3e-3, weight_decay=0.1)
            assert_same(ps[i].reshape(-1), rps[i].reshape(-1), f"params[{i}] step {t}")
            assert_same(ms[i].reshape(-1), rms[i].reshape(-1), f"exp_avgs[{i}] step {t}")


def test_lion_sign_semantics(dtype: np.dtype) -> None:
    """sign(+-0) = 0: an element with c == 0 does not move (its zero keeps its sign); a NaN
    gradient makes the parameter NaN (not frozen as with torch.sign); Inf moves it by lr."""
    T = dtype.type
    p = np.array([1.0, -0.0, 0.0, 2.0, 3.0, 4.0], dtype)
    g = np.array([0.0, 0.0, -0.0, np.nan, np.inf, -np.inf], dtype)
    m = np.zeros(6, dtype)
    kernel_lion([p], [g], [m], lr=0.5, threads=1)
    assert _bits(p[:3]).tolist() == _bits(np.array([1.0, -0.0, 0.0], dtype)).tolist()
    assert np.isnan(p[3]) and p[4] == T(2.5) and p[5] == T(4.5)
    assert np.isnan(m[3]) and m[4] == np.inf and m[5] == -np.inf


def test_lion_refuses_bad_arrays_and_modifies_nothing() -> None:
    p = [np.ones(8, np.float32), np.ones(3, np.float32)]
    g = [np.ones(8, np.float32), np.ones(3, np.float32)]
    m = [np.zeros(8, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=r"exp_avgs\[1\]"):
        kernel_lion(p, g, m, lr=0.1, threads=1)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        kernel_lion(p, [g[0].astype(np.float64), g[1]], [m[0], np.zeros(3, np.float32)], lr=0.1, threads=1)
    assert all((x == 1).all() for x in p) and all((x == 0).all() for x in m)
