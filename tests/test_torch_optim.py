"""fusedopt.torch: the torch.optim drop-in, trained against torch.optim on a real model.

An MLP is trained on scikit-learn's bundled digits data (no download) with torch autograd, once
with a ``fusedopt.torch`` optimizer and once with the matching ``torch.optim`` one (``fused=True``
where torch has a fused CPU kernel), from identical initial weights and batch order. Weights and
optimizer state must agree to float tolerance, relative to each tensor's largest magnitude: float32
2e-5 after three epochs (measured <= 1e-6: fusedopt and torch's kernels round a few operations
differently, SEMANTICS.md §1.8/§3.4, and training amplifies it a little), float64 1e-12 (measured
<= 2e-15).

Also covered: torch-compatible ``state_dict`` layout and swapping state dicts both ways mid-training,
``lr_scheduler`` (StepLR, LambdaLR), param groups, closures, zero-copy stepping, one native call per
step, the error cases (nothing modified), and torch staying an optional dependency.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install 'fusedopt[torch]'")

import fusedopt  # noqa: E402
import fusedopt.functional  # noqa: E402
import fusedopt.torch as ft  # noqa: E402

EPOCHS = 3
BATCH = 64
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}


# ------------------------------------------------------------------------------------------------
# data, model, training loop
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models are tiny: torch's intra-op threads only add synchronization (and on a busy
    machine make the module 20x slower). Results do not depend on the thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits() -> Tuple[np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed: pip install 'fusedopt[test]'")
    d = datasets.load_digits()
    return (d.data / 16.0).astype(np.float64), d.target.astype(np.int64)


def make_mlp(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)
    ).to(dtype)


def batches(n: int, epochs: int, seed: int = 1) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        perm = rng.permutation(n)
        out.extend(perm[i : i + BATCH] for i in range(0, n, BATCH))
    return out


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    data: Tuple[np.ndarray, np.ndarray],
    order: List[np.ndarray],
    scheduler: Any = None,
    steps_per_sched: int = 10,
    closure: bool = False,
) -> List[float]:
    dtype = next(model.parameters()).dtype
    X = torch.from_numpy(data[0]).to(dtype)
    y = torch.from_numpy(data[1])
    losses = []
    for k, idx in enumerate(order):
        xb, yb = X[idx], y[idx]

        def compute(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            return loss

        if closure:
            loss = opt.step(compute)
        else:
            loss = compute()
            opt.step()
        losses.append(loss.item())
        if scheduler is not None and (k + 1) % steps_per_sched == 0:
            scheduler.step()
    return losses


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    scale = max(float(b.abs().max()), 1e-30)
    err = float((a - b).abs().max()) / scale
    assert err <= rtol, f"{what}: max |diff| / max |ref| = {err:.3g} > {rtol:.1g}"


def assert_models_close(m1: torch.nn.Module, m2: torch.nn.Module, rtol: float) -> None:
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert_close(a.detach(), b.detach(), rtol, name)


def assert_states_close(o1: torch.optim.Optimizer, o2: torch.optim.Optimizer, rtol: float) -> None:
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert sorted(s1) == sorted(s2)
    for i in s1:
        assert sorted(s1[i]) == sorted(s2[i]), f"state keys of parameter {i}"
        for k, v in s1[i].items():
            w = s2[i][k]
            if k == "step":
                assert v.shape == w.shape == () and v.dtype == w.dtype == torch.float32
                assert float(v) == float(w)
            else:
                assert_close(v, w, rtol, f"state[{i}][{k!r}]")


# (id, fusedopt.torch factory, torch.optim factory): same hyperparameters; torch fused where it exists
CASES: List[Tuple[str, Callable, Callable]] = [
    ("SGD", lambda p: ft.SGD(p, lr=0.5), lambda p: torch.optim.SGD(p, lr=0.5, fused=True)),
    (
        "SGD-nesterov-wd",
        lambda p: ft.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=True),
    ),
    (
        "SGD-dampening",
        lambda p: ft.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, fused=True),
    ),
    ("RMSprop", lambda p: ft.RMSprop(p, lr=1e-3), lambda p: torch.optim.RMSprop(p, lr=1e-3)),
    (
        "RMSprop-centered-momentum-wd",
        lambda p: ft.RMSprop(p, lr=5e-4, momentum=0.5, centered=True, weight_decay=1e-3),
        lambda p: torch.optim.RMSprop(p, lr=5e-4, momentum=0.5, centered=True, weight_decay=1e-3),
    ),
    ("Adam", lambda p: ft.Adam(p, lr=3e-3), lambda p: torch.optim.Adam(p, lr=3e-3, fused=True)),
    (
        "Adam-amsgrad-l2",
        lambda p: ft.Adam(p, lr=3e-3, amsgrad=True, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=3e-3, amsgrad=True, weight_decay=1e-3, fused=True),
    ),
    ("AdamW", lambda p: ft.AdamW(p, lr=3e-3), lambda p: torch.optim.AdamW(p, lr=3e-3, fused=True)),
    (
        "Adagrad",
        lambda p: ft.Adagrad(p, lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1, fused=True),
    ),
]
CASE_PARAMS = [pytest.param(f, t, id=name) for name, f, t in CASES]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


# ------------------------------------------------------------------------------------------------
# training parity with torch.optim
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_ours, make_torch", CASE_PARAMS)
def test_training_matches_torch_optim(digits, make_ours, make_torch, dtype):
    m_ours, m_torch = make_mlp(dtype), make_mlp(dtype)
    o_ours, o_torch = make_ours(m_ours.parameters()), make_torch(m_torch.parameters())
    order = batches(len(digits[1]), EPOCHS)
    l_ours = train(m_ours, o_ours, digits, order)
    l_torch = train(m_torch, o_torch, digits, order)
    assert l_ours[-1] < 0.7 * l_ours[0], "the model did not learn"
    np.testing.assert_allclose(l_ours, l_torch, rtol=RTOL[dtype] * 10)
    assert_models_close(m_ours, m_torch, RTOL[dtype])
    assert_states_close(o_ours, o_torch, RTOL[dtype])
    # the state dict has exactly torch's layout: same group keys, same state keys, float32 0-dim steps
    sd_ours, sd_torch = o_ours.state_dict(), o_torch.state_dict()
    assert [sorted(g) for g in sd_ours["param_groups"]] == [sorted(g) for g in sd_torch["param_groups"]]
    assert [g["params"] for g in sd_ours["param_groups"]] == [g["params"] for g in sd_torch["param_groups"]]


@pytest.mark.parametrize("bias_correction", [False, True], ids=["plain", "bias_correction"])
def test_momentum_matches_its_definition(digits, bias_correction):
    """Momentum (EMA, Ng): v = beta*v + (1-beta)*(g + wd*p); p -= lr/(1-beta^t if bc) * v, in float64."""
    lr, beta, wd = 0.2, 0.9, 1e-3
    m_ours, m_ref = make_mlp(torch.float64), make_mlp(torch.float64)
    opt = ft.Momentum(m_ours.parameters(), lr=lr, beta=beta, weight_decay=wd, bias_correction=bias_correction)
    params = list(m_ref.parameters())
    vel = [torch.zeros_like(p) for p in params]
    t = 0

    class Reference(torch.optim.Optimizer):
        def __init__(self) -> None:
            super().__init__(params, {})

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:
            nonlocal t
            t += 1
            size = lr / (1 - beta**t) if bias_correction else lr
            for p, v in zip(params, vel):
                v.mul_(beta).add_(p.grad + wd * p, alpha=1 - beta)
                p.sub_(size * v)

    order = batches(len(digits[1]), EPOCHS)
    losses = train(m_ours, opt, digits, order)
    train(m_ref, Reference(), digits, order)
    assert losses[-1] < 0.7 * losses[0]
    assert_models_close(m_ours, m_ref, 1e-10)
    for p, v in zip(m_ours.parameters(), vel):
        assert_close(opt.state[p]["velocity"], v, 1e-10, "velocity")
        assert float(opt.state[p]["step"]) == t and opt.state[p]["step"].dtype == torch.float32


def test_momentum_equals_rescaled_torch_sgd(digits):
    """For a constant lr, Momentum(lr, beta) is torch's SGD(lr*(1-beta), momentum=beta) (SEMANTICS §7)."""
    m_ours, m_torch = make_mlp(torch.float64), make_mlp(torch.float64)
    order = batches(len(digits[1]), 2)
    train(m_ours, ft.Momentum(m_ours.parameters(), lr=0.5, beta=0.9), digits, order)
    train(m_torch, torch.optim.SGD(m_torch.parameters(), lr=0.5 * (1 - 0.9), momentum=0.9), digits, order)
    assert_models_close(m_ours, m_torch, 1e-10)


# ------------------------------------------------------------------------------------------------
# state dicts
# ------------------------------------------------------------------------------------------------
def roundtrip(sd: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint round trip (torch.save / torch.load with weights_only): a detached copy."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["torch-to-fusedopt", "fusedopt-to-torch"])
@pytest.mark.parametrize("make_ours, make_torch", CASE_PARAMS)
def test_state_dict_swaps_mid_training(digits, make_ours, make_torch, direction, dtype):
    order = batches(len(digits[1]), 2)
    first, second = order[: len(order) // 2], order[len(order) // 2 :]
    make_a, make_b = (make_torch, make_ours) if direction == "torch-to-fusedopt" else (make_ours, make_torch)
    m_a = make_mlp(dtype)
    o_a = make_a(m_a.parameters())
    train(m_a, o_a, digits, first)
    # continue with a fresh optimizer of the other kind loaded from a checkpoint of the first
    m_b = copy.deepcopy(m_a)
    o_b = make_b(m_b.parameters())
    o_b.load_state_dict(roundtrip(o_a.state_dict()))
    assert_states_close(o_b, o_a, 0.0)
    l_b = train(m_b, o_b, digits, second)
    l_a = train(m_a, o_a, digits, second)  # ... and compare with the uninterrupted run
    np.testing.assert_allclose(l_b, l_a, rtol=RTOL[dtype] * 10)
    assert_models_close(m_b, m_a, RTOL[dtype])
    assert_states_close(o_b, o_a, RTOL[dtype])


def test_state_dict_round_trip_is_exact(digits):
    """fusedopt -> checkpoint -> fusedopt continues bit for bit."""
    order = batches(len(digits[1]), 2)
    m1 = make_mlp(torch.float32)
    o1 = ft.Adam(m1.parameters(), lr=1e-2, amsgrad=True)
    train(m1, o1, digits, order[:20])
    m2 = copy.deepcopy(m1)
    o2 = ft.Adam(m2.parameters())
    o2.load_state_dict(roundtrip(o1.state_dict()))
    assert o2.param_groups[0]["lr"] == 1e-2 and o2.param_groups[0]["amsgrad"] is True
    train(m1, o1, digits, order[20:])
    train(m2, o2, digits, order[20:])
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_adagrad_state_is_created_with_the_parameter():
    p = torch.nn.Parameter(torch.randn(3, 2))
    q = torch.nn.Parameter(torch.randn(4))
    ours, theirs = ft.Adagrad([p], initial_accumulator_value=0.5), torch.optim.Adagrad([p], initial_accumulator_value=0.5)
    for o in (ours, theirs):
        assert sorted(o.state[p]) == ["step", "sum"]
        assert torch.equal(o.state[p]["sum"], torch.full((3, 2), 0.5))
        assert o.state[p]["step"].dtype == torch.float32 and float(o.state[p]["step"]) == 0
    ours.add_param_group({"params": [q], "initial_accumulator_value": 0.25})
    assert torch.equal(ours.state[q]["sum"], torch.full((4,), 0.25))


def test_amsgrad_switched_on_later_adds_its_state():
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = ft.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    assert "max_exp_avg_sq" not in opt.state[p]
    opt.param_groups[0]["amsgrad"] = True
    opt.step()
    assert float(opt.state[p]["step"]) == 2
    assert torch.equal(opt.state[p]["max_exp_avg_sq"], opt.state[p]["exp_avg_sq"])


# ------------------------------------------------------------------------------------------------
# schedulers, param groups, closures
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_sched",
    [
        pytest.param(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), id="StepLR"),
        pytest.param(lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)), id="LambdaLR"),
    ],
)
@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad"])
def test_lr_scheduler(digits, make_sched, name):
    kw = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    m_ours, m_torch = make_mlp(torch.float64), make_mlp(torch.float64)
    o_ours = getattr(ft, name)(m_ours.parameters(), **kw)
    o_torch = getattr(torch.optim, name)(m_torch.parameters(), **kw)
    s_ours, s_torch = make_sched(o_ours), make_sched(o_torch)
    order = batches(len(digits[1]), 2)
    train(m_ours, o_ours, digits, order, scheduler=s_ours, steps_per_sched=5)
    train(m_torch, o_torch, digits, order, scheduler=s_torch, steps_per_sched=5)
    assert s_ours.get_last_lr() == s_torch.get_last_lr()
    assert o_ours.param_groups[0]["lr"] < kw["lr"] / 2  # the schedule did act
    assert_models_close(m_ours, m_torch, 1e-10)


def test_param_groups_with_different_lr(digits, monkeypatch):
    calls = []
    real = fusedopt._core.adam

    def counting(params: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(len(params))  # the native call of a group gets all the group's tensors
        real(params, *args, **kwargs)

    monkeypatch.setattr(fusedopt._core, "adam", counting)
    monkeypatch.setattr(ft, "_USE_TPLAN", False)  # the full path's native calls (the plan's: test_torch_plan.py)

    def groups(m: torch.nn.Module) -> List[Dict[str, Any]]:
        return [
            {"params": m[0].parameters(), "lr": 1e-2, "weight_decay": 1e-3},
            {"params": list(m[2].parameters()) + list(m[4].parameters())},
        ]

    m_ours, m_torch = make_mlp(torch.float64), make_mlp(torch.float64)
    o_ours = ft.AdamW(groups(m_ours), lr=1e-3)
    o_torch = torch.optim.AdamW(groups(m_torch), lr=1e-3)
    order = batches(len(digits[1]), 1)
    train(m_ours, o_ours, digits, order)
    train(m_torch, o_torch, digits, order)
    assert_models_close(m_ours, m_torch, 1e-10)
    assert calls == [2, 4] * len(order)  # one native call per group and step
    # add_param_group later: a new layer, stepped from then on
    extra_ours, extra_torch = torch.nn.Parameter(torch.ones(3, dtype=torch.float64)), torch.nn.Parameter(
        torch.ones(3, dtype=torch.float64)
    )
    o_ours.add_param_group({"params": [extra_ours], "lr": 0.1})
    o_torch.add_param_group({"params": [extra_torch], "lr": 0.1})
    for o, e in ((o_ours, extra_ours), (o_torch, extra_torch)):
        e.grad = torch.arange(3.0, dtype=torch.float64)
        o.step()
    assert_close(extra_ours.detach(), extra_torch.detach(), 1e-12, "added group")
    assert float(o_ours.state[extra_ours]["step"]) == 1


def test_one_native_call_per_step_zero_copy(monkeypatch):
    """All parameters of a group go to one native call, as the tensors themselves (their own memory)."""
    seen: List[Tuple[List[int], List[int], List[int]]] = []
    real = fusedopt._core.adam

    def spy(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs):
        assert all(isinstance(t, torch.Tensor) for t in [*params, *grads, *exp_avgs, *exp_avg_sqs])
        seen.append(([a.data_ptr() for a in params], [a.data_ptr() for a in grads], [a.data_ptr() for a in exp_avgs]))
        real(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs)

    monkeypatch.setattr(fusedopt._core, "adam", spy)
    monkeypatch.setattr(ft, "_USE_TPLAN", False)  # the full path's native calls (the plan's: test_torch_plan.py)
    model = make_mlp(torch.float32)
    params = list(model.parameters())
    opt = ft.Adam(params)
    ptrs = [p.data_ptr() for p in params]
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        before = [p.detach().clone() for p in params]
        opt.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, params))
        p_ptrs, g_ptrs, m_ptrs = seen[-1]
        assert p_ptrs == ptrs == [p.data_ptr() for p in params]
        assert g_ptrs == [p.grad.data_ptr() for p in params]
        assert m_ptrs == [opt.state[p]["exp_avg"].data_ptr() for p in params]
    assert len(seen) == 3
    # the parameter's storage is replaced (p.data = ...): the new memory is stepped
    params[0].data = params[0].data.clone()
    params[0].grad = torch.ones_like(params[0])
    old = params[0].detach().clone()
    opt.step()
    assert seen[-1][0][0] == params[0].data_ptr() != ptrs[0]
    assert not torch.equal(old, params[0])


def test_replaced_state_and_unusual_grads_are_followed():
    """Cached views never go stale: a state tensor replaced by the user is the one updated."""
    p = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    ref = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    ours, theirs = ft.Adam([p], lr=0.1), torch.optim.Adam([ref], lr=0.1)
    for k in range(4):
        if k == 2:  # swap in new state tensors (same values) on both sides
            for o, q in ((ours, p), (theirs, ref)):
                o.state[q]["exp_avg"] = o.state[q]["exp_avg"].clone()
                o.state[q]["step"] = o.state[q]["step"].clone()
        grad = torch.linspace(-1, 1, 6, dtype=torch.float64) * (k + 1)
        p.grad = grad.clone().requires_grad_()  # a grad that requires grad (create_graph=True style)
        ref.grad = grad.clone()
        ours.step()
        theirs.step()
    assert_close(p.detach(), ref.detach(), 1e-12, "param")
    assert_close(ours.state[p]["exp_avg"], theirs.state[ref]["exp_avg"], 1e-12, "replaced exp_avg")
    assert float(ours.state[p]["step"]) == 4


def test_closure_returns_loss_and_runs_with_grad(digits):
    m_ours, m_torch = make_mlp(torch.float64), make_mlp(torch.float64)
    o_ours, o_torch = ft.RMSprop(m_ours.parameters(), lr=1e-3), torch.optim.RMSprop(m_torch.parameters(), lr=1e-3)
    order = batches(len(digits[1]), 1)
    with torch.no_grad():  # step() must enable grad for the closure, as torch does
        l_ours = train(m_ours, o_ours, digits, order, closure=True)
    l_torch = train(m_torch, o_torch, digits, order, closure=True)
    np.testing.assert_allclose(l_ours, l_torch, rtol=1e-10)
    assert_models_close(m_ours, m_torch, 1e-10)
    assert o_ours.step() is None  # no closure: None, as torch


def test_params_without_grad_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    opt = ft.Adam([a, b, frozen], lr=0.1)
    a.grad = torch.ones(4)
    opt.step()
    assert not torch.equal(a, torch.ones(4))
    assert torch.equal(b, torch.ones(4)) and torch.equal(frozen, torch.ones(4))
    assert b not in opt.state and frozen not in opt.state
    assert list(opt.state_dict()["state"]) == [0]  # as torch: no state for never-stepped parameters
    b.grad = torch.ones(4)
    opt.step()  # a at step 2, b at step 1: per-parameter step counts
    assert float(opt.state[a]["step"]) == 2 and float(opt.state[b]["step"]) == 1
    ref = torch.nn.Parameter(torch.ones(4))
    tref = torch.optim.Adam([ref], lr=0.1)
    ref.grad = torch.ones(4)
    tref.step()
    assert_close(b.detach(), ref.detach(), 1e-6, "b after its first step")


def test_mixed_dtypes_in_one_group():
    p32 = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float32))
    p64 = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))
    r32, r64 = (torch.nn.Parameter(p.detach().clone()) for p in (p32, p64))
    ours, theirs = ft.Adam([p32, p64], lr=0.1), torch.optim.Adam([r32, r64], lr=0.1, fused=True)
    for _ in range(5):
        for p in (p32, p64, r32, r64):
            p.grad = p.detach() ** 3
        ours.step()
        theirs.step()
    assert_close(p32.detach(), r32.detach(), 1e-6, "float32")
    assert_close(p64.detach(), r64.detach(), 1e-12, "float64")


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad"])
def test_maximize_matches_torch(name):
    kw = {"lr": 0.01, "maximize": True, "weight_decay": 0.1}
    if name == "SGD":
        kw["momentum"] = 0.9
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(33, generator=g, dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    o_ours, o_theirs = getattr(ft, name)([ours], **kw), getattr(torch.optim, name)([theirs], **kw)
    for _ in range(10):
        grad = torch.randn(33, generator=g, dtype=torch.float64)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        o_ours.step()
        o_theirs.step()
    assert_close(ours.detach(), theirs.detach(), 1e-12, name)


# ------------------------------------------------------------------------------------------------
# errors: raised before anything is modified
# ------------------------------------------------------------------------------------------------
def snapshot(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    out = []
    for g in opt.param_groups:
        for p in g["params"]:
            out.append(p.detach().clone())
            for v in opt.state.get(p, {}).values():
                out.append(v.detach().clone())
    return out


def assert_unchanged(opt: torch.optim.Optimizer, snap: List[torch.Tensor]) -> None:
    now = snapshot(opt)
    assert len(now) == len(snap)
    assert all(torch.equal(a, b) for a, b in zip(now, snap))


@pytest.mark.parametrize(
    "make_param, exc, match",
    [
        # (float16/bfloat16 parameters are steppable since issue 13: tests/test_lowp_torch.py)
        pytest.param(lambda: torch.zeros(3, dtype=torch.int16, requires_grad=False), TypeError, "float32 and float64", id="int16"),
        pytest.param(lambda: torch.zeros(3, dtype=torch.complex64, requires_grad=True), TypeError, "complex", id="complex64"),
        pytest.param(lambda: torch.zeros(3, dtype=torch.int32), TypeError, "float32 and float64", id="int32"),
        pytest.param(lambda: torch.zeros(3, device="meta", requires_grad=True), ValueError, "CPU tensors only", id="meta"),
        pytest.param(lambda: torch.zeros(4, 6)[:, ::2].requires_grad_(), ValueError, "not contiguous", id="non-contiguous"),
        pytest.param(lambda: torch.zeros(3, 3).to_sparse().requires_grad_(), TypeError, "dense", id="sparse-param"),
        pytest.param(lambda: [1.0, 2.0], TypeError, "torch.Tensor", id="not-a-tensor"),
    ],
)
@pytest.mark.parametrize("cls", ["SGD", "Adam", "Adagrad"])
def test_unsupported_parameters_are_refused_at_construction(make_param, exc, match, cls):
    with pytest.raises(exc, match=match):
        getattr(ft, cls)([torch.nn.Parameter(torch.zeros(2)), make_param()], lr=0.1)


def test_refused_options_and_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="differentiable"):
        ft.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match="capturable"):
        ft.AdamW([p], capturable=True)
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):  # torch's message
        ft.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.5"):
        ft.Adam([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="Nesterov"):
        ft.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="listed only once"):
        ft.Adam([p, p])
    opt = ft.Adam([p])
    with pytest.raises(ValueError, match="eps"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "eps": -1.0})
    assert len(opt.param_groups) == 1
    ft.Adam([p], fused=True)  # implementation selectors are accepted and ignored
    ft.SGD([p], foreach=False)


def two_group_adam() -> Tuple[torch.optim.Optimizer, List[torch.nn.Parameter]]:
    """An Adam optimizer two steps in, with two groups (so a step needs two native calls)."""
    ps = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(3))]
    opt = ft.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}])
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt, ps


@pytest.mark.parametrize(
    "spoil, exc, match",
    [
        pytest.param(
            lambda p: setattr(p, "grad", torch.randn(*p.shape, 2)[..., 0]), ValueError, "not contiguous", id="non-contiguous-grad"
        ),
        pytest.param(
            lambda p: setattr(p, "grad", torch.randn(p.shape).to_sparse()), TypeError, "sparse", id="sparse-grad"
        ),
        pytest.param(lambda p: setattr(p.grad, "data", p.grad.double()), TypeError, "dtype", id="grad-dtype"),
        pytest.param(lambda p: setattr(p.grad, "data", torch.zeros(2)), ValueError, "shape", id="grad-shape"),
        pytest.param(
            lambda p: setattr(p, "data", torch.randn(*p.shape, 2)[..., 0]),
            ValueError,
            "not contiguous",
            id="param-became-non-contiguous",
        ),
    ],
)
@pytest.mark.parametrize("which", [0, 2], ids=["first-group", "second-group"])
def test_bad_gradients_raise_and_nothing_is_modified(spoil, exc, match, which):
    opt, ps = two_group_adam()
    for p in ps:
        p.grad = torch.randn_like(p)
    spoil(ps[which])
    snap = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step()
    assert_unchanged(opt, snap)
    assert all(float(opt.state[p]["step"]) == 2 for p in ps)


def test_sparse_embedding_gradient_is_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = ft.SGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.equal(before, emb.weight)


def test_invalid_hyperparameter_in_a_later_group_modifies_nothing():
    opt, ps = two_group_adam()
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.param_groups[1]["lr"] = -0.5
    snap = snapshot(opt)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    assert_unchanged(opt, snap)


def test_overlapping_state_is_refused_when_several_calls_are_needed():
    opt, ps = two_group_adam()
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.state[ps[2]]["exp_avg_sq"] = opt.state[ps[2]]["exp_avg"]  # aliasing state (a corrupted checkpoint)
    snap = snapshot(opt)
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    assert_unchanged(opt, snap)


def test_first_sgd_step_failure_leaves_no_momentum_buffer():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4, 2))
    opt = ft.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.ones(4), torch.ones(2, 4).t()
    with pytest.raises(ValueError, match=r"params\[1\]\.grad has strides \(1, 4\) but params\[1\] has strides \(2, 1\)"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(a, torch.ones(4))
    b.grad = torch.ones(4, 2)
    opt.step()  # the first successful step starts the buffers at g (torch semantics)
    assert torch.equal(opt.state[a]["momentum_buffer"], torch.ones(4))
    assert torch.equal(a.detach(), torch.full((4,), 0.9))


# ------------------------------------------------------------------------------------------------
# torch stays optional
# ------------------------------------------------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=120)


def test_import_fusedopt_does_not_import_torch():
    r = run_python("import sys, fusedopt, fusedopt.functional; print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_fusedopt_torch_without_torch_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # makes `import torch` fail as if it were not installed\n"
        "import fusedopt\n"
        "try:\n"
        "    import fusedopt.torch\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError:") and "pip install fusedopt[torch]" in r.stdout
