"""NAdam (issue 16): parity with ``torch.optim.NAdam`` over 20 steps for every flag combination, its
per-parameter ``mu_product`` (bitwise torch's, also after a checkpoint made with another
``momentum_decay`` and under a schedule of ``betas``/``momentum_decay``), the per-step scalars
against torch's expressions, state dicts both ways, the first step by hand, bad input (a bad
loaded ``mu_product`` included). Kernel vs reference bitwise on every ISA and thread count: the flag
grid of tests/test_kernels_vs_reference.py and :func:`test_kernel_matches_the_reference_bitwise`
here (threads 1, 2, 3).

Tolerance: fusedopt keeps torch's loop order (``sqrt(v/bc2) + eps``, two ``addcdiv_`` with
``-lr(1-mu)/(1-P)`` and ``-lr*mu_next/(1-P*mu_next)``); only ``m`` (torch: a lerp), ``v`` (torch:
addcmul) and the L2 term (torch: ``add(alpha=)``) are fused multiply-adds in torch and two roundings
here, and torch.sqrt is MKL's. ``mu_product`` is bitwise torch's. Measured over this file's parity
configurations (18 per dtype x 20 steps, torch 2.13): the largest difference, as a fraction of
max(1, the tensor's largest magnitude), is 7.8e-8 on parameters and 1.6e-7 on exp_avg/exp_avg_sq
in float32, 1.5e-16 / 3.0e-16 in float64, against torch's loop and its foreach form
(``sqrt(v)/sqrt(bc2)``) alike. Bounds: 1e-6 (float32), 1e-13 (float64), relative plus that absolute.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Dict, List

import numpy as np
import pytest

import fusedopt
from fusedopt import _scalars, reference
from fusedopt import functional as F

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

N_STEPS = 20
SHAPES = [(), (1,), (17,), (8, 125), (4099,)]
RTOL = {torch.float32: 1e-6, torch.float64: 1e-13}
FLAGS = [
    dict(weight_decay=wd, decoupled_weight_decay=dec, maximize=mx, momentum_decay=psi)
    for (wd, dec), mx, psi in itertools.product([(0.0, False), (0.05, False), (0.05, True)], (False, True),
                                                (4e-3, 0.0, 0.3))  # fmt: skip
]
KEYS = {"step", "mu_product", "exp_avg", "exp_avg_sq"}


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


def _set_grads(ps: List[torch.Tensor], gs: List[torch.Tensor]) -> None:
    for p, g in zip(ps, gs):
        p.grad = g.clone()


def _run(cls: Any, params: List[torch.Tensor], grads: List[List[torch.Tensor]], **kw: Any):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = cls(ps, **kw)
    for gs in grads:
        _set_grads(ps, gs)
        opt.step()
    return ps, opt


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, floor: float = 1.0) -> None:
    """rtol, and atol = rtol * max(floor, the tensor's largest magnitude) (values are O(1))."""
    scale = max(float(a.abs().max()) if a.numel() else 0.0, floor)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


def _same_mu_products(sa: Dict[str, Any], sb: Dict[str, Any]) -> None:
    a, b = sa["mu_product"], sb["mu_product"]
    assert a.dtype == b.dtype and a.shape == b.shape == () and torch.equal(a, b), (a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_parity_with_torch_optim(dtype: torch.dtype, flags: Dict[str, Any]) -> None:
    params, grads = _problem(dtype)
    kw = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, **flags)
    theirs, topt = _run(torch.optim.NAdam, params, grads, **kw, foreach=False)
    ours, oopt = _run(ft.NAdam, params, grads, **kw)
    for pt, po in zip(theirs, ours):
        _close(po.detach(), pt.detach(), RTOL[dtype])
        st, so = topt.state[pt], oopt.state[po]
        assert set(so) == set(st) == KEYS
        assert so["step"].dtype == st["step"].dtype and float(so["step"]) == float(st["step"]) == N_STEPS
        _same_mu_products(so, st)
        for k in ("exp_avg", "exp_avg_sq"):
            assert so[k].dtype == st[k].dtype
            _close(so[k], st[k], RTOL[dtype])


@pytest.mark.parametrize("flags", FLAGS[::4], ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_parity_with_torch_foreach(flags: Dict[str, Any]) -> None:
    """torch's foreach form rounds the denominator differently (``sqrt(v)/sqrt(bc2)``): close, and
    the same mu_product bit for bit."""
    params, grads = _problem(torch.float32, seed=4)
    kw = dict(lr=0.01, **flags)
    theirs, topt = _run(torch.optim.NAdam, params, grads, **kw, foreach=True)
    ours, oopt = _run(ft.NAdam, params, grads, **kw)
    for pt, po in zip(theirs, ours):
        _close(po.detach(), pt.detach(), RTOL[torch.float32])
        _same_mu_products(oopt.state[po], topt.state[pt])


def test_float64_default_dtype_keeps_float64_counters_like_torch() -> None:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params, grads = _problem(torch.float32, seed=5)
        theirs, topt = _run(torch.optim.NAdam, params, grads, lr=0.01)
        ours, oopt = _run(ft.NAdam, params, grads, lr=0.01)
    finally:
        torch.set_default_dtype(old)
    for pt, po in zip(theirs, ours):
        so, st = oopt.state[po], topt.state[pt]
        assert so["step"].dtype == st["step"].dtype == torch.float64
        _same_mu_products(so, st)
        assert so["mu_product"].dtype == torch.float64
        _close(po.detach(), pt.detach(), RTOL[torch.float32])


def test_mu_product_is_torchs_rounding_at_every_step() -> None:
    """``mu_product *= mu`` on torch's 0-dim tensor (float32 and float64) vs nadam_mu_product, 2000
    steps, with beta1 and momentum_decay changing on the way; and the per-step float64 values are
    torch's loop expressions verbatim."""
    for dt, name in ((torch.float32, "float32"), (torch.float64, "float64")):
        tp = torch.tensor(1.0, dtype=dt)
        mp = 1.0
        for t in range(1, 2001):
            beta1, psi = (0.9, 4e-3) if t < 700 else (0.95, 0.02) if t < 1400 else (0.5, 0.0)
            mu = beta1 * (1.0 - 0.5 * (0.96 ** (float(t) * psi)))
            tp *= mu
            mp = F.nadam_mu_product(mp, step=t, beta1=beta1, momentum_decay=psi, dtype=name)
            assert mp == tp.item(), (name, t)
            if mp < 1e-30:  # (float32 reaches 0 eventually, as torch's does)
                tp.fill_(0.7)
                mp = 0.7
    for t in (1, 2, 10, 1000, 10**6):
        for psi in (4e-3, 0.0, 1.0):
            for P in (0.45, 1e-7, 0.0):
                s = _scalars.nadam_scalars(step=t, mu_product=P, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                                           weight_decay=0.0, momentum_decay=psi, decoupled_weight_decay=False)  # fmt: skip
                step, lr, beta1, beta2, momentum_decay = float(t), 0.01, 0.9, 0.999, psi
                mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
                mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
                assert s.grad_coef == -lr * (1.0 - mu) / (1.0 - P)
                assert s.momentum_coef == (-lr * mu_next) / (1.0 - P * mu_next)
                assert s.bias_correction2 == 1 - beta2**step
    # momentum_decay = 0 gives mu = beta1/2 (SEMANTICS-ALGORITHMS.md §1)
    assert _scalars.nadam_mu(step=7, beta1=0.9, momentum_decay=0.0) == 0.45


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_matches_the_reference_bitwise(isa: str, dtype: np.dtype, threads: int) -> None:
    """Several tensors in one call (sizes around SIMD widths and thread cuts), 8 steps, each flag."""
    rng = np.random.default_rng(threads)
    shapes = [(), (1,), (15,), (17,), (33,), (1000,), (4099,), (6, 7)]
    for flags in FLAGS[::2]:
        p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
        kp, rp = [x.copy() for x in p0], [x.copy() for x in p0]
        km, kv = [np.zeros(s, dtype) for s in shapes], [np.zeros(s, dtype) for s in shapes]
        rm, rv = [np.zeros(s, dtype) for s in shapes], [np.zeros(s, dtype) for s in shapes]
        mp = 1.0
        for t in range(1, 9):
            g = [np.asarray(rng.standard_normal(s) * [1.0, 1e-3, 10.0][t % 3], dtype) for s in shapes]
            mp = F.nadam_mu_product(mp, step=t, beta1=0.9, momentum_decay=flags["momentum_decay"])
            kw = dict(flags, step=t, mu_product=mp, lr=0.01)
            F.nadam(kp, g, km, kv, threads=threads, **kw)
            for i in range(len(shapes)):
                reference.nadam(rp[i], g[i], rm[i], rv[i], **kw)
            for i in range(len(shapes)):
                for a, b in ((kp, rp), (km, rm), (kv, rv)):
                    assert a[i].tobytes() == b[i].tobytes(), (flags, t, i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fusedopt_torch_steps_like_the_reference_bitwise(dtype: torch.dtype) -> None:
    """Also with parameters at different step counts and products in one group (a parameter without
    a gradient for the first steps): each is stepped with its own mu_product."""
    params, grads = _problem(dtype, seed=1)
    kw = dict(lr=0.01, weight_decay=0.05, maximize=True, momentum_decay=0.05)
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    opt = ft.NAdam(ours, **kw)
    for t, gs in enumerate(grads, 1):
        _set_grads(ours, gs)
        if t <= 3:
            ours[2].grad = None  # params[2] starts at step 4
        opt.step()
    for i, p0 in enumerate(params):
        p, m, v = p0.numpy().copy(), np.zeros(p0.shape, p0.numpy().dtype), np.zeros(p0.shape, p0.numpy().dtype)
        mp, n = 1.0, 0
        for t, gs in enumerate(grads, 1):
            if i == 2 and t <= 3:
                continue
            n += 1
            mp = F.nadam_mu_product(mp, step=n, beta1=0.9, momentum_decay=0.05)
            reference.nadam(p, gs[i].numpy(), m, v, step=n, mu_product=mp, **kw)
        assert np.array_equal(ours[i].detach().numpy(), p), i
        assert opt.state[ours[i]]["mu_product"].item() == mp and float(opt.state[ours[i]]["step"]) == n


def test_numpy_class_and_functional_step_like_the_reference_bitwise() -> None:
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1001).astype(np.float32)
    a, b, r = p0.copy(), p0.copy(), p0.copy()
    m, v, rm, rv = (np.zeros_like(p0) for _ in range(4))
    kw = dict(lr=0.02, eps=1e-5, weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01)
    opt = fusedopt.NAdam([a], betas=(0.7, 0.9), **kw)
    mp = 1.0
    for t in range(1, 12):
        g = rng.standard_normal(1001).astype(np.float32)
        opt.step([g])
        mp = F.nadam_mu_product(mp, step=t, beta1=0.7, momentum_decay=0.01)
        F.nadam([b], [g], [m], [v], step=t, mu_product=mp, beta1=0.7, beta2=0.9, **kw)
        reference.nadam(r, g, rm, rv, step=t, mu_product=mp, beta1=0.7, beta2=0.9, **kw)
    assert np.array_equal(a, r) and np.array_equal(b, r) and np.array_equal(v, rv) and np.array_equal(m, rm)
    sd = opt.state_dict()["state"][0]
    assert set(sd) == KEYS and sd["mu_product"] == mp and type(sd["mu_product"]) is float and sd["step"] == 11


def test_numpy_class_follows_torch_under_a_schedule_of_betas_and_momentum_decay() -> None:
    """beta1 and momentum_decay changed between steps: mu_product follows torch's bit for bit (it is
    not a function of the step count), parameters within float32 rounding."""
    params, grads = _problem(torch.float32, seed=6)
    tps = [torch.nn.Parameter(p.clone()) for p in params]
    topt = torch.optim.NAdam(tps, lr=0.01, foreach=False)
    fps = [p.numpy().copy() for p in params]
    fopt = fusedopt.NAdam(fps, lr=0.01)
    gps = [torch.nn.Parameter(p.clone()) for p in params]
    gopt = ft.NAdam(gps, lr=0.01)
    for t, gs in enumerate(grads, 1):
        for opt in (topt, fopt, gopt):
            opt.param_groups[0]["betas"] = (0.9, 0.999) if t < 8 else (0.6, 0.999)
            opt.param_groups[0]["momentum_decay"] = 4e-3 if t < 13 else 0.2
        _set_grads(tps, gs)
        _set_grads(gps, gs)
        topt.step(), gopt.step()
        fopt.step([g.numpy() for g in gs])
    for i, pt in enumerate(tps):
        want = topt.state[pt]["mu_product"].item()
        assert fopt.state[i]["mu_product"] == want and gopt.state[gps[i]]["mu_product"].item() == want
        _close(torch.from_numpy(fps[i]), pt.detach(), RTOL[torch.float32])
        assert torch.equal(gps[i].detach(), torch.from_numpy(fps[i]))


def _numpy_state_dict(sd: Dict[str, Any]) -> Dict[str, Any]:
    """A torch state dict as the NumPy class takes it: arrays, and the scalars as numbers."""
    state = {k: {kk: (vv.item() if kk in ("step", "mu_product") else vv.numpy().copy()) for kk, vv in v.items()}
             for k, v in sd["state"].items()}  # fmt: skip
    return {"state": state, "param_groups": sd["param_groups"]}


def test_state_dict_interchange_with_torch_both_ways() -> None:
    params, grads = _problem(torch.float32, seed=2)
    kw = dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)
    # torch -> fusedopt
    theirs, topt = _run(torch.optim.NAdam, params, grads[:6], **kw)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    oopt = ft.NAdam(ours, **kw)
    oopt.load_state_dict(copy.deepcopy(topt.state_dict()))  # torch's loader may share tensors
    # fusedopt -> torch
    back = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    bopt = torch.optim.NAdam(back, **kw)
    bopt.load_state_dict(copy.deepcopy(oopt.state_dict()))
    for gs in grads[6:]:
        for group in (theirs, ours, back):
            _set_grads(group, gs)
        topt.step(), oopt.step(), bopt.step()
    for pt, po, pb in zip(theirs, ours, back):
        _close(po.detach(), pt.detach(), RTOL[torch.float32])
        assert torch.equal(pb.detach(), pt.detach())  # torch after a fusedopt round trip: torch's own trajectory
        _same_mu_products(oopt.state[po], topt.state[pt])
        _same_mu_products(bopt.state[pb], topt.state[pt])
    sd = oopt.state_dict()
    g0 = sd["param_groups"][0]
    assert g0["betas"] == (0.9, 0.999) and g0["momentum_decay"] == 4e-3 and g0["decoupled_weight_decay"] is True
    assert set(g0) == set(topt.state_dict()["param_groups"][0])
    s0 = sd["state"][0]
    assert set(s0) == KEYS and s0["step"].dtype == s0["mu_product"].dtype == torch.float32
    assert s0["mu_product"].shape == () and float(s0["step"]) == N_STEPS
    # ours after a torch round trip continues like ours: one more identical step
    again = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    aopt = ft.NAdam(again, **kw)
    aopt.load_state_dict(copy.deepcopy(bopt.state_dict()))
    oopt.load_state_dict(copy.deepcopy(bopt.state_dict()))
    for group in (again, ours):
        for p in group:
            p.grad = torch.ones_like(p)
    aopt.step(), oopt.step()
    for pa, po in zip(again, ours):
        assert torch.equal(pa.detach(), po.detach())
        assert float(aopt.state[pa]["step"]) == N_STEPS + 1
    # into the NumPy class (arrays and floats), and on: the same as fusedopt.torch
    nps = [p.detach().numpy().copy() for p in theirs]
    nopt = fusedopt.NAdam(nps, **kw)
    tsd = topt.state_dict()
    nopt.load_state_dict(_numpy_state_dict(tsd))
    tps = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    topt2 = ft.NAdam(tps, **kw)
    topt2.load_state_dict(copy.deepcopy(tsd))
    g = [torch.full_like(p, 0.5) for p in theirs]
    _set_grads(tps, g)
    topt2.step()
    nopt.step([x.numpy() for x in g])
    for a, b in zip(nps, tps):
        assert np.array_equal(a, b.detach().numpy())


def test_checkpoint_from_another_momentum_decay_continues_as_torch_does() -> None:
    """A checkpoint whose mu_product was made with momentum_decay=0.05 (and betas[0]=0.95), loaded
    into optimizers with the defaults: the stored product is carried on, not recomputed from t."""
    params, grads = _problem(torch.float32, seed=7)
    src, sopt = _run(torch.optim.NAdam, params, grads[:7], lr=0.01, betas=(0.95, 0.999), momentum_decay=0.05)
    sd = sopt.state_dict()
    sd["param_groups"][0].update(betas=(0.9, 0.999), momentum_decay=4e-3)  # the new run's hyperparameters
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in src]
    topt = torch.optim.NAdam(theirs, lr=0.01)
    topt.load_state_dict(copy.deepcopy(sd))
    ours = [torch.nn.Parameter(p.detach().clone()) for p in src]
    oopt = ft.NAdam(ours, lr=0.01)
    oopt.load_state_dict(copy.deepcopy(sd))
    nps = [p.detach().numpy().copy() for p in src]
    nopt = fusedopt.NAdam(nps, lr=0.01)
    nopt.load_state_dict(_numpy_state_dict(sd))
    fresh = 1.0
    for t in range(1, 8):
        fresh = F.nadam_mu_product(fresh, step=t, beta1=0.9, momentum_decay=4e-3)
    assert topt.state[theirs[0]]["mu_product"].item() != fresh  # (the checkpoint's own product differs)
    for gs in grads[7:]:
        _set_grads(theirs, gs)
        _set_grads(ours, gs)
        topt.step(), oopt.step()
        nopt.step([g.numpy() for g in gs])
    for i, (pt, po) in enumerate(zip(theirs, ours)):
        _same_mu_products(oopt.state[po], topt.state[pt])
        assert nopt.state[i]["mu_product"] == topt.state[pt]["mu_product"].item()
        _close(po.detach(), pt.detach(), RTOL[torch.float32])
        assert np.array_equal(nps[i], po.detach().numpy())


def test_parameters_with_different_products_step_in_separate_calls_like_torch() -> None:
    """One group, the same step count, a different loaded mu_product per parameter."""
    params, grads = _problem(torch.float64, seed=8)
    theirs, topt = _run(torch.optim.NAdam, params, grads[:3], lr=0.01)
    sd = topt.state_dict()
    for k, factor in ((0, 0.5), (2, 0.25), (3, 0.5)):
        sd["state"][k]["mu_product"] = sd["state"][k]["mu_product"] * factor
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    oopt = ft.NAdam(ours, lr=0.01)
    oopt.load_state_dict(copy.deepcopy(sd))
    topt.load_state_dict(copy.deepcopy(sd))
    for gs in grads[3:8]:
        _set_grads(theirs, gs)
        _set_grads(ours, gs)
        topt.step(), oopt.step()
    for pt, po in zip(theirs, ours):
        _same_mu_products(oopt.state[po], topt.state[pt])
        _close(po.detach(), pt.detach(), RTOL[torch.float64])


def test_textbook_first_step_by_hand() -> None:
    """t = 1: mu1 = b1(1 - 0.5*0.96^psi), mu2 = b1(1 - 0.5*0.96^(2 psi)), P1 = mu1; m = (1-b1) g,
    v = (1-b2) g^2, den = sqrt(v/(1-b2)) + eps = |g| + eps;
    p -= lr (1-mu1)/(1-P1) g/den + lr mu2/(1-P1 mu2) m/den = lr g/den (1 + mu2 (1-b1)/(1-mu1 mu2))."""
    g = np.array([0.5, -2.0, 0.0, 1e-3], np.float64)
    p0 = np.array([1.0, 2.0, 3.0, 4.0], np.float64)
    b1, b2, lr, eps, psi = 0.9, 0.999, 0.1, 1e-8, 4e-3
    mu1 = b1 * (1 - 0.5 * 0.96**psi)
    mu2 = b1 * (1 - 0.5 * 0.96 ** (2 * psi))
    mp = F.nadam_mu_product(1.0, step=1, beta1=b1, momentum_decay=psi, dtype="float64")
    assert mp == mu1
    assert float(np.float32(mu1)) == F.nadam_mu_product(1.0, step=1, beta1=b1, momentum_decay=psi)
    p, m, v = p0.copy(), np.zeros(4), np.zeros(4)
    F.nadam([p], [g], [m], [v], step=1, mu_product=mp, lr=lr)
    assert np.allclose(m, (1 - b1) * g, rtol=1e-15, atol=0) and np.allclose(v, (1 - b2) * g * g, rtol=1e-15, atol=0)
    den = np.abs(g) + eps
    expected = p0 - lr * g / den * (1 + mu2 * (1 - b1) / (1 - mu1 * mu2))
    assert np.allclose(p, expected, rtol=1e-14, atol=1e-300)
    # and the same first step by the classes (torch keeps P1 in float32: a relative change of ~1e-8)
    w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    o = ft.NAdam([w], lr=lr)
    w.grad = torch.from_numpy(g)
    o.step()
    assert np.allclose(w.detach().numpy(), expected, rtol=1e-7, atol=0)
    assert o.state[w]["mu_product"].dtype == torch.float32 and o.state[w]["mu_product"].item() == float(np.float32(mu1))


def test_constructor_defaults_and_checks_match_torch() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    assert ft.NAdam([w]).defaults == torch.optim.NAdam([w]).defaults
    assert ft.NAdam([w], 0.1, (0.5, 0.6), 1e-3, 0.2, 0.01, True).defaults == torch.optim.NAdam(
        [w], 0.1, (0.5, 0.6), 1e-3, 0.2, 0.01, True).defaults  # fmt: skip
    for bad, msg in [(dict(lr=-1.0), "Invalid learning rate"), (dict(eps=-1.0), "Invalid epsilon value"),
                     (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
                     (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
                     (dict(weight_decay=-0.1), "Invalid weight_decay value"),
                     (dict(momentum_decay=-0.1), "Invalid momentum_decay value")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            torch.optim.NAdam([w], **bad)
        with pytest.raises(ValueError, match=msg):
            ft.NAdam([w], **bad)
        with pytest.raises(ValueError):
            fusedopt.NAdam([np.zeros(2)], **bad)
    with pytest.raises(ValueError, match="capturable"):
        ft.NAdam([w], capturable=True)


def _np_state(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> List[np.ndarray]:
    return [x.copy() for x in (p, g, m, v)]


def test_functional_bad_input_raises_and_modifies_nothing() -> None:
    p = np.ones(5, np.float32)
    g = np.full(5, 0.5, np.float32)
    m, v = np.zeros(5, np.float32), np.zeros(5, np.float32)
    before = _np_state(p, g, m, v)
    cases = [
        (TypeError, dict(exp_avg_sqs=[np.zeros(5, np.float64)])),
        (ValueError, dict(exp_avg_sqs=[np.zeros(4, np.float32)])),
        (TypeError, dict(grads=[[0.5] * 5])),
        (ValueError, dict(beta2=1.0)),
        (ValueError, dict(eps=float("nan"))),
        (ValueError, dict(momentum_decay=-1.0)),
        (ValueError, dict(step=0)),
        (ValueError, dict(mu_product=1.0)),  # 1 - mu_product = 0: torch divides by it
        (ValueError, dict(mu_product=-0.1)),
        (ValueError, dict(mu_product=float("nan"))),
        (TypeError, dict(mu_product="0.5")),
        (TypeError, dict(mu_product=True)),
        (TypeError, dict(mu_product=None)),
        (TypeError, dict(maximize=1)),
        (TypeError, dict(decoupled_weight_decay="yes")),
    ]
    for exc, over in cases:
        args: Dict[str, Any] = dict(params=[p], grads=[g], exp_avgs=[m], exp_avg_sqs=[v], step=3, mu_product=0.1)
        args.update(over)
        with pytest.raises(exc):
            F.nadam(args.pop("params"), args.pop("grads"), args.pop("exp_avgs"), args.pop("exp_avg_sqs"), **args)
        for x, b in zip((p, g, m, v), before):
            assert np.array_equal(x, b)
    with pytest.raises(TypeError, match="mu_product"):
        F.nadam([p], [g], [m], [v], step=3)  # required
    for x, b in zip((p, g, m, v), before):
        assert np.array_equal(x, b)


def _snapshot(opt: Any) -> Dict[Any, Dict[str, Any]]:
    return {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
            for p, st in opt.state.items()}  # fmt: skip


def _unchanged(opt: Any, snap: Dict[Any, Dict[str, Any]], ps: List[torch.Tensor], p_before: List[torch.Tensor]) -> None:
    for p, b in zip(ps, p_before):
        assert torch.equal(p.detach(), b)
    for p, st in opt.state.items():
        if id(p) not in snap:
            assert not st, "state made by a failed step"
        for k, v in snap.get(id(p), {}).items():
            if isinstance(v, torch.Tensor):  # (bitwise, NaN equal to NaN)
                assert st[k].dtype == v.dtype and st[k].shape == v.shape and st[k].view(-1).view(torch.uint8).equal(
                    v.reshape(-1).contiguous().view(torch.uint8)), k  # fmt: skip
            else:
                assert st[k] is v, k


def test_torch_bad_loaded_mu_product_raises_and_loads_nothing() -> None:
    params, grads = _problem(torch.float32, seed=9)
    src, sopt = _run(torch.optim.NAdam, params, grads[:2], lr=0.01)
    good = sopt.state_dict()
    ps = [torch.nn.Parameter(p.detach().clone()) for p in src]
    opt = ft.NAdam(ps, lr=0.01)
    opt.load_state_dict(copy.deepcopy(good))
    _set_grads(ps, grads[2])
    opt.step()
    snap, before = _snapshot(opt), [p.detach().clone() for p in ps]
    bad_values = [
        (ValueError, torch.tensor(float("nan"))),
        (ValueError, torch.tensor(float("inf"))),
        (TypeError, torch.tensor([0.5, 0.5])),
        (TypeError, torch.tensor([[0.5]]).expand(2, 3)),  # (an int tensor would be cast by torch's loader)
        (TypeError, "0.5"),
        (TypeError, None),
        (ValueError, float("nan")),
    ]
    for exc, value in bad_values:
        sd = copy.deepcopy(good)
        sd["state"][1]["mu_product"] = value
        with pytest.raises(exc, match=r"mu_product"):
            opt.load_state_dict(sd)
        _unchanged(opt, snap, ps, before)
    sd = copy.deepcopy(good)
    del sd["state"][3]["mu_product"]
    with pytest.raises(KeyError, match="mu_product"):
        torch.optim.NAdam([torch.nn.Parameter(p.detach().clone()) for p in src]).load_state_dict(copy.deepcopy(sd))
    with pytest.raises(KeyError, match="mu_product"):
        opt.load_state_dict(sd)
    _unchanged(opt, snap, ps, before)
    # a number loads as a tensor of torch's scalar dtype (torch.optim.NAdam's __setstate__)
    sd = copy.deepcopy(good)
    sd["state"][0]["mu_product"] = 0.25
    opt.load_state_dict(sd)
    assert opt.state[ps[0]]["mu_product"].dtype == torch.float32 and opt.state[ps[0]]["mu_product"].item() == 0.25


def test_torch_bad_mu_product_at_step_raises_and_modifies_nothing() -> None:
    """Set by hand after loading, or a product that would leave [0, 1), or another parameter's bad
    gradient: the step raises naming it and no parameter, state, step count or product changes."""
    params, grads = _problem(torch.float32, seed=10)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = ft.NAdam(ps, lr=0.01)
    for gs in grads[:2]:
        _set_grads(ps, gs)
        opt.step()
    _set_grads(ps, grads[2])
    for value, exc, match in [(torch.tensor(float("nan")), ValueError, "finite"),
                              (torch.tensor([0.1, 0.2]), TypeError, "one-element"),
                              (0.5, TypeError, "tensor"),
                              (torch.tensor(3.0), ValueError, r"after this step must be in \[0, 1\)"),
                              (torch.tensor(-1.0), ValueError, r"after this step must be in \[0, 1\)")]:  # fmt: skip
        good = opt.state[ps[3]]["mu_product"]
        opt.state[ps[3]]["mu_product"] = value
        snap, before = _snapshot(opt), [p.detach().clone() for p in ps]
        with pytest.raises(exc, match=match) as info:
            opt.step()
        assert "state[params[3]]['mu_product']" in str(info.value)
        _unchanged(opt, snap, ps, before)
        opt.state[ps[3]]["mu_product"] = good
    with torch.no_grad():
        opt.state[ps[0]]["mu_product"].mul_(0.5)  # two native calls: params[0]'s, then the others'
    snap, before = _snapshot(opt), [p.detach().clone() for p in ps]
    ps[4].grad = torch.zeros(2 * 4099)[::2]  # not contiguous: refused before anything is written
    with pytest.raises(ValueError, match=r"params\[4\]"):
        opt.step()
    _unchanged(opt, snap, ps, before)
    # deleted by hand: torch's KeyError, nothing modified
    good = opt.state[ps[1]].pop("mu_product")
    snap, before = _snapshot(opt), [p.detach().clone() for p in ps]
    with pytest.raises(KeyError, match="mu_product"):
        opt.step()
    _unchanged(opt, snap, ps, before)
    opt.state[ps[1]]["mu_product"] = good
    # a new parameter's staged product is not committed by a failed step
    ps[4].grad = None
    q = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [q]})
    q.grad = torch.ones(6)[::2]
    snap, before = _snapshot(opt), [p.detach().clone() for p in ps]
    with pytest.raises(ValueError):
        opt.step()
    assert not opt.state[q]
    _unchanged(opt, snap, ps, before)


def test_low_precision_is_refused() -> None:
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = ft.NAdam([w])
    w.grad = torch.ones(4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="float32 or float64 arrays only"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4, dtype=torch.bfloat16)) and not opt.state[w]
    with pytest.raises(TypeError):
        ft.NAdam([w], master_weights="fp32")  # type: ignore[call-arg]


def test_numpy_class_bad_input_raises_and_modifies_nothing() -> None:
    p = [np.ones(5, np.float32), np.ones(3, np.float32)]
    opt = fusedopt.NAdam(p, lr=0.01)
    opt.step([np.full(5, 0.5, np.float32), np.full(3, 0.5, np.float32)])
    good = opt.state_dict()
    # found_inf: skipped, the product and the count stay
    mp = opt.state[0]["mu_product"]
    opt.step([np.ones(5, np.float32), np.ones(3, np.float32)], found_inf=1.0)
    assert opt.state[0]["mu_product"] == mp and opt.state[0]["step"] == 1
    for value in (float("nan"), "x", None, np.zeros(2), np.array([1], np.int64), 1e300, True):
        sd = copy.deepcopy(good)
        sd["state"][1]["mu_product"] = value
        with pytest.raises(ValueError, match="mu_product"):
            opt.load_state_dict(sd)
        assert opt.state[1]["mu_product"] == good["state"][1]["mu_product"]
    sd = copy.deepcopy(good)
    del sd["state"][1]["mu_product"]
    with pytest.raises(ValueError, match="lacks 'mu_product'"):
        opt.load_state_dict(sd)
    # at the step: a product leaving [0, 1) in either of two buckets (two native calls), nothing written
    before = [x.copy() for x in p] + [opt.state[i][k].copy() for i in range(2) for k in ("exp_avg", "exp_avg_sq")]
    for i in range(2):
        opt.load_state_dict(good)
        opt.state[i]["mu_product"] = 5.0
        with pytest.raises(ValueError, match=rf"state\[{i}\]\['mu_product'\] after this step"):
            opt.step([np.full(5, 0.5, np.float32), np.full(3, 0.5, np.float32)])
        after = [x for x in p] + [opt.state[j][k] for j in range(2) for k in ("exp_avg", "exp_avg_sq")]
        assert all(np.array_equal(a, b) for a, b in zip(after, before))
        assert opt.state[0]["step"] == opt.state[1]["step"] == 1 and opt.state[1 - i]["mu_product"] == mp
    opt.load_state_dict(good)
    # a loaded product is kept in float32, as torch makes a number a float32 tensor
    sd = copy.deepcopy(good)
    sd["state"][0]["mu_product"] = 0.1
    opt.load_state_dict(sd)
    assert opt.state[0]["mu_product"] == float(np.float32(0.1))
    with pytest.raises(TypeError):
        fusedopt.NAdam(p, master_weights="fp32")  # type: ignore[call-arg]
