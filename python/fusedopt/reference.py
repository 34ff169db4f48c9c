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
from typing import Callable, List, Optional, Sequence

import numpy as np

from . import _scalars

__all__ = [
    "adagrad", "adam", "adamw", "bf16_rne", "bf16_sr", "bf16_to_f32", "ema", "f16_rne", "f16_to_f32", "fma32",
    "global_norm", "lion", "lowp_step", "momentum", "philox4x32_10", "rmsprop", "sgd", "split_decode", "split_encode",
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
    states: Sequence[Optional[np.ndarray]],
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
    s32 = [None if s is None else _load(s) for s in states]
    update(p32, g32, *s32)
    for s, x in zip(states, s32):
        if s is not None and x is not None:
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
