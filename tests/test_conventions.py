"""Non-torch conventions: TF/Keras/optax RMSprop, Keras/TF Adam (epsilon-hat), optax Adam (eps_root),
optax/TF momentum (trace), and the preset constructors.

Each convention is checked two ways:

* against an **independent implementation of that framework's formula**, written here in float64
  NumPy from the framework's own definition (the TF raw op / Keras / optax order of operations),
  over multi-step trajectories, to float64 tolerance (and, in float32, to float32 tolerance);
* against :mod:`fusedopt.reference` **bitwise**, for every supported ISA, float32/float64 and
  several thread counts (the kernels' specification, as for the torch forms).

Plus: the torch form is unchanged by the new parameters' defaults (bitwise), the conventions do
differ from torch's where they should (so a test could not pass by ignoring a flag), presets carry
the framework's defaults, and the flags live in param groups / state dicts.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

import fusedopt
from fusedopt import functional, reference

SIZES = [1, 7, 33, 1000, 4099]  # SIMD tails, several tensors, a cut inside a tensor for 3 threads


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(bits(got), bits(want)):
        bad = np.flatnonzero(bits(got) != bits(want))
        raise AssertionError(
            f"{what}: {bad.size} elements differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"
        )


# ------------------------------------------------------------------------------------------------
# a generic kernel-vs-reference trajectory runner
# ------------------------------------------------------------------------------------------------
#: algorithm -> (functional, reference, number of state slots, state slots used given kw)
def _slots(algo: str, kw: Dict[str, Any]) -> List[bool]:
    if algo == "rmsprop":
        return [True, bool(kw.get("centered")), kw.get("momentum", 0.0) > 0.0]
    if algo in ("adam", "adamw"):
        return [True, True, bool(kw.get("amsgrad"))]
    return [True]


def run_bitwise(algo: str, kw: Dict[str, Any], dtype: np.dtype, threads: int, *, steps: int = 4,
                per_step: Callable[[int], Dict[str, Any]] = lambda t: {}, seed: int = 0) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    fn, ref = getattr(functional, algo), getattr(reference, algo)
    ps = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    used = _slots(algo, kw)
    states = [[np.zeros_like(p) for p in ps] if u else None for u in used]
    ref_ps = [p.copy() for p in ps]
    ref_states = [[a.copy() for a in s] if s is not None else None for s in states]
    for t in range(1, steps + 1):
        scale = [1.0, 1e-3, 30.0, 1e-6][t % 4]
        gs = [(rng.standard_normal(n) * scale).astype(dtype) for n in SIZES]
        g_before = [g.copy() for g in gs]
        extra = per_step(t)
        fn(ps, gs, *states, **kw, **extra, threads=threads)
        for i in range(len(ps)):
            ref(ref_ps[i], gs[i], *[s[i] if s is not None else None for s in ref_states], **kw, **extra)
        for i in range(len(ps)):
            assert_bitwise(gs[i], g_before[i], f"grads[{i}] (must not be written)")
            assert_bitwise(ps[i], ref_ps[i], f"step {t} params[{i}]")
            for k, (s, r) in enumerate(zip(states, ref_states)):
                if s is not None:
                    assert_bitwise(s[i], r[i], f"step {t} state {k}[{i}]")


def adam_step(t: int) -> Dict[str, Any]:
    return {"step": t}


# ------------------------------------------------------------------------------------------------
# independent framework formulas (float64 unless the dtype says otherwise)
# ------------------------------------------------------------------------------------------------
def tf_apply_rmsprop(var, ms, mom, mg, g, *, lr, rho, momentum, eps, centered):
    """tensorflow/core/kernels/training_ops.cc ApplyRMSProp / ApplyCenteredRMSProp (CPU functors)."""
    ms += (g * g - ms) * (1 - rho)
    if centered:
        mg += (g - mg) * (1 - rho)
        denom = ms - mg * mg + eps
    else:
        denom = ms + eps
    mom[...] = mom * momentum + lr * g / np.sqrt(denom)
    var -= mom


def optax_rmsprop(params, nu, g, *, lr, decay, eps):
    """optax.rmsprop(lr, decay, eps) = scale_by_rms(decay, eps, eps_in_sqrt=True) then scale(-lr)."""
    nu[...] = (1 - decay) * g**2 + decay * nu
    u = g / np.sqrt(nu + eps)
    params += -lr * u


def keras_adam(var, m, v, vhat, g, *, t, lr, b1, b2, eps, amsgrad):
    """keras/src/optimizers/adam.py update_step (TF ApplyAdam is the same formula)."""
    alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    m += (g - m) * (1 - b1)
    v += (g * g - v) * (1 - b2)
    if amsgrad:
        vhat[...] = np.maximum(vhat, v)
        v = vhat
    var -= alpha * m / (np.sqrt(v) + eps)


def optax_adam(params, mu, nu, g, *, t, lr, b1, b2, eps, eps_root):
    """optax.adam = scale_by_adam(b1, b2, eps, eps_root) then scale_by_learning_rate(lr)."""
    mu[...] = (1 - b1) * g + b1 * mu
    nu[...] = (1 - b2) * g**2 + b2 * nu
    mu_hat = mu / (1 - b1**t)
    nu_hat = nu / (1 - b2**t)
    u = mu_hat / (np.sqrt(nu_hat + eps_root) + eps)
    params += -lr * u


def optax_trace_sgd(params, tr, g, *, lr, decay, nesterov):
    """optax.sgd(lr, momentum=decay, nesterov) = trace(decay, nesterov) then scale_by_learning_rate."""
    tr[...] = g + decay * tr
    u = g + decay * tr if nesterov else tr
    params -= lr * u


def tf_apply_momentum(var, accum, g, *, lr, momentum, nesterov):
    """training_ops.cc ApplyMomentum."""
    accum[...] = accum * momentum + g
    if nesterov:
        var -= g * lr + accum * momentum * lr
    else:
        var -= accum * lr


def _grads(rng: np.random.Generator, n: int, steps: int, dtype: Any = np.float64) -> List[np.ndarray]:
    # a varied scale so that eps matters on some steps (tiny gradients) and not on others
    return [(rng.standard_normal(n) * [1.0, 1e-4, 3.0, 1e-7][t % 4]).astype(dtype) for t in range(steps)]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-300)))


# ================================================================================================
# RMSprop: eps inside the sqrt, lr inside the momentum buffer
# ================================================================================================
RMS_FLAGS = [
    dict(eps_in_sqrt=True),
    dict(lr_in_momentum=True, momentum=0.9),
    dict(eps_in_sqrt=True, lr_in_momentum=True, momentum=0.9),
    dict(eps_in_sqrt=True, lr_in_momentum=True, momentum=0.9, centered=True),
    dict(eps_in_sqrt=True, centered=True, weight_decay=0.1, maximize=True),
    dict(eps_in_sqrt=True, lr_in_momentum=True, momentum=0.5, centered=True, weight_decay=0.01, maximize=True),
]


def _id(kw: Dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kw", RMS_FLAGS, ids=_id)
def test_rmsprop_conventions_kernels_match_reference_bitwise(
    isa: str, dtype: np.dtype, kw: Dict[str, Any], threads: int
) -> None:
    lrs = [0.01, 0.003, 0.02, 0.001]  # a schedule: lr_in_momentum matters
    run_bitwise("rmsprop", dict(alpha=0.9, eps=1e-6, **kw), dtype, threads,
                per_step=lambda t: {"lr": lrs[t % 4]})  # fmt: skip


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["no-momentum", "momentum"])
def test_rmsprop_tf_form_matches_tf_apply_rmsprop(centered: bool, momentum: float) -> None:
    rng = np.random.default_rng(1)
    n, steps = 500, 30
    lrs = [1e-3 * (1 + 0.5 * math.sin(t)) for t in range(steps)]  # lr changes every step
    p0 = rng.standard_normal(n)
    p, sq, ga, buf = p0.copy(), np.zeros(n), np.zeros(n), np.zeros(n)
    var, ms, mom, mg = p0.copy(), np.zeros(n), np.zeros(n), np.zeros(n)
    for t, g in enumerate(_grads(rng, n, steps)):
        functional.rmsprop(p, g, sq, ga if centered else None, buf if momentum else None, lr=lrs[t], alpha=0.9,
                           eps=1e-7, momentum=momentum, centered=centered, eps_in_sqrt=True,
                           lr_in_momentum=True)  # fmt: skip
        tf_apply_rmsprop(var, ms, mom, mg, g, lr=lrs[t], rho=0.9, momentum=momentum, eps=1e-7, centered=centered)
    assert rel_err(p, var) < 1e-12
    np.testing.assert_allclose(sq, ms, rtol=1e-12, atol=0)
    if momentum:
        np.testing.assert_allclose(buf, mom, rtol=1e-10, atol=1e-300)


def test_rmsprop_tf_form_float32_tracks_float64_tf() -> None:
    rng = np.random.default_rng(2)
    n, steps = 300, 20
    p0 = rng.standard_normal(n)
    p = p0.astype(np.float32)
    sq, buf = np.zeros(n, np.float32), np.zeros(n, np.float32)
    var, ms, mom = p0.copy(), np.zeros(n), np.zeros(n)
    for g in _grads(rng, n, steps):
        g32 = g.astype(np.float32)
        functional.rmsprop(p, g32, sq, None, buf, lr=1e-3, alpha=0.9, eps=1e-7, momentum=0.5, eps_in_sqrt=True,
                           lr_in_momentum=True)  # fmt: skip
        tf_apply_rmsprop(var, ms, mom, None, g32.astype(np.float64), lr=1e-3, rho=0.9, momentum=0.5, eps=1e-7,
                         centered=False)  # fmt: skip
    np.testing.assert_allclose(p, var, rtol=2e-6, atol=1e-6)


def test_rmsprop_eps_in_sqrt_matches_optax_rmsprop() -> None:
    rng = np.random.default_rng(3)
    n, steps = 400, 25
    p0 = rng.standard_normal(n)
    p, sq = p0.copy(), np.zeros(n)
    q, nu = p0.copy(), np.zeros(n)
    for g in _grads(rng, n, steps):
        functional.rmsprop(p, g, sq, lr=0.01, alpha=0.9, eps=1e-8, eps_in_sqrt=True)
        optax_rmsprop(q, nu, g, lr=0.01, decay=0.9, eps=1e-8)
    assert rel_err(p, q) < 1e-12


def test_rmsprop_flags_change_the_result() -> None:
    """Each flag must matter (tiny gradients make eps placement visible; an lr schedule makes the
    buffer's lr visible), so the tests above could not pass with a flag ignored."""
    rng = np.random.default_rng(4)
    n = 200
    gs = [rng.standard_normal(n) * 1e-5 for _ in range(5)]
    outs = {}
    for name, kw in {"torch": {}, "eps_in": dict(eps_in_sqrt=True), "lr_in": dict(lr_in_momentum=True)}.items():
        p, sq, buf = np.ones(n), np.zeros(n), np.zeros(n)
        for t, g in enumerate(gs):
            functional.rmsprop(p, g, sq, None, buf, lr=[0.1, 0.01][t % 2], momentum=0.9, eps=1e-8, **kw)
        outs[name] = p
    assert np.max(np.abs(outs["torch"] - outs["eps_in"])) > 1e-3
    assert np.max(np.abs(outs["torch"] - outs["lr_in"])) > 1e-3


def test_rmsprop_lr_in_momentum_without_momentum_is_the_plain_step() -> None:
    rng = np.random.default_rng(5)
    p1 = rng.standard_normal(100)
    p2, g = p1.copy(), rng.standard_normal(100)
    s1, s2 = np.zeros(100), np.zeros(100)
    functional.rmsprop(p1, g, s1, lr=0.01)
    functional.rmsprop(p2, g, s2, lr=0.01, lr_in_momentum=True)
    assert_bitwise(p2, p1, "params")


# ================================================================================================
# Adam: Keras/TF epsilon-hat, optax eps_root
# ================================================================================================
ADAM_FLAGS = [
    dict(epsilon_hat=True),
    dict(epsilon_hat=True, amsgrad=True, weight_decay=0.1),
    dict(epsilon_hat=True, decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
    dict(eps_root=1e-8),
    dict(eps_root=1e-3, amsgrad=True, maximize=True),
    dict(eps_root=1e-6, decoupled_weight_decay=True, weight_decay=0.1),
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kw", ADAM_FLAGS, ids=_id)
def test_adam_conventions_kernels_match_reference_bitwise(
    isa: str, dtype: np.dtype, kw: Dict[str, Any], threads: int
) -> None:
    run_bitwise("adam", dict(lr=3e-3, eps=1e-7, **kw), dtype, threads, per_step=adam_step)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_adam_epsilon_hat_matches_keras(amsgrad: bool) -> None:
    rng = np.random.default_rng(6)
    n, steps = 500, 30
    p0 = rng.standard_normal(n)
    p, m, v, vmax = p0.copy(), np.zeros(n), np.zeros(n), np.zeros(n)
    var, km, kv, kvhat = p0.copy(), np.zeros(n), np.zeros(n), np.zeros(n)
    for t, g in enumerate(_grads(rng, n, steps), start=1):
        functional.adam(p, g, m, v, vmax if amsgrad else None, step=t, lr=1e-3, eps=1e-7, amsgrad=amsgrad,
                        epsilon_hat=True)  # fmt: skip
        keras_adam(var, km, kv, kvhat, g, t=t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7, amsgrad=amsgrad)
    assert rel_err(p, var) < 1e-12
    np.testing.assert_allclose(m, km, rtol=1e-12, atol=1e-300)


def test_adam_epsilon_hat_float32_tracks_float64_keras() -> None:
    rng = np.random.default_rng(7)
    n, steps = 300, 20
    p0 = rng.standard_normal(n)
    p = p0.astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    var, km, kv = p0.copy(), np.zeros(n), np.zeros(n)
    for t, g in enumerate(_grads(rng, n, steps), start=1):
        g32 = g.astype(np.float32)
        functional.adam(p, g32, m, v, step=t, lr=1e-3, eps=1e-7, epsilon_hat=True)
        keras_adam(var, km, kv, None, g32.astype(np.float64), t=t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False)
    np.testing.assert_allclose(p, var, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("eps_root", [0.0, 1e-8, 1e-3])
def test_adam_eps_root_matches_optax(eps_root: float) -> None:
    rng = np.random.default_rng(8)
    n, steps = 500, 30
    p0 = rng.standard_normal(n)
    p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
    q, mu, nu = p0.copy(), np.zeros(n), np.zeros(n)
    for t, g in enumerate(_grads(rng, n, steps), start=1):
        functional.adam(p, g, m, v, step=t, lr=1e-3, eps=1e-8, eps_root=eps_root)
        optax_adam(q, mu, nu, g, t=t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, eps_root=eps_root)
    assert rel_err(p, q) < 1e-12


def test_adam_conventions_differ_from_torch_form() -> None:
    rng = np.random.default_rng(9)
    n = 200
    gs = [rng.standard_normal(n) * 1e-7 for _ in range(3)]  # eps-dominated
    outs = {}
    for name, kw in {"torch": {}, "hat": dict(epsilon_hat=True), "root": dict(eps_root=1e-10)}.items():
        p, m, v = np.ones(n), np.zeros(n), np.zeros(n)
        for t, g in enumerate(gs, start=1):
            functional.adam(p, g, m, v, step=t, lr=0.1, eps=1e-8, **kw)
        outs[name] = p
    assert np.max(np.abs(outs["torch"] - outs["hat"])) > 1e-3
    assert np.max(np.abs(outs["torch"] - outs["root"])) > 1e-3


def test_default_convention_arguments_leave_the_torch_form_bitwise(isa: str, dtype: np.dtype) -> None:
    rng = np.random.default_rng(10)
    p1 = rng.standard_normal(1001).astype(dtype)
    p2 = p1.copy()
    st1 = [np.zeros_like(p1) for _ in range(3)]
    st2 = [np.zeros_like(p1) for _ in range(3)]
    for t in range(1, 4):
        g = rng.standard_normal(1001).astype(dtype)
        functional.adam(p1, g, st1[0], st1[1], st1[2], step=t, amsgrad=True)
        # explicit defaults, plus a gradient pre-processing that is an exact identity (the kernel's
        # pre-processing path runs: clip_value is finite in float64, +inf once cast to float32)
        functional.adam(p2, g, st2[0], st2[1], st2[2], step=t, amsgrad=True, epsilon_hat=False, eps_root=0.0,
                        grad_scale=1.0, clip_value=1e300, found_inf=0.0)  # fmt: skip
    assert_bitwise(p2, p1, "params")
    for a, b in zip(st2, st1):
        assert_bitwise(a, b, "state")


def test_epsilon_hat_and_eps_root_together_are_refused() -> None:
    p, g, m, v = np.ones(4), np.ones(4), np.zeros(4), np.zeros(4)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(ValueError, match="epsilon_hat"):
        functional.adam(p, g, m, v, step=1, epsilon_hat=True, eps_root=1e-8)
    for a, b in zip((p, m, v), before):
        assert_bitwise(a, b, "unchanged")
    with pytest.raises(ValueError, match="eps_root"):
        functional.adam(p, g, m, v, step=1, eps_root=-1.0)
    with pytest.raises(ValueError, match="epsilon_hat"):
        fusedopt.Adam([{"params": [np.ones(3)], "epsilon_hat": True, "eps_root": 1e-3}])


# ================================================================================================
# momentum trace (optax / TF ApplyMomentum)
# ================================================================================================
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kw", [dict(decay=0.9), dict(decay=0.9, nesterov=True), dict(decay=0.0),
                                dict(decay=0.5, nesterov=True, weight_decay=0.01, maximize=True)], ids=_id)  # fmt: skip
def test_trace_kernels_match_reference_bitwise(isa: str, dtype: np.dtype, kw: Dict[str, Any], threads: int) -> None:
    run_bitwise("trace", dict(lr=0.05, **kw), dtype, threads)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
def test_trace_equals_optax_sgd_bitwise(dtype: np.dtype, nesterov: bool) -> None:
    """optax's trace is the same IEEE operations in the same order (g + decay*tr, then -lr*u):
    equal bit for bit, in float32 as in float64."""
    rng = np.random.default_rng(11)
    n = 777
    p0 = rng.standard_normal(n).astype(dtype)
    p, tr = p0.copy(), np.zeros(n, dtype)
    q, qtr = p0.copy(), np.zeros(n, dtype)
    T = dtype.type
    for g in _grads(rng, n, 12, dtype):
        functional.trace(p, g, tr, lr=0.05, decay=0.9, nesterov=nesterov)
        optax_trace_sgd(q, qtr, g, lr=T(0.05), decay=T(0.9), nesterov=nesterov)
    assert_bitwise(tr, qtr, "trace")
    assert_bitwise(p, q, "params")


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
def test_trace_matches_tf_apply_momentum(nesterov: bool) -> None:
    rng = np.random.default_rng(12)
    n = 500
    p0 = rng.standard_normal(n)
    p, tr, var, acc = p0.copy(), np.zeros(n), p0.copy(), np.zeros(n)
    for g in _grads(rng, n, 25):
        functional.trace(p, g, tr, lr=0.01, decay=0.9, nesterov=nesterov)
        tf_apply_momentum(var, acc, g, lr=0.01, momentum=0.9, nesterov=nesterov)
    assert rel_err(p, var) < 1e-12
    np.testing.assert_allclose(tr, acc, rtol=1e-13, atol=0)


def test_trace_equals_sgd_with_zero_dampening() -> None:
    rng = np.random.default_rng(13)
    p1 = rng.standard_normal(300)
    p2, b, tr = p1.copy(), np.zeros(300), np.zeros(300)
    for t in range(6):
        g = rng.standard_normal(300)
        functional.sgd(p1, g, b, lr=0.1, momentum=0.9, nesterov=True, first_step=(t == 0))
        functional.trace(p2, g, tr, lr=0.1, decay=0.9, nesterov=True)
    assert_bitwise(p2, p1, "params")
    assert_bitwise(tr, b, "buffers")


# ================================================================================================
# Ng's textbook momentum (EMA) with bias correction: already a native form; one anchor test
# ================================================================================================
def test_momentum_bias_correction_matches_ng_textbook() -> None:
    rng = np.random.default_rng(14)
    n, beta, lr = 100, 0.9, 0.05
    p0 = rng.standard_normal(n)
    p, vel, q, v = p0.copy(), np.zeros(n), p0.copy(), np.zeros(n)
    for t, g in enumerate(_grads(rng, n, 15), start=1):
        functional.momentum(p, g, vel, step=t, lr=lr, beta=beta, bias_correction=True)
        v = beta * v + (1 - beta) * g
        q -= lr * v / (1 - beta**t)
    assert rel_err(p, q) < 1e-12


# ================================================================================================
# classes: presets, param groups, state dicts, torch signature untouched
# ================================================================================================
def test_class_signatures_keep_torch_arguments_only() -> None:
    assert "eps_in_sqrt" not in inspect.signature(fusedopt.RMSprop).parameters
    assert "epsilon_hat" not in inspect.signature(fusedopt.Adam).parameters


PRESETS = [
    ("RMSprop.keras", lambda ps: fusedopt.RMSprop.keras(ps, momentum=0.9, centered=True),
     dict(lr=1e-3, alpha=0.9, eps=1e-7, momentum=0.9, centered=True, eps_in_sqrt=True, lr_in_momentum=True)),
    ("RMSprop.optax", lambda ps: fusedopt.RMSprop.optax(ps, 0.01, momentum=0.5),
     dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5, eps_in_sqrt=True, lr_in_momentum=True)),
    ("Adam.keras", lambda ps: fusedopt.Adam.keras(ps, amsgrad=True),
     dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-7, amsgrad=True, epsilon_hat=True, eps_root=0.0)),
    ("Adam.optax", lambda ps: fusedopt.Adam.optax(ps, 0.002, eps_root=1e-9),
     dict(lr=0.002, betas=(0.9, 0.999), eps=1e-8, eps_root=1e-9, epsilon_hat=False, weight_decay=0.0)),
    ("AdamW.keras", lambda ps: fusedopt.AdamW.keras(ps),
     dict(lr=1e-3, eps=1e-7, weight_decay=0.004, epsilon_hat=True, decoupled_weight_decay=True)),
    ("AdamW.optax", lambda ps: fusedopt.AdamW.optax(ps, 0.001),
     dict(lr=0.001, eps=1e-8, weight_decay=1e-4, eps_root=0.0, decoupled_weight_decay=True)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "expected"), PRESETS, ids=[p[0] for p in PRESETS])
def test_presets_carry_framework_defaults_and_flags(name: str, make: Callable, expected: Dict[str, Any]) -> None:
    opt = make([np.ones(5, np.float32)])
    group = opt.param_groups[0]
    for k, v in expected.items():
        got = opt.conventions[k] if k in opt.conventions else group[k]
        assert got == v, k
    assert type(opt).__name__ == name.split(".")[0]
    assert set(group) == set(opt.defaults) | {"params"}  # conventions are not hyperparameters
    assert set(opt.state_dict()) == {"state", "param_groups"}


def test_preset_steps_equal_functional_with_flags() -> None:
    rng = np.random.default_rng(15)
    ps = [rng.standard_normal(n).astype(np.float32) for n in (10, 300)]
    opt = fusedopt.Adam.keras([p.copy() for p in ps], learning_rate=0.01, amsgrad=True)
    ms = [[np.zeros_like(p) for p in ps] for _ in range(3)]
    for t in range(1, 5):
        gs = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
        opt.step(gs)
        functional.adam(ps, gs, *ms, step=t, lr=0.01, eps=1e-7, amsgrad=True, epsilon_hat=True)
    for a, b in zip(opt.params, ps):
        assert_bitwise(a, b, "params")
    rms = fusedopt.RMSprop.keras([p.copy() for p in ps], momentum=0.9)
    sq, buf = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    for _ in range(3):
        gs = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
        rms.step(gs)
        functional.rmsprop(ps, gs, sq, None, buf, lr=1e-3, alpha=0.9, eps=1e-7, momentum=0.9, eps_in_sqrt=True,
                           lr_in_momentum=True)  # fmt: skip
    for a, b in zip(rms.params, ps):
        assert_bitwise(a, b, "params")


def test_set_conventions_switches_the_formula_and_validates() -> None:
    rng = np.random.default_rng(16)
    a = rng.standard_normal(50)
    opt = fusedopt.RMSprop([a], lr=0.01)
    assert opt.conventions == {"eps_in_sqrt": False, "lr_in_momentum": False}
    a0 = a.copy()
    g1, g2 = rng.standard_normal(50) * 1e-5, rng.standard_normal(50) * 1e-5
    opt.step([g1])
    with pytest.raises(ValueError, match="unknown convention"):
        opt.set_conventions(eps_inside=True)
    with pytest.raises(TypeError, match="eps_in_sqrt"):
        opt.set_conventions(eps_in_sqrt=1)
    assert opt.conventions["eps_in_sqrt"] is False
    opt.set_conventions(eps_in_sqrt=True)
    opt.step([g2])
    r, sq = a0.copy(), np.zeros(50)
    reference.rmsprop(r, g1, sq, lr=0.01)
    reference.rmsprop(r, g2, sq, lr=0.01, eps_in_sqrt=True)
    assert_bitwise(a, r, "params")
    adam = fusedopt.Adam([np.ones(3)])
    with pytest.raises(ValueError, match="epsilon_hat"):
        adam.set_conventions(epsilon_hat=True, eps_root=1e-3)
    assert adam.conventions == {"epsilon_hat": False, "eps_root": 0.0, "torch_exact": False}


def test_state_dict_of_a_preset_loads_into_a_preset() -> None:
    rng = np.random.default_rng(17)
    ps = [rng.standard_normal(20) for _ in range(2)]
    opt = fusedopt.Adam.keras([p.copy() for p in ps], learning_rate=0.01)
    for _ in range(3):
        opt.step([rng.standard_normal(20) for _ in ps])
    sd = opt.state_dict()
    again = fusedopt.Adam.keras([p.copy() for p in opt.params], learning_rate=0.01)
    again.load_state_dict(sd)
    g = [rng.standard_normal(20) for _ in ps]
    opt.step(g)
    again.step(g)
    for x, y in zip(opt.params, again.params):
        assert_bitwise(x, y, "params")


# ================================================================================================
# torch_exact: float32 Adam/AdamW bit-identical to torch.optim.Adam(fused=True)
# ================================================================================================
def _exact_fma32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """The correctly rounded (ties to even) float32 of a*b + c, from exact rational arithmetic."""
    x = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    r = np.float32(float(x))
    best = None
    for cand in (np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))):
        d = abs(Fraction(float(cand)) - x)
        even = (int(np.array(cand).view(np.uint32)) & 1) == 0
        key = (d, not even)
        if best is None or key < best[0]:
            best = (key, cand)
    return best[1]


def test_fma32_emulation_is_correctly_rounded() -> None:
    rng = np.random.default_rng(20)
    a, b, c = [], [], []
    for _ in range(1500):  # random magnitudes and cancellations
        x, y = np.float32(rng.standard_normal() * 2.0 ** rng.integers(-30, 30)), np.float32(rng.standard_normal())
        a.append(x)
        b.append(y)
        c.append(np.float32(-np.float64(x) * np.float64(y) * (1 + rng.standard_normal() * 1e-6)))
    for _ in range(3000):  # a*b just above or below half an ulp of c = 1: double rounding territory
        x = np.float32(1.0 + rng.random())
        a.append(x)
        b.append(np.float32(2.0**-24 / float(x)))
        c.append(np.float32(rng.choice([1.0, -1.0, 1.5, 1.0 + 2.0**-23])))
    A, B, C = (np.array(v, np.float32) for v in (a, b, c))
    want = np.array([_exact_fma32(x, y, z) for x, y, z in zip(A, B, C)], np.float32)
    got = reference.fma32(A, B, C)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    naive = (A.astype(np.float64) * B + C).astype(np.float32)  # double rounding
    assert np.count_nonzero(naive.view(np.uint32) != want.view(np.uint32)) > 10  # the hard cases were hit


EXACT_FLAGS = [
    dict(),
    dict(amsgrad=True, maximize=True),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True),
    dict(beta1=0.3),  # 1 - beta1 >= 0.5: torch's other lerp branch
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kw", EXACT_FLAGS, ids=lambda kw: _id(kw) or "defaults")
def test_torch_exact_kernels_match_reference_bitwise(isa: str, kw: Dict[str, Any], threads: int) -> None:
    run_bitwise("adam", dict(lr=3e-3, torch_exact=True, **kw), np.dtype(np.float32), threads, per_step=adam_step)


def test_torch_exact_with_grad_scale_matches_reference(isa: str) -> None:
    run_bitwise("adam", dict(lr=3e-3, torch_exact=True, grad_scale=3.0, clip_value=0.5), np.dtype(np.float32), 2,
                per_step=adam_step)  # fmt: skip


def test_torch_exact_is_float32_only_and_exclusive() -> None:
    p, g, m, v = (np.ones(4) for _ in range(4))
    with pytest.raises(TypeError, match="float32"):
        functional.adam(p, g, m, v, step=1, torch_exact=True)
    p32, g32, m32, v32 = (np.ones(4, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match="torch_exact"):
        functional.adam(p32, g32, m32, v32, step=1, torch_exact=True, epsilon_hat=True)
    assert np.all(p32 == 1) and np.all(m32 == 1)
    with pytest.raises(TypeError, match="float32"):
        fusedopt.Adam([np.ones(3)]).set_conventions(torch_exact=True)
    opt = fusedopt.Adam([np.ones(3, np.float32)])
    opt.set_conventions(torch_exact=True)
    with pytest.raises(TypeError, match="float32"):
        opt.add_param_group({"params": [np.ones(3)]})
    assert len(opt.params) == 1


TORCH_CASES = [
    ("Adam", dict()),
    ("Adam", dict(amsgrad=True)),
    ("Adam", dict(maximize=True, weight_decay=0.05)),
    ("Adam", dict(amsgrad=True, maximize=True, weight_decay=0.05)),
    ("Adam", dict(betas=(0.3, 0.99), weight_decay=0.05, decoupled_weight_decay=True)),
    ("AdamW", dict()),
    ("AdamW", dict(amsgrad=True, maximize=True, weight_decay=0.1)),
]


@pytest.mark.parametrize(("name", "kw"), TORCH_CASES, ids=[f"{n}-{_id(k) or 'defaults'}" for n, k in TORCH_CASES])
def test_torch_exact_is_bit_identical_to_torch_fused(name: str, kw: Dict[str, Any]) -> None:
    torch = pytest.importorskip("torch", reason="torch parity needs torch")
    rng = np.random.default_rng(21)
    n = 4096  # a multiple of every SIMD width: torch's fused scalar tail (contracted differently) is empty
    p0 = rng.standard_normal(n).astype(np.float32)
    ours = getattr(fusedopt, name)([p0.copy()], lr=2e-3, **kw)
    ours.set_conventions(torch_exact=True)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    theirs = getattr(torch.optim, name)([tp], lr=2e-3, fused=True, **kw)
    for t in range(20):
        g = (rng.standard_normal(n) * [1.0, 1e-3, 10.0, 1e-6][t % 4]).astype(np.float32)
        ours.step([g])
        tp.grad = torch.tensor(g)
        theirs.step()
        got, want = ours.params[0], tp.detach().numpy()
        assert_bitwise(got, want, f"step {t + 1}")
    st = theirs.state[tp]
    assert_bitwise(ours.state[0]["exp_avg"], st["exp_avg"].numpy(), "exp_avg")
    assert_bitwise(ours.state[0]["exp_avg_sq"], st["exp_avg_sq"].numpy(), "exp_avg_sq")
