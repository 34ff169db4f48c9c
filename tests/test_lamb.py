"""LAMB: the two-phase kernel (``_core.lamb``, cpp/kernels/trust.inl + lamb.inl) against its
specification :func:`fusedopt.reference.lamb` bitwise (every ISA, float32/float64, threads 1/2/3,
edge sizes around the 2048-element norm blocks and the SIMD widths, zero-norm tensors, flags),
the first step computed by hand, the functional, the NumPy class :class:`fusedopt.LAMB`, the torch
drop-in :class:`fusedopt.torch.Lamb` against torch_optimizer's ``Lamb`` (parity over 20 steps and
state dicts both ways, when torch_optimizer is installed), and bad input (raises, nothing modified).
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, _scalars, reference
from fusedopt import functional as F
from fusedopt.algorithms.lamb import NO_CLAMP

BLOCK = reference.NORM_BLOCK
# sizes: empty, SIMD widths and neighbours, one block and its neighbours, several blocks with a tail
SIZES = [0, 1, 7, 8, 9, 17, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 5 * BLOCK]
THREADS = [1, 2, 3]
N_STEPS = 5

CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.01, "bias_correction": False, "clamp_value": 10.0},
    {"weight_decay": 0.01, "bias_correction": False, "debias": True, "clamp_value": 0.5},
    {"adam": True, "weight_decay": 0.05},
    {"maximize": True, "beta1": 0.5, "beta2": 0.9, "eps": 1e-3},
    {"grad_scale": 1024.0, "clip_coef": 0.5, "clip_value": 0.3, "weight_decay": 0.01},
]


def _id(c: Dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items()) or "defaults"


def kernel_lamb(
    params: List[np.ndarray], grads: List[np.ndarray], exp_avgs: List[np.ndarray], exp_avg_sqs: List[np.ndarray],
    *, step: int, threads: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
    weight_decay: float = 0.0, clamp_value: float = NO_CLAMP, bias_correction: bool = True, debias: bool = False,
    adam: bool = False, maximize: bool = False, grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None, clip_value: Optional[float] = None,
) -> None:  # fmt: skip
    """One step through the compiled binding, called as the functional layer calls it."""
    s = _scalars.lamb_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                              clamp_value=clamp_value, bias_correction=bias_correction, debias=debias)  # fmt: skip
    gs = _scalars.GradScalars(
        1.0 if grad_scale is None else grad_scale,
        1.0 if clip_coef is None else clip_coef,
        math.inf if clip_value is None else clip_value,
    )
    _core.lamb(params, grads, exp_avgs, exp_avg_sqs, *s, *gs, maximize, adam, threads)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Bitwise equal, except that any NaN equals any NaN."""
    a, e = actual.reshape(-1), expected.reshape(-1)
    same = (_bits(a) == _bits(e)) | (np.isnan(a) & np.isnan(e))
    if not np.all(same):
        bad = np.flatnonzero(~same)
        sample = ", ".join(f"[{i}] got {a[i]!r} want {e[i]!r}" for i in bad[:5])
        pytest.fail(f"{what}: {bad.size} of {a.size} elements differ: {sample}")


def _tensors(rng: np.random.Generator, dtype: np.dtype) -> List[np.ndarray]:
    """Every edge size, plus tensors whose norms are zero: a zero parameter (||p|| = 0), and a
    second zero parameter whose gradients stay zero (||u|| = 0 too)."""
    ps = []
    for n in SIZES:
        p = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])).astype(dtype)
        p[rng.random(n) < 0.05] = 0.0
        ps.append(p)
    ps += [np.zeros(BLOCK + 3, dtype), np.zeros(100, dtype), np.zeros((3, 4), dtype)]
    return ps


def _grads(rng: np.random.Generator, ps: List[np.ndarray], t: int) -> List[np.ndarray]:
    gs = [(rng.standard_normal(p.shape) * [1.0, 1e-3, 10.0, 0.3][t % 4]).astype(p.dtype) for p in ps]
    gs[-2][...] = 0.0  # with a zero parameter and no decay: u == 0, ratio 1
    if t == 3:
        gs[-1][...] = 0.0  # a zero gradient once (not a zero u: m != 0)
    return gs


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_lamb_kernel_matches_reference(isa: str, dtype: np.dtype, config: Dict[str, Any]) -> None:
    """One call over every tensor per step, each thread count; the reference per tensor."""
    rng = np.random.default_rng(zlib.crc32(repr((_id(config), str(dtype))).encode()))
    p0 = _tensors(rng, dtype)
    ref = [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for p in p0]
    runs = {th: [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for p in p0] for th in THREADS}
    cfg = dict(config, lr=0.01)
    for t in range(1, N_STEPS + 1):
        gs = _grads(rng, p0, t)
        g_copy = [g.copy() for g in gs]
        with np.errstate(all="ignore"):
            for (rp, rm, rv), g in zip(ref, gs):
                reference.lamb(rp, g, rm, rv, step=t, **cfg)
        for th, st in runs.items():
            kernel_lamb([s[0] for s in st], gs, [s[1] for s in st], [s[2] for s in st], step=t, threads=th, **cfg)
            for i, ((kp, km, kv), (rp, rm, rv)) in enumerate(zip(st, ref)):
                where = f"{_id(config)} {dtype} threads={th} step {t} tensor {i} (size {rp.size})"
                assert_same(kp, rp, f"{where}: param")
                assert_same(km, rm, f"{where}: exp_avg")
                assert_same(kv, rv, f"{where}: exp_avg_sq")
            assert all(np.array_equal(g, c) for g, c in zip(gs, g_copy)), "grads modified"
    big = ref[SIZES.index(5 * BLOCK)][0]
    assert not np.array_equal(big, p0[SIZES.index(5 * BLOCK)]) and np.isfinite(big).all()


def test_lamb_zero_norm_rule(dtype: np.dtype) -> None:
    """||p|| == 0 or ||u|| == 0: ratio 1 (the step is Adam's); a zero gradient with a zero
    parameter leaves the parameter at zero."""
    T = dtype.type
    p = [np.zeros(10, dtype), np.zeros(5, dtype), np.full(4, 2.0, dtype)]
    g = [np.full(10, 0.5, dtype), np.zeros(5, dtype), np.zeros(4, dtype)]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    kernel_lamb(p, g, m, v, step=1, threads=1, lr=0.1)
    s = _scalars.lamb_scalars(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0,
                              clamp_value=NO_CLAMP, bias_correction=True, debias=False)  # fmt: skip
    u = (T(s.m_scale) * m[0]) / (np.sqrt(v[0]) + T(s.eps))
    assert np.array_equal(p[0], T(-0.1) * u)  # ratio 1: p = 0 + (-lr)*u
    assert np.allclose(p[0], -0.1 * 0.5 / (0.5 + 1e-6), rtol=1e-6)
    assert not np.signbit(p[1]).any() and (p[1] == 0).all()  # u == 0 (ratio 1): 0 + (-lr)*0 = +0
    assert (p[2] == 2.0).all()  # ||u|| == 0: nothing moves


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_lamb_result_independent_of_thread_count(dtype: np.dtype, threads: int) -> None:
    """Many tensors of mixed sizes in one call: bitwise the same for every thread count."""
    rng = np.random.default_rng(11)
    shapes = [(), (0,), (1,), (15,), (3, 5), (BLOCK * 7 + 1,), (33,), (64, 64), (20000,), (2,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    outs = []
    for th in (1, threads):
        q = [p.copy() for p in ps]
        m = [np.zeros_like(p) for p in ps]
        v = [np.zeros_like(p) for p in ps]
        for t in range(1, 4):
            g = [np.random.default_rng(t).standard_normal(s).astype(dtype) for s in shapes]
            kernel_lamb(q, g, m, v, step=t, threads=th, lr=0.02, weight_decay=0.1)
        outs.append(q)
    for a, b in zip(*outs):
        assert _bits(a).tobytes() == _bits(b).tobytes()


def test_lamb_first_step_by_hand() -> None:
    """Step 1 with bias correction: m_hat = g, v_hat = g^2, so u = g/(|g| + eps) + wd*p and
    p1 = p - lr*||p||/||u|| * u (float64, computed here with the textbook formulas)."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal((7, 300))
    g = rng.standard_normal((7, 300))
    lr, wd, eps = 0.05, 0.1, 1e-6
    u = g / (np.abs(g) + eps) + wd * p
    expected = p - lr * (np.linalg.norm(p) / np.linalg.norm(u)) * u
    got = p.copy()
    F.lamb(got, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=lr, weight_decay=wd, eps=eps)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    # torch_optimizer's form (no bias correction) at step 1: u = (1-b1)g/(sqrt(1-b2)|g| + eps)
    u2 = 0.1 * g / (math.sqrt(0.001) * np.abs(g) + eps) + wd * p
    expected2 = p - lr * (min(np.linalg.norm(p), 10.0) / np.linalg.norm(u2)) * u2
    got2 = p.copy()
    F.lamb(got2, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=lr, weight_decay=wd, eps=eps,
           bias_correction=False, clamp_value=10.0)  # fmt: skip
    np.testing.assert_allclose(got2, expected2, rtol=1e-12, atol=1e-15)
    assert np.linalg.norm(p) > 10.0  # the clamp was active


def test_lamb_functional_and_class_match_reference(dtype: np.dtype) -> None:
    rng = np.random.default_rng(8)
    shapes = [(5000,), (40, 3), (1,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fp = [p.copy() for p in ps]
    fm, fv = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    cp = [p.copy() for p in ps]
    opt = fusedopt.LAMB(cp, lr=0.01, weight_decay=0.02, clamp_value=5.0)
    ref = [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for p in ps]
    for t in range(1, 6):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        F.lamb(fp, gs, fm, fv, step=t, lr=0.01, weight_decay=0.02, clamp_value=5.0)
        opt.step(gs)
        for (rp, rm, rv), g in zip(ref, gs):
            reference.lamb(rp, g, rm, rv, step=t, lr=0.01, weight_decay=0.02, clamp_value=5.0)
        for i in range(len(ps)):
            assert_same(fp[i], ref[i][0], f"functional param {i} step {t}")
            assert_same(cp[i], ref[i][0], f"class param {i} step {t}")
    sd = opt.state_dict()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "step"] and sd["state"][0]["step"] == 5
    assert_same(sd["state"][0]["exp_avg_sq"], ref[0][2], "state_dict exp_avg_sq")


def test_lamb_bad_input_raises_and_modifies_nothing() -> None:
    p = [np.ones(8, np.float32), np.ones(3, np.float32)]
    g = [np.ones(8, np.float32), np.ones(3, np.float32)]
    m = [np.zeros(8, np.float32), np.zeros(3, np.float32)]
    v = [np.zeros(8, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[1\]"):
        F.lamb(p, g, m, v, step=1)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        F.lamb(p, [g[0].astype(np.float64), g[1]], m, [v[0], np.zeros(3, np.float32)], step=1)
    v[1] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="bias_correction=True and debias=True"):
        F.lamb(p, g, m, v, step=1, debias=True)
    with pytest.raises(ValueError, match="clamp_value"):
        F.lamb(p, g, m, v, step=1, clamp_value=-1.0)
    with pytest.raises(ValueError, match="step"):
        F.lamb(p, g, m, v, step=0)
    h = [np.ones(3, np.float16) for _ in range(2)]
    z = [np.zeros(3, np.float16) for _ in range(2)]
    with pytest.raises(TypeError, match="lamb steps float32 or float64 arrays only"):
        F.lamb([h[0]], [h[1]], [z[0]], [z[1]], step=1)
    with pytest.raises(TypeError, match="lamb steps float32 or float64 arrays only"):
        F.lamb([h[0]], [h[1]], [z[0]], [z[1]], step=1, masters=[np.ones(3, np.float32)])
    assert all((x == 1).all() for x in p + h) and all((x == 0).all() for x in m + v + z)
    with pytest.raises(ValueError, match="bias_correction=True and debias=True"):
        fusedopt.LAMB([np.ones(3)], debias=True)
    with pytest.raises(ValueError, match="lr"):
        fusedopt.LAMB([np.ones(3)], lr=-1.0)


# ---- the torch drop-in against torch_optimizer's Lamb ------------------------------------------

torch = pytest.importorskip("torch")


def _torch_optimizer() -> Any:
    return pytest.importorskip("torch_optimizer")


TORCH_CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 0.01},
    {"weight_decay": 0.01, "debias": True},
    {"clamp_value": 0.5, "weight_decay": 0.1},
    {"adam": True},
    {"debias": True, "clamp_value": 1e4, "betas": (0.8, 0.99), "eps": 1e-4},
]


def _model(dtype: Any) -> List[Any]:
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 33), (33,), (5000,), (3, 3, 3), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype) * 0.5) for s in shapes]


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=_id)
@pytest.mark.parametrize("tdtype", ["float32", "float64"])
def test_lamb_torch_matches_torch_optimizer(config: Dict[str, Any], tdtype: str) -> None:
    """20 steps against torch_optimizer.Lamb. The norms differ (torch.norm accumulates in its own
    float32 order, SEMANTICS-ALGORITHMS.md §9) and torch's ``add_(alpha=)``/``addcmul_`` round once
    (fma) where fusedopt rounds twice: float32 within 2e-5 relative, float64 1e-12."""
    topt = _torch_optimizer()
    import fusedopt.torch as ft

    dtype = getattr(torch, tdtype)
    ours, theirs = _model(dtype), _model(dtype)
    a = ft.Lamb(ours, lr=0.01, **config)
    b = topt.Lamb(theirs, lr=0.01, **config)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype) * 0.1
            q.grad = p.grad.clone()
        a.step()
        b.step()
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=rtol * 1e-2)
        for key in ("exp_avg", "exp_avg_sq"):
            want = b.state[q][key]  # (torch's moments use fma: an ulp apart, so near-zero elements need atol)
            torch.testing.assert_close(a.state[p][key], want, rtol=rtol, atol=rtol * float(want.abs().max()))
        assert float(a.state[p]["step"]) == b.state[q]["step"] == 20


def test_lamb_torch_state_dict_both_ways() -> None:
    topt = _torch_optimizer()
    import fusedopt.torch as ft

    ours, theirs = _model(torch.float32), _model(torch.float32)
    a = ft.Lamb(ours, lr=0.01, weight_decay=0.01)
    b = topt.Lamb(theirs, lr=0.01, weight_decay=0.01)
    for opt, ps in ((a, ours), (b, theirs)):
        for p in ps:
            p.grad = torch.full_like(p, 0.1)
        opt.step()
    # torch_optimizer's state (int step, diagnostic entries) into ours, then a step each: the same
    a2 = ft.Lamb([torch.nn.Parameter(q.detach().clone()) for q in theirs], lr=0.01, weight_decay=0.01)
    a2.load_state_dict(copy.deepcopy(b.state_dict()))  # (torch's loader shares same-dtype tensors)
    st = a2.state[a2.param_groups[0]["params"][0]]
    assert torch.is_tensor(st["step"]) and float(st["step"]) == 1
    # ours into torch_optimizer
    b2 = topt.Lamb([torch.nn.Parameter(p.detach().clone()) for p in ours], lr=0.01, weight_decay=0.01)
    b2.load_state_dict(copy.deepcopy(a.state_dict()))
    for opt in (a2, b2, a, b):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.full_like(p, -0.2)
        opt.step()
    for p, q in zip(a2.param_groups[0]["params"], b.param_groups[0]["params"]):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    for p, q in zip(b2.param_groups[0]["params"], a.param_groups[0]["params"]):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_lamb_torch_checks_like_torch_optimizer() -> None:
    import fusedopt.torch as ft

    w = [torch.nn.Parameter(torch.ones(3))]
    for kw, msg in [({"lr": 0.0}, "Invalid learning rate: 0.0"), ({"eps": -1.0}, "Invalid epsilon value: -1.0"),
                    ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0: 1.0"),
                    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
                    ({"weight_decay": -1}, "Invalid weight_decay value: -1"),
                    ({"clamp_value": -2.0}, "Invalid clamp value: -2.0")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            ft.Lamb(w, **kw)
    opt = ft.Lamb([torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(TypeError):
        opt.step()
    assert (opt.param_groups[0]["params"][0] == 1).all()
