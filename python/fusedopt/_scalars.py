"""Per-step scalars, derived once per step in float64 (Python floats).

This module is part of the specification: the compiled kernels and :mod:`fusedopt.reference` both
receive exactly these values and cast each of them once to the array dtype (round to nearest), so
both sides start every step from bitwise identical constants. Bias corrections, ``1 - beta`` and
friends are never recomputed in float32 (torch computes them in double too; SEMANTICS.md §0).
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
    step_size = float(lr) / (1.0 - float(beta) ** step) if bias_correction else float(lr)
    return MomentumScalars(step_size, float(beta), 1.0 - float(beta), float(weight_decay))


class RmspropScalars(NamedTuple):
    lr: float
    alpha: float
    one_minus_alpha: float
    eps: float
    weight_decay: float
    momentum: float


def rmsprop_scalars(
    *, lr: float, alpha: float, eps: float, weight_decay: float, momentum: float
) -> RmspropScalars:
    return RmspropScalars(
        float(lr), float(alpha), 1.0 - float(alpha), float(eps), float(weight_decay), float(momentum)
    )


class AdamScalars(NamedTuple):
    neg_step_size: float  # -lr / (1 - beta1**t)
    bias_correction2_sqrt: float  # sqrt(1 - beta2**t)
    eps: float
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
) -> AdamScalars:
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    if wd == 0.0:
        mode = NO_DECAY
    else:
        mode = DECOUPLED if decoupled_weight_decay else L2
    return AdamScalars(
        neg_step_size=-lr / bias_correction1,
        bias_correction2_sqrt=math.sqrt(bias_correction2),
        eps=float(eps),
        beta1=beta1,
        one_minus_beta1=1.0 - beta1,
        beta2=beta2,
        one_minus_beta2=1.0 - beta2,
        weight_decay=wd,
        decay_factor=1.0 - lr * wd,
        weight_decay_mode=mode,
    )


class AdagradScalars(NamedTuple):
    neg_clr: float  # -lr / (1 + (t-1)*lr_decay)
    eps: float
    weight_decay: float


def adagrad_scalars(
    *, step: int, lr: float, lr_decay: float, eps: float, weight_decay: float
) -> AdagradScalars:
    clr = float(lr) / (1.0 + (step - 1) * float(lr_decay))
    return AdagradScalars(-clr, float(eps), float(weight_decay))
