"""AMP hooks (grad_scale, found_inf) and gradient clipping (by value, by global norm) fused into the step.

* kernels with gradient pre-processing equal :mod:`fusedopt.reference` bitwise (every ISA, dtype,
  several thread counts), and the gradients are never written;
* ``grad_scale`` by a power of two is exact: the step on ``S*g`` with ``grad_scale=S`` equals the
  step on ``g`` bitwise; clip by value equals pre-clipping the gradient with ``np.clip``;
* ``found_inf`` / ``skip_if_nonfinite`` leave every parameter, state buffer and step count bitwise
  untouched (functional and classes);
* the global norm equals ``np.linalg.norm`` of the concatenated gradients to float tolerance, equals
  :func:`fusedopt.reference.global_norm` bitwise, and is bitwise identical across thread counts
  1, 2, 3, 4, 8 and ISAs; clipping by it matches torch.nn.utils.clip_grad_norm_ + torch.optim;
* bad options raise before anything is modified.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional, reference

SIZES = [1, 7, 33, 1000, 4099]
ALGOS: Dict[str, Dict[str, Any]] = {
    "sgd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "trace": dict(lr=0.05, decay=0.9),
    "momentum": dict(lr=0.1, beta=0.9, bias_correction=True),
    "rmsprop": dict(lr=0.01, momentum=0.5, centered=True, maximize=True),
    "adam": dict(lr=3e-3, amsgrad=True, weight_decay=0.1, decoupled_weight_decay=True),
    "adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=0.01),
}
N_STATE = {"sgd": 1, "trace": 1, "momentum": 1, "rmsprop": 3, "adam": 3, "adagrad": 1}


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(bits(got), bits(want)):
        bad = np.flatnonzero(bits(got) != bits(want))
        raise AssertionError(
            f"{what}: {bad.size} elements differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"
        )


def step_kw(algo: str, t: int) -> Dict[str, Any]:
    if algo == "sgd":
        return {"first_step": t == 1}
    return {"step": t} if algo in ("momentum", "adam", "adagrad") else {}


class Run:
    """An algorithm's params and state, for the functional layer and per-tensor for the reference."""

    def __init__(self, algo: str, dtype: Any, sizes: List[int] = SIZES, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.algo, self.dtype, self.rng = algo, np.dtype(dtype), rng
        self.params = [rng.standard_normal(n).astype(dtype) for n in sizes]
        self.states = [[np.zeros_like(p) for p in self.params] for _ in range(N_STATE[algo])]
        self.t = 0

    def grads(self, scale: float = 1.0) -> List[np.ndarray]:
        return [(self.rng.standard_normal(p.size) * scale).astype(self.dtype) for p in self.params]

    def copy(self) -> "Run":
        other = object.__new__(Run)
        other.algo, other.dtype, other.rng, other.t = self.algo, self.dtype, None, self.t
        other.params = [p.copy() for p in self.params]
        other.states = [[a.copy() for a in s] for s in self.states]
        return other

    def functional(self, grads: List[np.ndarray], **kw: Any) -> Optional[float]:
        self.t += 1
        return getattr(functional, self.algo)(self.params, grads, *self.states, **ALGOS[self.algo],
                                               **step_kw(self.algo, self.t), **kw)  # fmt: skip

    def reference(self, grads: List[np.ndarray], **kw: Any) -> None:
        self.t += 1
        for i, g in enumerate(grads):
            getattr(reference, self.algo)(self.params[i], g, *[s[i] for s in self.states], **ALGOS[self.algo],
                                          **step_kw(self.algo, self.t), **kw)  # fmt: skip

    def assert_equal(self, other: "Run", what: str) -> None:
        for i, (a, b) in enumerate(zip(self.params, other.params)):
            assert_bitwise(a, b, f"{what}: params[{i}]")
        for k, (s, r) in enumerate(zip(self.states, other.states)):
            for i, (a, b) in enumerate(zip(s, r)):
                assert_bitwise(a, b, f"{what}: state {k}[{i}]")


# ================================================================================================
# kernels with pre-processing == reference, bitwise
# ================================================================================================
PRE = [
    dict(grad_scale=1024.0),
    dict(grad_scale=3.0),  # not a power of two: the division rounds
    dict(clip_value=0.5),
    dict(clip_coef=0.3),
    dict(grad_scale=7.0, clip_coef=0.7, clip_value=0.05),
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("pre", PRE, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("algo", list(ALGOS))
def test_preprocessing_kernels_match_reference_bitwise(
    isa: str, dtype: np.dtype, algo: str, pre: Dict[str, Any], threads: int
) -> None:
    fun = Run(algo, dtype)
    ref = fun.copy()
    for t in range(4):
        gs = fun.grads([1.0, 40.0, 1e-3, 3.0][t])
        before = [g.copy() for g in gs]
        fun.functional(gs, threads=threads, **pre)
        ref.reference(gs, **pre)
        for g, b in zip(gs, before):
            assert_bitwise(g, b, "gradient (never written)")
        fun.assert_equal(ref, f"step {t + 1}")


@pytest.mark.parametrize("algo", list(ALGOS))
def test_power_of_two_grad_scale_is_exact(isa: str, dtype: np.dtype, algo: str) -> None:
    scaled = Run(algo, dtype, seed=1)
    plain = scaled.copy()
    S = 2.0**14
    for _ in range(3):
        gs = scaled.grads()
        scaled.functional([g * dtype.type(S) for g in gs], grad_scale=np.float32(S))  # a NumPy scalar is fine
        plain.functional(gs)
    scaled.assert_equal(plain, "grad_scale=2**14 on 2**14*g vs plain g")


@pytest.mark.parametrize("algo", list(ALGOS))
def test_clip_value_equals_pre_clipped_gradients(dtype: np.dtype, algo: str) -> None:
    fused = Run(algo, dtype, seed=2)
    pre = fused.copy()
    for _ in range(3):
        gs = fused.grads(2.0)
        gs[0][...] = np.nan  # NaN stays NaN through the clamp (as np.clip)
        fused.functional(gs, clip_value=0.75)
        pre.functional([np.clip(g, -0.75, 0.75) for g in gs])
    fused.assert_equal(pre, "clip_value vs np.clip")


def test_identity_preprocessing_rounds_like_none(isa: str, dtype: np.dtype) -> None:
    """grad_scale=1, clip_coef=1 and a clip beyond the range are exact identities (the kernel's
    pre-processing path runs and must change no bit)."""
    a = Run("adam", dtype, seed=3)
    b = a.copy()
    for _ in range(3):
        gs = a.grads()
        a.functional(gs, grad_scale=1.0, clip_coef=1.0, clip_value=1e300)
        b.functional(gs)
    a.assert_equal(b, "identity pre-processing")


# ================================================================================================
# found_inf / skip_if_nonfinite: nothing moves
# ================================================================================================
FOUND = [True, 1.0, np.array([1.0], np.float32), np.float32(np.inf), np.array(np.nan)]


@pytest.mark.parametrize("found", FOUND, ids=["True", "1.0", "array[1.0]", "inf", "array(nan)"])
@pytest.mark.parametrize("algo", list(ALGOS))
def test_found_inf_skips_functional_step(algo: str, found: Any) -> None:
    run = Run(algo, np.float32, seed=4)
    run.functional(run.grads())
    before = run.copy()
    gs = run.grads()
    gs[1][0] = np.inf
    g_before = [g.copy() for g in gs]
    assert run.functional(gs, grad_scale=65536.0, found_inf=found, max_grad_norm=1.0) is None
    run.assert_equal(before, "after found_inf")
    for g, b in zip(gs, g_before):
        assert_bitwise(g, b, "gradient")


@pytest.mark.parametrize(
    "found", [None, False, 0, 0.0, np.array([0.0], np.float32)], ids=["None", "False", "0", "0.0", "array[0.0]"]
)
def test_found_inf_zero_steps(found: Any) -> None:
    run = Run("adam", np.float64, seed=5)
    ref = run.copy()
    gs = run.grads()
    run.functional(gs, found_inf=found)
    ref.functional(gs)
    run.assert_equal(ref, "found_inf falsy")


CLASSES: Dict[str, Callable[[List[np.ndarray]], Any]] = {
    "SGD": lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.9),
    "Momentum": lambda ps: fusedopt.Momentum(ps, lr=0.1),
    "RMSprop": lambda ps: fusedopt.RMSprop(ps, centered=True, momentum=0.9),
    "Adam": lambda ps: fusedopt.Adam(ps, amsgrad=True),
    "AdamW": lambda ps: fusedopt.AdamW(ps),
    "Adagrad": lambda ps: fusedopt.Adagrad(ps, initial_accumulator_value=0.1),
}


def snapshot(opt: Any) -> Dict[str, Any]:
    return {"params": [p.copy() for p in opt.params], "sd": opt.state_dict()}


def assert_snapshot(opt: Any, snap: Dict[str, Any]) -> None:
    for i, (p, q) in enumerate(zip(opt.params, snap["params"])):
        assert_bitwise(p, q, f"params[{i}]")
    sd = opt.state_dict()
    assert sd["state"].keys() == snap["sd"]["state"].keys()
    for i, st in sd["state"].items():
        old = snap["sd"]["state"][i]
        assert st.keys() == old.keys()
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert_bitwise(v, old[k], f"state[{i}][{k}]")
            else:
                assert v == old[k], (i, k)


def _mixed_params(seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dt) for n, dt in [(10, np.float32), (300, np.float64), (5000, np.float32)]]


@pytest.mark.parametrize("first", [True, False], ids=["first-step", "later-step"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_found_inf_leaves_optimizer_untouched(name: str, first: bool) -> None:
    ps = _mixed_params(6)
    opt = CLASSES[name](ps)
    rng = np.random.default_rng(7)
    if not first:
        opt.step([rng.standard_normal(p.shape).astype(p.dtype) for p in ps])
    snap = snapshot(opt)
    gs = [rng.standard_normal(p.shape).astype(p.dtype) for p in ps]
    assert opt.step(gs, grad_scale=2.0, found_inf=np.array([1.0], np.float32)) is None
    assert_snapshot(opt, snap)
    # and the next normal step is the step it would have been
    twin = CLASSES[name]([p.copy() for p in snap["params"]])
    if not first:
        twin.load_state_dict(snap["sd"])
    opt.step(gs)
    twin.step(gs)
    for a, b in zip(opt.params, twin.params):
        assert_bitwise(a, b, "after the skipped step")


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_skip_if_nonfinite_leaves_optimizer_untouched(name: str, bad: float) -> None:
    ps = _mixed_params(8)
    opt = CLASSES[name](ps)
    rng = np.random.default_rng(9)
    opt.step([rng.standard_normal(p.shape).astype(p.dtype) for p in ps])
    snap = snapshot(opt)
    gs = [rng.standard_normal(p.shape).astype(p.dtype) for p in ps]
    gs[2][1234] = bad
    norm = opt.step(gs, skip_if_nonfinite=True, max_grad_norm=1.0)
    assert not math.isfinite(norm)
    assert_snapshot(opt, snap)
    gs[2][1234] = 0.5
    norm = opt.step(gs, skip_if_nonfinite=True)
    assert math.isfinite(norm)
    assert opt.state[0].get("step", 2) == 2


def test_functional_skip_if_nonfinite() -> None:
    run = Run("rmsprop", np.float64, seed=10)
    before = run.copy()
    gs = run.grads()
    gs[3][17] = -np.inf
    norm = run.functional(gs, skip_if_nonfinite=True)
    assert norm == math.inf
    run.assert_equal(before, "skipped")


# ================================================================================================
# the global norm
# ================================================================================================
NORM_SIZES = [
    [0],
    [1],
    [2047, 2048, 2049],
    [5, 0, 4099, 1, 10000],
    [3] * 50 + [70001],
]


@pytest.mark.parametrize("sizes", NORM_SIZES, ids=lambda s: f"{len(s)}tensors-{sum(s)}")
def test_global_norm_against_numpy_reference_and_threads(isa: str, dtype: np.dtype, sizes: List[int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    xs = [(rng.standard_normal(n) * rng.choice([1e-3, 1.0, 1e3])).astype(dtype) for n in sizes]
    want = float(np.linalg.norm(np.concatenate([x.astype(np.float64) for x in xs])))
    spec = reference.global_norm(xs)
    got = {t: functional.global_norm(xs, threads=t) for t in (1, 2, 3, 4, 8)}
    for t, v in got.items():
        assert v.hex() == spec.hex(), f"threads={t}: {v!r} vs the reference {spec!r}"
    assert math.isclose(spec, want, rel_tol=1e-13, abs_tol=0.0)


def test_global_norm_identical_across_isas(dtype: np.dtype) -> None:
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal(n).astype(dtype) * 10.0 ** rng.integers(-5, 5) for n in (17, 30000, 4097, 100003)]
    values = {}
    try:
        for isa in _core.supported_isas():
            _core._force_isa(isa)
            values[isa] = {t: functional.global_norm(xs, threads=t).hex() for t in (1, 2, 3, 4, 8)}
    finally:
        _core._force_isa(None)
    flat = {v for per in values.values() for v in per.values()}
    assert len(flat) == 1, values
    assert flat == {reference.global_norm(xs).hex()}


def test_global_norm_mixed_dtypes_and_nonfinite() -> None:
    rng = np.random.default_rng(12)
    xs = [
        rng.standard_normal(100).astype(np.float32),
        rng.standard_normal(300),
        rng.standard_normal(7).astype(np.float32),
    ]
    assert functional.global_norm(xs).hex() == reference.global_norm(xs).hex()
    want = float(np.linalg.norm(np.concatenate([x.astype(np.float64) for x in xs])))
    assert math.isclose(functional.global_norm(xs), want, rel_tol=1e-13)
    xs[1][5] = np.inf
    assert functional.global_norm(xs) == math.inf
    xs[1][6] = np.nan
    assert math.isnan(functional.global_norm(xs))
    assert functional.global_norm([np.zeros(0, np.float32)]) == 0.0
    big = np.full(10, 3e38, np.float32)  # squares overflow float32, not the float64 sum
    assert math.isclose(functional.global_norm(big), 3e38 * math.sqrt(10), rel_tol=1e-7)


def test_global_norm_rejects_bad_arrays() -> None:
    with pytest.raises(TypeError):
        functional.global_norm([np.ones(3, np.int64)])
    with pytest.raises(ValueError, match="C-contiguous"):
        functional.global_norm([np.ones((4, 4))[:, 1]])


# ================================================================================================
# clipping by global norm in the step
# ================================================================================================
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("algo", list(ALGOS))
def test_functional_clip_by_global_norm(isa: str, dtype: np.dtype, algo: str, max_norm: float) -> None:
    fun = Run(algo, dtype, seed=13)
    ref = fun.copy()
    for t in range(3):
        gs = fun.grads(3.0)
        norm = fun.functional(gs, max_grad_norm=max_norm, grad_scale=4.0, threads=1 + t)
        spec = reference.global_norm(gs) / 4.0
        assert norm is not None and norm.hex() == spec.hex()
        coef = min(1.0, max_norm / (spec + 1e-6))
        ref.reference(gs, grad_scale=4.0, clip_coef=coef)
        fun.assert_equal(ref, f"step {t + 1}")
    if max_norm < 1:
        assert coef < 0.1  # the clip did act


def test_class_clip_spans_every_group_and_dtype() -> None:
    rng = np.random.default_rng(14)
    ps = _mixed_params(15)
    opt = fusedopt.Adam([{"params": ps[:2], "lr": 0.01}, {"params": ps[2:], "lr": 0.02}])
    ref_ps = [p.copy() for p in ps]
    ref_st = [[np.zeros_like(p), np.zeros_like(p)] for p in ps]
    for t in range(1, 4):
        gs = [rng.standard_normal(p.shape).astype(p.dtype) * 5 for p in ps]
        gs[1] = None if t == 2 else gs[1]  # a missing gradient: not part of the norm, not stepped
        present = [g for g in gs if g is not None]
        norm = opt.step(gs, max_grad_norm=2.0)
        want = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in present))
        assert math.isclose(norm, want, rel_tol=1e-12)
        assert norm.hex() == reference.global_norm(present).hex()
        coef = min(1.0, 2.0 / (norm + 1e-6))
        for i, g in enumerate(gs):
            if g is None:
                continue
            reference.adam(ref_ps[i], g, *ref_st[i], step=opt.state[i]["step"], lr=0.01 if i < 2 else 0.02,
                           clip_coef=coef)  # fmt: skip
    for a, b in zip(opt.params, ref_ps):
        assert_bitwise(a, b, "params")


def test_class_step_returns_none_without_norm_options() -> None:
    opt = fusedopt.SGD([np.ones(3)], lr=0.1)
    assert opt.step([np.ones(3)]) is None
    assert opt.step([np.ones(3)], clip_value=0.1) is None
    assert opt.step([np.ones(3)], max_grad_norm=math.inf) == pytest.approx(math.sqrt(3))


def _torch() -> Any:
    # per test, so that the rest of this module still runs where torch is not installed
    return pytest.importorskip("torch", reason="torch parity of clipping needs torch")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_clip_grad_norm_matches_torch(name: str) -> None:
    torch = _torch()
    rng = np.random.default_rng(16)
    shapes = [(30, 20), (20,), (5000,)]
    ps = [rng.standard_normal(s) for s in shapes]
    kw = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01), "RMSprop": dict(lr=0.01),
          "Adagrad": dict(lr=0.1)}[name]  # fmt: skip
    ours = getattr(fusedopt, name)([p.copy() for p in ps], **kw)
    tps = [torch.tensor(p, requires_grad=True) for p in ps]
    theirs = getattr(torch.optim, name)(tps, **kw)
    for _ in range(5):
        gs = [rng.standard_normal(s) * 3.0 for s in shapes]
        norm = ours.step(gs, max_grad_norm=1.5, grad_scale=8.0, clip_value=None)
        for tp, g in zip(tps, gs):
            tp.grad = torch.tensor(g / 8.0)
        tnorm = torch.nn.utils.clip_grad_norm_(tps, 1.5)
        theirs.step()
        assert math.isclose(norm, float(tnorm), rel_tol=1e-12)
    for p, tp in zip(ours.params, tps):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_clip_value_matches_torch_clip_grad_value() -> None:
    torch = _torch()
    rng = np.random.default_rng(17)
    p = rng.standard_normal(1000)
    ours = fusedopt.SGD([p.copy()], lr=0.1, momentum=0.9)
    tp = torch.tensor(p, requires_grad=True)
    theirs = torch.optim.SGD([tp], lr=0.1, momentum=0.9)
    for _ in range(4):
        g = rng.standard_normal(1000) * 2
        ours.step([g], clip_value=0.3)
        tp.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_value_([tp], 0.3)
        theirs.step()
    np.testing.assert_allclose(ours.params[0], tp.detach().numpy(), rtol=1e-13, atol=1e-15)


# ================================================================================================
# bad options: refused before anything changes
# ================================================================================================
BAD = [
    (dict(grad_scale=0.0), ValueError, "grad_scale"),
    (dict(grad_scale=-2.0), ValueError, "grad_scale"),
    (dict(grad_scale=np.nan), ValueError, "grad_scale"),
    (dict(grad_scale=np.ones(2)), ValueError, "grad_scale"),
    (dict(grad_scale="2"), TypeError, "grad_scale"),
    (dict(clip_value=-1.0), ValueError, "clip_value"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=1.0, clip_coef=0.5), ValueError, "clip_coef"),
    (dict(clip_coef=-0.1), ValueError, "clip_coef"),
    (dict(skip_if_nonfinite=1), TypeError, "skip_if_nonfinite"),
    (dict(found_inf="yes"), TypeError, "found_inf"),
]


@pytest.mark.parametrize(("kw", "exc", "word"), BAD, ids=[f"{list(b[0])[0]}={list(b[0].values())[-1]!r}" for b in BAD])
def test_bad_options_change_nothing(kw: Dict[str, Any], exc: type, word: str) -> None:
    run = Run("adam", np.float32, seed=18)
    before = run.copy()
    with pytest.raises(exc, match=word):
        run.functional(run.grads(), **kw)
    run.assert_equal(before, "after a refused call")
    if "clip_coef" in kw:
        return  # a functional-only option
    ps = _mixed_params(19)
    opt = fusedopt.Adam(ps)
    snap = snapshot(opt)
    with pytest.raises(exc, match=word):
        opt.step([np.ones_like(p) for p in ps], **kw)
    assert_snapshot(opt, snap)


def test_bad_gradient_with_clipping_changes_nothing_and_names_it() -> None:
    ps = _mixed_params(20)
    opt = fusedopt.Adam(ps)
    opt.step([np.ones_like(p) for p in ps])
    snap = snapshot(opt)
    gs = [np.ones_like(p) for p in ps]
    gs[2] = np.ones(ps[2].shape, np.float64)
    with pytest.raises(TypeError, match=r"grads\[2\]"):
        opt.step(gs, max_grad_norm=1.0)
    assert_snapshot(opt, snap)
