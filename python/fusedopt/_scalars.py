"""Per-step scalars, derived once per step in float64 (Python floats).

This module is part of the specification: the compiled kernels and :mod:`fusedopt.reference` both
receive exactly these values and cast each of them once to the array dtype (round to nearest), so
both sides start every step from bitwise identical constants. Bias corrections, ``1 - beta`` and
friends are never recomputed in float32 (torch computes them in double too; SEMANTICS.md §0).
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: step counts at or above this do not convert to a float (2**1024 overflows float64)
_STEP_LIMIT = 1 << 1023


def _float_step(step: int) -> float:
    """The step count as a float; a count too large for one is refused naming ``step``."""
    if step >= _STEP_LIMIT:
        raise ValueError(f"step is too large to be used as a float (>= 2**1023), got {step}")
    return float(step)


#: weight-decay modes of :func:`adam_scalars` (must match ``fusedopt::WeightDecay`` in C++)
NO_DECAY, L2, DECOUPLED = 0, 1, 2


class SgdScalars(NamedTuple):
    lr: float
    weight_decay: float
    momentum: float
    one_minus_dampening: float


def sgd_scalars(*, lr: float, weight_decay: float, momentum: float, dampening: float) -> SgdScalars:
    return SgdScalars(float(lr), float(weight_decay), float(momentum), 1.0 - float(dampening))


class MomentumScalars(NamedTuple):
    step_size: float
    beta: float
    one_minus_beta: float
    weight_decay: float


def momentum_scalars(
    *, step: int, lr: float, beta: float, weight_decay: float, bias_correction: bool
) -> MomentumScalars:
    """``step_size = lr / (1 - beta**t)`` with bias correction, else ``lr``."""
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    step_size = float(lr) / (1.0 - float(beta) ** step) if bias_correction else float(lr)
    return MomentumScalars(step_size, float(beta), 1.0 - float(beta), float(weight_decay))


class RmspropScalars(NamedTuple):
    lr: float  # factor outside the momentum buffer (1 with lr_in_momentum and momentum)
    buffer_lr: float  # factor inside the momentum buffer (1 unless lr_in_momentum)
    alpha: float
    one_minus_alpha: float
    eps_outside: float  # sqrt(v) + eps (torch); 0 with eps_in_sqrt
    eps_inside: float  # sqrt(v + eps) (TF/Keras/optax); 0 without eps_in_sqrt
    weight_decay: float
    momentum: float


def rmsprop_scalars(
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
) -> RmspropScalars:
    """The unused member of each pair (eps inside/outside, lr inside/outside the buffer) is the exact
    identity (0 for an added eps, 1 for a factor): the kernel applies both and rounds as if only one
    were there."""
    lr, eps, mu = float(lr), float(eps), float(momentum)
    buffer_lr = 1.0
    if lr_in_momentum and mu > 0.0:
        lr, buffer_lr = 1.0, lr
    eps_out, eps_in = (0.0, eps) if eps_in_sqrt else (eps, 0.0)
    return RmspropScalars(lr, buffer_lr, float(alpha), 1.0 - float(alpha), eps_out, eps_in, float(weight_decay), mu)


class AdamScalars(NamedTuple):
    neg_step_size: float  # -lr / (1 - beta1**t)   (epsilon_hat: -lr*sqrt(1 - beta2**t)/(1 - beta1**t))
    bias_correction2_sqrt: float  # sqrt(1 - beta2**t)   (epsilon_hat: 1)
    eps: float
    eps_root: float  # optax eps_root (inside the sqrt of v-hat); 0: not used
    bias_correction2: float  # 1 - beta2**t (used only when eps_root != 0)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    weight_decay: float  # the L2 coefficient (mode L2)
    decay_factor: float  # 1 - lr*weight_decay (mode DECOUPLED)
    weight_decay_mode: int


def adam_scalars(
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    epsilon_hat: bool = False,
    eps_root: float = 0.0,
) -> AdamScalars:
    """``epsilon_hat`` (Keras/TF): the step size ``lr*sqrt(1-beta2**t)/(1-beta1**t)`` is computed here
    in float64 (Keras computes it in float32) and the root is not divided (``R = 1``)."""
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    if wd == 0.0:
        mode = NO_DECAY
    else:
        mode = DECOUPLED if decoupled_weight_decay else L2
    if epsilon_hat:
        neg_step_size = -lr * math.sqrt(bias_correction2) / bias_correction1
        root_divisor = 1.0
    else:
        neg_step_size = -lr / bias_correction1
        root_divisor = math.sqrt(bias_correction2)
    # positional (a NamedTuple built from keywords costs about half a microsecond more)
    return AdamScalars(
        neg_step_size, root_divisor, float(eps), float(eps_root), bias_correction2, beta1, 1.0 - beta1, beta2,
        1.0 - beta2, wd, 1.0 - lr * wd, mode,
    )  # fmt: skip


class AdagradScalars(NamedTuple):
    neg_clr: float  # -lr / (1 + (t-1)*lr_decay)
    eps: float
    weight_decay: float


def adagrad_scalars(
    *, step: int, lr: float, lr_decay: float, eps: float, weight_decay: float
) -> AdagradScalars:
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    clr = float(lr) / (1.0 + (step - 1) * float(lr_decay))
    return AdagradScalars(-clr, float(eps), float(weight_decay))


class GradScalars(NamedTuple):
    """Gradient pre-processing of every algorithm (passed after the algorithm's scalars):
    ``g = clamp((g / grad_scale) * clip_coef, -clip_value, clip_value)``. The defaults are exact
    identities; the kernels skip the whole pre-processing when all three are at identity."""

    grad_scale: float
    clip_coef: float
    clip_value: float


NO_GRAD_TRANSFORM = GradScalars(1.0, 1.0, math.inf)


class EmaScalars(NamedTuple):
    decay: float
    one_minus_decay: float


def ema_scalars(*, decay: float) -> EmaScalars:
    return EmaScalars(float(decay), 1.0 - float(decay))


#: the ``eps`` of torch.nn.utils.clip_grad_norm_: coefficient = max_norm / (norm + 1e-6)
CLIP_NORM_EPS = 1e-6


def clip_coef(norm: float, max_norm: float) -> float:
    """``min(1, max_norm / (norm + 1e-6))`` in float64 (torch.nn.utils.clip_grad_norm_'s formula).

    A NaN norm gives NaN and an infinite norm 0, as in torch (the gradients become NaN)."""
    c = float(max_norm) / (float(norm) + CLIP_NORM_EPS)
    return 1.0 if c >= 1.0 else c
