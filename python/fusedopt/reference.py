"""The executable specification: every algorithm in plain NumPy, one tensor at a time.

Each function updates its arrays in place with exactly the operations, in exactly the order and
dtype, that the compiled kernels perform (``cpp/kernels/*.inl``): every intermediate is rounded to
the array dtype, there is no fused multiply-add, and the per-step scalars come from
:mod:`fusedopt._scalars` (float64, each rounded once to the array dtype). The kernels are tested
to match these functions **bitwise** on every ISA and thread count.

The functions read like the textbook formulas on purpose; they are slow (several passes over
memory and temporaries) and are not meant for training. Signatures mirror
:mod:`fusedopt.functional` with single arrays instead of lists.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _scalars

__all__ = [
    "adafactor", "adagrad", "adam", "adamax", "adamw", "bf16_rne", "bf16_sr", "bf16_to_f32", "ema", "f16_rne", "f16_to_f32", "fma32",
    "global_norm", "lamb", "lars", "lion", "lowp_step", "momentum", "muon", "muon_apply", "muon_momentum", "muon_newton_schulz",
    "nadam", "philox4x32_10", "radam", "rmsprop", "sgd", "split_decode", "split_encode",
    "sr_bits", "sum_of_squares", "trace",
]  # fmt: skip

#: block size and lane count of the deterministic sum of squares (cpp/common/step_args.hpp)
NORM_BLOCK = 2048
NORM_LANES = 8


def _preprocess(
    grad: np.ndarray, grad_scale: Optional[float], clip_coef: Optional[float], clip_value: Optional[float]
) -> np.ndarray:
    """Gradient pre-processing (cpp/kernels/grad.inl): unscale, global-norm coefficient, clamp.

    Each step is skipped when its argument is None; the kernels instead apply the exact identity
    (``/1``, ``*1``, clamp to ``+-inf``), which rounds identically. Never writes ``grad``."""
    T = grad.dtype.type
    g = grad
    if grad_scale is not None:
        g = g / T(grad_scale)
    if clip_coef is not None:
        g = g * T(clip_coef)
    if clip_value is not None:
        c = T(clip_value)
        g = np.where(g < -c, -c, np.where(g > c, c, g))  # NaN compares false: stays NaN
    return g


def _signed(grad: np.ndarray, maximize: bool) -> np.ndarray:
    return -grad if maximize else grad


def sgd(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: Optional[np.ndarray] = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    first_step: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.SGD. See :func:`fusedopt.functional.sgd`."""
    T = param.dtype.type
    s = _scalars.sgd_scalars(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    d = g
    if s.momentum != 0.0:
        assert momentum_buffer is not None
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = T(s.momentum) * momentum_buffer + T(s.one_minus_dampening) * g
        d = g + T(s.momentum) * momentum_buffer if nesterov else momentum_buffer
    param[...] = param - T(s.lr) * d


def momentum(
    param: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray,
    *,
    step: int,
    lr: float,
    beta: float = 0.9,
    weight_decay: float = 0.0,
    bias_correction: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """Momentum as an EMA of gradients (Ng). See :func:`fusedopt.functional.momentum`."""
    T = param.dtype.type
    s = _scalars.momentum_scalars(
        step=step, lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction
    )
    g = _preprocess(grad, grad_scale, clip_coef, clip_value)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    velocity[...] = T(s.beta) * velocity + T(s.one_minus_beta) * g
    param[...] = param - T(s.step_size) * velocity


def rmsprop(
    param: np.ndarray,
    grad: np.ndarray,
    square_avg: np.ndarray,
    grad_avg: Optional[np.ndarray] = None,
    momentum_buffer: Optional[np.ndarray] = None,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.RMSprop, and the TF/Keras/optax forms. See :func:`fusedopt.functional.rmsprop`."""
    T = param.dtype.type
    s = _scalars.rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    lr_t, eps_t = T(lr), T(eps)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    square_avg[...] = T(s.alpha) * square_avg + (T(s.one_minus_alpha) * g) * g
    if centered:
        assert grad_avg is not None
        grad_avg[...] = T(s.alpha) * grad_avg + T(s.one_minus_alpha) * g
        second = square_avg - grad_avg * grad_avg
    else:
        second = square_avg
    with np.errstate(invalid="ignore"):  # sqrt of a negative rounding residue is NaN, as in torch
        if eps_in_sqrt:
            avg = np.sqrt(second + eps_t)  # TF/Keras/optax
        else:
            avg = np.sqrt(second) + eps_t  # torch, Ng
    if s.momentum > 0.0:
        assert momentum_buffer is not None
        if lr_in_momentum:  # TF/Keras: the buffer holds lr*g/a
            momentum_buffer[...] = T(s.momentum) * momentum_buffer + (lr_t * g) / avg
            param[...] = param - momentum_buffer
        else:
            momentum_buffer[...] = T(s.momentum) * momentum_buffer + g / avg
            param[...] = param - lr_t * momentum_buffer
    else:
        param[...] = param - (lr_t * g) / avg


def adam(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: Optional[np.ndarray] = None,
    *,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    epsilon_hat: bool = False,
    eps_root: float = 0.0,
    torch_exact: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.Adam / AdamW, and the Keras/TF (epsilon_hat) and optax (eps_root) forms.
    See :func:`fusedopt.functional.adam`.

    The update is Kingma & Ba's ``p -= lr * (m/bc1) / (sqrt(v/bc2) + eps)`` in the paper's "more
    efficient order" (end of its §2): the bias corrections are folded into float64 scalars
    (:func:`fusedopt._scalars.adam_scalars`), so an element needs one square root and one division::

        p = p + (S*m) / (sqrt(s + R) + E)     S = -lr*sqrt(bc2)/bc1
        torch/Ng:     E = eps*sqrt(bc2), R = 0
        epsilon_hat:  E = eps,           R = 0             (Keras/TF)
        eps_root:     E = eps*sqrt(bc2), R = eps_root*bc2  (optax: sqrt(v/bc2 + eps_root) + eps)

    ``R = 0`` adds exactly nothing (``s >= +0``). This rounds differently from torch's
    ``sqrt(v)/sqrt(bc2) + eps`` by a few ulp; ``torch_exact=True`` reproduces torch's kernel."""
    T = param.dtype.type
    s = _scalars.adam_scalars(
        step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, epsilon_hat=epsilon_hat, eps_root=eps_root,
    )  # fmt: skip
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if torch_exact:
        _adam_torch_exact(param, g, exp_avg, exp_avg_sq, max_exp_avg_sq, s, amsgrad)
        return
    if s.weight_decay != 0.0:  # L2 (Adam)
        g = g + T(s.weight_decay) * param
    param[...] = param * T(s.decay_factor)  # decoupled (AdamW); exactly 1 otherwise
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    exp_avg_sq[...] = T(s.beta2) * exp_avg_sq + (T(s.one_minus_beta2) * g) * g
    if amsgrad:
        assert max_exp_avg_sq is not None
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)  # over the raw v, as torch
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second + T(s.eps_root_scaled)) + T(s.eps_scaled)
    param[...] = param + (T(s.neg_step_size) * exp_avg) / denom


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 ``a*b + c`` (a fused multiply-add), from float64 arithmetic:
    ``a*b`` is exact in float64; the sum ``s`` and its exact error ``e`` (TwoSum) are rounded to
    odd (if ``e != 0`` and ``s`` is even, step one ulp toward ``e``), which makes the final cast to
    float32 a single correct rounding (the kernels' ``fma32`` in cpp/kernels/torch_exact.inl)."""
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    cd = np.asarray(c, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + cd
        bb = s - p
        e = (p - (s - bb)) + (cd - bb)
        bits = np.array(s, np.float64).view(np.int64)
        fix = (e != 0.0) & np.isfinite(s) & ((bits & 1) == 0)
        step = np.where((e > 0.0) == (s > 0.0), 1, -1).astype(np.int64)
        bits = np.where(fix, bits + step, bits)
        return bits.view(np.float64).astype(np.float32)


def _adam_torch_exact(
    param: np.ndarray,
    g: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: Optional[np.ndarray],
    s: "_scalars.AdamScalars",
    amsgrad: bool,
) -> None:
    """torch 2.13 fused Adam/AdamW float32 rounding (SEMANTICS.md §3.2), see :func:`adam`."""
    if param.dtype != np.float32:
        raise TypeError("torch_exact is a float32 mode")
    T = np.float32
    if s.weight_decay != 0.0:  # L2
        g = fma32(param, T(s.weight_decay), g)
    param[...] = param * T(s.decay_factor)  # decoupled; exactly 1 otherwise
    w1 = T(s.one_minus_beta1)
    if -0.5 < w1 < 0.5:
        exp_avg[...] = fma32(w1, g - exp_avg, exp_avg)
    else:
        exp_avg[...] = fma32(w1 - T(1), g - exp_avg, g)
    exp_avg_sq[...] = fma32(T(s.one_minus_beta2) * g, g, exp_avg_sq * T(s.beta2))
    if amsgrad:
        assert max_exp_avg_sq is not None
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second) / T(s.bias_correction2_sqrt) + T(s.torch_eps)
    param[...] = param + (T(s.torch_neg_step_size) * exp_avg) / denom


def adamw(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: Optional[np.ndarray] = None,
    *,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    epsilon_hat: bool = False,
    eps_root: float = 0.0,
    torch_exact: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.AdamW: :func:`adam` with decoupled weight decay."""
    adam(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
        beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        decoupled_weight_decay=True, epsilon_hat=epsilon_hat, eps_root=eps_root, torch_exact=torch_exact,
        grad_scale=grad_scale,
        clip_coef=clip_coef, clip_value=clip_value,
    )  # fmt: skip


def adagrad(
    param: np.ndarray,
    grad: np.ndarray,
    state_sum: np.ndarray,
    *,
    step: int,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.Adagrad. See :func:`fusedopt.functional.adagrad`."""
    T = param.dtype.type
    s = _scalars.adagrad_scalars(step=step, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    state_sum[...] = state_sum + g * g
    param[...] = param + (T(s.neg_clr) * g) / (np.sqrt(state_sum) + T(s.eps))


def _sign(x: np.ndarray) -> np.ndarray:
    """Lion's sign: +1, -1, and +0 for both zeros (the element does not move); NaN stays NaN."""
    T = x.dtype.type
    return np.where(x > 0, T(1), np.where(x < 0, T(-1), np.where(x == x, T(0), x)))


def lion(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    *,
    lr: float = 1e-4,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """Lion (Chen et al. 2023, Alg. 2) with torch-style decoupled decay::

        p = p*(1 - lr*wd)
        c = beta1*m + (1-beta1)*g
        p = p - lr*sign(c)
        m = beta2*m + (1-beta2)*g        (the old m is used in c)

    No bias correction and no step count. ``sign(+-0) = 0``: an element whose ``c`` is zero does
    not move (beyond the decay). A NaN ``c`` gives a NaN parameter (as the paper's JAX code, optax
    and fusedopt's other algorithms with a NaN gradient); lucidrains/lion-pytorch uses
    ``torch.sign``, whose ``sign(NaN) = 0`` silently stops the parameter while ``m`` stays NaN.
    ``1 - lr*wd`` is computed in float64; without weight decay it is exactly 1."""
    T = param.dtype.type
    s = _scalars.lion_scalars(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    param[...] = param * T(s.decay_factor)
    c = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    param[...] = param - T(s.lr) * _sign(c)
    exp_avg[...] = T(s.beta2) * exp_avg + T(s.one_minus_beta2) * g


def adamax(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_inf: np.ndarray,
    *,
    step: int,
    lr: float = 2e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.Adamax (Kingma & Ba 2015, §7.1). See :func:`fusedopt.functional.adamax`::

        g = g + wd*p                        (L2, when wd != 0)
        m = beta1*m + (1-beta1)*g
        u = max(beta2*u, |g| + eps)         (eps inside the max and stored; NaN propagates)
        p = p + (S*m)/u                     S = -lr/(1 - beta1**t)  (float64)

    torch rounds ``m`` as a lerp and the L2 term as a fused multiply-add; the rest is torch's own
    operations in torch's order. ``eps = 0`` with ``g = u = 0`` gives 0/0 = NaN, as in torch."""
    T = param.dtype.type
    s = _scalars.adamax_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    a = T(s.beta2) * exp_inf
    b = np.abs(g) + T(s.eps)
    exp_inf[...] = np.where((a > b) | (a != a), a, b)
    param[...] = param + (T(s.neg_clr) * exp_avg) / exp_inf


def _tensor_sumsq(x: np.ndarray) -> float:
    """One tensor's deterministic float64 sum of squares (cpp/kernels/trust.inl): its blocks of
    NORM_BLOCK elements (:func:`_block_sumsq`), then a pairwise tree over them in order."""
    flat = x.reshape(-1)
    partials = [_block_sumsq(flat[i : i + NORM_BLOCK]) for i in range(0, flat.size, NORM_BLOCK)]
    return _tree_sum(partials, 0, len(partials))


def lamb(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    clamp_value: float = math.inf,
    bias_correction: bool = True,
    debias: bool = False,
    adam: bool = False,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """LAMB (paper v5 Alg. 2, optax ``lamb``; torch_optimizer ``Lamb`` with ``bias_correction=False``),
    one tensor (the trust ratio is per tensor)::

        m = b1*m + (1-b1)*g;   v = b2*v + ((1-b2)*g)*g
        u = (m_scale*m)/(sqrt(v) + eps_s)   [+ wd*p when wd != 0]
        w = min(||p||, clamp_value) (pre-step p);   n = ||u||
        ratio = 1 if adam or w == 0 or n == 0 else w/n
        p = p + fl(neg_lr*ratio)*u

    ``m_scale = sqrt(bc2)/bc1``, ``eps_s = eps*sqrt(bc2)`` with ``bias_correction`` (then ``u`` is
    ``m_hat/(sqrt(v_hat) + eps)`` in real arithmetic), else 1 and ``eps``; ``neg_lr = -lr``, or
    ``-lr*sqrt(bc2)/bc1`` with torch_optimizer's ``debias``. The norms are float64 sums of squares
    in fixed blocks and a fixed tree (:func:`_tensor_sumsq`); ratio and step in float64, cast once."""
    T = param.dtype.type
    s = _scalars.lamb_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                              clamp_value=clamp_value, bias_correction=bias_correction, debias=debias)  # fmt: skip
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    exp_avg_sq[...] = T(s.beta2) * exp_avg_sq + (T(s.one_minus_beta2) * g) * g
    u = (T(s.m_scale) * exp_avg) / (np.sqrt(exp_avg_sq) + T(s.eps))
    if s.weight_decay != 0.0:
        u = u + T(s.weight_decay) * param
    x = _scalars.lamb_tensor_scalar(s, _tensor_sumsq(param), _tensor_sumsq(u), adam)
    param[...] = param + T(x) * u


def lars(
    param: np.ndarray,
    grad: np.ndarray,
    mu: np.ndarray,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    eta: float = 1e-3,
    eps: float = 0.0,
    lars_adaptation: bool = True,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """LARS for SGD with momentum (barlowtwins/DINO form), one tensor (the trust ratio is per tensor)::

        d = g   [+ wd*p when wd != 0]
        q = (eta*||p||)/(||d|| + eps) if lars_adaptation and ||p|| > 0 and ||d|| > 0 else 1
        mu = momentum*mu + q*d
        p = p + (-lr)*mu

    The norms are float64 sums of squares in fixed blocks and a fixed tree (:func:`_tensor_sumsq`)
    of the pre-step ``p`` and of ``d``; ``q`` in float64, cast once."""
    T = param.dtype.type
    s = _scalars.lars_scalars(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    d = g + T(s.weight_decay) * param if s.weight_decay != 0.0 else g
    q = _scalars.lars_tensor_scalar(s, _tensor_sumsq(param), _tensor_sumsq(d), lars_adaptation)
    mu[...] = T(s.momentum) * mu + T(q) * d
    param[...] = param + T(s.neg_lr) * mu


def radam(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.RAdam (Liu et al. 2020). See :func:`fusedopt.functional.radam`::

        g = g + wd*p                    (L2, when wd != 0 and not decoupled)
        p = p*(1 - lr*wd)               (decoupled)
        m = beta1*m + (1-beta1)*g
        v = beta2*v + ((1-beta2)*g)*g
        x = (m / bc1) * lr
        x = (x * ((1 / (sqrt(v) + eps)) * sqrt(bc2))) * rect     (only when rho_t > 5)
        p = p - x

    bc1, sqrt(bc2), rect and rho_t > 5 are float64 (:func:`fusedopt._scalars.radam_scalars`). This
    is torch's loop order; torch rounds ``m`` as a lerp and ``v``'s addcmul and the L2 term as fused
    multiply-adds."""
    T = param.dtype.type
    s = _scalars.radam_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                               decoupled_weight_decay=decoupled_weight_decay)  # fmt: skip
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    p = param * T(s.decay_factor)
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    exp_avg_sq[...] = T(s.beta2) * exp_avg_sq + (T(s.one_minus_beta2) * g) * g
    x = (exp_avg / T(s.bias_correction1)) * T(s.lr)
    if s.rectified:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (T(1) / (np.sqrt(exp_avg_sq) + T(s.eps))) * T(s.bias_correction2_sqrt)
            x = (x * r) * T(s.rect)
    param[...] = p - x


def nadam(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    step: int,
    mu_product: float,
    lr: float = 2e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """torch.optim.NAdam (Dozat 2016), its loop form. See :func:`fusedopt.functional.nadam`::

        g = g + wd*p                    (L2, when wd != 0 and not decoupled)
        p = p*(1 - lr*wd)               (decoupled)
        m = beta1*m + (1-beta1)*g
        v = beta2*v + ((1-beta2)*g)*g
        den = sqrt(v / bc2) + eps       (the loop form: the division inside the root)
        p = p + (cg*g)/den
        p = p + (cm*m)/den

    ``cg``, ``cm``, ``bc2`` are float64 (:func:`fusedopt._scalars.nadam_scalars`) from ``mu_product``,
    the product after this step's factor. torch rounds ``m`` as a lerp and ``v``'s addcmul and the
    L2 term as fused multiply-adds."""
    T = param.dtype.type
    s = _scalars.nadam_scalars(step=step, mu_product=mu_product, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=weight_decay, momentum_decay=momentum_decay,
                               decoupled_weight_decay=decoupled_weight_decay)  # fmt: skip
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    p = param * T(s.decay_factor)
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    exp_avg_sq[...] = T(s.beta2) * exp_avg_sq + (T(s.one_minus_beta2) * g) * g
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.sqrt(exp_avg_sq / T(s.bias_correction2)) + T(s.eps)
        p = p + (T(s.grad_coef) * g) / den
        param[...] = p + (T(s.momentum_coef) * exp_avg) / den


def trace(
    param: np.ndarray,
    grad: np.ndarray,
    trace_: np.ndarray,
    *,
    lr: float,
    decay: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """optax ``trace`` / TF ``ApplyMomentum``. See :func:`fusedopt.functional.trace`.

    Computed as torch SGD (``b = mu*b + 1*g``, dampening 0, no first-step copy): ``1*g == g`` and
    IEEE addition commutes, so this is ``tr = g + mu*tr`` exactly."""
    T = param.dtype.type
    s = _scalars.sgd_scalars(lr=lr, weight_decay=weight_decay, momentum=decay, dampening=0.0)
    g = _signed(_preprocess(grad, grad_scale, clip_coef, clip_value), maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    trace_[...] = T(s.momentum) * trace_ + T(s.one_minus_dampening) * g
    d = g + T(s.momentum) * trace_ if nesterov else trace_
    param[...] = param - T(s.lr) * d


def ema(average: np.ndarray, param: np.ndarray, *, decay: float) -> None:
    """EMA of weights, ``average = decay*average + (1-decay)*param`` (see :class:`fusedopt.EMA`)."""
    T = param.dtype.type
    s = _scalars.ema_scalars(decay=decay)
    average[...] = T(s.decay) * average + T(s.one_minus_decay) * param


def _block_sumsq(x: np.ndarray) -> float:
    """One block (cpp/kernels/norm.inl): 8 interleaved float64 lanes, each summed in index order
    (np.cumsum is strictly sequential), combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))."""
    sq = x.astype(np.float64) ** 2
    pad = (-sq.size) % NORM_LANES  # adding +0.0 to a lane is exact: padding changes nothing
    lanes = np.concatenate([sq, np.zeros(pad)]).reshape(-1, NORM_LANES)
    acc = np.cumsum(lanes, axis=0)[-1] if lanes.shape[0] else np.zeros(NORM_LANES)
    a = [float(v) for v in acc]
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


def _tree_sum(p: List[float], lo: int, hi: int) -> float:
    n = hi - lo
    if n <= 0:
        return 0.0
    if n == 1:
        return p[lo]
    mid = lo + n // 2
    return _tree_sum(p, lo, mid) + _tree_sum(p, mid, hi)


def sum_of_squares(arrays: Sequence[np.ndarray]) -> float:
    """The deterministic float64 sum of squares of the kernels (one dtype): blocks of NORM_BLOCK
    elements per tensor, lanes within a block, a pairwise tree over all blocks in order."""
    partials: List[float] = []
    for a in arrays:
        flat = a.reshape(-1)
        for start in range(0, flat.size, NORM_BLOCK):
            partials.append(_block_sumsq(flat[start : start + NORM_BLOCK]))
    return _tree_sum(partials, 0, len(partials))


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """:func:`fusedopt.functional.global_norm`, bitwise: float32 arrays' sum, plus float64 arrays'
    sum when the dtypes are mixed, then ``math.sqrt``."""
    arrays = list(arrays)
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        total = sum_of_squares([a for a in arrays if a.dtype == np.float32]) + sum_of_squares(
            [a for a in arrays if a.dtype == np.float64]
        )
    else:
        total = sum_of_squares(arrays)
    return math.sqrt(total)


# ---------------------------------------------------------------------------------------------
# Low-precision storage (issue 13): the specification of cpp/kernels/lowp.inl and engine.inl's
# low-precision policies. Storage is handled as raw uint16 bit patterns (a bfloat16 array of
# ml_dtypes or torch is viewed as uint16), so this needs NumPy only; arithmetic is float32.
# ---------------------------------------------------------------------------------------------

_U32 = np.uint32


def _bits32(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return out


def bf16_to_f32(h: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> float32, exact (every bit kept, NaN payloads too)."""
    out: np.ndarray = (np.asarray(h, dtype=np.uint16).astype(np.uint32) << _U32(16)).view(np.float32)
    return out


def _bf16_nan(u: np.ndarray) -> np.ndarray:
    out: np.ndarray = ((u >> _U32(16)) & _U32(0x8000)) | _U32(0x7FC0)
    return out


def _is_nan_bits(u: np.ndarray) -> np.ndarray:
    out: np.ndarray = (u & _U32(0x7FFFFFFF)) > _U32(0x7F800000)
    return out


def bf16_rne(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest, ties to even (equal to ml_dtypes and torch on
    every finite value and +-inf); a NaN becomes ml_dtypes' quiet NaN of its sign, ``0x7FC0 | sign``."""
    u = _bits32(x)
    r = (u + _U32(0x7FFF) + ((u >> _U32(16)) & _U32(1))) >> _U32(16)
    return np.where(_is_nan_bits(u), _bf16_nan(u), r).astype(np.uint16)


def bf16_sr(x: np.ndarray, random16: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits with stochastic rounding: ``(bits + r) >> 16`` with 16 random bits
    ``r`` (rounds away from zero with probability dropped/2^16); NaN as :func:`bf16_rne`."""
    u = _bits32(x)
    r = (u + np.asarray(random16, dtype=np.uint32)) >> _U32(16)
    return np.where(_is_nan_bits(u), _bf16_nan(u), r).astype(np.uint16)


def f16_rne(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 bits, round to nearest, ties to even, subnormals exact (NumPy's
    conversion); a NaN becomes ``sign | 0x7E00 | (top 10 payload bits)`` (quiet, as x86 F16C)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).view(np.uint16).astype(np.uint32)
    nan = ((u >> _U32(16)) & _U32(0x8000)) | _U32(0x7E00) | ((u >> _U32(13)) & _U32(0x3FF))
    return np.where(_is_nan_bits(u), nan, h).astype(np.uint16)


def f16_to_f32(h: np.ndarray) -> np.ndarray:
    """float16 bits -> float32, exact; a NaN is quieted: ``sign | 0x7FC00000 | (payload << 13)``."""
    h = np.asarray(h, dtype=np.uint16)
    u = h.view(np.float16).astype(np.float32).view(np.uint32)
    nan = ((h.astype(np.uint32) & _U32(0x8000)) << _U32(16)) | _U32(0x7FC00000) | ((h.astype(np.uint32) & _U32(0x3FF)) << _U32(13))
    is_nan = (h & np.uint16(0x7FFF)) > np.uint16(0x7C00)
    return np.where(is_nan, nan, u).astype(np.uint32).view(np.float32)


_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(counter: Sequence[np.ndarray], key: Sequence[int]) -> List[np.ndarray]:
    """Philox4x32-10 (Salmon et al., SC'11): four uint32 counter words (arrays), a two-word key;
    returns the four output words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & 0xFFFFFFFF for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(_PHILOX_M0) * c0
        p1 = np.uint64(_PHILOX_M1) * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & mask,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & mask,
        )
        k0 = (k0 + _PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return [w.astype(np.uint32) for w in (c0, c1, c2, c3)]


def sr_bits(seed: int, step: int, index: np.ndarray) -> np.ndarray:
    """The 16 random bits of the elements ``index`` of a parameter at (seed, step).

    One Philox4x32-10 block serves 8 consecutive elements: counter = (j low 32 bits, j high 32
    bits, step low, step high) with ``j = index >> 3``, key = (seed low 32 bits, seed high); element
    ``index`` takes the low (index even) or high (odd) 16 bits of output word ``(index & 7) >> 1``."""
    index = np.asarray(index, dtype=np.uint64)
    j = index >> np.uint64(3)
    step, seed = int(step), int(seed)
    words = philox4x32_10(
        [j & np.uint64(0xFFFFFFFF), j >> np.uint64(32), np.full_like(j, step & 0xFFFFFFFF), np.full_like(j, step >> 32)],
        [seed & 0xFFFFFFFF, seed >> 32],
    )
    w = (index & np.uint64(7)) >> np.uint64(1)
    word = np.choose(w.astype(np.intp), words)
    out: np.ndarray = np.where((index & np.uint64(1)) != 0, word >> _U32(16), word & _U32(0xFFFF)).astype(np.uint32)
    return out


def split_encode(master: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """An fp32 master as a ("split") bfloat16 parameter and uint16 trail. The parameter is the
    round-to-nearest-even of the stored master, the trail its low 16 bits; a master whose high half
    is odd and low half exactly 0x8000 (where RNE makes two masters give one pair) is stored as the
    next float32 away from zero (low half 0x8001): same parameter, master one float32 ulp away."""
    u = _bits32(master)
    u = u + ((u & _U32(0x1FFFF)) == _U32(0x18000)).astype(np.uint32)
    return bf16_rne(u.view(np.float32)), (u & _U32(0xFFFF)).astype(np.uint16)


def split_decode(param: np.ndarray, trail: np.ndarray) -> np.ndarray:
    """The fp32 master of a split pair: high half = parameter bits, minus 1 when trail > 0x8000."""
    p = np.asarray(param, dtype=np.uint16).astype(np.uint32)
    t = np.asarray(trail, dtype=np.uint16).astype(np.uint32)
    hi = p - (t > _U32(0x8000)).astype(np.uint32)
    out: np.ndarray = ((hi << _U32(16)) | t).view(np.float32)
    return out


def _storage_kind(a: np.ndarray) -> str:
    """'float32', 'bfloat16' or 'float16' (a bfloat16 array: ml_dtypes', or a uint16 view of one)."""
    if a.dtype == np.float32:
        return "float32"
    if a.dtype == np.float16:
        return "float16"
    if a.dtype.itemsize == 2 and a.dtype.name == "bfloat16":
        return "bfloat16"
    raise TypeError(f"unsupported storage dtype {a.dtype}")


def _load(a: np.ndarray) -> np.ndarray:
    kind = _storage_kind(a)
    if kind == "float32":
        return a.astype(np.float32, copy=True)
    bits = a.view(np.uint16)
    return bf16_to_f32(bits) if kind == "bfloat16" else f16_to_f32(bits)


def _store_rne(a: np.ndarray, x: np.ndarray) -> None:
    kind = _storage_kind(a)
    if kind == "float32":
        a[...] = x
    else:
        a.view(np.uint16)[...] = (bf16_rne(x) if kind == "bfloat16" else f16_rne(x)).reshape(a.shape)


def lowp_step(
    update: Callable[..., None],
    param: np.ndarray,
    grad: np.ndarray,
    states: Sequence[Optional[Union[np.ndarray, Q8State]]],
    master: Optional[np.ndarray] = None,
    *,
    stochastic_rounding: bool = False,
    seed: int = 0,
    sr_step: int = 0,
) -> None:
    """One step over low-precision storage: every buffer is loaded as float32 (the parameter from
    its master when there is one: a float32 master, or a uint16 trail = the "split" master of a
    bfloat16 parameter), ``update(p, g, *states)`` (an fp32 reference step, e.g.
    ``lambda *a: adam(*a, step=t)``) runs in place on those float32 copies, then every buffer is
    stored back: states and master-less parameters with round-to-nearest-even (parameters with
    :func:`bf16_sr` and :func:`sr_bits` under ``stochastic_rounding``), a float32 master as is
    with the parameter as its RNE, a split master with :func:`split_encode`."""
    kind = _storage_kind(param)
    if master is not None and master.dtype == np.uint16:
        p32 = split_decode(param.view(np.uint16), master).reshape(param.shape)
    elif master is not None:
        p32 = master.astype(np.float32, copy=True)
    else:
        p32 = _load(param)
    g32 = _load(grad)
    s32 = [None if s is None else (s.load() if isinstance(s, Q8State) else _load(s)) for s in states]
    update(p32, g32, *s32)
    for s, x in zip(states, s32):
        if x is None or s is None:
            continue
        if isinstance(s, Q8State):
            s.store(x)
        else:
            _store_rne(s, x)
    if master is not None and master.dtype == np.uint16:
        hi, lo = split_encode(p32)
        param.view(np.uint16)[...] = hi.reshape(param.shape)
        master[...] = lo.reshape(master.shape)
    elif master is not None:
        master[...] = p32
        _store_rne(param, p32)
    elif stochastic_rounding:
        if kind != "bfloat16":
            raise ValueError("stochastic rounding is for bfloat16 parameters")
        r = sr_bits(seed, sr_step, np.arange(param.size, dtype=np.uint64))
        param.view(np.uint16)[...] = bf16_sr(p32.ravel(), r).reshape(param.shape)
    else:
        _store_rne(param, p32)


# ---------------------------------------------------------------------------------------------
# 8-bit block-quantized states (issue 14): the specification of cpp/common/q8.hpp and the q8
# functions of cpp/kernels/lowp.inl. A state of n elements is n uint8 codes and one float32 absmax
# per block of Q8_BLOCK consecutive elements (counted from the tensor's first element; the last
# block may be partial). Code books: bitsandbytes' dynamic maps (create_dynamic_map(signed, 7, 8),
# bitwise equal to torchao's), signed for states of either sign, unsigned for never-negative ones.
# ---------------------------------------------------------------------------------------------

Q8_BLOCK = 256

# float32 bit patterns, ascending (data, not a formula: recomputing them rounds some entries differently)
_Q8_SIGNED_HEX = """
    bf7e3333 bf7a999a bf770000 bf736666 bf6fcccd bf6c3333 bf68999a bf650000
    bf616666 bf5dcccd bf5a3333 bf56999a bf530000 bf4f6666 bf4bcccd bf483333
    bf44999a bf410000 bf3d6666 bf39cccd bf363334 bf32999a bf2f0000 bf2b6666
    bf27cccd bf243334 bf20999a bf1d0000 bf196666 bf15cccd bf123334 bf0e999a
    bf0b0000 bf076666 bf03cccc bf003333 bef93332 bef20000 beeacccc bee3999a
    bedc6666 bed53333 bece0000 bec6cccc bebf999a beb86666 beb13333 beaa0000
    bea2cccc be9b999a be946666 be8d3334 be860000 be7d9999 be6f3333 be60cccd
    be526666 be440000 be35999a be273333 be18cccd be0a6666 bdf80000 bddb3334
    bdc9eb85 bdc428f7 bdbe6667 bdb8a3d7 bdb2e148 bdad1eb8 bda75c2a bda1999a
    bd9bd70a bd96147b bd9051eb bd8a8f5d bd84cccd bd7e147b bd728f5d bd670a3d
    bd5b851f bd500000 bd447ae1 bd38f5c3 bd2d70a3 bd21eb85 bd166667 bd0ae148
    bcfeb852 bce7ae15 bcd0a3d7 bcb9999a bca28f5d bc8b851f bc68f5c3 bc3ae148
    bc1f3b64 bc160418 bc0ccccd bc039581 bbf4bc6a bbe24dd3 bbcfdf3b bbbd70a4
    bbab020d bb989374 bb8624dd bb676c8a bb428f5c bb1db22d baf1a9fc baa7ef9d
    ba7765ff ba59e83e ba3c6a80 ba1eecc1 ba016f01 b9c7e283 b98ce705 b923d70b
    b8ba1f4b b88aefb3 b8378034 b7b24206 b70205ff b65a1a94 b513a3b7 00000000
    3513a3b7 365a1a94 370205ff 37b24206 38378034 388aefb3 38ba1f4b 3923d70b
    398ce705 39c7e283 3a016f01 3a1eecc1 3a3c6a80 3a59e83e 3a7765ff 3aa7ef9d
    3af1a9fc 3b1db22d 3b428f5c 3b676c8a 3b8624dd 3b989374 3bab020d 3bbd70a4
    3bcfdf3b 3be24dd3 3bf4bc6a 3c039581 3c0ccccd 3c160418 3c1f3b64 3c3ae148
    3c68f5c3 3c8b851f 3ca28f5d 3cb9999a 3cd0a3d7 3ce7ae15 3cfeb852 3d0ae148
    3d166667 3d21eb85 3d2d70a3 3d38f5c3 3d447ae1 3d500000 3d5b851f 3d670a3d
    3d728f5d 3d7e147b 3d84cccd 3d8a8f5d 3d9051eb 3d96147b 3d9bd70a 3da1999a
    3da75c2a 3dad1eb8 3db2e148 3db8a3d7 3dbe6667 3dc428f7 3dc9eb85 3ddb3334
    3df80000 3e0a6666 3e18cccd 3e273333 3e35999a 3e440000 3e526666 3e60cccd
    3e6f3333 3e7d9999 3e860000 3e8d3334 3e946666 3e9b999a 3ea2cccc 3eaa0000
    3eb13333 3eb86666 3ebf999a 3ec6cccc 3ece0000 3ed53333 3edc6666 3ee3999a
    3eeacccc 3ef20000 3ef93332 3f003333 3f03cccc 3f076666 3f0b0000 3f0e999a
    3f123334 3f15cccd 3f196666 3f1d0000 3f20999a 3f243334 3f27cccd 3f2b6666
    3f2f0000 3f32999a 3f363334 3f39cccd 3f3d6666 3f410000 3f44999a 3f483333
    3f4bcccd 3f4f6666 3f530000 3f56999a 3f5a3333 3f5dcccd 3f616666 3f650000
    3f68999a 3f6c3333 3f6fcccd 3f736666 3f770000 3f7a999a 3f7e3333 3f800000
"""
_Q8_UNSIGNED_HEX = """
    00000000 34ae7baa 35500998 360e9b38 3692ccf6 36de4c51 3714e5d5 3783126e
    37e171a0 381fe868 384f1800 387e479a 3896bb99 38ae5364 38c5eb31 3906594b
    394154ca 397c5049 399ba5e4 39b923a2 39d6a163 39f41f22 3a08ce71 3a178d50
    3a264c30 3a350b10 3a43c9ef 3a5288d0 3a6147af 3a70068e 3a7ec56e 3a958106
    3aba5e35 3adf3b64 3b020c4a 3b147ae1 3b26e978 3b395810 3b4bc6a7 3b5e3540
    3b70a3d7 3b818937 3b8ac082 3b93f7cf 3b9d2f1a 3ba66666 3baf9db2 3bb8d4fd
    3bc20c4a 3bcb4395 3bd47ae1 3bddb22e 3be6e978 3bf020c5 3bf9580f 3c0147ae
    3c05e354 3c0a7ef9 3c0f1aa0 3c13b645 3c1851eb 3c1ced92 3c218937 3c2f5c2a
    3c466667 3c5d70a3 3c747ae2 3c85c28f 3c9147af 3c9ccccd 3ca851eb 3cb3d70b
    3cbf5c29 3ccae147 3cd66667 3ce1eb87 3ced70a3 3cf8f5c3 3d023d70 3d080000
    3d0dc28f 3d13851f 3d1947af 3d1f0a3d 3d24cccd 3d2a8f5c 3d3051eb 3d36147b
    3d3bd70a 3d41999a 3d475c28 3d4d1eb8 3d52e147 3d58a3d7 3d5e6667 3d6428f7
    3d69eb87 3d6fae15 3d7570a3 3d7b3333 3d807ae2 3d835c2a 3d863d71 3d891eb8
    3d8c0000 3d8ee148 3d91c290 3d94a3d7 3d97851f 3d9a6667 3d9d47af 3da028f6
    3da30a3e 3da5eb85 3da8cccd 3dabae15 3dae8f5c 3db170a4 3db451eb 3db73333
    3dba147b 3dbcf5c3 3dbfd70b 3dc2b852 3dc5999a 3dc87ae2 3dcb5c29 3dd40000
    3de26666 3df0cccd 3dff3333 3e06cccc 3e0e0000 3e153334 3e1c6666 3e23999a
    3e2acccc 3e320000 3e393334 3e406666 3e47999a 3e4ecccc 3e560000 3e5d3334
    3e646666 3e6b999a 3e72cccc 3e7a0000 3e809999 3e843333 3e87cccd 3e8b6666
    3e8f0000 3e92999a 3e963333 3e99cccc 3e9d6666 3ea10000 3ea4999a 3ea83333
    3eabcccc 3eaf6666 3eb30000 3eb6999a 3eba3333 3ebdcccc 3ec16666 3ec50000
    3ec8999a 3ecc3333 3ecfcccc 3ed36666 3ed70000 3eda999a 3ede3333 3ee1cccc
    3ee56666 3ee90000 3eec999a 3ef03333 3ef3cccc 3ef76666 3efb0000 3efe9999
    3f01199a 3f02e666 3f04b333 3f068000 3f084ccc 3f0a199a 3f0be666 3f0db334
    3f0f8000 3f114ccd 3f13199a 3f14e666 3f16b334 3f188000 3f1a4ccd 3f1c199a
    3f1de666 3f1fb334 3f218000 3f234ccd 3f25199a 3f26e666 3f28b334 3f2a8000
    3f2c4ccd 3f2e199a 3f2fe666 3f31b334 3f338000 3f354ccd 3f37199a 3f38e666
    3f3ab334 3f3c8000 3f3e4ccd 3f40199a 3f41e666 3f43b334 3f458000 3f474ccc
    3f49199a 3f4ae666 3f4cb334 3f4e8000 3f504ccc 3f52199a 3f53e666 3f55b334
    3f578000 3f594ccc 3f5b199a 3f5ce666 3f5eb334 3f608000 3f624ccc 3f64199a
    3f65e666 3f67b334 3f698000 3f6b4ccc 3f6d199a 3f6ee666 3f70b334 3f728000
    3f744ccc 3f76199a 3f77e666 3f79b334 3f7b8000 3f7d4ccc 3f7f199a 3f800000
"""


class Q8Map(NamedTuple):
    """A code book: ``value`` (256 float32, strictly ascending), ``threshold`` (255 float32:
    ``threshold[c]`` is the least float32 nearer to ``value[c+1]`` than to ``value[c]``, so a value
    exactly halfway goes to the lower code) and ``zero`` (the code of 0)."""

    value: np.ndarray
    threshold: np.ndarray
    zero: int


_Q8_MAPS: Dict[bool, Q8Map] = {}


def q8_map(signed: bool) -> Q8Map:
    """The signed or unsigned code book and its thresholds."""
    signed = bool(signed)
    if signed not in _Q8_MAPS:
        text = _Q8_SIGNED_HEX if signed else _Q8_UNSIGNED_HEX
        value = np.array([int(w, 16) for w in text.split()], dtype=np.uint32).view(np.float32)
        mid = (value[:-1].astype(np.float64) + value[1:].astype(np.float64)) / 2.0  # exact
        t = mid.astype(np.float32)
        t = np.where(t.astype(np.float64) <= mid, np.nextafter(t, np.float32(np.inf)), t).astype(np.float32)
        zero = int(np.searchsorted(t, np.float32(0.0), side="right"))
        value.setflags(write=False)
        t.setflags(write=False)
        _Q8_MAPS[signed] = Q8Map(value, t, zero)
    return _Q8_MAPS[signed]


def q8_blocks(n: int) -> int:
    """The number of absmax values of an n-element state: ``ceil(n / Q8_BLOCK)``."""
    return -(-int(n) // Q8_BLOCK)


def q8_decode(codes: np.ndarray, absmax: np.ndarray, signed: bool) -> np.ndarray:
    """The float32 values of a quantized state (flat): ``value[code] * absmax[block]``."""
    c = np.asarray(codes, dtype=np.uint8).ravel()
    a = np.repeat(np.asarray(absmax, dtype=np.float32).ravel(), Q8_BLOCK)[: c.size]
    out: np.ndarray = q8_map(signed).value[c] * a
    return out


def q8_encode(x: np.ndarray, signed: bool) -> "tuple[np.ndarray, np.ndarray]":
    """(codes, absmax) of float32 values ``x`` (flattened), block by block: ``a = max |x|`` over the
    block; a NaN or inf ``a`` stores absmax NaN and the code of 0 everywhere (the block decodes to
    NaN); ``a == 0`` stores 0 and the code of 0; otherwise ``s = 2**64`` if ``a`` is subnormal else 1,
    ``r = 1 / (a * s)``, ``q = (x * s) * r`` (float32) and the code is the number of thresholds
    ``<= q``: the nearest value of the code book, a tie to the lower code."""
    m = q8_map(signed)
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    n = x.size
    nb = q8_blocks(n)
    u = np.zeros(nb * Q8_BLOCK, dtype=np.uint32)
    u[:n] = x.view(np.uint32) & _U32(0x7FFFFFFF)
    amax = u.reshape(nb, Q8_BLOCK).max(axis=1) if nb else np.zeros(0, dtype=np.uint32)
    bad = amax >= _U32(0x7F800000)
    zero = amax == _U32(0)
    a = amax.view(np.float32)
    s = np.where(amax < _U32(0x00800000), np.float32(2.0**64), np.float32(1.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = (np.float32(1.0) / (a * s)).astype(np.float32)
        q = (x * np.repeat(s, Q8_BLOCK)[:n]) * np.repeat(r, Q8_BLOCK)[:n]
    codes = np.searchsorted(m.threshold, q, side="right").astype(np.uint8)
    dead = np.repeat(bad | zero, Q8_BLOCK)[:n]
    codes[dead] = m.zero
    absmax = np.where(bad, np.uint32(0x7FC00000).view(np.float32), np.where(zero, np.float32(0.0), a))
    return codes, absmax.astype(np.float32)


class Q8State:
    """An 8-bit state for :func:`lowp_step`: ``codes`` (uint8, the parameter's shape) and
    ``absmax`` (float32, :func:`q8_blocks` values), both updated in place, and its code book."""

    def __init__(self, codes: np.ndarray, absmax: np.ndarray, signed: bool) -> None:
        self.codes, self.absmax, self.signed = codes, absmax, bool(signed)

    def load(self) -> np.ndarray:
        out: np.ndarray = q8_decode(self.codes, self.absmax, self.signed).reshape(self.codes.shape)
        return out

    def store(self, x: np.ndarray) -> None:
        codes, absmax = q8_encode(x, self.signed)
        self.codes[...] = codes.reshape(self.codes.shape)
        self.absmax[...] = absmax.reshape(self.absmax.shape)


# -- Muon (torch.optim.Muon, torch 2.13) ------------------------------------------------------------
#: torch.optim.Muon's Newton-Schulz coefficients (a, b, c), eps and step count
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_EPS = 1e-7
MUON_NS_STEPS = 5


def _fma(a: Union[np.ndarray, np.floating], b: Union[np.ndarray, np.floating], c: np.ndarray) -> np.ndarray:
    """The kernels' ``fma32``: correctly rounded for float32 (:func:`fma32`), ``a*b + c`` for float64."""
    if c.dtype == np.float32:
        return fma32(a, b, c)  # type: ignore[arg-type]
    return np.asarray(a * b + c, c.dtype)


def _torch_lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """torch's CPU ``lerp`` with a Python-float weight (SEMANTICS-ALGORITHMS.md §0):
    ``fma(w, end-start, start)`` if ``|w| < 0.5`` else ``fma(w-1, end-start, end)``, ``w`` rounded
    to the dtype first."""
    T = start.dtype.type
    w = T(weight)
    if -0.5 < w < 0.5:
        return _fma(w, end - start, start)
    return _fma(w - T(1), end - start, end)


def muon_momentum(
    grad: np.ndarray,
    momentum_buffer: np.ndarray,
    update: np.ndarray,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    grad_scale: Optional[float] = None,
    clip_coef: Optional[float] = None,
    clip_value: Optional[float] = None,
) -> None:
    """Muon's momentum half (the kernel ``_core.muon(..., apply=False)``), torch's order::

        B = lerp(B, g, 1 - momentum)               buf.lerp_(grad, 1 - momentum)
        U = lerp(g, B, momentum) if nesterov else B   grad.lerp(buf, momentum)

    writes ``momentum_buffer`` and ``update`` (the matrix Newton-Schulz orthogonalizes)."""
    s = _scalars.muon_scalars(lr=0.0, momentum=momentum, weight_decay=0.0, adjusted_lr=0.0)
    g = _preprocess(grad, grad_scale, clip_coef, clip_value)
    momentum_buffer[...] = _torch_lerp(momentum_buffer, g, s.one_minus_momentum)
    update[...] = _torch_lerp(g, momentum_buffer, s.momentum) if nesterov else momentum_buffer


def muon_apply(param: np.ndarray, update: np.ndarray, *, lr: float, weight_decay: float, adjusted_lr: float) -> None:
    """Muon's apply half (the kernel ``_core.muon(..., apply=True)``), torch's order::

        p = p*(1 - lr*weight_decay)                param.mul_(1 - lr*weight_decay)   (unadjusted lr)
        p = fma(update, -adjusted_lr, p)           param.add_(update, alpha=-adjusted_lr)

    ``update`` is the Newton-Schulz output (:func:`muon_newton_schulz`)."""
    T = param.dtype.type
    s = _scalars.muon_scalars(lr=lr, momentum=0.0, weight_decay=weight_decay, adjusted_lr=adjusted_lr)
    param[...] = param * T(s.decay_factor)
    param[...] = _fma(T(s.neg_lr), update, param)


def muon_newton_schulz(
    update: np.ndarray,
    *,
    ns_coefficients: Sequence[float] = MUON_NS_COEFFICIENTS,
    ns_steps: int = MUON_NS_STEPS,
    eps: float = MUON_EPS,
) -> np.ndarray:
    """torch.optim.Muon's quintic Newton-Schulz iteration on a 2-D ``update``, in its dtype
    (float32 or float64; torch 2.13 runs it in bfloat16), a new C-contiguous array::

        X = U^T if rows > cols else U            (the Gram matrix is min(rows, cols)^2)
        X = X / max(||X||_F, eps)                ||X||_F accumulated in float64, rounded once
        repeat ns_steps:
            A = X X^T;  B = b*A + c*(A A);  X = a*X + B X
        X = X^T if transposed

    The matrix products are NumPy's (BLAS: its own summation order, not bitwise reproducible
    across BLAS builds; fusedopt's NumPy front end runs exactly this code)."""
    T = update.dtype.type
    a, b, c = (T(v) for v in ns_coefficients)
    transposed = update.shape[0] > update.shape[1]
    x = update.T if transposed else update
    norm = T(math.sqrt(float(np.sum(np.square(update, dtype=np.float64)))))
    x = x / max(norm, T(eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        gu = b * gram + c * (gram @ gram)
        x = a * x + gu @ x
    return np.ascontiguousarray(x.T) if transposed else x


def muon(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: Sequence[float] = MUON_NS_COEFFICIENTS,
    eps: float = MUON_EPS,
    ns_steps: int = MUON_NS_STEPS,
    adjust_lr_fn: Optional[str] = None,
) -> None:
    """torch.optim.Muon's step on one 2-D parameter: :func:`muon_momentum`, then
    :func:`muon_newton_schulz` (in the parameter's dtype), then :func:`muon_apply` with the lr
    adjusted for the shape (:func:`fusedopt._scalars.muon_adjusted_lr`)."""
    update = np.empty_like(param)
    muon_momentum(grad, momentum_buffer, update, momentum=momentum, nesterov=nesterov)
    x = muon_newton_schulz(update, ns_coefficients=ns_coefficients, ns_steps=ns_steps, eps=eps)
    adjusted = _scalars.muon_adjusted_lr(lr, adjust_lr_fn, param.shape)
    muon_apply(param, x, lr=lr, weight_decay=weight_decay, adjusted_lr=adjusted)


# -- Adafactor (torch.optim.Adafactor, torch 2.13, its loop form) ------------------------------------
#: the fixed blocking of an Adafactor step (cpp/common/step_args.hpp: kAdafactorSeg, kAdafactorTile)
ADAFACTOR_SEG = 1024
ADAFACTOR_TILE = 65536


class AdafactorReductions(NamedTuple):
    """The reductions of an Adafactor step (a test hook: :func:`adafactor`'s ``reductions``).
    Each receives arrays of the step's dtype and returns values of that dtype: ``norm(x)`` the
    2-norm of a whole array (a Python float holding a dtype value), ``row_norms(g)`` of ``g``
    ``[B, R, C]`` over its last dim (``[B, R]``), ``col_norms(g)`` over dim 1 (``[B, C]``),
    ``row_mean(r)`` the mean of ``r`` ``[B, R]`` over its last dim (``[B]``). Passing torch's
    (``torch.norm``, ``torch.mean``) reproduces torch.optim.Adafactor bitwise: the rest of the
    step is torch's element-wise arithmetic."""

    norm: Callable[[np.ndarray], float]
    row_norms: Callable[[np.ndarray], np.ndarray]
    col_norms: Callable[[np.ndarray], np.ndarray]
    row_mean: Callable[[np.ndarray], np.ndarray]


def _segment_sums(sq: np.ndarray) -> np.ndarray:
    """Float64 sums of ``sq [..., L]`` over segments of ADAFACTOR_SEG elements of the last axis
    (``[..., ceil(L/SEG)]``): 8 interleaved lanes each summed in order (np.cumsum is sequential),
    combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (cpp/kernels/adafactor.inl)."""
    n = sq.shape[-1]
    nq = max(1, -(-n // ADAFACTOR_SEG))
    width = ADAFACTOR_SEG if nq > 1 else -(-n // NORM_LANES) * NORM_LANES
    pad = nq * width - n  # adding +0.0 to a lane is exact
    x = np.concatenate([sq, np.zeros(sq.shape[:-1] + (pad,))], axis=-1)
    x = x.reshape(sq.shape[:-1] + (nq, width // NORM_LANES, NORM_LANES))
    acc = np.cumsum(x, axis=-2)[..., -1, :] if width else np.zeros(sq.shape[:-1] + (nq, NORM_LANES))
    a = [acc[..., i] for i in range(NORM_LANES)]
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


def _in_order(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sequential float64 sums along ``axis`` (from 0.0, in index order)."""
    if x.shape[axis] == 0:
        return np.zeros(np.delete(np.array(x.shape), axis % x.ndim))
    return np.cumsum(x, axis=axis).take(-1, axis=axis)  # type: ignore[no-any-return]


def _adafactor_norm(segments: np.ndarray, T: type) -> float:
    """A tensor's norm from its segments' sums of squares: sequential over the segments, sqrt in
    float64, rounded to the dtype (torch.norm returns a dtype value)."""
    return float(T(math.sqrt(float(_in_order(segments.reshape(-1))))))


def adafactor(
    param: np.ndarray,
    grad: np.ndarray,
    row_var: Optional[np.ndarray],
    col_var: Optional[np.ndarray],
    variance: Optional[np.ndarray],
    *,
    step: int,
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps1: Optional[float] = None,
    eps2: float = 1e-3,
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    reductions: Optional[AdafactorReductions] = None,
) -> None:
    """torch.optim.Adafactor's loop step on one tensor (``step``: the new count, 1 first), in place.
    ``row_var [..., R, 1]`` and ``col_var [..., 1, C]`` for a param of >= 2 dims (factored over its
    last two, leading dims batch), ``variance`` (its shape) for <= 1 dim. ``eps1=None``: the
    dtype's eps. Every ``fl`` rounds to the dtype; float64 sums are the kernel's fixed blocking::

        w = t**beta2_decay;  rho = min(lr, 1/t**0.5);  alpha = max(eps2, fl(||p||)/n**0.5)*rho
        p = fl(p*fl(1 - lr*wd))                         (weight_decay != 0; after alpha)
        factored ([B, R, C]):  R = lerp(R, fl(r*r)/C, w)   r = fl(sqrt(sum_c g^2)), rows in 1024-chunks
                               C = lerp(C, fl(k*k)/R, w)   k = fl(sqrt(sum_r g^2)), per row tile
                               V = fl(fl(R_i*C_j) / max(fl(sum_r R/R), eps1))
        else:                  variance = lerp(variance, g*g, w);  V = variance
        u = fl(1/sqrt(max(V, fl(eps1^2)))) * g
        den = max(1, fl(||u||)/(n**0.5*d));   p = fma(u, fl(-alpha/den), p)

    ``lerp`` is torch's (:func:`_torch_lerp`); fma correctly rounded for float32, ``a*b + c`` for
    float64 (as every kernel). ``reductions`` (a test hook) replaces the four reductions."""
    T = param.dtype.type
    e1 = float(np.finfo(param.dtype).eps) if eps1 is None else float(eps1)
    s = _scalars.adafactor_scalars(step=step, lr=lr, beta2_decay=beta2_decay, eps1=e1, eps2=eps2, d=d,
                                   weight_decay=weight_decay)  # fmt: skip
    n = param.size
    if n == 0:
        return
    g = _signed(grad, maximize)
    factored = param.ndim >= 2
    if factored:
        R, C = param.shape[-2], param.shape[-1]
        B = n // (R * C)
        p3, g3 = param.reshape(B, R, C), g.reshape(B, R, C)
        seg_p = _segment_sums(p3.astype(np.float64) ** 2)
    else:
        seg_p = _segment_sums(param.reshape(-1).astype(np.float64) ** 2)
    pn = reductions.norm(param) if reductions else _adafactor_norm(seg_p, T)
    rms = pn / n**0.5
    alpha = max(s.eps2, rms) * s.rho
    p = param * T(s.decay) if weight_decay != 0 else param.copy()
    e2 = T(s.eps1_sq)
    if factored:
        assert row_var is not None and col_var is not None
        g2 = g3.astype(np.float64) ** 2
        if reductions:
            rn, cn = reductions.row_norms(g3), reductions.col_norms(g3)
        else:
            rn = np.sqrt(_in_order(_segment_sums(g2), axis=-1)).astype(T)  # [B, R]
            width = min(C, ADAFACTOR_SEG)
            tile = min(R, max(1, ADAFACTOR_TILE // width))
            tiles = -(-R // tile)
            padded = np.concatenate([g2, np.zeros((B, tiles * tile - R, C))], axis=1)
            colpart = _in_order(padded.reshape(B, tiles, tile, C), axis=2)  # [B, tiles, C]
            cn = np.sqrt(_in_order(colpart, axis=1)).astype(T)  # [B, C]
        rv = _torch_lerp(row_var.reshape(B, R), (rn * rn) / T(C), s.w)
        cv = _torch_lerp(col_var.reshape(B, C), (cn * cn) / T(R), s.w)
        row_var[...] = rv.reshape(row_var.shape)
        col_var[...] = cv.reshape(col_var.shape)
        mean = reductions.row_mean(rv) if reductions else (_in_order(rv.astype(np.float64), axis=-1) / R).astype(T)
        mc = np.where(mean < T(e1), T(e1), mean)
        v = (rv[:, :, None] * cv[:, None, :]) / mc[:, None, None]
        u = (T(1) / np.sqrt(np.where(v < e2, e2, v))) * g3
        seg_u = _segment_sums(u.astype(np.float64) ** 2)
    else:
        assert variance is not None
        variance[...] = _torch_lerp(variance, g * g, s.w)
        u = ((T(1) / np.sqrt(np.where(variance < e2, e2, variance))) * g).reshape(-1)
        seg_u = _segment_sums(u.astype(np.float64) ** 2)
    un = reductions.norm(u) if reductions else _adafactor_norm(seg_u, T)
    den = max(1.0, un / (n**0.5 * s.d))
    x = T(-alpha / den)
    param[...] = _fma(u.reshape(param.shape), x, p).reshape(param.shape)
