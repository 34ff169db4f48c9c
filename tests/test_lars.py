"""LARS: the two-phase kernel (``_core.lars``, cpp/kernels/trust.inl + lars.inl) against its
specification :func:`fusedopt.reference.lars` bitwise (every ISA, float32/float64, threads 1/2/3,
edge sizes around the 2048-element norm blocks and the SIMD widths, zero-norm tensors, flags),
the first step computed by hand, the functional, the NumPy class :class:`fusedopt.LARS`, the torch
drop-in :class:`fusedopt.torch.LARS` against barlowtwins' ``LARS`` (written here from its
formulas: parity over 20 steps with its filters, state dicts both ways), and bad input.
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

BLOCK = reference.NORM_BLOCK
SIZES = [0, 1, 7, 8, 9, 17, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 5 * BLOCK]
THREADS = [1, 2, 3]
N_STEPS = 5

CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.01, "lars_adaptation": False},
    {"maximize": True, "momentum": 0.0, "eta": 0.02, "eps": 1e-3},
    {"grad_scale": 1024.0, "clip_coef": 0.5, "clip_value": 0.3, "weight_decay": 0.01},
]


def _id(c: Dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items()) or "defaults"


def kernel_lars(
    params: List[np.ndarray], grads: List[np.ndarray], mus: List[np.ndarray], *, threads: int, lr: float = 0.1,
    momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3, eps: float = 0.0,
    lars_adaptation: bool = True, maximize: bool = False, grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None, clip_value: Optional[float] = None,
) -> None:  # fmt: skip
    """One step through the compiled binding, called as the functional layer calls it."""
    s = _scalars.lars_scalars(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps)
    gs = _scalars.GradScalars(
        1.0 if grad_scale is None else grad_scale,
        1.0 if clip_coef is None else clip_coef,
        math.inf if clip_value is None else clip_value,
    )
    _core.lars(params, grads, mus, *s, *gs, maximize, lars_adaptation, threads)


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
    """Every edge size, plus zero parameters (||p|| = 0), one of them with zero gradients (||d|| = 0)."""
    ps = []
    for n in SIZES:
        p = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])).astype(dtype)
        p[rng.random(n) < 0.05] = 0.0
        ps.append(p)
    ps += [np.zeros(BLOCK + 3, dtype), np.zeros(100, dtype), np.zeros((3, 4), dtype)]
    return ps


def _grads(rng: np.random.Generator, ps: List[np.ndarray], t: int) -> List[np.ndarray]:
    gs = [(rng.standard_normal(p.shape) * [1.0, 1e-3, 10.0, 0.3][t % 4]).astype(p.dtype) for p in ps]
    gs[-2][...] = 0.0
    if t == 3:
        gs[-1][...] = 0.0
    return gs


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_lars_kernel_matches_reference(isa: str, dtype: np.dtype, config: Dict[str, Any]) -> None:
    rng = np.random.default_rng(zlib.crc32(repr((_id(config), str(dtype))).encode()))
    p0 = _tensors(rng, dtype)
    ref = [(p.copy(), np.zeros_like(p)) for p in p0]
    runs = {th: [(p.copy(), np.zeros_like(p)) for p in p0] for th in THREADS}
    for t in range(1, N_STEPS + 1):
        gs = _grads(rng, p0, t)
        g_copy = [g.copy() for g in gs]
        lr = 0.0 if t == 2 else 0.1
        with np.errstate(all="ignore"):
            for (rp, rm), g in zip(ref, gs):
                reference.lars(rp, g, rm, lr=lr, **config)
        for th, st in runs.items():
            kernel_lars([s[0] for s in st], gs, [s[1] for s in st], threads=th, lr=lr, **config)
            for i, ((kp, km), (rp, rm)) in enumerate(zip(st, ref)):
                where = f"{_id(config)} {dtype} threads={th} step {t} tensor {i} (size {rp.size})"
                assert_same(kp, rp, f"{where}: param")
                assert_same(km, rm, f"{where}: mu")
            assert all(np.array_equal(g, c) for g, c in zip(gs, g_copy)), "grads modified"
    big = ref[SIZES.index(5 * BLOCK)][0]
    assert not np.array_equal(big, p0[SIZES.index(5 * BLOCK)]) and np.isfinite(big).all()


def test_lars_zero_norm_rule(dtype: np.dtype) -> None:
    """||p|| == 0 or ||d|| == 0: q = 1 (plain momentum SGD for that tensor)."""
    T = dtype.type
    p = [np.zeros(10, dtype), np.full(4, 2.0, dtype)]
    g = [np.full(10, 0.5, dtype), np.zeros(4, dtype)]
    mu = [np.zeros_like(x) for x in p]
    kernel_lars(p, g, mu, threads=1, lr=0.1)
    assert (mu[0] == T(0.5)).all() and (p[0] == T(-0.1) * T(0.5)).all()
    assert (mu[1] == 0).all() and (p[1] == 2.0).all()


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_lars_result_independent_of_thread_count(dtype: np.dtype, threads: int) -> None:
    rng = np.random.default_rng(12)
    shapes = [(), (0,), (1,), (15,), (3, 5), (BLOCK * 7 + 1,), (33,), (64, 64), (20000,), (2,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    outs = []
    for th in (1, threads):
        q = [p.copy() for p in ps]
        mu = [np.zeros_like(p) for p in ps]
        for t in range(1, 4):
            g = [np.random.default_rng(t).standard_normal(s).astype(dtype) for s in shapes]
            kernel_lars(q, g, mu, threads=th, lr=0.5, weight_decay=0.1)
        outs.append(q + mu)
    for a, b in zip(*outs):
        assert _bits(a).tobytes() == _bits(b).tobytes()


def test_lars_first_step_by_hand() -> None:
    """Step 1 (mu = 0): d = g + wd*p, q = eta*||p||/||d||, mu = q*d, p1 = p - lr*q*d (float64)."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal((9, 500))
    g = rng.standard_normal((9, 500))
    lr, wd, eta = 0.3, 1e-4, 0.001
    d = g + wd * p
    q = eta * np.linalg.norm(p) / np.linalg.norm(d)
    got, mu = p.copy(), np.zeros_like(p)
    F.lars(got, g, mu, lr=lr, weight_decay=wd, eta=eta)
    np.testing.assert_allclose(mu, q * d, rtol=1e-13, atol=1e-18)
    np.testing.assert_allclose(got, p - lr * q * d, rtol=1e-13, atol=1e-18)
    got2, mu2 = p.copy(), np.zeros_like(p)
    F.lars(got2, g, mu2, lr=lr, weight_decay=wd, lars_adaptation=False)
    np.testing.assert_allclose(got2, p - lr * d, rtol=1e-13, atol=1e-18)


def test_lars_functional_and_class_match_reference(dtype: np.dtype) -> None:
    rng = np.random.default_rng(9)
    shapes = [(5000,), (40, 3), (1,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    fp, fm = [p.copy() for p in ps], [np.zeros_like(p) for p in ps]
    cp = [p.copy() for p in ps]
    opt = fusedopt.LARS(cp, lr=0.2, weight_decay=1e-3, eta=0.01)
    ref = [(p.copy(), np.zeros_like(p)) for p in ps]
    for t in range(1, 6):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        F.lars(fp, gs, fm, lr=0.2, weight_decay=1e-3, eta=0.01)
        opt.step(gs)
        for (rp, rm), g in zip(ref, gs):
            reference.lars(rp, g, rm, lr=0.2, weight_decay=1e-3, eta=0.01)
        for i in range(len(ps)):
            assert_same(fp[i], ref[i][0], f"functional param {i} step {t}")
            assert_same(cp[i], ref[i][0], f"class param {i} step {t}")
    sd = opt.state_dict()
    assert sorted(sd["state"][0]) == ["mu"]
    assert_same(sd["state"][0]["mu"], ref[0][1], "state_dict mu")


def test_lars_bad_input_raises_and_modifies_nothing() -> None:
    p = [np.ones(8, np.float32), np.ones(3, np.float32)]
    g = [np.ones(8, np.float32), np.ones(3, np.float32)]
    m = [np.zeros(8, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=r"mus\[1\]"):
        F.lars(p, g, m, lr=0.1)
    m[1] = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        F.lars(p, [g[0].astype(np.float64), g[1]], m, lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        F.lars(p, g, m, lr=0.1, eta=-1.0)
    with pytest.raises(TypeError, match="lr"):
        F.lars(p, g, m)  # lr is required
    h = [np.ones(3, np.float16) for _ in range(2)]
    z = np.zeros(3, np.float16)
    with pytest.raises(TypeError, match="lars steps float32 or float64 arrays only"):
        F.lars([h[0]], [h[1]], [z], lr=0.1)
    assert all((x == 1).all() for x in p + h) and all((x == 0).all() for x in m + [z])
    with pytest.raises(ValueError, match="momentum"):
        fusedopt.LARS([np.ones(3)], lr=0.1, momentum=-0.5)


# ---- the torch drop-in against barlowtwins' LARS -------------------------------------------------

torch = pytest.importorskip("torch")


class _BarlowLARS(torch.optim.Optimizer):  # type: ignore[misc,name-defined]
    """barlowtwins' ``LARS`` (SEMANTICS-ALGORITHMS.md §8), from its formulas, in torch ops."""

    def __init__(self, params: Any, lr: float, weight_decay: float = 0, momentum: float = 0.9, eta: float = 0.001,
                 weight_decay_filter: bool = False, lars_adaptation_filter: bool = False) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      weight_decay_filter=weight_decay_filter,
                                      lars_adaptation_filter=lars_adaptation_filter))  # fmt: skip

    @torch.no_grad()
    def step(self) -> None:
        for grp in self.param_groups:
            for p in grp["params"]:
                if p.grad is None:
                    continue
                one_d = p.ndim == 1
                d = p.grad
                if not (grp["weight_decay_filter"] and one_d):
                    d = d.add(p, alpha=grp["weight_decay"])
                if not (grp["lars_adaptation_filter"] and one_d):
                    pn, dn = torch.norm(p), torch.norm(d)
                    one = torch.ones_like(pn)
                    q = torch.where(pn > 0.0, torch.where(dn > 0, grp["eta"] * pn / dn, one), one)
                    d = d.mul(q)
                st = self.state[p]
                if "mu" not in st:
                    st["mu"] = torch.zeros_like(p)
                st["mu"].mul_(grp["momentum"]).add_(d)
                p.add_(st["mu"], alpha=-grp["lr"])


TORCH_CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 1e-3},
    {"weight_decay": 1e-2, "weight_decay_filter": True, "lars_adaptation_filter": True},
    {"weight_decay": 1e-2, "lars_adaptation_filter": True, "momentum": 0.5, "eta": 0.02},
    {"weight_decay": 1e-2, "weight_decay_filter": True},
]


def _model(dtype: Any) -> List[Any]:
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 33), (33,), (5000,), (3, 3, 3), (1,), (8, 1)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype) * 0.5) for s in shapes]


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=_id)
@pytest.mark.parametrize("tdtype", ["float32", "float64"])
def test_lars_torch_matches_barlowtwins(config: Dict[str, Any], tdtype: str) -> None:
    """20 steps, two param groups. The norms differ (torch.norm's float32 order, §9) and torch's
    ``add(alpha=)`` rounds once (fma): float32 within 2e-5 relative to each element (or to its
    tensor's largest element, for elements that cancel to near zero), float64 1e-12."""
    import fusedopt.torch as ft

    dtype = getattr(torch, tdtype)
    ours, theirs = _model(dtype), _model(dtype)
    a = ft.LARS([{"params": ours[:3]}, {"params": ours[3:], "lr": 0.05}], lr=0.2, **config)
    b = _BarlowLARS([{"params": theirs[:3]}, {"params": theirs[3:], "lr": 0.05}], lr=0.2, **config)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    for p, q in zip(ours, theirs):
        # (an element that cancels to near zero keeps the absolute error of its tensor's scale)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=rtol * float(q.detach().abs().max()))
        want = b.state[q]["mu"]
        torch.testing.assert_close(a.state[p]["mu"], want, rtol=rtol, atol=rtol * float(want.abs().max()))
        assert sorted(a.state[p]) == ["mu"]


def test_lars_torch_state_dict_both_ways() -> None:
    import fusedopt.torch as ft

    kw = dict(lr=0.2, weight_decay=1e-2, weight_decay_filter=True, lars_adaptation_filter=True)
    ours, theirs = _model(torch.float32), _model(torch.float32)
    a, b = ft.LARS(ours, **kw), _BarlowLARS(theirs, **kw)
    for opt, ps in ((a, ours), (b, theirs)):
        for p in ps:
            p.grad = torch.full_like(p, 0.1)
        opt.step()
    a2 = ft.LARS([torch.nn.Parameter(q.detach().clone()) for q in theirs], **kw)
    a2.load_state_dict(copy.deepcopy(b.state_dict()))
    b2 = _BarlowLARS([torch.nn.Parameter(p.detach().clone()) for p in ours], **kw)
    b2.load_state_dict(copy.deepcopy(a.state_dict()))
    for opt in (a2, b2, a, b):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.full_like(p, -0.2) + 0.01 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape)
        opt.step()
    for x, y in ((a2, b), (b2, a)):
        for p, q in zip(x.param_groups[0]["params"], y.param_groups[0]["params"]):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_lars_torch_refuses_low_precision_and_modifies_nothing() -> None:
    import fusedopt.torch as ft

    w = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = ft.LARS([w], lr=0.1)
    w.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(TypeError):
        opt.step()
    assert (w == 1).all() and not opt.state
    with pytest.raises(ValueError, match="weight_decay"):
        ft.LARS([torch.nn.Parameter(torch.ones(3))], lr=0.1, weight_decay=-1.0)
