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

from typing import Optional

import numpy as np

from . import _scalars

__all__ = ["adagrad", "adam", "adamw", "momentum", "rmsprop", "sgd"]


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
) -> None:
    """torch.optim.SGD. See :func:`fusedopt.functional.sgd`."""
    T = param.dtype.type
    s = _scalars.sgd_scalars(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening)
    g = _signed(grad, maximize)
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
) -> None:
    """Momentum as an EMA of gradients (Ng). See :func:`fusedopt.functional.momentum`."""
    T = param.dtype.type
    s = _scalars.momentum_scalars(
        step=step, lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction
    )
    g = grad
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
) -> None:
    """torch.optim.RMSprop. See :func:`fusedopt.functional.rmsprop`."""
    T = param.dtype.type
    s = _scalars.rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    g = _signed(grad, maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    square_avg[...] = T(s.alpha) * square_avg + (T(s.one_minus_alpha) * g) * g
    if centered:
        assert grad_avg is not None
        grad_avg[...] = T(s.alpha) * grad_avg + T(s.one_minus_alpha) * g
        with np.errstate(invalid="ignore"):  # sqrt of a negative rounding residue is NaN, as in torch
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + T(s.eps)
    else:
        avg = np.sqrt(square_avg) + T(s.eps)
    if s.momentum > 0.0:
        assert momentum_buffer is not None
        momentum_buffer[...] = T(s.momentum) * momentum_buffer + g / avg
        param[...] = param - T(s.lr) * momentum_buffer
    else:
        param[...] = param - (T(s.lr) * g) / avg


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
) -> None:
    """torch.optim.Adam / AdamW. See :func:`fusedopt.functional.adam`."""
    T = param.dtype.type
    s = _scalars.adam_scalars(
        step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
    )  # fmt: skip
    g = _signed(grad, maximize)
    if s.weight_decay_mode == _scalars.L2:
        g = g + T(s.weight_decay) * param
    elif s.weight_decay_mode == _scalars.DECOUPLED:
        param[...] = param * T(s.decay_factor)
    exp_avg[...] = T(s.beta1) * exp_avg + T(s.one_minus_beta1) * g
    exp_avg_sq[...] = T(s.beta2) * exp_avg_sq + (T(s.one_minus_beta2) * g) * g
    if amsgrad:
        assert max_exp_avg_sq is not None
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)  # over the raw v, as torch
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second) / T(s.bias_correction2_sqrt) + T(s.eps)
    param[...] = param + (T(s.neg_step_size) * exp_avg) / denom


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
) -> None:
    """torch.optim.AdamW: :func:`adam` with decoupled weight decay."""
    adam(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
        beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        decoupled_weight_decay=True,
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
) -> None:
    """torch.optim.Adagrad. See :func:`fusedopt.functional.adagrad`."""
    T = param.dtype.type
    s = _scalars.adagrad_scalars(step=step, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)
    g = _signed(grad, maximize)
    if s.weight_decay != 0.0:
        g = g + T(s.weight_decay) * param
    state_sum[...] = state_sum + g * g
    param[...] = param + (T(s.neg_clr) * g) / (np.sqrt(state_sum) + T(s.eps))
