"""fusedopt's optimizer classes against torch.optim 2.13 (CPU) on identical trajectories.

Both optimizers start from the same parameters and receive the same gradient sequence (20 steps,
several tensors of different shapes including a 0-d tensor and a non-multiple-of-vector-width
length). Parameters *and* every state array (torch's ``optimizer.state[p]`` names) are compared
after the run.

Tolerances (SEMANTICS.md §1.8, §3.2-3.4, §12.4): fusedopt's reference op order uses no FMA and
correctly rounded sqrt, while the torch for-loop uses MKL's (not correctly rounded) sqrt and
lerp/FMA forms, and fused torch contracts multiply-adds differently. Bitwise equality is therefore
impossible; float64 must agree to ~1e-12 relative, float32 to ~1e-5 relative after 20 steps. The
absolute part of each tolerance is the relative tolerance times the largest magnitude found in the
compared array, so near-zero entries (e.g. an ``exp_avg`` element that happens to cancel) are judged
on the array's scale rather than their own.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

import fusedopt

torch = pytest.importorskip("torch", reason="torch not installed: pip install 'fusedopt[test]'")

N_STEPS = 20
#: 0-d, single element, odd small, 2-D (1000 elements), odd length above every SIMD width
SHAPES: Tuple[Tuple[int, ...], ...] = ((), (1,), (17,), (8, 125), (4099,))

#: relative tolerance per dtype (see module docstring)
RTOL = {np.float64: 1e-12, np.float32: 1e-5}

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
IMPL_LOOP = pytest.param({"foreach": False}, id="torch-loop")
IMPL_FUSED = pytest.param({"fused": True}, id="torch-fused")
IMPLS_WITH_FUSED = [IMPL_LOOP, IMPL_FUSED]


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread() -> Any:
    """Tiny tensors: torch's intra-op thread pool only adds contention (results do not depend on it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------
# problem and runners
# ------------------------------------------------------------------------------------------------
def make_problem(dtype: Any, seed: int = 0) -> Tuple[List[np.ndarray], List[List[np.ndarray]]]:
    """Initial parameters and a gradient sequence (drawn in float64, then rounded to ``dtype``).

    Gradient scales vary from step to step (a large first step, then smaller and larger ones) so
    that AMSGrad's running max and Adagrad's accumulator see non-monotone inputs; a few gradient
    entries are exactly zero.
    """
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(shape), dtype=dtype).reshape(shape) for shape in SHAPES]
    scales = rng.uniform(0.2, 2.0, N_STEPS)
    scales[0] = 5.0
    grads: List[List[np.ndarray]] = []
    for t in range(N_STEPS):
        step_grads = []
        for shape in SHAPES:
            g = np.array(rng.standard_normal(shape) * scales[t], dtype=np.float64).reshape(shape)
            if g.ndim and g.size > 2 and t % 5 == 3:
                g[::7] = 0.0
            step_grads.append(np.array(g, dtype=dtype))
        grads.append(step_grads)
    return params, grads


LrSchedule = Optional[Callable[[int, float], float]]


def run_fusedopt(
    cls: type, kwargs: Dict[str, Any], params0: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]],
    lr_schedule: LrSchedule = None,
) -> Tuple[List[np.ndarray], Any]:  # fmt: skip
    params = [p.copy() for p in params0]
    opt = cls(params, **kwargs)
    base_lr = opt.param_groups[0]["lr"]
    for t, step_grads in enumerate(grads):
        if lr_schedule is not None:
            opt.param_groups[0]["lr"] = lr_schedule(t, base_lr)
        opt.step(list(step_grads))
    return params, opt


def run_torch(
    cls: type, kwargs: Dict[str, Any], params0: Sequence[np.ndarray], grads: Sequence[Sequence[np.ndarray]],
    lr_schedule: LrSchedule = None,
) -> Tuple[List[Any], Any]:  # fmt: skip
    params = [torch.tensor(p.copy(), requires_grad=True) for p in params0]
    opt = cls(params, **kwargs)
    base_lr = opt.param_groups[0]["lr"]
    for t, step_grads in enumerate(grads):
        if lr_schedule is not None:
            opt.param_groups[0]["lr"] = lr_schedule(t, base_lr)
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return params, opt


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str, scale: Optional[float] = None) -> None:
    """``|actual - expected| <= rtol * (|expected| + scale)``; ``scale`` defaults to ``max|expected|``."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != torch {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch {expected.shape}"
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30), err_msg=what)


def _max_abs(arrays: Sequence[np.ndarray]) -> float:
    return max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)


def compare_runs(
    f_params: Sequence[np.ndarray], f_opt: Any, t_params: Sequence[Any], t_opt: Any, dtype: Any,
    rtol: Optional[float] = None, expected_state_keys: Optional[Sequence[str]] = None,
) -> None:  # fmt: skip
    """Parameters and every torch state tensor of every parameter agree; same state keys; same step.

    The absolute tolerance of an array is ``rtol`` times the largest magnitude of that quantity over
    *all* tensors (e.g. all parameters): a single-element parameter that ends near zero after
    cancellation (|theta| 2.6 -> 0.05) is judged on the parameters' scale, not its own.
    """
    rtol = RTOL[dtype] if rtol is None else rtol
    t_np = [tp.detach().numpy() for tp in t_params]
    p_scale = _max_abs(t_np)
    t_states = [t_opt.state[tp] for tp in t_params]
    keys = sorted({k for st in t_states for k, v in st.items() if k != "step" and v is not None})
    s_scale = {k: _max_abs([st[k].numpy() for st in t_states if st.get(k) is not None]) for k in keys}
    for i, (fp, tp) in enumerate(zip(f_params, t_np)):
        assert fp.dtype == dtype
        assert_close(fp, tp, rtol, f"params[{i}] (shape {fp.shape})", scale=p_scale)
        t_state = t_states[i]
        f_state = f_opt.state[i]
        t_arrays = {k for k, v in t_state.items() if k != "step" and v is not None}
        f_arrays = {k for k, v in f_state.items() if k != "step"}
        assert f_arrays == t_arrays, f"params[{i}]: state keys {sorted(f_arrays)} != torch {sorted(t_arrays)}"
        if expected_state_keys is not None:
            assert f_arrays == set(expected_state_keys)
        for k in sorted(t_arrays):
            what = f"state[{i}][{k!r}] (shape {fp.shape})"
            assert_close(f_state[k], t_state[k].numpy(), rtol, what, scale=s_scale[k])
        if "step" in t_state:
            assert f_state["step"] == int(t_state["step"].item()) == N_STEPS
        else:
            assert "step" not in f_state


def flag_id(kwargs: Dict[str, Any]) -> str:
    """Readable test id from hyperparameters: ``momentum=0.9-nesterov-maximize``."""
    parts = []
    for k, v in kwargs.items():
        if v is True:
            parts.append(k)
        elif v is False:
            continue
        else:
            parts.append(f"{k}={v}")
    return "-".join(parts) or "defaults"


def cases(grid: List[Dict[str, Any]]) -> List[Any]:
    return [pytest.param(kw, id=flag_id(kw)) for kw in grid]


def product(**axes: Sequence[Any]) -> List[Dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


# ------------------------------------------------------------------------------------------------
# SGD
# ------------------------------------------------------------------------------------------------
SGD_MOMENTUM_MODES = [
    dict(momentum=0.0, dampening=0.0, nesterov=False),
    dict(momentum=0.0, dampening=0.5, nesterov=False),
    dict(momentum=0.9, dampening=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.5, nesterov=False),
    dict(momentum=0.9, dampening=0.0, nesterov=True),  # nesterov requires dampening == 0
]
SGD_GRID = [
    {"lr": 0.05, **mode, "weight_decay": wd, "maximize": mx}
    for mode in SGD_MOMENTUM_MODES
    for wd in (0.0, 1e-2)
    for mx in (False, True)
]


@pytest.mark.parametrize("impl", IMPLS_WITH_FUSED)
@pytest.mark.parametrize("kwargs", cases(SGD_GRID))
@pytest.mark.parametrize("fdtype", DTYPES)
def test_sgd_matches_torch(kwargs: Dict[str, Any], impl: Dict[str, Any], fdtype: Any) -> None:
    params0, grads = make_problem(fdtype, seed=1)
    f_params, f_opt = run_fusedopt(fusedopt.SGD, kwargs, params0, grads)
    t_params, t_opt = run_torch(torch.optim.SGD, {**kwargs, **impl}, params0, grads)
    expected = ("momentum_buffer",) if kwargs["momentum"] != 0 else ()
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype, expected_state_keys=expected)


@pytest.mark.parametrize("impl", IMPLS_WITH_FUSED)
@pytest.mark.parametrize("fdtype", DTYPES)
def test_sgd_first_step_buffer_is_the_gradient(impl: Dict[str, Any], fdtype: Any) -> None:
    """torch copies g into the momentum buffer on step 1 (no dampening), then b = mu*b + (1-tau)*g."""
    mu, tau, lr = 0.9, 0.5, 0.1
    params0, grads = make_problem(fdtype, seed=2)
    params0, grads = params0[2:3], [g[2:3] for g in grads[:2]]
    f_params, f_opt = run_fusedopt(fusedopt.SGD, dict(lr=lr, momentum=mu, dampening=tau), params0, grads[:1])
    t_params, t_opt = run_torch(torch.optim.SGD, dict(lr=lr, momentum=mu, dampening=tau, **impl), params0, grads[:1])
    g1 = grads[0][0]
    # step 1: the buffer is an exact copy of the gradient in both libraries
    np.testing.assert_array_equal(f_opt.state[0]["momentum_buffer"], g1)
    np.testing.assert_array_equal(t_opt.state[t_params[0]]["momentum_buffer"].numpy(), g1)
    assert_close(f_params[0], t_params[0].detach().numpy(), RTOL[fdtype], "params after step 1")
    # step 2: dampening now applies
    g2 = grads[1][0]
    f_opt.step([g2])
    t_params[0].grad = torch.from_numpy(g2.copy())
    t_opt.step()
    T = fdtype
    expected_buf = T(mu) * g1 + T(1 - tau) * g2
    rtol = RTOL[fdtype]
    assert_close(f_opt.state[0]["momentum_buffer"], expected_buf, rtol, "fusedopt buffer after step 2")
    assert_close(t_opt.state[t_params[0]]["momentum_buffer"].numpy(), expected_buf, rtol, "torch buffer after step 2")
    assert_close(f_params[0], t_params[0].detach().numpy(), rtol, "params after step 2")


# ------------------------------------------------------------------------------------------------
# Adam / AdamW
# ------------------------------------------------------------------------------------------------
ADAM_VARIANTS = [
    pytest.param((fusedopt.Adam, torch.optim.Adam, {}), id="Adam"),
    pytest.param((fusedopt.Adam, torch.optim.Adam, {"decoupled_weight_decay": True}), id="Adam-decoupled"),
    pytest.param((fusedopt.AdamW, torch.optim.AdamW, {}), id="AdamW"),
]
ADAM_GRID = product(lr=[1e-2], weight_decay=[0.0, 1e-2], amsgrad=[False, True], maximize=[False, True])


@pytest.mark.parametrize("impl", IMPLS_WITH_FUSED)
@pytest.mark.parametrize("kwargs", cases(ADAM_GRID))
@pytest.mark.parametrize("variant", ADAM_VARIANTS)
@pytest.mark.parametrize("fdtype", DTYPES)
def test_adam_matches_torch(variant: Any, kwargs: Dict[str, Any], impl: Dict[str, Any], fdtype: Any) -> None:
    f_cls, t_cls, extra = variant
    params0, grads = make_problem(fdtype, seed=3)
    f_params, f_opt = run_fusedopt(f_cls, {**kwargs, **extra}, params0, grads)
    t_params, t_opt = run_torch(t_cls, {**kwargs, **extra, **impl}, params0, grads)
    expected = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if kwargs["amsgrad"] else ())
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype, expected_state_keys=expected)


@pytest.mark.parametrize("fdtype", DTYPES)
def test_adam_non_default_betas_eps_match_torch(fdtype: Any) -> None:
    kwargs = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.05, amsgrad=True)
    params0, grads = make_problem(fdtype, seed=4)
    f_params, f_opt = run_fusedopt(fusedopt.Adam, kwargs, params0, grads)
    t_params, t_opt = run_torch(torch.optim.Adam, {**kwargs, "foreach": False}, params0, grads)
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype)


# ------------------------------------------------------------------------------------------------
# RMSprop (torch has no fused RMSprop)
# ------------------------------------------------------------------------------------------------
RMSPROP_GRID = product(
    lr=[1e-2], centered=[False, True], momentum=[0.0, 0.9], weight_decay=[0.0, 1e-2], maximize=[False, True]
)


@pytest.mark.parametrize("kwargs", cases(RMSPROP_GRID))
@pytest.mark.parametrize("fdtype", DTYPES)
def test_rmsprop_matches_torch(kwargs: Dict[str, Any], fdtype: Any) -> None:
    params0, grads = make_problem(fdtype, seed=5)
    f_params, f_opt = run_fusedopt(fusedopt.RMSprop, kwargs, params0, grads)
    t_params, t_opt = run_torch(torch.optim.RMSprop, {**kwargs, "foreach": False}, params0, grads)
    expected = ("square_avg",)
    expected += ("momentum_buffer",) if kwargs["momentum"] > 0 else ()
    expected += ("grad_avg",) if kwargs["centered"] else ()
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype, expected_state_keys=expected)


# ------------------------------------------------------------------------------------------------
# Adagrad
# ------------------------------------------------------------------------------------------------
ADAGRAD_GRID = product(
    lr=[0.1], lr_decay=[0.0, 0.01], initial_accumulator_value=[0.0, 0.1], weight_decay=[0.0, 1e-2],
    maximize=[False, True],
)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS_WITH_FUSED)
@pytest.mark.parametrize("kwargs", cases(ADAGRAD_GRID))
@pytest.mark.parametrize("fdtype", DTYPES)
def test_adagrad_matches_torch(kwargs: Dict[str, Any], impl: Dict[str, Any], fdtype: Any) -> None:
    params0, grads = make_problem(fdtype, seed=6)
    f_params, f_opt = run_fusedopt(fusedopt.Adagrad, kwargs, params0, grads)
    t_params, t_opt = run_torch(torch.optim.Adagrad, {**kwargs, **impl}, params0, grads)
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype, expected_state_keys=("sum",))


# ------------------------------------------------------------------------------------------------
# learning rate changed between steps (schedules): buffers hold no lr, AdamW decay uses current lr
# ------------------------------------------------------------------------------------------------
def piecewise_lr(t: int, base: float) -> float:
    if t < 7:
        return base
    if t < 14:
        return base * 0.3
    return base * 2.0


_LR_CHANGE_SETUPS = [
    ("SGD-momentum", fusedopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1), True),
    ("SGD-nesterov-wd", fusedopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
     True),  # fmt: skip
    ("Adam-L2-amsgrad", fusedopt.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True), True),
    ("AdamW", fusedopt.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1), True),
    ("RMSprop-centered-momentum", fusedopt.RMSprop, torch.optim.RMSprop, dict(lr=1e-2, momentum=0.9, centered=True),
     False),  # torch has no fused RMSprop
    ("Adagrad-lr_decay", fusedopt.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=1e-2), True),
]
LR_CHANGE_CASES = [
    pytest.param(f_cls, t_cls, kwargs, impl, id=f"{name}-{impl_id}")
    for name, f_cls, t_cls, kwargs, has_fused in _LR_CHANGE_SETUPS
    for impl, impl_id in [({"foreach": False}, "torch-loop"), ({"fused": True}, "torch-fused")]
    if has_fused or "fused" not in impl
]


@pytest.mark.parametrize("f_cls,t_cls,kwargs,impl", LR_CHANGE_CASES)
@pytest.mark.parametrize("fdtype", DTYPES)
def test_lr_changed_mid_run_matches_torch(
    f_cls: type, t_cls: type, kwargs: Dict[str, Any], impl: Dict[str, Any], fdtype: Any
) -> None:
    """param_groups[0]['lr'] edited before steps 7 and 14 in both optimizers."""
    params0, grads = make_problem(fdtype, seed=7)
    f_params, f_opt = run_fusedopt(f_cls, kwargs, params0, grads, lr_schedule=piecewise_lr)
    t_params, t_opt = run_torch(t_cls, {**kwargs, **impl}, params0, grads, lr_schedule=piecewise_lr)
    assert f_opt.param_groups[0]["lr"] == t_opt.param_groups[0]["lr"] == kwargs["lr"] * 2.0
    compare_runs(f_params, f_opt, t_params, t_opt, fdtype)
    # the schedule must matter: a constant-lr run ends elsewhere
    const_params, _ = run_fusedopt(f_cls, kwargs, params0, grads)
    assert not np.allclose(const_params[-1], f_params[-1], rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------------------------
# Momentum (Ng EMA form) == torch SGD(lr=lr*(1-beta), momentum=beta) for a constant lr (§7)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [pytest.param(False, id="torch-loop"), pytest.param(True, id="torch-fused")])
@pytest.mark.parametrize("beta", [0.9, 0.5, 0.99])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_momentum_equals_torch_sgd_with_scaled_lr(beta: float, weight_decay: float, fused: bool) -> None:
    lr = 0.05
    params0, grads = make_problem(np.float64, seed=8)
    f_params, f_opt = run_fusedopt(fusedopt.Momentum, dict(lr=lr, beta=beta, weight_decay=weight_decay), params0, grads)
    impl = {"fused": True} if fused else {"foreach": False}
    t_params, t_opt = run_torch(
        torch.optim.SGD, dict(lr=lr * (1 - beta), momentum=beta, weight_decay=weight_decay, **impl), params0, grads
    )
    for i, (fp, tp) in enumerate(zip(f_params, t_params)):
        assert_close(fp, tp.detach().numpy(), 1e-13, f"params[{i}]")
        # velocity (EMA) = (1 - beta) * torch buffer (sum form)
        buf = t_opt.state[tp]["momentum_buffer"].numpy()
        assert_close(f_opt.state[i]["velocity"], (1 - beta) * buf, 1e-13, f"velocity[{i}]")
    assert f_opt.state[0]["step"] == N_STEPS
    # and the EMA is not torch's dampened SGD (first buffer g, not (1-beta) g)
    d_params, _ = run_torch(torch.optim.SGD, dict(lr=lr, momentum=beta, dampening=beta, **impl), params0, grads)
    assert not np.allclose(f_params[-1], d_params[-1].detach().numpy(), rtol=1e-6, atol=0)
