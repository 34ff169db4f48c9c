"""Per-step scalars, derived once per step in float64 (Python floats).

This module is part of the specification: the compiled kernels and :mod:`fusedopt.reference` both
receive exactly these values and cast each of them once to the array dtype (round to nearest), so
both sides start every step from bitwise identical constants. Bias corrections, ``1 - beta`` and
friends are never recomputed in float32 (torch computes them in double too; SEMANTICS.md §0).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

#: step counts at or above this do not convert to a float (2**1024 overflows float64)
_STEP_LIMIT = 1 << 1023


def _int_step(step: Any) -> Any:
    """A NumPy integer step count as a Python int: ``beta**step`` is then CPython's float power (C
    ``pow``, as the C++ Stepper's), not ``np.power`` (whose SIMD implementation differs in the last
    bits on some CPUs: ``0.999**np.int64(7)`` on AVX-512 with NumPy 2)."""
    return int(step) if isinstance(step, np.integer) else step


def _float_step(step: int) -> float:
    """The step count as a float; a count too large for one is refused naming ``step``."""
    if step >= _STEP_LIMIT:
        raise ValueError(f"step is too large to be used as a float (>= 2**1023), got {step}")
    return float(step)


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
    step = _int_step(step)
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
    """Adam's per-step values. The kernels compute ``p = p*decay_factor + (S*m) / (sqrt(s + R) + E)``
    with the bias corrections folded into ``S``, ``E``, ``R`` (the Adam paper's "more efficient
    order": one square root and one division per element); the last three fields are for
    ``torch_exact``, which keeps torch's order ``(-lr/bc1)*m / (sqrt(s)/sqrt(bc2) + eps)``."""

    neg_step_size: float  # S = -lr*sqrt(bc2)/bc1
    eps_scaled: float  # E = eps*sqrt(bc2)   (epsilon_hat: eps)
    eps_root_scaled: float  # R = eps_root*bc2   (0.0 unless eps_root)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    weight_decay: float  # the L2 coefficient (0.0 with decoupled decay)
    decay_factor: float  # 1 - lr*weight_decay with decoupled decay, else 1.0
    torch_neg_step_size: float  # -lr/bc1   (torch_exact)
    bias_correction2_sqrt: float  # sqrt(bc2)   (torch_exact)
    torch_eps: float  # eps   (torch_exact)


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
    """With ``bc1 = 1 - beta1**t`` and ``bc2 = 1 - beta2**t`` (float64), Kingma & Ba's update
    ``lr * (m/bc1) / (sqrt(v/bc2) + eps)`` multiplied above and below by ``sqrt(bc2)``:

    * torch/Ng/Kingma-Ba: ``S = -lr*sqrt(bc2)/bc1``, ``E = eps*sqrt(bc2)``, ``R = 0``;
    * ``epsilon_hat`` (Keras/TF, eps added to the raw root): ``E = eps`` (Keras computes ``S`` in
      float32, here it is float64);
    * ``eps_root`` (optax, ``sqrt(v/bc2 + eps_root) + eps``): ``R = eps_root*bc2``, ``E = eps*sqrt(bc2)``.
    """
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    root = math.sqrt(bias_correction2)
    eps = float(eps)
    eps_scaled = eps if epsilon_hat else eps * root
    if decoupled_weight_decay:
        l2, decay_factor = 0.0, 1.0 - lr * wd
    else:
        l2, decay_factor = wd, 1.0
    # positional (a NamedTuple built from keywords costs about half a microsecond more)
    return AdamScalars(
        -lr * root / bias_correction1, eps_scaled, float(eps_root) * bias_correction2, beta1, 1.0 - beta1, beta2,
        1.0 - beta2, l2, decay_factor, -lr / bias_correction1, root, eps,
    )  # fmt: skip


class AdagradScalars(NamedTuple):
    neg_clr: float  # -lr / (1 + (t-1)*lr_decay)
    eps: float
    weight_decay: float


def adagrad_scalars(
    *, step: int, lr: float, lr_decay: float, eps: float, weight_decay: float
) -> AdagradScalars:
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    clr = float(lr) / (1.0 + (step - 1) * float(lr_decay))
    return AdagradScalars(-clr, float(eps), float(weight_decay))


class LionScalars(NamedTuple):
    lr: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    decay_factor: float  # 1 - lr*weight_decay (exactly 1.0 without weight decay)


def lion_scalars(*, lr: float, beta1: float, beta2: float, weight_decay: float) -> LionScalars:
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    return LionScalars(lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - lr * float(weight_decay))


class AdamaxScalars(NamedTuple):
    neg_clr: float  # -lr / (1 - beta1**t)
    eps: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    weight_decay: float


def adamax_scalars(
    *, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
) -> AdamaxScalars:
    """torch.optim.Adamax's ``clr = lr / (1 - beta1**t)`` (float64), negated."""
    beta1 = float(beta1)
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    clr = float(lr) / (1.0 - beta1**step)
    return AdamaxScalars(-clr, float(eps), beta1, 1.0 - beta1, float(beta2), float(weight_decay))


class MuonScalars(NamedTuple):
    one_minus_momentum: float  # 1 - momentum: the buffer's lerp weight
    momentum: float  # the Nesterov lerp weight
    decay_factor: float  # 1 - lr*weight_decay (the unadjusted lr; exactly 1.0 without weight decay)
    neg_lr: float  # -adjusted lr (muon_adjusted_lr)


def muon_adjusted_lr(lr: float, adjust_lr_fn: Optional[str], shape: Sequence[int]) -> float:
    """torch.optim.Muon's ``_adjust_lr``: ``lr*sqrt(max(1, A/B))`` ("original", None) or
    ``lr*0.2*sqrt(max(A, B))`` ("match_rms_adamw"), ``A, B = shape[:2]``, in float64."""
    a, b = int(shape[0]), int(shape[1])
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, a / b))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(a, b))
    else:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    return float(lr) * ratio


def muon_scalars(*, lr: float, momentum: float, weight_decay: float, adjusted_lr: float) -> MuonScalars:
    momentum = float(momentum)
    return MuonScalars(1.0 - momentum, momentum, 1.0 - float(lr) * float(weight_decay), -float(adjusted_lr))


class LambScalars(NamedTuple):
    neg_lr: float  # -lr (torch_optimizer's debias: -lr*sqrt(1-beta2^t)/(1-beta1^t))
    m_scale: float  # sqrt(1-beta2^t)/(1-beta1^t) with bias correction, else 1
    eps: float  # eps*sqrt(1-beta2^t) with bias correction, else eps
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    weight_decay: float
    clamp_value: float  # upper bound of ||p|| in the trust ratio (inf: none)


def lamb_scalars(
    *, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, clamp_value: float,
    bias_correction: bool, debias: bool,
) -> LambScalars:  # fmt: skip
    """LAMB's per-step scalars (cpp/kernels/lamb.inl). ``bias_correction`` (paper, optax):
    ``u = m_hat/(sqrt(v_hat) + eps)`` computed as ``(sqrt(bc2)/bc1*m)/(sqrt(v) + eps*sqrt(bc2))``;
    ``debias`` (torch_optimizer): ``u = m/(sqrt(v) + eps)`` and the step scaled by ``sqrt(bc2)/bc1``."""
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    root = math.sqrt(bias_correction2)
    return LambScalars(
        -lr * root / bias_correction1 if debias else -lr,
        root / bias_correction1 if bias_correction else 1.0,
        eps * root if bias_correction else eps,
        beta1, 1.0 - beta1, beta2, 1.0 - beta2, float(weight_decay), float(clamp_value),
    )  # fmt: skip


def lamb_tensor_scalar(s: LambScalars, sumsq_p: float, sumsq_u: float, adam: bool) -> float:
    """A tensor's phase-2 scalar ``fl(neg_lr*ratio)`` in float64 (Lamb::tensor_scalar): ratio =
    ``min(||p||, clamp_value)/||u||``, 1 when either is 0 (or ``adam``); NaN norms give NaN."""
    if adam:
        return s.neg_lr
    w = math.sqrt(sumsq_p)
    n = math.sqrt(sumsq_u)
    if w > s.clamp_value:
        w = s.clamp_value
    ratio = 1.0 if (w == 0.0 or n == 0.0) else w / n
    return s.neg_lr * ratio


class LarsScalars(NamedTuple):
    neg_lr: float  # -lr
    momentum: float
    weight_decay: float
    eta: float  # trust coefficient
    eps: float  # added to ||d||


def lars_scalars(*, lr: float, momentum: float, weight_decay: float, eta: float, eps: float) -> LarsScalars:
    return LarsScalars(-float(lr), float(momentum), float(weight_decay), float(eta), float(eps))


def lars_tensor_scalar(s: LarsScalars, sumsq_p: float, sumsq_d: float, adapt: bool) -> float:
    """A tensor's trust ratio ``q`` in float64 (Lars::tensor_scalar): ``(eta*||p||)/(||d|| + eps)``
    when ``adapt`` and both norms are > 0, else 1 (a NaN norm gives 1, as barlowtwins' ``where``)."""
    if not adapt:
        return 1.0
    w = math.sqrt(sumsq_p)
    n = math.sqrt(sumsq_d)
    return (s.eta * w) / (n + s.eps) if (w > 0.0 and n > 0.0) else 1.0


class RAdamScalars(NamedTuple):
    bias_correction1: float  # 1 - beta1**t
    lr: float
    eps: float
    bias_correction2_sqrt: float  # (1 - beta2**t) ** 0.5
    rect: float  # the variance rectification term (0.0 when not rectified)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    weight_decay: float  # L2 (0.0 with decoupled decay)
    decay_factor: float  # 1 - lr*weight_decay with decoupled decay, exactly 1.0 otherwise
    rectified: float  # 1.0 if rho_t > 5 (strict) else 0.0: the kernel's per-step variant


def radam_scalars(
    *, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    decoupled_weight_decay: bool,
) -> RAdamScalars:  # fmt: skip
    """torch.optim.RAdam's per-step float64 values, with torch's own expressions in its order::

        rho_inf = 2/(1-beta2) - 1;   rho_t = rho_inf - 2*t*beta2**t/(1-beta2**t)
        rect = ((rho_t-4)*(rho_t-2)*rho_inf / ((rho_inf-4)*(rho_inf-2)*rho_t)) ** 0.5   (only if rho_t > 5)
    """
    lr, beta1, beta2, wd = float(lr), float(beta1), float(beta2), float(weight_decay)
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    t = float(step)  # torch's step is a float
    bias_correction1 = 1.0 - beta1**t
    bias_correction2 = 1.0 - beta2**t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2**t / bias_correction2
    rectified = rho_t > 5.0
    rect = 0.0
    if rectified:  # only then: the base can be negative otherwise
        rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
    if decoupled_weight_decay:
        l2, decay_factor = 0.0, 1.0 - lr * wd
    else:
        l2, decay_factor = wd, 1.0
    return RAdamScalars(
        bias_correction1, lr, float(eps), bias_correction2**0.5, rect, beta1, 1.0 - beta1, beta2, 1.0 - beta2, l2,
        decay_factor, 1.0 if rectified else 0.0,
    )  # fmt: skip


def nadam_mu(*, step: int, beta1: float, momentum_decay: float) -> float:
    """torch.optim.NAdam's momentum factor of step ``t`` (float64):
    ``beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))`` (``momentum_decay = 0`` gives ``beta1/2``)."""
    decay: float = 0.96 ** (float(step) * float(momentum_decay))
    return float(beta1) * (1.0 - 0.5 * decay)


#: the dtypes in which a mu_product may be kept (torch: its scalar dtype, or the parameter's after a load)
_MU_DTYPES = {"float32": np.float32, "float64": np.float64}


def nadam_mu_product(mu_product: float, *, step: int, beta1: float, momentum_decay: float,
                     dtype: str = "float32") -> float:  # fmt: skip
    """The mu_product after step ``t``: ``mu_product * mu_t`` rounded as torch.optim.NAdam's
    ``mu_product *= mu`` rounds it in the state tensor's ``dtype`` ("float32", torch's default,
    or "float64"): the factor ``mu_t`` (float64, :func:`nadam_mu`) is cast to ``dtype`` first, the
    product rounded once (``mu_product`` is taken in ``dtype`` as stored). Rounded at every step,
    so it is not a function of ``t`` alone."""
    T = _MU_DTYPES[dtype]
    mu = nadam_mu(step=step, beta1=beta1, momentum_decay=momentum_decay)
    return float(T(T(mu_product) * T(mu)))


class NAdamScalars(NamedTuple):
    grad_coef: float  # -lr*(1 - mu_t)/(1 - mu_product)
    momentum_coef: float  # -lr*mu_{t+1}/(1 - mu_product*mu_{t+1})
    bias_correction2: float  # 1 - beta2**t
    eps: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    weight_decay: float  # L2 (0.0 with decoupled decay)
    decay_factor: float  # 1 - lr*weight_decay with decoupled decay, exactly 1.0 otherwise


def nadam_scalars(
    *, step: int, mu_product: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    momentum_decay: float, decoupled_weight_decay: bool,
) -> NAdamScalars:  # fmt: skip
    """torch.optim.NAdam's per-step float64 values (its loop form, its expressions in its order)::

        mu = beta1*(1 - 0.5*0.96**(t*psi));   mu_next = beta1*(1 - 0.5*0.96**((t+1)*psi))
        grad_coef = -lr*(1 - mu)/(1 - P);     momentum_coef = (-lr*mu_next)/(1 - P*mu_next)

    ``P = mu_product``: the parameter's product **after** this step's factor (torch's
    ``mu_product *= mu`` comes first; :func:`nadam_mu_product`), promoted to float64."""
    lr, beta1, beta2, wd, psi = float(lr), float(beta1), float(beta2), float(weight_decay), float(momentum_decay)
    step = _int_step(step)
    if step >= _STEP_LIMIT:
        _float_step(step)  # raises naming step
    t = float(step)  # torch's step is a float
    mp = float(mu_product)
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (t * psi)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1.0) * psi)))
    grad_coef = -lr * (1.0 - mu) / (1.0 - mp)
    momentum_coef = (-lr * mu_next) / (1.0 - mp * mu_next)
    if decoupled_weight_decay:
        l2, decay_factor = 0.0, 1.0 - lr * wd
    else:
        l2, decay_factor = wd, 1.0
    return NAdamScalars(grad_coef, momentum_coef, 1.0 - beta2**t, float(eps), beta1, 1.0 - beta1, beta2, 1.0 - beta2,
                        l2, decay_factor)  # fmt: skip


class AdafactorScalars(NamedTuple):
    """Adafactor's per-step scalars (torch.optim.Adafactor's float64 expressions, its order), the
    positional scalars of ``_core.adafactor`` (cpp/common/step_args.hpp, AdafactorScalars)."""

    w: float  # t**beta2_decay: the lerp weight of the factors / variance ("1 - beta2_t")
    rho: float  # min(lr, 1/t**0.5): the relative step size, capped by lr
    eps1: float
    eps1_sq: float  # eps1*eps1 in float64 (torch squares the Python float)
    eps2: float
    d: float
    decay: float  # 1 - lr*weight_decay (decoupled, with lr)


def adafactor_scalars(
    *, step: float, lr: float, beta2_decay: float, eps1: float, eps2: float, d: float, weight_decay: float
) -> AdafactorScalars:
    """torch's ``one_minus_beta2_t = step**beta2_decay``, ``rho_t = min(lr, 1/step**0.5)``,
    ``eps1*eps1`` and ``1 - lr*weight_decay`` (``eps1`` already resolved: None is the first
    param's ``finfo(dtype).eps``)."""
    t = _float_step(step) if isinstance(step, int) else float(step)  # torch: step_t.item(), a float
    lr, eps1 = float(lr), float(eps1)
    return AdafactorScalars(
        t ** float(beta2_decay), min(lr, 1 / (t**0.5)), eps1, eps1 * eps1, float(eps2), float(d),
        1 - lr * float(weight_decay),
    )  # fmt: skip


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
