"""The specification itself against hand-computed textbook math (no torch).

``fusedopt.reference`` is the spec the kernels are tested against bitwise; here the spec is checked
against independent, explicitly written formulas (SEMANTICS.md §2-§7, §12), in float64, one or a
few steps at a time. Every test runs on both ``fusedopt.reference`` and ``fusedopt.functional``
(the compiled kernels), which must agree with the same hand computations.

The formulas below are written out on purpose (no use of ``fusedopt._scalars``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

from fusedopt import functional, reference

F64 = np.float64
RTOL = 1e-14  # float64, one or a few steps of a short formula

IMPLS = [pytest.param(reference, id="reference"), pytest.param(functional, id="functional")]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def theta0(n: int = 41, seed: int = 0) -> np.ndarray:
    return rng_for(seed).standard_normal(n)


def grad_away_from_zero(n: int = 41, seed: int = 1, lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    """Gradients with |g| in [lo, hi] and random signs (so |g| >> eps)."""
    r = rng_for(seed)
    return r.uniform(lo, hi, n) * r.choice([-1.0, 1.0], n)


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL, atol: float = 0.0) -> None:
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# Adam
# ------------------------------------------------------------------------------------------------
def textbook_adam(
    theta: np.ndarray, grads: List[np.ndarray], *, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    wd: float = 0.0, decoupled: bool = False, amsgrad: bool = False, maximize: bool = False, t0: int = 0,
    m0: Any = 0.0, v0: Any = 0.0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Kingma & Ba with torch's conventions: eps outside sqrt(v_hat), AMSGrad max over the RAW v."""
    theta = theta.copy()
    m = np.zeros_like(theta) + m0
    v = np.zeros_like(theta) + v0
    vmax = np.zeros_like(theta)
    for k, g in enumerate(grads):
        t = t0 + k + 1
        g = -g if maximize else g
        if wd:
            if decoupled:
                theta = theta * (1.0 - lr * wd)
            else:
                g = g + wd * theta
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        vmax = np.maximum(vmax, v)
        s = vmax if amsgrad else v
        m_hat = m / (1.0 - b1**t)
        s_hat = s / (1.0 - b2**t)
        theta = theta - lr * m_hat / (np.sqrt(s_hat) + eps)
    return theta, m, v, vmax


def run_adam(impl: ModuleType, theta: np.ndarray, grads: List[np.ndarray], *, t0: int = 0, m0: Any = 0.0,
             v0: Any = 0.0, **kw: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    p = theta.copy()
    m = np.zeros_like(p) + m0
    v = np.zeros_like(p) + v0
    vmax = np.zeros_like(p)
    for k, g in enumerate(grads):
        impl.adam(p, g, m, v, vmax if kw.get("amsgrad") else None, step=t0 + k + 1, **kw)
    return p, m, v, vmax


@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_adam_first_step_moves_every_param_by_lr(impl: ModuleType, amsgrad: bool, maximize: bool) -> None:
    """t = 1: m_hat = g, v_hat = g^2, so the step is lr*g/(|g| + eps), i.e. ~lr*sign(g)."""
    lr, eps = 1e-2, 1e-8
    th, g = theta0(), grad_away_from_zero()
    p, m, v, vmax = run_adam(impl, th, [g], lr=lr, eps=eps, amsgrad=amsgrad, maximize=maximize)
    sg = -g if maximize else g
    close(p, th - lr * sg / (np.abs(sg) + eps), rtol=1e-15, atol=1e-16)
    # every element moved by lr within eps/|g| (relative), against the (signed) gradient
    np.testing.assert_allclose(np.abs(p - th), lr, rtol=1e-7)
    assert np.all(np.sign(th - p) == np.sign(sg))
    # the state holds the raw (uncorrected) moments
    close(m, 0.1 * sg, rtol=1e-15)
    close(v, 0.001 * g * g, rtol=1e-14)
    if amsgrad:
        np.testing.assert_array_equal(vmax, v)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_adam_several_steps_match_textbook(impl: ModuleType, amsgrad: bool) -> None:
    th = theta0()
    grads = [grad_away_from_zero(seed=s) * sc for s, sc in zip(range(10, 16), [3.0, 0.2, 1.0, 0.05, 2.0, 0.5])]
    got = run_adam(impl, th, grads, lr=1e-2, amsgrad=amsgrad)
    want = textbook_adam(th, grads, lr=1e-2, amsgrad=amsgrad)
    for name, a, b in zip(["theta", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"], got, want):
        if name == "max_exp_avg_sq" and not amsgrad:
            continue
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=name)


def test_adam_bias_correction_limit(impl: ModuleType) -> None:
    """For large t the corrections vanish: 1 - beta^t == 1 in double, the step is lr*m/(sqrt(v)+eps)."""
    b1, b2, lr, eps, t = 0.9, 0.999, 1e-2, 1e-8, 100_000
    assert 1.0 - b1**t == 1.0 and 1.0 - b2**t == 1.0  # precondition of this test
    th, g = theta0(), grad_away_from_zero()
    m0 = rng_for(3).standard_normal(th.shape)
    v0 = rng_for(4).uniform(0.1, 2.0, th.shape)
    p, m, v, _ = run_adam(impl, th, [g], t0=t - 1, m0=m0, v0=v0, lr=lr, eps=eps)
    m1 = b1 * m0 + (1 - b1) * g
    v1 = b2 * v0 + (1 - b2) * g * g
    close(m, m1)
    close(v, v1)
    close(p, th - lr * m1 / (np.sqrt(v1) + eps), atol=1e-16)
    # and at t = 2 the correction is large: with v0 = m0 = 0 the raw ratio is off by a factor
    p2, _, _, _ = run_adam(impl, th, [g, g], lr=lr, eps=eps)
    # m2 = 0.19 g, v2 = 0.001999 g^2: bias-corrected step is exactly lr*g/(|g|+eps) again
    close(p2, th - 2 * lr * g / (np.abs(g) + eps), rtol=1e-13, atol=1e-15)


def test_amsgrad_takes_the_max_of_the_raw_v(impl: ModuleType) -> None:
    """A large first gradient then small ones: max(raw v) and max(v_hat) give different steps."""
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    th = np.array([0.5, -0.25, 1.0])
    grads = [np.array([10.0, -10.0, 10.0])] + [np.array([0.1, -0.1, 0.1])] * 4
    p, m, v, vmax = run_adam(impl, th, grads, lr=lr, amsgrad=True)

    # hand computation of both rules
    raw_theta, vhat_theta = th.copy(), th.copy()
    mm, vv = np.zeros(3), np.zeros(3)
    raw_max, vhat_max = np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        mm = b1 * mm + (1 - b1) * g
        vv = b2 * vv + (1 - b2) * g * g
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        raw_max = np.maximum(raw_max, vv)  # torch: max of the raw v, corrected by the current bc2
        raw_theta = raw_theta - lr * (mm / bc1) / (np.sqrt(raw_max / bc2) + eps)
        vhat_max = np.maximum(vhat_max, vv / bc2)  # the other rule: max of the corrected v_hat
        vhat_theta = vhat_theta - lr * (mm / bc1) / (np.sqrt(vhat_max) + eps)

    # the gradient sequence really separates the two rules
    assert np.all(np.abs(raw_theta - vhat_theta) > 1e-4)
    close(p, raw_theta, rtol=1e-13)
    assert not np.allclose(p, vhat_theta, rtol=1e-6, atol=0)
    # the stored max is the raw v of step 1: (1 - b2) * 100
    close(vmax, np.full(3, (1 - b2) * 100.0), rtol=1e-15)
    assert np.all(v < vmax)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
def test_adamw_multiplies_theta_by_one_minus_lr_wd_first(impl: ModuleType, amsgrad: bool, maximize: bool) -> None:
    lr, wd, eps = 1e-2, 0.1, 1e-8
    th, g = theta0(), grad_away_from_zero()
    sg = -g if maximize else g
    p, m, _, _ = run_adam(impl, th, [g], lr=lr, weight_decay=wd, decoupled_weight_decay=True, amsgrad=amsgrad,
                          maximize=maximize)  # fmt: skip
    close(p, th * (1 - lr * wd) - lr * sg / (np.abs(sg) + eps), atol=1e-16)
    close(m, 0.1 * sg, rtol=1e-15)  # decay does not enter the moments
    # zero gradient: a pure shrink by (1 - lr*wd), toward zero, with or without maximize
    p0, m0, v0, _ = run_adam(impl, th, [np.zeros_like(th)], lr=lr, weight_decay=wd, decoupled_weight_decay=True,
                             amsgrad=amsgrad, maximize=maximize)  # fmt: skip
    close(p0, th * (1 - lr * wd), rtol=1e-15)
    assert np.all(np.abs(p0) < np.abs(th))
    np.testing.assert_array_equal(m0, 0.0)
    np.testing.assert_array_equal(v0, 0.0)
    # several steps against the textbook form
    grads = [grad_away_from_zero(seed=s) for s in range(20, 25)]
    kw = dict(lr=lr, amsgrad=amsgrad, maximize=maximize)
    got = run_adam(impl, th, grads, weight_decay=wd, decoupled_weight_decay=True, **kw)
    want = textbook_adam(th, grads, wd=wd, decoupled=True, **kw)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13, atol=1e-15)


def test_adamw_function_is_adam_with_decoupled_decay(impl: ModuleType) -> None:
    th = theta0()
    grads = [grad_away_from_zero(seed=s) for s in range(30, 34)]
    states = []
    for fn in ("adamw", "adam"):
        p, m, v = th.copy(), np.zeros_like(th), np.zeros_like(th)
        for t, g in enumerate(grads, start=1):
            if fn == "adamw":
                impl.adamw(p, g, m, v, step=t, lr=1e-2, weight_decay=0.05)
            else:
                impl.adam(p, g, m, v, step=t, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)
        states.append((p, m, v))
    for a, b in zip(*states):
        np.testing.assert_array_equal(a, b)


def test_l2_and_decoupled_weight_decay_differ_as_the_formulas_say(impl: ModuleType) -> None:
    lr, wd, eps = 1e-2, 0.1, 1e-8
    th, g = theta0(), grad_away_from_zero()
    # L2 (Adam): the decay term goes through the adaptive normalisation
    p_l2, m_l2, _, _ = run_adam(impl, th, [g], lr=lr, weight_decay=wd)
    g_l2 = g + wd * th
    close(p_l2, th - lr * g_l2 / (np.abs(g_l2) + eps), atol=1e-16)
    close(m_l2, 0.1 * g_l2, rtol=1e-14)
    # decoupled: not normalised
    p_dc, _, _, _ = run_adam(impl, th, [g], lr=lr, weight_decay=wd, decoupled_weight_decay=True)
    assert np.all(np.abs(p_l2 - p_dc) > 1e-6)
    # zero gradient, L2: the step is lr*sign(theta) (decay normalised away), not lr*wd*theta
    p_z, _, _, _ = run_adam(impl, th, [np.zeros_like(th)], lr=lr, weight_decay=wd)
    close(p_z, th - lr * (wd * th) / (np.abs(wd * th) + eps), atol=1e-16)


# ------------------------------------------------------------------------------------------------
# Momentum (Ng EMA)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["no-wd", "wd"])
def test_momentum_is_an_ema_of_gradients(impl: ModuleType, wd: float) -> None:
    lr, beta = 0.1, 0.9
    th = theta0()
    g1, g2, g3 = (grad_away_from_zero(seed=s) for s in (40, 41, 42))
    p, vel = th.copy(), np.zeros_like(th)
    impl.momentum(p, g1, vel, step=1, lr=lr, beta=beta, weight_decay=wd)
    e1 = g1 + wd * th
    v1 = (1 - beta) * e1  # zero init: the first velocity is (1 - beta) g, 10x smaller than g
    th1 = th - lr * v1
    close(vel, v1, rtol=1e-15)
    close(p, th1, rtol=1e-15, atol=1e-16)
    impl.momentum(p, g2, vel, step=2, lr=lr, beta=beta, weight_decay=wd)
    v2 = beta * v1 + (1 - beta) * (g2 + wd * th1)
    th2 = th1 - lr * v2
    close(vel, v2, rtol=1e-14)
    close(p, th2, atol=1e-15)
    impl.momentum(p, g3, vel, step=3, lr=lr, beta=beta, weight_decay=wd)
    v3 = beta * v2 + (1 - beta) * (g3 + wd * th2)
    close(vel, v3, rtol=1e-14, atol=1e-16)
    close(p, th2 - lr * v3, atol=1e-15)


def test_momentum_bias_correction_divides_by_one_minus_beta_t(impl: ModuleType) -> None:
    lr, beta = 0.1, 0.9
    th = theta0()
    grads = [grad_away_from_zero(seed=s) for s in (50, 51, 52, 53)]
    p, vel = th.copy(), np.zeros_like(th)
    want_p, want_v = th.copy(), np.zeros_like(th)
    for t, g in enumerate(grads, start=1):
        impl.momentum(p, g, vel, step=t, lr=lr, beta=beta, bias_correction=True)
        want_v = beta * want_v + (1 - beta) * g
        want_p = want_p - lr * want_v / (1 - beta**t)
        close(vel, want_v, rtol=1e-14, atol=1e-16)  # the stored velocity stays uncorrected
        close(p, want_p, rtol=1e-14, atol=1e-15)
        if t == 1:  # v_hat_1 = g: the first corrected step is plain gradient descent
            close(p, th - lr * g, rtol=1e-15, atol=1e-16)


# ------------------------------------------------------------------------------------------------
# RMSprop
# ------------------------------------------------------------------------------------------------
def test_rmsprop_first_step(impl: ModuleType) -> None:
    lr, alpha, eps = 1e-2, 0.99, 1e-8
    th, g = theta0(), grad_away_from_zero()
    p, sq = th.copy(), np.zeros_like(th)
    impl.rmsprop(p, g, sq, lr=lr, alpha=alpha, eps=eps)
    close(sq, (1 - alpha) * g * g)
    close(p, th - lr * g / (np.sqrt(1 - alpha) * np.abs(g) + eps), atol=1e-16)
    # no bias correction: with alpha = 0.99 the first step is ~10*lr*sign(g)
    np.testing.assert_allclose(np.abs(p - th), 10 * lr, rtol=1e-6)


def test_rmsprop_centered_first_step(impl: ModuleType) -> None:
    lr, alpha, eps = 1e-2, 0.9, 1e-8
    th, g = theta0(), grad_away_from_zero()
    p, sq, ga = th.copy(), np.zeros_like(th), np.zeros_like(th)
    impl.rmsprop(p, g, sq, ga, lr=lr, alpha=alpha, eps=eps, centered=True)
    close(ga, (1 - alpha) * g)
    # v - g_avg^2 = (1-a) g^2 - (1-a)^2 g^2 = a (1-a) g^2
    close(p, th - lr * g / (np.sqrt(alpha * (1 - alpha)) * np.abs(g) + eps), rtol=1e-13, atol=1e-16)


def test_rmsprop_momentum_two_steps_and_eps_outside_sqrt(impl: ModuleType) -> None:
    lr, alpha, eps, mu = 1e-2, 0.9, 1e-3, 0.8
    th = theta0()
    g1, g2 = grad_away_from_zero(seed=60), grad_away_from_zero(seed=61)
    p, sq, buf = th.copy(), np.zeros_like(th), np.zeros_like(th)
    impl.rmsprop(p, g1, sq, None, buf, lr=lr, alpha=alpha, eps=eps, momentum=mu)
    v1 = (1 - alpha) * g1 * g1
    b1 = g1 / (np.sqrt(v1) + eps)  # zero-initialised buffer, eps OUTSIDE the sqrt
    th1 = th - lr * b1
    close(buf, b1)
    close(p, th1, atol=1e-16)
    impl.rmsprop(p, g2, sq, None, buf, lr=lr, alpha=alpha, eps=eps, momentum=mu)
    v2 = alpha * v1 + (1 - alpha) * g2 * g2
    b2 = mu * b1 + g2 / (np.sqrt(v2) + eps)
    close(sq, v2)
    close(buf, b2, rtol=1e-14, atol=1e-15)
    close(p, th1 - lr * b2, atol=1e-15)
    # eps inside the sqrt would be a different optimizer (clearly distinguishable with eps = 1e-3)
    assert not np.allclose(b1, g1 / np.sqrt(v1 + eps), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Adagrad
# ------------------------------------------------------------------------------------------------
def test_adagrad_first_step(impl: ModuleType) -> None:
    lr, eps = 0.1, 1e-10
    th, g = theta0(), grad_away_from_zero()
    p, s = th.copy(), np.zeros_like(th)
    impl.adagrad(p, g, s, step=1, lr=lr, eps=eps)
    close(s, g * g)
    close(p, th - lr * g / (np.abs(g) + eps), atol=1e-16)
    np.testing.assert_allclose(np.abs(p - th), lr, rtol=1e-9)
    # initial_accumulator_value iv: sum starts at iv
    iv = 0.1
    p, s = th.copy(), np.full_like(th, iv)
    impl.adagrad(p, g, s, step=1, lr=lr, eps=eps)
    close(s, iv + g * g)
    close(p, th - lr * g / (np.sqrt(iv + g * g) + eps), atol=1e-16)


@pytest.mark.parametrize("wd", [0.0, 0.02], ids=["no-wd", "wd"])
def test_adagrad_lr_decay_schedule(impl: ModuleType, wd: float) -> None:
    """clr_t = lr / (1 + (t-1)*lr_decay): no decay on the first step."""
    lr, lr_decay, eps = 0.1, 0.5, 1e-10
    th = theta0()
    grads = [grad_away_from_zero(seed=s) for s in range(70, 76)]
    p, s = th.copy(), np.zeros_like(th)
    want_p, want_s = th.copy(), np.zeros_like(th)
    for t, g in enumerate(grads, start=1):
        impl.adagrad(p, g, s, step=t, lr=lr, lr_decay=lr_decay, weight_decay=wd, eps=eps)
        clr = lr / (1 + (t - 1) * lr_decay)
        ge = g + wd * want_p
        want_s = want_s + ge * ge
        want_p = want_p - clr * ge / (np.sqrt(want_s) + eps)
        close(s, want_s, rtol=1e-14)
        close(p, want_p, rtol=1e-14, atol=1e-15)
    # same gradients, same state, only the step index differs: the move scales as 1/(1+(t-1)*lr_decay)
    g = grads[0]
    moves = []
    for t in (1, 2, 5):
        q, acc = th.copy(), np.full_like(th, 2.0)
        impl.adagrad(q, g, acc, step=t, lr=lr, lr_decay=lr_decay, eps=eps)
        moves.append(th - q)
    np.testing.assert_allclose(moves[1], moves[0] / 1.5, rtol=1e-12)
    np.testing.assert_allclose(moves[2], moves[0] / 3.0, rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# SGD
# ------------------------------------------------------------------------------------------------
def test_sgd_plain_step(impl: ModuleType) -> None:
    th, g = theta0(), grad_away_from_zero()
    p = th.copy()
    impl.sgd(p, g, lr=0.1)
    close(p, th - 0.1 * g, rtol=1e-15, atol=1e-16)
    p = th.copy()
    impl.sgd(p, g, lr=0.1, weight_decay=0.2)
    close(p, th - 0.1 * (g + 0.2 * th), rtol=1e-15, atol=1e-16)


def test_sgd_first_momentum_step_copies_gradient_despite_dampening(impl: ModuleType) -> None:
    lr, mu, tau = 0.1, 0.9, 0.5
    th = theta0()
    g1, g2 = grad_away_from_zero(seed=80), grad_away_from_zero(seed=81)
    p = th.copy()
    buf = np.full_like(th, np.nan)  # contents are ignored on the first step
    impl.sgd(p, g1, buf, lr=lr, momentum=mu, dampening=tau, first_step=True)
    np.testing.assert_array_equal(buf, g1)  # b_1 = g, NOT (1 - tau) g
    close(p, th - lr * g1, rtol=1e-15, atol=1e-16)
    impl.sgd(p, g2, buf, lr=lr, momentum=mu, dampening=tau)
    b2 = mu * g1 + (1 - tau) * g2
    close(buf, b2, rtol=1e-15, atol=1e-16)
    close(p, th - lr * g1 - lr * b2, atol=1e-15)


def test_sgd_nesterov_uses_the_new_buffer(impl: ModuleType) -> None:
    lr, mu = 0.1, 0.9
    th = theta0()
    g1, g2 = grad_away_from_zero(seed=82), grad_away_from_zero(seed=83)
    p, buf = th.copy(), np.zeros_like(th)
    impl.sgd(p, g1, buf, lr=lr, momentum=mu, nesterov=True, first_step=True)
    # b1 = g1, d = g1 + mu*b1 = (1 + mu) g1
    close(p, th - lr * (g1 + mu * g1), rtol=1e-15, atol=1e-16)
    th1 = p.copy()
    impl.sgd(p, g2, buf, lr=lr, momentum=mu, nesterov=True)
    b2 = mu * g1 + g2
    close(buf, b2, rtol=1e-15, atol=1e-16)
    close(p, th1 - lr * (g2 + mu * b2), atol=1e-15)


# ------------------------------------------------------------------------------------------------
# maximize: the gradient is negated BEFORE the (coupled) weight decay, so decay still shrinks theta
# ------------------------------------------------------------------------------------------------
Stepper = Callable[[ModuleType, np.ndarray, np.ndarray, Dict[str, Any]], None]


def _sgd_step(impl: ModuleType, p: np.ndarray, g: np.ndarray, kw: Dict[str, Any]) -> None:
    impl.sgd(p, g, np.zeros_like(p), lr=0.1, momentum=0.9, first_step=True, **kw)


def _adam_step(impl: ModuleType, p: np.ndarray, g: np.ndarray, kw: Dict[str, Any]) -> None:
    impl.adam(p, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=1e-2, **kw)


def _adamw_step(impl: ModuleType, p: np.ndarray, g: np.ndarray, kw: Dict[str, Any]) -> None:
    impl.adamw(p, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=1e-2, **kw)


def _rmsprop_step(impl: ModuleType, p: np.ndarray, g: np.ndarray, kw: Dict[str, Any]) -> None:
    impl.rmsprop(p, g, np.zeros_like(p), lr=1e-2, **kw)


def _adagrad_step(impl: ModuleType, p: np.ndarray, g: np.ndarray, kw: Dict[str, Any]) -> None:
    impl.adagrad(p, g, np.zeros_like(p), step=1, lr=1e-2, **kw)


STEPPERS = [
    pytest.param(_sgd_step, id="sgd"),
    pytest.param(_adam_step, id="adam"),
    pytest.param(_adamw_step, id="adamw"),
    pytest.param(_rmsprop_step, id="rmsprop"),
    pytest.param(_adagrad_step, id="adagrad"),
]


@pytest.mark.parametrize("stepper", STEPPERS)
def test_maximize_negates_gradient_but_decay_still_shrinks(impl: ModuleType, stepper: Stepper) -> None:
    th, g = theta0(), grad_away_from_zero()
    # maximize with g equals minimize with -g (negation is exact)
    a, b = th.copy(), th.copy()
    stepper(impl, a, g, {"maximize": True})
    stepper(impl, b, -g, {})
    np.testing.assert_array_equal(a, b)
    assert np.all(np.sign(a - th) == np.sign(g))  # ascent: moves along +g
    # zero gradient + weight decay, maximize: theta moves toward zero, never away from it
    # (adaptive methods normalise the L2 term, so small entries may overshoot zero: RMSprop's first
    # step is ~10*lr*sign(theta))
    c = th.copy()
    stepper(impl, c, np.zeros_like(th), {"maximize": True, "weight_decay": 0.1})
    assert np.all(np.sign(c - th) == -np.sign(th))
    big = np.abs(th) > 0.2
    assert big.sum() > 10 and np.all(np.abs(c[big]) < np.abs(th[big]))


def test_sgd_maximize_with_weight_decay_formula(impl: ModuleType) -> None:
    lr, wd = 0.1, 0.2
    th, g = theta0(), grad_away_from_zero()
    p = th.copy()
    impl.sgd(p, g, lr=lr, weight_decay=wd, maximize=True)
    close(p, th - lr * (-g + wd * th), rtol=1e-15, atol=1e-16)


def test_adam_maximize_with_l2_decay_formula(impl: ModuleType) -> None:
    lr, wd, eps = 1e-2, 0.3, 1e-8
    th, g = theta0(), grad_away_from_zero()
    p, _, _, _ = run_adam(impl, th, [g], lr=lr, weight_decay=wd, maximize=True)
    ge = -g + wd * th
    close(p, th - lr * ge / (np.abs(ge) + eps), atol=1e-16)


# ------------------------------------------------------------------------------------------------
# float32: dtypes preserved, arithmetic done in float32 (no silent upcast)
# ------------------------------------------------------------------------------------------------
def _all_algorithms(impl: ModuleType, dtype: Any, seed: int = 90, n: int = 4099, steps: int = 3) -> Dict[str, List[np.ndarray]]:
    """Run every algorithm (with its optional state) for a few steps; return all written arrays."""
    r = rng_for(seed)
    # drawn in float32, so that the float64 run starts from exactly the same values
    th = r.standard_normal(n).astype(np.float32).astype(dtype)
    grads = [(r.standard_normal(n) * s).astype(np.float32).astype(dtype) for s in (2.0, 0.3, 1.0)[:steps]]

    def z() -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    out: Dict[str, List[np.ndarray]] = {}
    p, b = th.copy(), z()
    for t, g in enumerate(grads, start=1):
        impl.sgd(p, g, b, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, first_step=(t == 1))
    out["sgd"] = [p, b]
    p, v = th.copy(), z()
    for t, g in enumerate(grads, start=1):
        impl.momentum(p, g, v, step=t, lr=0.1, beta=0.9, weight_decay=0.01, bias_correction=True)
    out["momentum"] = [p, v]
    p, sq, ga, mb = th.copy(), z(), z(), z()
    for g in grads:
        impl.rmsprop(p, g, sq, ga, mb, lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)
    out["rmsprop"] = [p, sq, ga, mb]
    p, m, v, vm = th.copy(), z(), z(), z()
    for t, g in enumerate(grads, start=1):
        impl.adam(p, g, m, v, vm, step=t, lr=0.01, weight_decay=0.01, amsgrad=True)
    out["adam"] = [p, m, v, vm]
    p, m, v = th.copy(), z(), z()
    for t, g in enumerate(grads, start=1):
        impl.adamw(p, g, m, v, step=t, lr=0.01, weight_decay=0.1)
    out["adamw"] = [p, m, v]
    p, s = th.copy(), np.full(n, 0.1, dtype=dtype)
    for t, g in enumerate(grads, start=1):
        impl.adagrad(p, g, s, step=t, lr=0.1, lr_decay=0.01, weight_decay=0.01)
    out["adagrad"] = [p, s]
    return out


def test_float32_in_float32_out_and_computed_in_float32(impl: ModuleType) -> None:
    res32 = _all_algorithms(impl, np.float32)
    # the same inputs (exactly representable in float32) run in float64
    res64 = _all_algorithms(impl, np.float64)
    for name in res32:
        for k, (a32, a64) in enumerate(zip(res32[name], res64[name])):
            assert a32.dtype == np.float32, (name, k)
            scale = float(np.max(np.abs(a64)))
            np.testing.assert_allclose(a32, a64, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{name}[{k}]")
    # One step: a silent upcast (float64 intermediates, one rounding when stored) would reproduce
    # the rounded float64 result (up to rare double-rounding cases); float32 arithmetic rounds every
    # operation and differs from it in a sizeable fraction of the elements.
    one32 = _all_algorithms(impl, np.float32, steps=1)
    one64 = _all_algorithms(impl, np.float64, steps=1)
    for name in one32:
        p32, p64 = one32[name][0], one64[name][0]
        n_diff = int(np.sum(p32 != p64.astype(np.float32)))
        assert n_diff > p32.size // 100, f"{name}: float32 result ~equals the rounded float64 result (upcast?)"


def test_float32_sgd_and_adam_equal_explicit_float32_arithmetic(impl: ModuleType) -> None:
    """Scalars computed in double and cast once; every array operation rounded to float32."""
    f = np.float32
    r = rng_for(91)
    n = 1031
    th = r.standard_normal(n).astype(f)
    g = r.standard_normal(n).astype(f)
    lr, wd, mu, tau = 0.1, 0.01, 0.9, 0.1
    # SGD: two steps, momentum + dampening + L2
    p, buf = th.copy(), np.zeros(n, dtype=f)
    impl.sgd(p, g, buf, lr=lr, momentum=mu, dampening=tau, weight_decay=wd, first_step=True)
    impl.sgd(p, g, buf, lr=lr, momentum=mu, dampening=tau, weight_decay=wd)
    e1 = g + f(wd) * th
    th1 = th - f(lr) * e1
    e2 = g + f(wd) * th1
    b2 = f(mu) * e1 + f(1.0 - tau) * e2
    th2 = th1 - f(lr) * b2
    assert th2.dtype == b2.dtype == np.float32
    np.testing.assert_array_equal(buf, b2)
    np.testing.assert_array_equal(p, th2)
    # Adam: one step at t = 3 from a non-zero state
    b1_, b2_, eps, t = 0.9, 0.999, 1e-8, 3
    m0 = r.standard_normal(n).astype(f)
    v0 = r.uniform(0.1, 1.0, n).astype(f)
    p, m, v = th.copy(), m0.copy(), v0.copy()
    impl.adam(p, g, m, v, step=t, lr=1e-2, beta1=b1_, beta2=b2_, eps=eps)
    m_want = f(b1_) * m0 + f(1.0 - b1_) * g
    v_want = f(b2_) * v0 + f(1.0 - b2_) * g * g
    # the Adam paper's "more efficient order": bias corrections folded into two float64 scalars
    root_bc2 = np.sqrt(1.0 - b2_**t)
    denom = np.sqrt(v_want) + f(eps * root_bc2)
    p_want = th + (f(-1e-2 * root_bc2 / (1.0 - b1_**t)) * m_want) / denom
    assert p_want.dtype == np.float32
    np.testing.assert_array_equal(m, m_want)
    np.testing.assert_array_equal(v, v_want)
    np.testing.assert_array_equal(p, p_want)


# ------------------------------------------------------------------------------------------------
# the functional API on lists equals the reference (which the hand formulas above pin down)
# ------------------------------------------------------------------------------------------------
def test_functional_lists_equal_reference_bitwise() -> None:
    for dtype in (np.float32, np.float64):
        ref = _all_algorithms(reference, dtype, seed=92, n=257)
        fun = _all_algorithms(functional, dtype, seed=92, n=257)
        for name in ref:
            for k, (a, b) in enumerate(zip(fun[name], ref[name])):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}[{k}] {np.dtype(dtype).name}")
    # one call over a list of tensors == one reference call per tensor
    r = rng_for(93)
    shapes = [(), (1,), (17,), (3, 5)]
    ps = [np.array(r.standard_normal(s)) for s in shapes]
    gs = [np.array(r.standard_normal(s)) for s in shapes]
    ms = [np.zeros(s) for s in shapes]
    vs = [np.zeros(s) for s in shapes]
    ref_out = []
    for p, g in zip(ps, gs):
        q, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        reference.adam(q, g, m, v, step=1, lr=1e-2, weight_decay=0.1)
        ref_out.append((q, m, v))
    functional.adam(ps, gs, ms, vs, step=1, lr=1e-2, weight_decay=0.1)
    for (q, m, v), p, m2, v2 in zip(ref_out, ps, ms, vs):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(m2, m)
        np.testing.assert_array_equal(v2, v)


# ------------------------------------------------------------------------------------------------
# Lion
# ------------------------------------------------------------------------------------------------
def textbook_lion(
    theta: np.ndarray, grads: List[np.ndarray], *, lr: float, b1: float = 0.9, b2: float = 0.99, wd: float = 0.0,
    maximize: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Chen et al. 2023, Algorithm 2, with the decay applied first (torch/lucidrains order):
    theta <- theta*(1 - lr*wd); c = b1*m + (1-b1)*g; theta <- theta - lr*sign(c); m <- b2*m + (1-b2)*g."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    for g in grads:
        g = -g if maximize else g
        theta = theta * (1.0 - lr * wd)
        c = b1 * m + (1.0 - b1) * g
        theta = theta - lr * np.sign(c)
        m = b2 * m + (1.0 - b2) * g
    return theta, m


def _kernel_lion(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, **kw: Any) -> None:
    """The compiled kernel, called with the scalars the functional layer passes."""
    import math

    from fusedopt import _core, _scalars

    s = _scalars.lion_scalars(
        lr=kw["lr"], beta1=kw.get("beta1", 0.9), beta2=kw.get("beta2", 0.99), weight_decay=kw.get("weight_decay", 0.0)
    )
    _core.lion([param], [grad], [exp_avg], *s, 1.0, 1.0, math.inf, kw.get("maximize", False), 1)


LION_IMPLS = [pytest.param(reference.lion, id="reference"), pytest.param(_kernel_lion, id="kernel")]


@pytest.mark.parametrize("lion", LION_IMPLS)
@pytest.mark.parametrize(
    "kw", [{}, {"wd": 0.1}, {"maximize": True}, {"b1": 0.5, "b2": 0.9, "wd": 0.3}], ids=["plain", "wd", "max", "betas"]
)
def test_lion_textbook(lion: Callable[..., None], kw: Dict[str, Any]) -> None:
    lr = 1e-2
    theta = theta0()
    grads = [grad_away_from_zero(seed=s) for s in range(1, 6)]
    expected, m_expected = textbook_lion(theta, grads, lr=lr, **kw)
    p, m = theta.copy(), np.zeros_like(theta)
    names = {"b1": "beta1", "b2": "beta2", "wd": "weight_decay", "maximize": "maximize"}
    for g in grads:
        lion(p, g, m, lr=lr, **{names[k]: v for k, v in kw.items()})
    close(m, m_expected)
    close(p, expected)
    # every element moved by exactly lr per step (up to rounding) without decay
    if not kw.get("wd"):
        assert np.all(np.abs(np.abs(p - theta) / lr - np.round(np.abs(p - theta) / lr)) < 1e-9)


def test_lion_first_step_is_minus_lr_sign_g() -> None:
    """Step 1 from m = 0: c = (1-b1)*g, so theta moves by -lr*sign(g) (0 where g == 0)."""
    theta = theta0(9)
    g = np.array([1.5, -2.0, 0.0, 1e-30, -1e-30, 3.0, -0.0, 7.0, -7.0])
    p, m = theta.copy(), np.zeros(9)
    reference.lion(p, g, m, lr=0.25)
    close(p, theta - 0.25 * np.sign(g))
    close(m, 0.01 * g)
