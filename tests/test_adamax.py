"""Adamax (issue 16): parity with ``torch.optim.Adamax`` over 20 steps for every flag combination,
state dicts both ways, the textbook first step by hand, bad input. (Kernel vs reference bitwise on
every ISA and thread count: tests/test_kernels_vs_reference.py's flag grid.)

Tolerance: fusedopt's ``u = max(b2*u, |g|+eps)`` and ``p + (S*m)/u`` are torch's own operations in
torch's order; only ``m`` (torch: a lerp, i.e. an FMA) and the L2 term (torch: ``add(alpha=)``, an
FMA) round differently, so float32 agrees to ~1e-7 relative after 20 steps (measured 6e-8, bound
1e-6) and float64 to ~1e-15 (bound 1e-13).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Dict, List

import numpy as np
import pytest

import fusedopt
from fusedopt import functional as F
from fusedopt import reference

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

N_STEPS = 20
SHAPES = [(), (1,), (17,), (8, 125), (4099,)]
RTOL = {torch.float32: 1e-6, torch.float64: 1e-13}
FLAGS = [dict(weight_decay=wd, maximize=mx) for wd, mx in itertools.product((0.0, 0.05), (False, True))]


def _problem(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = []
    for t in range(N_STEPS):
        scale = 5.0 if t == 0 else 0.2 + 1.8 * float(torch.rand((), generator=g))
        step = [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype) for s in SHAPES]
        if t % 5 == 3:
            step[-1][::7] = 0.0
        grads.append(step)
    return params, grads


def _run(cls: Any, params: List[torch.Tensor], grads: List[List[torch.Tensor]], **kw: Any):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = cls(ps, **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = max(float(a.abs().max()) if a.numel() else 0.0, 1e-30)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True)], ids=["loop", "foreach"])
def test_parity_with_torch_optim(dtype: torch.dtype, flags: Dict[str, Any], impl: Dict[str, Any]) -> None:
    params, grads = _problem(dtype)
    kw = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, **flags)
    theirs, topt = _run(torch.optim.Adamax, params, grads, **kw, **impl)
    ours, oopt = _run(ft.Adamax, params, grads, **kw)
    for pt, po in zip(theirs, ours):
        _close(po.detach(), pt.detach(), RTOL[dtype])
        st, so = topt.state[pt], oopt.state[po]
        assert set(so) == set(st) == {"step", "exp_avg", "exp_inf"}
        assert so["step"].dtype == st["step"].dtype and float(so["step"]) == float(st["step"]) == N_STEPS
        for k in ("exp_avg", "exp_inf"):
            assert so[k].dtype == st[k].dtype
            _close(so[k], st[k], RTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fusedopt_torch_steps_like_the_reference_bitwise(dtype: torch.dtype) -> None:
    params, grads = _problem(dtype, seed=1)
    ours, _ = _run(ft.Adamax, params, grads, lr=0.01, weight_decay=0.05, maximize=True)
    for i, p0 in enumerate(params):
        p, m, u = p0.numpy().copy(), np.zeros(p0.shape, p0.numpy().dtype), np.zeros(p0.shape, p0.numpy().dtype)
        for t, gs in enumerate(grads, 1):
            reference.adamax(p, gs[i].numpy(), m, u, step=t, lr=0.01, weight_decay=0.05, maximize=True)
        assert np.array_equal(ours[i].detach().numpy(), p)


def test_numpy_class_and_functional_step_like_the_reference_bitwise() -> None:
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1001).astype(np.float32)
    a, b, r = p0.copy(), p0.copy(), p0.copy()
    m, u, rm, ru = (np.zeros_like(p0) for _ in range(4))
    opt = fusedopt.Adamax([a], lr=0.02, betas=(0.7, 0.9), eps=1e-5, weight_decay=0.1)
    for t in range(1, 8):
        g = rng.standard_normal(1001).astype(np.float32)
        opt.step([g])
        F.adamax([b], [g], [m], [u], step=t, lr=0.02, beta1=0.7, beta2=0.9, eps=1e-5, weight_decay=0.1)
        reference.adamax(r, g, rm, ru, step=t, lr=0.02, beta1=0.7, beta2=0.9, eps=1e-5, weight_decay=0.1)
    assert np.array_equal(a, r) and np.array_equal(b, r) and np.array_equal(u, ru)
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_inf"}


def test_state_dict_interchange_with_torch_both_ways() -> None:
    params, grads = _problem(torch.float32, seed=2)
    kw = dict(lr=0.01, weight_decay=0.05)
    # torch -> fusedopt
    theirs, topt = _run(torch.optim.Adamax, params, grads[:10], **kw)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    oopt = ft.Adamax(ours, **kw)
    oopt.load_state_dict(copy.deepcopy(topt.state_dict()))  # torch's loader may share tensors
    # fusedopt -> torch
    back = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    bopt = torch.optim.Adamax(back, **kw)
    bopt.load_state_dict(copy.deepcopy(oopt.state_dict()))
    for gs in grads[10:]:
        for group in (theirs, ours, back):
            for p, g in zip(group, gs):
                p.grad = g.clone()
        topt.step(), oopt.step(), bopt.step()
    for pt, po, pb in zip(theirs, ours, back):
        _close(po.detach(), pt.detach(), RTOL[torch.float32])
        assert torch.equal(pb.detach(), pt.detach())  # torch after a fusedopt round trip: torch's own trajectory
    sd = oopt.state_dict()
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999) and sd["param_groups"][0]["foreach"] is None
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_inf"} and sd["state"][0]["step"].dtype == torch.float32


def test_textbook_first_step_by_hand() -> None:
    """t = 1: m = (1-b1) g, u = max(0, |g| + eps), p -= lr/(1-b1) * m/u = lr * g/(|g|+eps)."""
    g = np.array([0.5, -2.0, 0.0, 1e-9], np.float64)
    p = np.array([1.0, 2.0, 3.0, 4.0], np.float64)
    m, u = np.zeros(4), np.zeros(4)
    F.adamax([p], [g], [m], [u], step=1, lr=0.1, eps=1e-8)
    assert np.allclose(m, 0.1 * g, rtol=1e-15, atol=0)
    assert np.array_equal(u, np.abs(g) + 1e-8)
    expected = np.array([1.0, 2.0, 3.0, 4.0]) - 0.1 * g / (np.abs(g) + 1e-8)
    assert np.allclose(p, expected, rtol=1e-15, atol=0)
    # second step: u decays (0.999 u) unless the new |g|+eps is larger
    g2 = np.array([0.1, -3.0, 0.0, 0.0])
    F.adamax([p], [g2], [m], [u], step=2, lr=0.1, eps=1e-8)
    assert np.array_equal(u, np.maximum(0.999 * (np.abs(g) + 1e-8), np.abs(g2) + 1e-8))


def test_eps_zero_with_zero_gradient_is_nan_as_in_torch() -> None:
    p = np.ones(3, np.float32)
    F.adamax([p], [np.zeros(3, np.float32)], [np.zeros(3, np.float32)], [np.zeros(3, np.float32)], step=1, eps=0.0)
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.zeros(3)
    o = torch.optim.Adamax([w], eps=0.0)
    o.step()
    assert np.isnan(p).all() and torch.isnan(w).all()


def test_constructor_defaults_and_checks_match_torch() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    ours, theirs = ft.Adamax([w]), torch.optim.Adamax([w])
    assert {k: v for k, v in ours.defaults.items()} == theirs.defaults
    for bad, msg in [(dict(lr=-1.0), "Invalid learning rate"), (dict(eps=-1.0), "Invalid epsilon value"),
                     (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
                     (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
                     (dict(weight_decay=-0.1), "Invalid weight_decay value")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            torch.optim.Adamax([w], **bad)
        with pytest.raises(ValueError, match=msg):
            ft.Adamax([w], **bad)
        with pytest.raises(ValueError):
            fusedopt.Adamax([np.zeros(2)], **bad)


def test_bad_input_raises_and_modifies_nothing() -> None:
    p = np.ones(5, np.float32)
    g = np.full(5, 0.5, np.float32)
    m, u = np.zeros(5, np.float32), np.zeros(5, np.float32)
    before = [x.copy() for x in (p, g, m, u)]
    cases = [
        (TypeError, dict(exp_infs=[np.zeros(5, np.float64)])),
        (ValueError, dict(exp_infs=[np.zeros(4, np.float32)])),
        (TypeError, dict(grads=[[0.5] * 5])),
        (ValueError, dict(beta1=1.0)),
        (ValueError, dict(eps=float("nan"))),
        (ValueError, dict(step=0)),
        (TypeError, dict(maximize=1)),
    ]
    for exc, over in cases:
        args: Dict[str, Any] = dict(params=[p], grads=[g], exp_avgs=[m], exp_infs=[u], step=1)
        args.update(over)
        with pytest.raises(exc):
            F.adamax(args.pop("params"), args.pop("grads"), args.pop("exp_avgs"), args.pop("exp_infs"), **args)
        for x, b in zip((p, g, m, u), before):
            assert np.array_equal(x, b)
    w = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adamax([w])
    w.grad = torch.ones(4)
    opt.param_groups[0]["betas"] = (1.5, 0.999)
    with pytest.raises(ValueError, match="beta"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4)) and not opt.state[w]
