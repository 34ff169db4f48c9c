"""RAdam (issue 16): parity with ``torch.optim.RAdam`` over 20 steps for every flag combination
(steps 1-5 un-rectified, 6-20 rectified with beta2 = 0.999; also beta2 = 0.8 and the never-rectified
beta2 = 0.6), the per-step scalars against torch's expressions, state dicts both ways, the first
step by hand, bad input. (Kernel vs reference bitwise on every ISA and thread count:
tests/test_kernels_vs_reference.py's flag grid.)

Tolerance: fusedopt keeps torch's loop order (``(m/bc1)*lr``, ``(1/(sqrt(v)+eps))*sqrt(bc2)``, then
``*rect``, ``p - x``); only ``m`` (torch: a lerp), ``v`` (torch: addcmul) and the L2 term (torch:
``add(alpha=)``) are fused multiply-adds in torch and two roundings here, and torch.sqrt is MKL's.
Measured over this file's 36 configurations x 20 steps (torch 2.13): the largest
difference, as a fraction of max(1, the tensor's largest magnitude), is 1.3e-7 on parameters and
2.0e-7 on exp_avg / exp_avg_sq in float32, 4e-16 in float64, loop and foreach alike (12-21 % of
elements differ by a few ulp). Bounds: 1e-6 (float32), 1e-13 (float64), relative plus that absolute.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Dict, List

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, _scalars, reference
from fusedopt import functional as F

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

N_STEPS = 20
SHAPES = [(), (1,), (17,), (8, 125), (4099,)]
RTOL = {torch.float32: 1e-6, torch.float64: 1e-13}
FLAGS = [
    dict(weight_decay=wd, decoupled_weight_decay=dec, maximize=mx)
    for (wd, dec), mx in itertools.product([(0.0, False), (0.05, False), (0.05, True)], (False, True))
]


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


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, floor: float = 1e-30) -> None:
    """rtol, and atol = rtol * the tensor's largest magnitude (at least ``floor``: parameters and
    gradients are O(1); a 0-dim tensor that cancels to ~1e-3 keeps the absolute error of its O(1)
    history)."""
    scale = max(float(a.abs().max()) if a.numel() else 0.0, floor)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True)], ids=["loop", "foreach"])
@pytest.mark.parametrize("beta2", [0.999, 0.8, 0.6])
def test_parity_with_torch_optim(dtype: torch.dtype, flags: Dict[str, Any], impl: Dict[str, Any], beta2: float) -> None:
    params, grads = _problem(dtype)
    kw = dict(lr=0.01, betas=(0.8, beta2), eps=1e-6, **flags)
    theirs, topt = _run(torch.optim.RAdam, params, grads, **kw, **impl)
    ours, oopt = _run(ft.RAdam, params, grads, **kw)
    for pt, po in zip(theirs, ours):
        _close(po.detach(), pt.detach(), RTOL[dtype], floor=1.0)
        st, so = topt.state[pt], oopt.state[po]
        assert set(so) == set(st) == {"step", "exp_avg", "exp_avg_sq"}
        assert so["step"].dtype == st["step"].dtype and float(so["step"]) == float(st["step"]) == N_STEPS
        for k in ("exp_avg", "exp_avg_sq"):
            assert so[k].dtype == st[k].dtype
            _close(so[k], st[k], RTOL[dtype], floor=1.0)  # gradients are O(1)


def _torch_scalars(beta1: float, beta2: float, step: float):
    """torch/optim/radam.py's _single_tensor_radam expressions, verbatim."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rect = None
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return bias_correction1, bias_correction2**0.5, rect


@pytest.mark.parametrize("beta2", [0.0, 0.5, 2 / 3, 0.7, 0.8, 0.84, 0.9, 0.99, 0.999, 0.99999])
def test_scalars_are_torchs_float64_values(beta2: float) -> None:
    first = None
    for t in range(1, 200):
        s = _scalars.radam_scalars(step=t, lr=0.1, beta1=0.9, beta2=beta2, eps=1e-8, weight_decay=0.0,
                                   decoupled_weight_decay=False)  # fmt: skip
        bc1, root, rect = _torch_scalars(0.9, beta2, float(t))
        assert s.bias_correction1 == bc1 and s.bias_correction2_sqrt == root
        assert s.rectified == (1.0 if rect is not None else 0.0)
        assert s.rect == (rect if rect is not None else 0.0)
        if rect is not None and first is None:
            first = t
    # SEMANTICS-ALGORITHMS.md §2: t = 6 for beta2 >= 0.84, 7 at 0.8, 10 at 0.7, never for beta2 <= 2/3
    expected = {0.0: None, 0.5: None, 2 / 3: None, 0.7: 10, 0.8: 7}.get(beta2, 6)
    assert first == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fusedopt_torch_steps_like_the_reference_bitwise(dtype: torch.dtype) -> None:
    params, grads = _problem(dtype, seed=1)
    kw = dict(lr=0.01, weight_decay=0.05, maximize=True)
    ours, _ = _run(ft.RAdam, params, grads, **kw)
    for i, p0 in enumerate(params):
        p, m, v = p0.numpy().copy(), np.zeros(p0.shape, p0.numpy().dtype), np.zeros(p0.shape, p0.numpy().dtype)
        for t, gs in enumerate(grads, 1):
            reference.radam(p, gs[i].numpy(), m, v, step=t, **kw)
        assert np.array_equal(ours[i].detach().numpy(), p)


def test_numpy_class_and_functional_step_like_the_reference_bitwise() -> None:
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1001).astype(np.float32)
    a, b, r = p0.copy(), p0.copy(), p0.copy()
    m, v, rm, rv = (np.zeros_like(p0) for _ in range(4))
    kw = dict(lr=0.02, eps=1e-5, weight_decay=0.1, decoupled_weight_decay=True)
    opt = fusedopt.RAdam([a], betas=(0.7, 0.9), **kw)
    for t in range(1, 12):
        g = rng.standard_normal(1001).astype(np.float32)
        opt.step([g])
        F.radam([b], [g], [m], [v], step=t, beta1=0.7, beta2=0.9, **kw)
        reference.radam(r, g, rm, rv, step=t, beta1=0.7, beta2=0.9, **kw)
    assert np.array_equal(a, r) and np.array_equal(b, r) and np.array_equal(v, rv) and np.array_equal(m, rm)
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_state_dict_interchange_with_torch_both_ways() -> None:
    params, grads = _problem(torch.float32, seed=2)
    kw = dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)
    # torch -> fusedopt (after 4 un-rectified steps: the rectified ones follow in the new optimizer)
    theirs, topt = _run(torch.optim.RAdam, params, grads[:4], **kw)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    oopt = ft.RAdam(ours, **kw)
    oopt.load_state_dict(copy.deepcopy(topt.state_dict()))  # torch's loader may share tensors
    # fusedopt -> torch
    back = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    bopt = torch.optim.RAdam(back, **kw)
    bopt.load_state_dict(copy.deepcopy(oopt.state_dict()))
    for gs in grads[4:]:
        for group in (theirs, ours, back):
            for p, g in zip(group, gs):
                p.grad = g.clone()
        topt.step(), oopt.step(), bopt.step()
    for pt, po, pb in zip(theirs, ours, back):
        _close(po.detach(), pt.detach(), RTOL[torch.float32], floor=1.0)
        assert torch.equal(pb.detach(), pt.detach())  # torch after a fusedopt round trip: torch's own trajectory
    sd = oopt.state_dict()
    g0 = sd["param_groups"][0]
    assert g0["betas"] == (0.9, 0.999) and g0["foreach"] is None and g0["decoupled_weight_decay"] is True
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and sd["state"][0]["step"].dtype == torch.float32
    assert float(sd["state"][0]["step"]) == N_STEPS
    # and back into a fusedopt optimizer from torch's final state: one more identical step
    again = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    aopt = ft.RAdam(again, **kw)
    aopt.load_state_dict(copy.deepcopy(topt.state_dict()))
    for p in again:
        p.grad = torch.ones_like(p)
    aopt.step()
    assert float(aopt.state[again[0]]["step"]) == N_STEPS + 1


def test_textbook_first_steps_by_hand() -> None:
    """t = 1 (rho_1 = 1: not rectified): m = (1-b1) g, v = (1-b2) g^2, p -= lr * m/(1-b1) = lr * g.
    t = 6 with beta2 = 0.999 (rho_6 = 5.994 > 5, rectified):
    p -= lr * m/bc1 * sqrt(bc2)/(sqrt(v)+eps) * rect."""
    g = np.array([0.5, -2.0, 0.0, 1e-9], np.float64)
    p0 = np.array([1.0, 2.0, 3.0, 4.0], np.float64)
    p, m, v = p0.copy(), np.zeros(4), np.zeros(4)
    F.radam([p], [g], [m], [v], step=1, lr=0.1)
    assert np.allclose(m, 0.1 * g, rtol=1e-15, atol=0) and np.allclose(v, 0.001 * g * g, rtol=1e-15, atol=0)
    assert np.allclose(p, p0 - 0.1 * g, rtol=1e-15, atol=1e-300)
    for t in range(2, 6):  # still un-rectified: bias-corrected momentum SGD
        q = p.copy()
        F.radam([p], [g], [m], [v], step=t, lr=0.1)
        assert np.allclose(p, q - 0.1 * m / (1 - 0.9**t), rtol=1e-15, atol=1e-300)
    q, m5, v5 = p.copy(), m.copy(), v.copy()
    F.radam([p], [g], [m], [v], step=6, lr=0.1)
    m6, v6 = 0.9 * m5 + 0.1 * g, 0.999 * v5 + 0.001 * g * g
    rho_inf = 2 / 0.001 - 1
    rho6 = rho_inf - 2 * 6 * 0.999**6 / (1 - 0.999**6)
    assert 5.99 < rho6 < 6.0
    rect = math.sqrt((rho6 - 4) * (rho6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho6))
    expected = q - 0.1 * m6 / (1 - 0.9**6) * math.sqrt(1 - 0.999**6) / (np.sqrt(v6) + 1e-8) * rect
    assert np.allclose(m, m6, rtol=1e-15, atol=0) and np.allclose(v, v6, rtol=1e-15, atol=0)
    assert np.allclose(p, expected, rtol=1e-14, atol=1e-300)


def test_eps_zero_with_zero_gradient_is_nan_exactly_when_torchs_loop_is() -> None:
    """eps = 0, g = v = 0: un-rectified steps stay finite (torch's loop too; its foreach is NaN from
    t = 1, SEMANTICS-ALGORITHMS.md §2); the first rectified step (t = 6) is 0 * (sqrt(bc2)/0) = NaN
    in torch's loop (measured, torch 2.13) and here."""
    p = np.ones(3, np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    w = torch.nn.Parameter(torch.ones(3))
    o = torch.optim.RAdam([w], eps=0.0, foreach=False)
    for t in range(1, 8):
        F.radam([p], [np.zeros(3, np.float32)], [m], [v], step=t, eps=0.0)
        w.grad = torch.zeros(3)
        o.step()
        assert np.isnan(p).all() == torch.isnan(w).all().item() == (t >= 6)
        if t < 6:
            assert np.array_equal(p, np.ones(3, np.float32)) and torch.equal(w.detach(), torch.ones(3))


def test_constructor_defaults_and_checks_match_torch() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    ours, theirs = ft.RAdam([w]), torch.optim.RAdam([w])
    assert {k: v for k, v in ours.defaults.items()} == theirs.defaults
    assert ft.RAdam([w], 0.1, (0.5, 0.6), 1e-3, 0.2, True).defaults == torch.optim.RAdam(
        [w], 0.1, (0.5, 0.6), 1e-3, 0.2, True).defaults  # fmt: skip
    for bad, msg in [(dict(lr=-1.0), "Invalid learning rate"), (dict(eps=-1.0), "Invalid epsilon value"),
                     (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
                     (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
                     (dict(weight_decay=-0.1), "Invalid weight_decay value")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            torch.optim.RAdam([w], **bad)
        with pytest.raises(ValueError, match=msg):
            ft.RAdam([w], **bad)
        with pytest.raises(ValueError):
            fusedopt.RAdam([np.zeros(2)], **bad)


def test_bad_input_raises_and_modifies_nothing() -> None:
    p = np.ones(5, np.float32)
    g = np.full(5, 0.5, np.float32)
    m, v = np.zeros(5, np.float32), np.zeros(5, np.float32)
    before = [x.copy() for x in (p, g, m, v)]
    cases = [
        (TypeError, dict(exp_avg_sqs=[np.zeros(5, np.float64)])),
        (ValueError, dict(exp_avg_sqs=[np.zeros(4, np.float32)])),
        (TypeError, dict(grads=[[0.5] * 5])),
        (ValueError, dict(beta2=1.0)),
        (ValueError, dict(eps=float("nan"))),
        (ValueError, dict(step=0)),
        (TypeError, dict(maximize=1)),
        (TypeError, dict(decoupled_weight_decay="yes")),
    ]
    for exc, over in cases:
        args: Dict[str, Any] = dict(params=[p], grads=[g], exp_avgs=[m], exp_avg_sqs=[v], step=6)
        args.update(over)
        with pytest.raises(exc):
            F.radam(args.pop("params"), args.pop("grads"), args.pop("exp_avgs"), args.pop("exp_avg_sqs"), **args)
        for x, b in zip((p, g, m, v), before):
            assert np.array_equal(x, b)
    w = torch.nn.Parameter(torch.ones(4))
    opt = ft.RAdam([w])
    w.grad = torch.ones(4)
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match="beta"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(4)) and not opt.state[w]


@pytest.mark.parametrize("master", ["fp32", "split"])
def test_bfloat16_storage_steps_like_the_reference_bitwise(master: str) -> None:
    """The low-precision entry (radam_lowp): bfloat16 parameters with a float32 or split master,
    bfloat16 gradients and states, 8 steps across the rectification switch (t = 6), against
    :func:`fusedopt.reference.lowp_step` around the float32 reference."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(5)
    n = 1031
    p32 = rng.standard_normal(n).astype(np.float32)
    p = p32.astype(bf16)
    mst = p32.copy() if master == "fp32" else np.zeros(n, np.uint16)
    m, v = np.zeros(n, bf16), np.zeros(n, bf16)
    rp, rmst, rm, rv = p.copy(), mst.copy(), m.copy(), v.copy()
    kw = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, decoupled_weight_decay=False)
    for t in range(1, 9):
        g = rng.standard_normal(n).astype(bf16)
        s = _scalars.radam_scalars(step=t, **kw)
        _core.radam([p], [g], [m], [v], *s, 1.0, 1.0, math.inf, True, 2, None, None, [mst])
        reference.lowp_step(lambda a, b, c, d, t=t: reference.radam(a, b, c, d, step=t, maximize=True, **kw),
                            rp, g, [rm, rv], rmst)  # fmt: skip
        for x, y in ((p, rp), (mst, rmst), (m, rm), (v, rv)):
            assert np.array_equal(x.view(np.uint16) if x.dtype == bf16 else x, y.view(np.uint16) if y.dtype == bf16 else y)
