"""The compiled kernels against the executable specification, :mod:`fusedopt.reference`, bitwise.

Every supported ISA x float32/float64 x thread count runs multi-step trajectories (random
parameters, a fresh gradient every step at a different scale, zero gradients, a learning-rate
schedule) through :mod:`fusedopt.functional` and through the reference side by side. After every
step the parameter and every state buffer must be bit-for-bit equal (NaN compares equal to NaN,
and +0.0 differs from -0.0), the gradient must be unchanged, and nothing outside the arrays (guard
elements around each of them) may be written. Each trajectory runs with threads=1 and, in
lockstep against the same reference, with 2 and 4 threads alternating step by step (sizes too
small to split run serially only; the multi-tensor test takes threads None, 1, 2, 3, 4, 8).

* ``test_flag_grid``: every flag combination of every algorithm, at a few sizes;
* ``test_size_sweep``: one representative flag set per algorithm over every edge size (SIMD
  widths and their neighbours, thread-split boundaries, large odd sizes);
* ``test_multi_tensor``: one call over a list of tensors of mixed sizes equals the reference
  per tensor, for several thread counts;
* ``test_updates_land_in_callers_arrays``: in place, no copy, views honoured;
* ``test_nonfinite_gradients``: NaN/Inf in gradients propagate as in the reference.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from fusedopt import _scalars, functional, reference

#: run_trajectory's thread spec: a serial run, and a run alternating 2 and 4 threads step by step
THREADED = [1, (2, 4)]
N_STEPS = 20

# ---------------------------------------------------------------------------------------------
# Configurations: an algorithm plus its (non-default) hyperparameters.
# ---------------------------------------------------------------------------------------------

BASE_LR = {"sgd": 0.05, "momentum": 0.1, "rmsprop": 0.01, "adam": 3e-3, "adamw": 3e-3, "adagrad": 0.05, "lion": 1e-3,
           "adamax": 3e-3, "lamb": 1e-2, "lars": 0.5, "radam": 3e-3,
           "nadam": 3e-3}


@dataclass(frozen=True)
class Config:
    algo: str
    hyper: Tuple[Tuple[str, Any], ...]

    @property
    def kw(self) -> Dict[str, Any]:
        return dict(self.hyper)

    @property
    def id(self) -> str:
        parts = [self.algo] + [f"{k}={v}" for k, v in self.hyper]
        return "-".join(parts)

    def state_slots(self) -> List[Optional[str]]:
        """The state arguments in the functional's positional order; None where not used."""
        kw = self.kw
        if self.algo == "sgd":
            return ["momentum_buffers" if kw.get("momentum", 0.0) != 0.0 else None]
        if self.algo == "momentum":
            return ["velocities"]
        if self.algo == "rmsprop":
            return [
                "square_avgs",
                "grad_avgs" if kw.get("centered", False) else None,
                "momentum_buffers" if kw.get("momentum", 0.0) > 0.0 else None,
            ]
        if self.algo in ("adam", "adamw"):
            return ["exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs" if kw.get("amsgrad", False) else None]
        if self.algo == "adagrad":
            return ["state_sums"]
        if self.algo == "lion":
            return ["exp_avgs"]
        if self.algo == "adamax":
            return ["exp_avgs", "exp_infs"]
        if self.algo == "radam":
            return ["exp_avgs", "exp_avg_sqs"]
        if self.algo == "nadam":
            return ["exp_avgs", "exp_avg_sqs"]
        if self.algo == "lamb":
            return ["exp_avgs", "exp_avg_sqs"]
        if self.algo == "lars":
            return ["mus"]
        raise AssertionError(self.algo)

    def step_kwargs(self, t: int) -> Dict[str, Any]:
        """``step=t``; for SGD the first-step flag (True on the first call only); RMSprop: nothing."""
        if self.algo == "sgd":
            return {"first_step": t == 1}
        if self.algo == "nadam":  # the per-parameter product after step t, as the classes keep it
            kw, mp = self.kw, 1.0
            for k in range(1, t + 1):
                mp = _scalars.nadam_mu_product(mp, step=k, beta1=kw.get("beta1", 0.9),
                                               momentum_decay=kw.get("momentum_decay", 4e-3))  # fmt: skip
            return {"step": t, "mu_product": mp}
        return {} if self.algo in ("rmsprop", "lion", "lars") else {"step": t}


def cfg(algo: str, **hyper: Any) -> Config:
    return Config(algo, tuple(hyper.items()))


def _sgd_grid() -> List[Config]:
    out = []
    for mom, damp, nest in [
        (0.0, 0.0, False),
        (0.0, 0.3, False),
        (0.9, 0.0, False),
        (0.9, 0.0, True),
        (0.9, 0.3, False),
    ]:
        for wd in (0.0, 0.05):
            for maximize in (False, True):
                out.append(cfg("sgd", momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd, maximize=maximize))
    return out


def _momentum_grid() -> List[Config]:
    return [cfg("momentum", weight_decay=wd, bias_correction=bc) for wd in (0.0, 0.05) for bc in (False, True)]


def _rmsprop_grid() -> List[Config]:
    return [
        cfg("rmsprop", centered=c, momentum=m, weight_decay=wd, maximize=mx)
        for c in (False, True)
        for m in (0.0, 0.9)
        for wd in (0.0, 0.05)
        for mx in (False, True)
    ]


def _adam_grid() -> List[Config]:
    out = []
    for wd, decoupled in [(0.0, False), (0.05, False), (0.05, True)]:
        for ams in (False, True):
            for mx in (False, True):
                out.append(cfg("adam", weight_decay=wd, decoupled_weight_decay=decoupled, amsgrad=ams, maximize=mx))
    # the adamw entry point (decoupled decay, torch's default weight_decay)
    out += [cfg("adamw", amsgrad=ams, maximize=mx) for ams in (False, True) for mx in (False, True)]
    return out


def _adagrad_grid() -> List[Config]:
    return [
        cfg("adagrad", weight_decay=wd, maximize=mx, lr_decay=d)
        for wd in (0.0, 0.05)
        for mx in (False, True)
        for d in (0.0, 0.1)
    ]


def _lion_grid() -> List[Config]:
    return [cfg("lion", weight_decay=wd, maximize=mx, beta1=b1) for wd in (0.0, 0.1) for mx in (False, True)
            for b1 in (0.9, 0.0)]  # fmt: skip


def _adamax_grid() -> List[Config]:
    return [cfg("adamax", weight_decay=wd, maximize=mx) for wd in (0.0, 0.05) for mx in (False, True)]


def _lamb_grid() -> List[Config]:
    return [cfg("lamb", weight_decay=wd, maximize=mx, bias_correction=bc, debias=db, clamp_value=cv)
            for wd in (0.0, 0.1) for mx in (False, True) for bc, db in ((True, False), (False, False), (False, True))
            for cv in (1e30, 2.0)]  # fmt: skip


def _lars_grid() -> List[Config]:
    return [cfg("lars", weight_decay=wd, maximize=mx, lars_adaptation=ad, momentum=mo)
            for wd in (0.0, 0.01) for mx in (False, True) for ad in (True, False) for mo in (0.9, 0.0)]  # fmt: skip


FLAG_GRID = (_sgd_grid() + _momentum_grid() + _rmsprop_grid() + _adam_grid() + _adagrad_grid() + _lion_grid()
             + _lamb_grid() + _lars_grid())  # fmt: skip
FLAG_GRID += _adamax_grid()


def _radam_grid() -> List[Config]:
    # 20 steps with beta2 = 0.999: steps 1-5 un-rectified, 6-20 rectified (both kernel variants)
    return [cfg("radam", weight_decay=wd, decoupled_weight_decay=dec, maximize=mx)
            for wd, dec in [(0.0, False), (0.05, False), (0.05, True)] for mx in (False, True)]  # fmt: skip


FLAG_GRID += _radam_grid()


def _nadam_grid() -> List[Config]:
    return [cfg("nadam", weight_decay=wd, decoupled_weight_decay=dec, maximize=mx, momentum_decay=psi)
            for wd, dec in [(0.0, False), (0.05, False), (0.05, True)] for mx in (False, True)
            for psi in (4e-3, 0.0)]  # fmt: skip


FLAG_GRID += _nadam_grid()

REPRESENTATIVE = [
    cfg("sgd"),
    cfg("sgd", momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
    cfg("sgd", momentum=0.9, dampening=0.3, weight_decay=0.05),
    cfg("momentum", weight_decay=0.05, bias_correction=True),
    cfg("rmsprop"),
    cfg("rmsprop", centered=True, momentum=0.9, weight_decay=0.05, maximize=True, alpha=0.9),
    cfg("adam"),
    cfg("adam", weight_decay=0.05, amsgrad=True, maximize=True, beta2=0.99),
    cfg("adamw", amsgrad=True, weight_decay=0.1),
    cfg("adagrad", weight_decay=0.05, lr_decay=0.1, maximize=True),
    cfg("lamb", weight_decay=0.1, maximize=True, clamp_value=2.0),
    cfg("lars", weight_decay=0.01, maximize=True, eta=0.02),
    cfg("lion", weight_decay=0.1, maximize=True),
    cfg("adamax", weight_decay=0.05, maximize=True, beta2=0.99),
    cfg("radam", weight_decay=0.05, decoupled_weight_decay=True, beta2=0.8),  # first rectified step t = 7
    cfg("radam", weight_decay=0.05, maximize=True, beta2=0.6),  # never rectified (rho_inf <= 5)
    cfg("nadam", weight_decay=0.05, decoupled_weight_decay=True, beta2=0.99, momentum_decay=0.5),
]

# one config per algorithm with most features on (multi-tensor, in-place and non-finite tests)
RICH = [
    cfg("sgd", momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
    cfg("sgd", momentum=0.9, dampening=0.3, weight_decay=0.05),
    cfg("momentum", weight_decay=0.05, bias_correction=True),
    cfg("rmsprop", centered=True, momentum=0.9, weight_decay=0.05, maximize=True),
    cfg("adam", weight_decay=0.05, amsgrad=True, maximize=True),
    cfg("adamw", amsgrad=True),
    cfg("lamb", weight_decay=0.1, bias_correction=False, debias=True, clamp_value=2.0, adam=False),
    cfg("lars", weight_decay=0.01, eps=1e-3, momentum=0.5),
    cfg("adagrad", weight_decay=0.05, lr_decay=0.1, maximize=True),
    cfg("lion", weight_decay=0.1, beta2=0.9),
    cfg("adamax", weight_decay=0.05, maximize=True),
    cfg("radam", weight_decay=0.05, maximize=True, beta2=0.9),
    cfg("nadam", weight_decay=0.05, maximize=True, beta2=0.9),
]

FLAG_GRID_SHAPES = [(), (0,), (17,), (40, 25)]
SWEEP_SIZES = [0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 1000, 16383, 16385, 100003]


def lr_at(c: Config, t: int, n_steps: int = N_STEPS) -> float:
    """A cosine schedule with a zero-lr step: the learning rate changes every step."""
    if t == 6:
        return 0.0
    return BASE_LR[c.algo] * (0.05 + 0.5 * (1.0 + math.cos(math.pi * t / n_steps)))


# ---------------------------------------------------------------------------------------------
# Arrays with guard elements: the kernel gets views into larger buffers; the guards must survive.
# ---------------------------------------------------------------------------------------------

GUARD = 24


class Guarded:
    """``view`` (shape ``shape``) inside ``base``, with GUARD+lead sentinel elements on each side."""

    def __init__(self, values: np.ndarray, lead: int) -> None:
        n = values.size
        self.start = GUARD + lead
        self.base = np.empty(self.start + n + GUARD, dtype=values.dtype)
        self.sentinel = values.dtype.type(-4097.25)
        self.base[...] = self.sentinel
        self.view = self.base[self.start : self.start + n].reshape(values.shape)
        self.view[...] = values
        assert n == 0 or np.shares_memory(self.view, self.base)

    def guards_intact(self) -> bool:
        return bool(
            np.all(self.base[: self.start] == self.sentinel)
            and np.all(self.base[self.start + self.view.size :] == self.sentinel)
        )


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Bit-for-bit equality, except that any NaN equals any NaN (payloads are not specified)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if actual.tobytes() == expected.tobytes():  # fast path: identical bits
        return
    same = (_bits(actual) == _bits(expected)) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(same):
        bad = np.flatnonzero(~same.reshape(-1))
        a, e = actual.reshape(-1), expected.reshape(-1)
        sample = ", ".join(f"[{i}] got {a[i]!r} want {e[i]!r}" for i in bad[:5])
        only_zero_sign = bool(np.all((a[bad] == 0) & (e[bad] == 0)))
        pytest.fail(
            f"{what}: {bad.size} of {a.size} elements differ"
            + (" (only the sign of zero)" if only_zero_sign else "")
            + f": {sample}"
        )


def assert_nan_equal(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    if not np.array_equal(actual, expected, equal_nan=True):
        bad = np.flatnonzero(~((actual == expected) | (np.isnan(actual) & np.isnan(expected))).reshape(-1))
        a, e = actual.reshape(-1), expected.reshape(-1)
        sample = ", ".join(f"[{i}] got {a[i]!r} want {e[i]!r}" for i in bad[:5])
        pytest.fail(f"{what}: {bad.size} of {a.size} elements differ: {sample}")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def normal(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype, scale: float = 1.0) -> np.ndarray:
    """N(0, scale^2) samples as an ndarray of ``dtype`` (also for shape ``()``)."""
    return np.array(rng.standard_normal(shape) * scale, dtype=dtype)


def initial_states(
    c: Config, shape: Tuple[int, ...], dtype: np.dtype, rng: np.random.Generator
) -> List[Optional[np.ndarray]]:
    out: List[Optional[np.ndarray]] = []
    for name in c.state_slots():
        if name is None:
            out.append(None)
        elif name == "momentum_buffers" and c.algo == "sgd":
            # first_step=True must ignore whatever the buffer holds, even NaN/Inf
            junk = normal(rng, shape, dtype)
            flat = junk.reshape(-1)
            flat[::3] = np.nan
            flat[1::7] = np.inf
            out.append(junk)
        elif name == "state_sums":
            out.append(np.full(shape, 0.1, dtype=dtype))  # torch's initial_accumulator_value
        else:
            out.append(np.zeros(shape, dtype=dtype))
    return out


def gradient(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype, t: int) -> np.ndarray:
    """Step t's gradient: N(0,1) at a per-step scale, ~10% exact zeros; step 4 is all zeros;
    step 9 is tiny enough that g*g is subnormal (no flush-to-zero allowed)."""
    if t == 4:
        return np.zeros(shape, dtype=dtype)
    if t == 9:
        scale = math.sqrt(float(np.finfo(dtype).tiny)) * 0.3
    else:
        scale = [1.0, 1e-3, 10.0, 0.3, 100.0, 1e-2, 3.0][t % 7]
    g = normal(rng, shape, dtype, scale)
    g[rng.random(shape) < 0.1] = 0
    return g


# ---------------------------------------------------------------------------------------------
# Running one step on both sides
# ---------------------------------------------------------------------------------------------


def kernel_step(c: Config, params, grads, states, t: int, lr: float, threads: Optional[int]) -> None:
    out = getattr(functional, c.algo)(params, grads, *states, lr=lr, threads=threads, **c.step_kwargs(t), **c.kw)
    assert out is None


def reference_step(c: Config, param, grad, states, t: int, lr: float) -> None:
    getattr(reference, c.algo)(param, grad, *states, lr=lr, **c.step_kwargs(t), **c.kw)


def run_trajectory(
    c: Config,
    shape: Tuple[int, ...],
    dtype: np.dtype,
    threads: Sequence[Any],
    *,
    seed: int,
    n_steps: int = N_STEPS,
    grad_fn: Callable[[np.random.Generator, Tuple[int, ...], np.dtype, int], np.ndarray] = gradient,
    compare: Callable[[np.ndarray, np.ndarray, str], None] = assert_bitwise,
    quiet: bool = False,
) -> Tuple[np.ndarray, List[Optional[np.ndarray]]]:
    """One reference trajectory and, in lockstep, one kernel trajectory per entry of ``threads``
    (an int, None, or a tuple of thread counts used in turn, one per step); everything is compared
    after every step. Returns the reference's final param and states.

    A kernel step is a pure function of its inputs and every kernel trajectory sees the reference's
    (bitwise equal) state at every step, so cycling thread counts within one trajectory checks each
    count as well as separate trajectories would, on different random data, at a fraction of the
    cost of extra trajectories (threaded calls are slow on a loaded 2-core machine)."""
    rng = np.random.default_rng(seed)
    p0 = normal(rng, shape, dtype)
    s0 = initial_states(c, shape, dtype, rng)
    names = c.state_slots()
    runs = []  # per thread count: (threads, guarded param, guarded states)
    for r, spec in enumerate(threads):
        kp = Guarded(p0, lead=1 + r)
        ks = [None if s is None else Guarded(s, lead=2 + i + r) for i, s in enumerate(s0)]
        runs.append((spec, kp, ks))
    rp = p0.copy()
    rs = [None if s is None else s.copy() for s in s0]
    for t in range(1, n_steps + 1):
        g = grad_fn(rng, shape, dtype, t)
        lr = lr_at(c, t, n_steps)
        with np.errstate(all="ignore") if quiet else np.errstate(under="ignore"):
            reference_step(c, rp, g.copy(), rs, t, lr)
        for spec, kp, ks in runs:
            n_threads = spec[(t - 1) % len(spec)] if isinstance(spec, tuple) else spec
            kg = Guarded(g, lead=3)
            kernel_step(c, kp.view, kg.view, [None if s is None else s.view for s in ks], t, lr, n_threads)
            where = f"{c.id} shape={shape} {dtype} threads={n_threads} step {t}"
            assert _bits(kg.view).tobytes() == _bits(g).tobytes(), f"{where}: the gradient was modified"
            compare(kp.view, rp, f"{where}: params")
            for name, k, r in zip(names, ks, rs):
                if k is not None:
                    compare(k.view, r, f"{where}: {name}")
            for name, k in [("params", kp), ("grads", kg)] + list(zip(names, ks)):
                if k is not None:
                    assert k.guards_intact(), f"{where}: {name}: elements outside the array were written"
    return rp, rs


def _seed(*parts: Any) -> int:
    """A reproducible seed from the test's identity (str hash() is randomized per process)."""
    return zlib.crc32(repr(parts).encode())


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_grids_cover_every_flag_combination():
    """Guard against the grid silently shrinking: all flag combinations listed in the brief."""
    counts: Dict[str, int] = {}
    for c in FLAG_GRID:
        counts[c.algo] = counts.get(c.algo, 0) + 1
    assert counts == {"sgd": 20, "momentum": 4, "rmsprop": 16, "adam": 12, "adamw": 4, "adagrad": 8, "lion": 8,
                      "adamax": 4, "lamb": 24, "lars": 16, "radam": 6, "nadam": 12}
    assert len({c.id for c in FLAG_GRID}) == len(FLAG_GRID)


@pytest.mark.parametrize("c", FLAG_GRID, ids=lambda c: c.id)
def test_flag_grid(isa, dtype, c):
    """Every flag combination; threads 1, 2, 4 where a split happens (1000 elements)."""
    for shape in FLAG_GRID_SHAPES:
        threads = THREADED if math.prod(shape) >= 1000 else [1]
        run_trajectory(c, shape, dtype, threads, seed=_seed(c.id, shape))


@pytest.mark.parametrize("c", REPRESENTATIVE, ids=lambda c: c.id)
def test_size_sweep(isa, dtype, c):
    """Every edge size; threads 1, 2 and 4 from 16 elements on (below one 64-byte block every
    cut of the work falls at 0, so all thread counts run the same single span; the multi-tensor
    test covers those degenerate splits) and for size 0."""
    for n in SWEEP_SIZES:
        threads = THREADED if n == 0 or n >= 16 else [1]
        run_trajectory(c, (n,), dtype, threads, seed=_seed(c.id, n))


def test_trajectories_actually_move():
    """The trajectories are not trivial: parameters and every state change, and stay finite."""
    for c in REPRESENTATIVE:
        dt = np.dtype(np.float64)
        p0 = normal(np.random.default_rng(1), (1000,), dt)  # what run_trajectory(seed=1) starts from
        p, states = run_trajectory(c, (1000,), dt, [1], seed=1)
        assert np.isfinite(p).all(), c.id
        assert not np.array_equal(p, p0), c.id
        for s in states:
            if s is not None:
                assert np.isfinite(s).all() and np.any(s != 0), c.id


# ---- multi-tensor ----------------------------------------------------------------------------

SHAPE_LISTS = {
    # mixed sizes around SIMD widths; thread cuts fall inside small and large tensors; 37,6xx
    # elements in all, so threads=None runs rmsprop/adam/adagrad threaded (policy: _threads.py)
    "mixed": [
        (),
        (0,),
        (1,),
        (15,),
        (16,),
        (17,),
        (3, 5),
        (0, 4),
        (1000,),
        (4095,),
        (),
        (4097,),
        (31,),
        (33,),
        (16, 16),
        (20000,),
        (2,),
        (65,),
        (12000,),
    ],
    # fewer elements than threads
    "tiny": [(), (1,), (0,), (2,)],
    # equal tensors: with 2 or 4 threads the cuts fall exactly on tensor boundaries
    "boundaries": [(1024,), (1024,), (1024,), (1024,)],
    # a cut falling inside a tensor shorter than one 64-byte block
    "short_tensors": [(5,)] * 13 + [(64,), (3,)],
}


MULTI_TENSOR_THREADS = [None, 1, 2, 3, 4, 8]


@pytest.mark.parametrize("c", RICH, ids=lambda c: c.id)
def test_multi_tensor(isa, dtype, c):
    """One call over a list equals the reference per tensor, for threads None, 1, 2, 3, 4, 8
    (one kernel copy per thread count, all stepped in lockstep with one reference)."""
    names = c.state_slots()
    for list_name, shapes in SHAPE_LISTS.items():
        rng = np.random.default_rng(_seed(c.id, list_name))
        p0 = [normal(rng, s, dtype) for s in shapes]
        s0 = [initial_states(c, s, dtype, rng) for s in shapes]  # per tensor, per slot
        kernels = []  # per thread count: (params list, per-slot state lists)
        for _ in MULTI_TENSOR_THREADS:
            kp = [x.copy() for x in p0]
            ks = [None if name is None else [st[j].copy() for st in s0] for j, name in enumerate(names)]
            kernels.append((kp, ks))
        rp = [x.copy() for x in p0]
        rs = [[None if x is None else x.copy() for x in st] for st in s0]
        for t in range(1, 6):
            grads = [gradient(rng, s, dtype, t) for s in shapes]
            lr = lr_at(c, t, 5)
            with np.errstate(under="ignore"):
                for i in range(len(shapes)):
                    reference_step(c, rp[i], grads[i], rs[i], t, lr)
            for threads, (kp, ks) in zip(MULTI_TENSOR_THREADS, kernels):
                kg = [g.copy() for g in grads]
                kernel_step(c, kp, kg, ks, t, lr, threads)
                for i in range(len(shapes)):
                    where = f"{list_name}[{i}] shape={shapes[i]} threads={threads} step {t}"
                    assert _bits(kg[i]).tobytes() == _bits(grads[i]).tobytes(), f"{where}: grads modified"
                    assert_bitwise(kp[i], rp[i], f"{where}: params")
                    for j, name in enumerate(names):
                        if name is not None:
                            assert_bitwise(ks[j][i], rs[i][j], f"{where}: {name}")


def test_multi_tensor_tuple_and_single_call_equivalence(dtype):
    """A tuple works like a list, and one call over a list equals one call per tensor."""
    rng = np.random.default_rng(7)
    shapes = [(33,), (), (7, 9), (0,)]
    p = [normal(rng, s, dtype) for s in shapes]
    g = [normal(rng, s, dtype) for s in shapes]
    m = [np.zeros(s, dtype) for s in shapes]
    v = [np.zeros(s, dtype) for s in shapes]
    p1, m1, v1 = [x.copy() for x in p], [x.copy() for x in m], [x.copy() for x in v]
    p_before = [x.copy() for x in p]
    functional.adam(tuple(p), tuple(g), tuple(m), tuple(v), step=1, lr=0.01, threads=2)
    for i in range(len(shapes)):
        functional.adam(p1[i], g[i], m1[i], v1[i], step=1, lr=0.01, threads=1)
    for i in range(len(shapes)):
        assert_bitwise(p[i], p1[i], f"params[{i}]")
        assert_bitwise(m[i], m1[i], f"exp_avgs[{i}]")
        assert_bitwise(v[i], v1[i], f"exp_avg_sqs[{i}]")
    assert not np.array_equal(p[0], p_before[0]) and not np.array_equal(p[2], p_before[2]), "not updated"


# ---- in place --------------------------------------------------------------------------------


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("c", RICH, ids=lambda c: c.id)
def test_updates_land_in_callers_arrays(isa, dtype, c):
    """Views into the caller's buffers are updated in place (no copy): the buffers see the step,
    the arrays keep their addresses, and memory around the views is untouched."""
    shape = (6, 7)
    rng = np.random.default_rng(3)
    p0 = normal(rng, shape, dtype)
    s0 = initial_states(c, shape, dtype, rng)
    g0 = normal(rng, shape, dtype)
    kp = Guarded(p0, lead=5)
    ks = [None if s is None else Guarded(s, lead=1 + i) for i, s in enumerate(s0)]
    addresses = [_address(kp.view)] + [_address(s.view) for s in ks if s is not None]
    base_ids = [id(kp.base)] + [id(s.base) for s in ks if s is not None]
    lr = 0.1
    kernel_step(c, kp.view, g0, [None if s is None else s.view for s in ks], 1, lr, 2)
    rp = p0.copy()
    rs = [None if s is None else s.copy() for s in s0]
    reference_step(c, rp, g0, rs, 1, lr)

    assert [_address(kp.view)] + [_address(s.view) for s in ks if s is not None] == addresses
    assert [id(kp.base)] + [id(s.base) for s in ks if s is not None] == base_ids
    # the update is visible through the caller's *base* buffers, not only the views
    assert not np.array_equal(kp.base[kp.start : kp.start + p0.size], p0.reshape(-1)), "params were not updated"
    assert_bitwise(kp.base[kp.start : kp.start + p0.size], rp.reshape(-1), "params (via base buffer)")
    for name, k, r in zip(c.state_slots(), ks, rs):
        if k is not None:
            assert_bitwise(k.base[k.start : k.start + p0.size], r.reshape(-1), f"{name} (via base buffer)")
            assert k.guards_intact(), name
    assert kp.guards_intact()


def test_list_entries_updated_in_place(dtype):
    """Every array of a list call is the one updated (not a converted copy of the list)."""
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(n).astype(dtype) for n in (3, 40, 0, 17)]
    before = [p.copy() for p in params]
    addresses = [_address(p) for p in params]
    grads = [np.ones_like(p) for p in params]
    functional.sgd(params, grads, lr=0.5, threads=2)
    assert [_address(p) for p in params] == addresses
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b - dtype.type(0.5))


# ---- non-finite gradients --------------------------------------------------------------------


def nonfinite_gradient(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype, t: int) -> np.ndarray:
    g = gradient(rng, shape, dtype, t)
    flat = g.reshape(-1)
    if flat.size and t in (2, 3, 5):
        k = flat.size
        flat[rng.integers(0, k, size=max(1, k // 50))] = np.nan
        flat[rng.integers(0, k, size=max(1, k // 50))] = np.inf
        flat[rng.integers(0, k, size=max(1, k // 50))] = -np.inf
    return g


@pytest.mark.parametrize("threads", [1, 4], ids=lambda n: f"threads={n}")
@pytest.mark.parametrize("c", RICH + [cfg("rmsprop"), cfg("adam"), cfg("sgd")], ids=lambda c: c.id)
def test_nonfinite_gradients(isa, dtype, threads, c):
    for n in (1, 37, 1000):
        p, states = run_trajectory(
            c, (n,), dtype, [threads], seed=_seed("nan", c.id, n), n_steps=8, grad_fn=nonfinite_gradient,
            compare=assert_nan_equal, quiet=True,
        )  # fmt: skip
        if c.algo == "lion":  # sign(+-inf) is finite: an inf gradient leaves Lion's parameter finite
            assert not all(np.isfinite(s).all() for s in states if s is not None), "no non-finite state"
        else:
            assert not np.isfinite(p).all(), "the test should produce non-finite parameters"


@pytest.mark.parametrize("name", ["momentum", "adam", "adagrad", "adamax", "lamb", "radam", "nadam"])
def test_numpy_integer_step_gives_the_python_int_scalars(name: str) -> None:
    """``beta**step`` with a NumPy integer step would be ``np.power`` (on AVX-512 with NumPy 2 its
    SIMD power differs from C ``pow`` in the last bits: ``0.999**np.int64(7)``), and the reference
    would disagree with the kernels' scalars (found by tests/test_fuzz.py)."""
    fn = getattr(_scalars, f"{name}_scalars")
    kw = {"momentum": dict(lr=0.1, beta=0.999, weight_decay=0.0, bias_correction=True),
          "adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=True),
          "adagrad": dict(lr=0.1, lr_decay=0.013, eps=1e-10, weight_decay=0.0),
          "adamax": dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
          "lamb": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, clamp_value=10.0,
                       bias_correction=True, debias=False),
          "radam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False),
          "nadam": dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                        mu_product=0.9, decoupled_weight_decay=False)}[name]  # fmt: skip
    for t in range(1, 60):
        assert fn(step=np.int64(t), **kw) == fn(step=t, **kw), (name, t)
