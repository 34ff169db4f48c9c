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
from typing import List, Optional, Sequence

import numpy as np

from . import _scalars

__all__ = [
    "adagrad", "adam", "adamw", "ema", "fma32", "global_norm", "lion", "momentum", "rmsprop", "sgd", "sum_of_squares",
    "trace",
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
