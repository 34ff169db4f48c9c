"""In-place optimizer steps: one function per algorithm, every hyperparameter explicit.

Each function updates ``params`` and the state arrays **in place** and returns ``None``. Every
array argument is either one ``numpy.ndarray`` or a list/tuple of them (one entry per tensor); a
list is updated by **one** native call with one parallel region over all its elements. Arrays must
be float32 or float64 (one dtype per call), C-contiguous, aligned and writeable where written;
gradients and state have their parameter's shape and dtype; no written array may share memory
with any other array of the call. Anything else raises ``TypeError``/``ValueError`` naming the
argument, before any array is touched. Nothing is ever converted or copied.

The exact arithmetic (operation order and rounding) of each function is the same-named function in
:mod:`fusedopt.reference`; the kernels match it bitwise on every ISA and for any thread count.
``threads=None`` uses :func:`fusedopt.get_num_threads` threads, or 1 for small calls.

Gradient pre-processing, fused into the same pass (every algorithm; see :func:`sgd` for the
keyword arguments). Each gradient element is transformed as it is loaded, before ``maximize`` and
weight decay; **the gradient arrays are never written** (unlike torch's fused kernels, which store
the unscaled gradient back; here gradients stay read-only inputs)::

    g = g / grad_scale                       # AMP unscaling (grad_scale=None: skipped)
    g = g * c,  c = min(1, max_grad_norm / (norm + 1e-6))     # clip by global norm
    g = clamp(g, -clip_value, clip_value)    # clip by value (NaN stays NaN)

``norm`` is the global L2 norm of the *unscaled* gradients of the call, ``sqrt(sum g^2) /
grad_scale``, with the sum of squares computed in float64 by a deterministic blocked pass
(:func:`global_norm`: bitwise the same for every thread count and ISA). ``found_inf`` (nonzero)
and ``skip_if_nonfinite`` (with a NaN/inf norm) skip the step: nothing is written, but every
argument is checked first as for a step (bad input raises even when the step is skipped).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, _scalars, _threads
from . import _validation as check

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

__all__ = [
    "adagrad",
    "adam",
    "adamw",
    "clip_coef",
    "found_inf_set",
    "global_norm",
    "momentum",
    "rmsprop",
    "sgd",
    "trace",
]


def _as_list(name: str, x: ArrayOrList) -> Sequence[np.ndarray]:
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, (list, tuple)):
        return x
    raise TypeError(f"{name} must be a numpy.ndarray or a list/tuple of them, got {type(x).__name__}")


def _n_elements(params: Sequence[np.ndarray]) -> int:
    """Total elements of a call (for the thread policy); non-arrays count 0 (the core rejects them)."""
    try:
        return sum([p.size for p in params])
    except AttributeError:
        return sum(int(getattr(p, "size", 0)) for p in params)


def _scalar(name: str, value: Any) -> float:
    """A Python real, or a NumPy scalar / one-element array (e.g. an AMP scale kept in an array)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{name} must be a scalar or a one-element array, got shape {value.shape}")
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def found_inf_set(found_inf: Any) -> bool:
    """Whether an AMP ``found_inf`` flag says to skip the step: ``None``/``False``/``0`` do not,
    any other value does (``True``, ``1.0``, NaN, a nonzero one-element array)."""
    if found_inf is None or found_inf is False:
        return False
    if found_inf is True:
        return True
    return _scalar("found_inf", found_inf) != 0.0


def clip_coef(norm: float, max_norm: float) -> float:
    """The clip-by-global-norm factor ``min(1, max_norm / (norm + 1e-6))`` (torch's
    ``clip_grad_norm_`` formula, float64). NaN for a NaN norm and 0 for an infinite one, as torch."""
    return _scalars.clip_coef(norm, max_norm)


def _sum_of_squares(xs: Sequence[np.ndarray], threads: Optional[int]) -> float:
    t = _threads.resolve(threads, _n_elements(xs), "sgd")  # a read-only pass: SGD's crossover
    if len(xs) > 1:
        d0 = getattr(xs[0], "dtype", None)
        if any(getattr(a, "dtype", None) != d0 for a in xs):
            f32 = [a for a in xs if getattr(a, "dtype", None) == np.float32]
            f64 = [a for a in xs if getattr(a, "dtype", None) == np.float64]
            if len(f32) + len(f64) == len(xs):  # float32 part first, then float64: a fixed order
                return _core.sum_of_squares(f32, t) + _core.sum_of_squares(f64, t)
    return _core.sum_of_squares(xs, t)  # (raises naming the offending array otherwise)


def global_norm(arrays: ArrayOrList, *, threads: Optional[int] = None) -> float:
    r"""The L2 norm of all elements of all arrays, :math:`\sqrt{\sum_k \sum_i x_{k,i}^2}`, as a float.

    Deterministic: the sum of squares is taken in float64 over fixed 2048-element blocks (8
    interleaved lanes each, combined by a fixed tree) and the block sums are added by a fixed
    pairwise tree, so the result is bitwise identical for every thread count, ISA and grouping of
    work; :func:`fusedopt.reference.global_norm` is its bitwise specification. Arrays of float32
    and float64 may be mixed (their two sums are added float32 first). float32 squares are exact in
    float64; a float64 sum of squares overflows to inf above about 1e308 (norm > ~1e154).
    """
    return math.sqrt(_sum_of_squares(_as_list("arrays", arrays), threads))


def _check_grad_options(
    grad_scale: Any, clip_value: Any, max_grad_norm: Any, clip_coef: Any, skip_if_nonfinite: Any
) -> "tuple[float, float, Optional[float], float, bool]":
    """Validated (grad_scale, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite); identities
    (1, inf, None, 1) for the options not given."""
    scale = 1.0
    if grad_scale is not None:
        scale = _scalar("grad_scale", grad_scale)
        if not (scale > 0.0 and math.isfinite(scale)):
            raise ValueError(f"grad_scale must be finite and > 0, got {scale}")
    value = math.inf
    if clip_value is not None:
        value = _scalar("clip_value", clip_value)
        if not value >= 0.0:
            raise ValueError(f"clip_value must be >= 0, got {value}")
    max_norm = None
    if max_grad_norm is not None:
        max_norm = _scalar("max_grad_norm", max_grad_norm)
        if not max_norm >= 0.0:
            raise ValueError(f"max_grad_norm must be >= 0 (math.inf: report the norm, no clipping), got {max_norm}")
    coef = 1.0
    if clip_coef is not None:
        if max_norm is not None:
            raise ValueError("give clip_coef or max_grad_norm, not both")
        coef = _scalar("clip_coef", clip_coef)
        if not (0.0 <= coef < math.inf or math.isnan(coef)):  # NaN: what a NaN norm gives (as torch)
            raise ValueError(f"clip_coef must be finite and >= 0, got {coef}")
    return scale, value, max_norm, coef, check.flag("skip_if_nonfinite", skip_if_nonfinite)


def _no_grad_options(grad_scale: Any, found_inf: Any, clip_value: Any, max_grad_norm: Any, clip_coef: Any,
                     skip_if_nonfinite: Any) -> bool:  # fmt: skip
    """Whether a step has none of the gradient options (the common case: no transform, no norm)."""
    return grad_scale is None and found_inf is None and clip_value is None and max_grad_norm is None \
        and clip_coef is None and skip_if_nonfinite is False  # fmt: skip


#: one list of a native call: (name, list of arrays or None when absent, written); params first
Role = Tuple[str, Any, bool]


def _grad_transform(
    threads: Optional[int],
    algorithm: str,
    roles: Sequence[Role],
    grad_scale: Any,
    found_inf: Any,
    clip_value: Any,
    max_grad_norm: Any,
    clip_coef: Any,
    skip_if_nonfinite: Any,
) -> "tuple[_scalars.GradScalars, Optional[float], bool]":
    """(gradient scalars, the global norm if computed, whether to skip the step). Validates the
    options; and, when the step is skipped (``found_inf``) or the gradients are read before the
    step (the norm), first every argument as the native call would (:func:`_check_arguments`),
    so that bad input raises, naming it, also when nothing is written. ``roles[1]`` are the
    gradients."""
    scale, value, max_norm, coef, skip_nonfinite = _check_grad_options(
        grad_scale, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite
    )
    if found_inf_set(found_inf):
        _check_arguments(threads, algorithm, roles)
        return _scalars.NO_GRAD_TRANSFORM, None, True
    norm = None
    if max_norm is not None or skip_nonfinite:
        _check_arguments(threads, algorithm, roles)
        norm = math.sqrt(_sum_of_squares(roles[1][1], threads)) / scale
        if skip_nonfinite and not math.isfinite(norm):
            return _scalars.NO_GRAD_TRANSFORM, norm, True
        if max_norm is not None:
            coef = _scalars.clip_coef(norm, max_norm)
    return _scalars.GradScalars(scale, coef, value), norm, False


def _check_arguments(threads: Optional[int], algorithm: str, roles: Sequence[Role]) -> None:
    """Every check of the native call, without the call (``_core.check``: the same checks and
    messages), and the thread count."""
    _threads.resolve(threads, _n_elements(roles[0][1]), algorithm)
    _core.check(roles)


def sgd(
    params: ArrayOrList,
    grads: ArrayOrList,
    momentum_buffers: Optional[ArrayOrList] = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    first_step: bool = False,
    grad_scale: Optional[float] = None,
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""SGD with optional (Nesterov) momentum, exactly as ``torch.optim.SGD``.

    .. math::
        g &\leftarrow \pm\nabla + \lambda\theta \\
        b &\leftarrow g \ \text{(first step)}, \quad b \leftarrow \mu b + (1-\tau) g \ \text{(later)} \\
        d &\leftarrow g + \mu b \ \text{(nesterov)}, \quad d \leftarrow b \ \text{(otherwise)} \\
        \theta &\leftarrow \theta - \eta d

    Args:
        params, grads: parameters (updated) and gradients (read only).
        momentum_buffers: ``b`` (updated); required when ``momentum != 0``, else ignored.
        lr: :math:`\eta`. momentum: :math:`\mu`. dampening: :math:`\tau`.
        weight_decay: :math:`\lambda`, L2 decay added to the gradient (after ``maximize``).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``, as torch).
        maximize: ascend (use :math:`-\nabla`).
        first_step: the buffers hold nothing yet: set ``b = g`` (torch skips dampening on the
            first step; contents of ``momentum_buffers`` are then ignored and overwritten).

    Gradient pre-processing (same keywords for every algorithm of this module; formulas in the
    module docstring; all are applied in the same pass, gradients are never written):
        grad_scale: divide every gradient by this (AMP loss scale; > 0). A Python real, NumPy
            scalar or one-element array.
        found_inf: nonzero (``True``, ``1.0``, a one-element array holding nonzero): skip the
            step, writing nothing (torch's fused ``found_inf``; see :func:`found_inf_set`); the
            arguments are checked all the same.
        clip_value: clamp every (unscaled) gradient element to ``[-clip_value, clip_value]``.
        max_grad_norm: clip by global norm over all gradients of the call: multiply them by
            :func:`clip_coef` of their :func:`global_norm` (``math.inf``: only report the norm).
        clip_coef: multiply every gradient by this factor (a coefficient computed by the caller,
            e.g. over more tensors than this call; excludes ``max_grad_norm``).
        skip_if_nonfinite: compute the global norm and skip the step if it is NaN or inf.

    Returns:
        The global norm of the unscaled gradients when it was computed (``max_grad_norm`` or
        ``skip_if_nonfinite``), else ``None``.

    Conventions: the buffer holds no learning rate (torch, TF ``ApplyMomentum``); Keras/Sutskever
    keep ``lr*g`` in the velocity instead, which differs once ``lr`` changes. ``optax.sgd`` equals
    this with ``dampening=0``. Ng's EMA momentum is :func:`momentum`.
    """
    lr = check.non_negative("lr", lr)
    mu = check.non_negative("momentum", momentum)
    tau = check.unit_interval_closed("dampening", dampening)
    wd = check.non_negative("weight_decay", weight_decay)
    nesterov = check.flag("nesterov", nesterov)
    if nesterov and (mu <= 0.0 or tau != 0.0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")
    p, g = _as_list("params", params), _as_list("grads", grads)
    bufs = None
    if mu != 0.0:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers is required when momentum != 0")
        bufs = _as_list("momentum_buffers", momentum_buffers)
    s = _scalars.sgd_scalars(lr=lr, weight_decay=wd, momentum=mu, dampening=tau)
    maximize, first_step = check.flag("maximize", maximize), check.flag("first_step", first_step)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("momentum_buffers", bufs, True)]
        gs, norm, skip = _grad_transform(threads, "sgd", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.sgd(p, g, bufs, *s, *gs, nesterov, maximize, first_step, _threads.resolve(threads, _n_elements(p), "sgd"))
    return norm


def trace(
    params: ArrayOrList,
    grads: ArrayOrList,
    traces: ArrayOrList,
    *,
    lr: float,
    decay: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""Heavy-ball momentum as optax's ``trace`` (``optax.sgd``) and TF's ``ApplyMomentum``.

    .. math::
        g &\leftarrow \pm\nabla + \lambda\theta \\
        tr &\leftarrow g + \mu\, tr \\
        \theta &\leftarrow \theta - \eta\, u, \qquad u = g + \mu\, tr \ \text{(nesterov)},
            \quad u = tr \ \text{(otherwise)}

    ``traces`` start at zero (optax ``trace`` state, TF ``accum``) and are updated in place; there
    is no first-step special case (with a zero trace the first step gives ``tr = g``, which is why
    this equals ``torch.optim.SGD(momentum=decay, dampening=0)`` and :func:`sgd` with
    ``first_step=False``; it is computed by the same kernel). ``decay = 0`` keeps ``tr = g``.

    Args:
        traces: ``tr`` (updated; zeros before the first step).
        lr: :math:`\eta`. decay: :math:`\mu \in [0, 1)`. weight_decay: :math:`\lambda` (L2,
            coupled; optax ``sgd`` has none). nesterov: optax ``trace(nesterov=True)`` / TF
            ``use_nesterov``. maximize: ascend.
        grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: see :func:`sgd`.

    Conventions: Keras ``SGD(momentum)`` keeps ``-lr*g`` in its velocity (equal for a constant lr
    only; not provided as a mode).
    """
    lr = check.non_negative("lr", lr)
    mu = check.unit_interval("decay", decay)
    wd = check.non_negative("weight_decay", weight_decay)
    nesterov, maximize = check.flag("nesterov", nesterov), check.flag("maximize", maximize)
    p, g, tr = _as_list("params", params), _as_list("grads", grads), _as_list("traces", traces)
    s = _scalars.sgd_scalars(lr=lr, weight_decay=wd, momentum=mu, dampening=0.0)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("traces", tr, True)]
        gs, norm, skip = _grad_transform(threads, "sgd", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.sgd(p, g, tr, *s, *gs, nesterov, maximize, False, _threads.resolve(threads, _n_elements(p), "sgd"))
    return norm


def momentum(
    params: ArrayOrList,
    grads: ArrayOrList,
    velocities: ArrayOrList,
    *,
    step: int,
    lr: float,
    beta: float = 0.9,
    weight_decay: float = 0.0,
    bias_correction: bool = False,
    grad_scale: Optional[float] = None,
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""Momentum as an exponentially weighted average of gradients (Ng, *Deep Learning*, course 2).

    .. math::
        g &\leftarrow \nabla + \lambda\theta \\
        v &\leftarrow \beta v + (1-\beta) g \\
        \theta &\leftarrow \theta - s_t v, \qquad
        s_t = \eta \ \text{or, with bias correction,}\ \eta / (1-\beta^t)

    ``v`` starts at zero. ``s_t`` is computed in float64 and rounded once to the array dtype
    (so bias correction divides the step size, not ``v``).

    Args:
        velocities: ``v`` (updated). step: :math:`t \ge 1`, this step's number.
        lr: :math:`\eta`. beta: :math:`\beta`. weight_decay: :math:`\lambda` (L2, coupled).
        bias_correction: use :math:`v/(1-\beta^t)`.
        grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: see :func:`sgd`.

    Conventions: equals ``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)`` only for a constant
    learning rate (torch's buffer starts at ``g``, holds no ``(1-beta)`` and no lr); optax:
    ``optax.chain(optax.ema(beta, debias=bias_correction), optax.scale(-lr))``.
    """
    t = check.step_count("step", step)
    lr = check.non_negative("lr", lr)
    beta = check.unit_interval("beta", beta)
    wd = check.non_negative("weight_decay", weight_decay)
    bc = check.flag("bias_correction", bias_correction)
    p, g = _as_list("params", params), _as_list("grads", grads)
    s = _scalars.momentum_scalars(step=t, lr=lr, beta=beta, weight_decay=wd, bias_correction=bc)
    vel = _as_list("velocities", velocities)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("velocities", vel, True)]
        gs, norm, skip = _grad_transform(threads, "momentum", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.momentum(
        p, g, vel, *s, *gs, _threads.resolve(threads, _n_elements(p), "momentum"),
    )  # fmt: skip
    return norm


def rmsprop(
    params: ArrayOrList,
    grads: ArrayOrList,
    square_avgs: ArrayOrList,
    grad_avgs: Optional[ArrayOrList] = None,
    momentum_buffers: Optional[ArrayOrList] = None,
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
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""RMSprop, exactly as ``torch.optim.RMSprop`` (eps outside the square root).

    .. math::
        g &\leftarrow \pm\nabla + \lambda\theta \\
        v &\leftarrow \alpha v + (1-\alpha) g^2 \\
        a &\leftarrow \sqrt{v - \bar g^2} + \epsilon,\ \ \bar g \leftarrow \alpha\bar g + (1-\alpha) g
            \ \text{(centered)}, \qquad a \leftarrow \sqrt{v} + \epsilon \ \text{(otherwise)} \\
        b &\leftarrow \mu b + g/a,\ \ \theta \leftarrow \theta - \eta b \ \text{(momentum)}, \qquad
            \theta \leftarrow \theta - \eta g / a \ \text{(otherwise)}

    All state starts at zero; there is no bias correction. Centered: if rounding makes
    :math:`v - \bar g^2 < 0` the result is NaN, as in torch (no clamp).

    Args:
        square_avgs: ``v``. grad_avgs: :math:`\bar g`, required when ``centered``.
        momentum_buffers: ``b``, required when ``momentum > 0``.
        lr: :math:`\eta`. alpha: :math:`\alpha`. eps: :math:`\epsilon`. momentum: :math:`\mu`.
        weight_decay: :math:`\lambda` (L2, coupled).

        eps_in_sqrt: TF/Keras/optax form :math:`a = \sqrt{v + \epsilon}` (centered:
            :math:`\sqrt{v - \bar g^2 + \epsilon}`) instead of :math:`\sqrt{v} + \epsilon`.
        lr_in_momentum: TF/Keras form (lr inside the buffer, matters when lr changes):
            :math:`b \leftarrow \mu b + \eta g / a,\ \theta \leftarrow \theta - b` instead of
            :math:`b \leftarrow \mu b + g / a,\ \theta \leftarrow \theta - \eta b`.
            Without momentum it changes nothing.
        grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: see :func:`sgd`.

    Conventions (docs/CONVENTIONS.md): torch = the defaults; Ng's RMSprop = the defaults with
    ``alpha=beta2``; Keras 3 ``RMSprop(rho, momentum, epsilon, centered)`` and TF
    ``ApplyRMSProp``/``ApplyCenteredRMSProp`` = ``eps_in_sqrt=True, lr_in_momentum=True`` (Keras
    defaults: ``alpha=0.9, eps=1e-7``); optax ``rmsprop(eps_in_sqrt=True)`` without momentum =
    ``eps_in_sqrt=True``. Exact per-element order: :func:`fusedopt.reference.rmsprop`.
    """
    lr = check.non_negative("lr", lr)
    alpha = check.unit_interval("alpha", alpha)
    eps = check.non_negative("eps", eps)
    wd = check.non_negative("weight_decay", weight_decay)
    mu = check.non_negative("momentum", momentum)
    centered = check.flag("centered", centered)
    p = _as_list("params", params)
    gavg = None
    if centered:
        if grad_avgs is None:
            raise ValueError("grad_avgs is required when centered=True")
        gavg = _as_list("grad_avgs", grad_avgs)
    bufs = None
    if mu > 0.0:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers is required when momentum > 0")
        bufs = _as_list("momentum_buffers", momentum_buffers)
    s = _scalars.rmsprop_scalars(
        lr=lr, alpha=alpha, eps=eps, weight_decay=wd, momentum=mu,
        eps_in_sqrt=check.flag("eps_in_sqrt", eps_in_sqrt), lr_in_momentum=check.flag("lr_in_momentum", lr_in_momentum),
    )  # fmt: skip
    maximize = check.flag("maximize", maximize)
    g = _as_list("grads", grads)
    sq = _as_list("square_avgs", square_avgs)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("square_avgs", sq, True), ("grad_avgs", gavg, True),
                 ("momentum_buffers", bufs, True)]
        gs, norm, skip = _grad_transform(threads, "rmsprop", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.rmsprop(
        p, g, sq, gavg, bufs, *s, *gs, maximize,
        _threads.resolve(threads, _n_elements(p), "rmsprop"),
    )  # fmt: skip
    return norm


def adam(
    params: ArrayOrList,
    grads: ArrayOrList,
    exp_avgs: ArrayOrList,
    exp_avg_sqs: ArrayOrList,
    max_exp_avg_sqs: Optional[ArrayOrList] = None,
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
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""Adam / AdamW, exactly as ``torch.optim.Adam`` / ``torch.optim.AdamW``.

    .. math::
        g &\leftarrow \pm\nabla \ (+\lambda\theta \text{ if L2}), \qquad
            \theta \leftarrow \theta(1-\eta\lambda) \ \text{(decoupled)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        s &\leftarrow \max(s_{\max}, v) \ \text{(amsgrad, over raw } v\text{)}, \qquad s \leftarrow v \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,
            \frac{m}{\sqrt{s}/\sqrt{1-\beta_2^t} + \epsilon}

    Args:
        exp_avgs, exp_avg_sqs: ``m`` and ``v`` (updated; start at zero).
        max_exp_avg_sqs: :math:`s_{\max}`, required when ``amsgrad`` (start at zero).
        step: :math:`t \ge 1`, this step's number (bias corrections use it).
        lr: :math:`\eta`. beta1, beta2: :math:`\beta_1, \beta_2`. eps: :math:`\epsilon`.
        weight_decay: :math:`\lambda`: L2 (added to the gradient) or, with
            ``decoupled_weight_decay=True`` (AdamW), :math:`\theta \leftarrow \theta(1-\eta\lambda)`
            before the step.

        epsilon_hat: Keras/TF form (Kingma & Ba's :math:`\hat\epsilon`, eps on the *uncorrected*
            root): :math:`\alpha_t = \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)`,
            :math:`\theta \leftarrow \theta - \alpha_t\, m / (\sqrt{s} + \epsilon)`
            (:math:`\alpha_t` in float64, rounded once).
        eps_root: optax form, :math:`\theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}
            \frac{m}{\sqrt{s/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}` (0: the default form).
            Excludes ``epsilon_hat``.
        torch_exact: float32 only: round like torch 2.13's fused CPU Adam/AdamW kernel
            (``torch.optim.Adam(fused=True)``; SEMANTICS.md §3.2): lerp first moment
            ``m = fma(1-b1, g-m, m)``, ``v = fma((1-b2)*g, g, v*b2)``, L2 ``g = fma(p, wd, g)``, the
            same division order otherwise. The FMAs are emulated exactly with float64 arithmetic
            (no FMA instruction needed; identical on every ISA), which makes this mode slower.
            Excludes ``epsilon_hat`` and ``eps_root``.
        grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: see :func:`sgd`.

    Conventions (docs/CONVENTIONS.md): eps is added to the bias-corrected root (Kingma & Ba
    Algorithm 1, Ng, torch, optax ``adam(eps_root=0)``). Keras 3 ``Adam``/TF ``ApplyAdam`` use
    :math:`\hat\epsilon` (``epsilon_hat=True``, Keras default ``eps=1e-7``); optax ``adam(eps_root=r)``
    is ``eps_root=r``. AMSGrad: the max is over the raw ``v`` (torch, Keras, TF), then divided by the
    current root correction; optax's amsgrad (max over the corrected ``v``) is not supported.
    """
    t = check.step_count("step", step)
    lr = check.non_negative("lr", lr)
    b1 = check.unit_interval("beta1", beta1)
    b2 = check.unit_interval("beta2", beta2)
    eps = check.non_negative("eps", eps)
    wd = check.non_negative("weight_decay", weight_decay)
    amsgrad = check.flag("amsgrad", amsgrad)
    p = _as_list("params", params)
    vmax = None
    if amsgrad:
        if max_exp_avg_sqs is None:
            raise ValueError("max_exp_avg_sqs is required when amsgrad=True")
        vmax = _as_list("max_exp_avg_sqs", max_exp_avg_sqs)
    eps_hat = epsilon_hat
    if epsilon_hat is not False or eps_root != 0.0 or torch_exact is not False:  # (skipped on the fast path)
        eps_hat = check.flag("epsilon_hat", epsilon_hat)
        eps_root = check.non_negative("eps_root", eps_root)
        torch_exact = check.flag("torch_exact", torch_exact)
        if int(eps_hat) + int(eps_root != 0.0) + int(torch_exact) > 1:
            raise ValueError(
                "epsilon_hat (Keras/TF), eps_root (optax) and torch_exact are different conventions: use one"
            )
        if torch_exact:
            for i, a in enumerate(p):
                if getattr(a, "dtype", None) != np.float32:
                    raise TypeError(
                        f"torch_exact is a float32 mode, but params[{i}] has dtype {getattr(a, 'dtype', None)}"
                    )
    s = _scalars.adam_scalars(
        step=t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
        decoupled_weight_decay=check.flag("decoupled_weight_decay", decoupled_weight_decay),
        epsilon_hat=eps_hat, eps_root=eps_root,
    )  # fmt: skip
    maximize = check.flag("maximize", maximize)
    g = _as_list("grads", grads)
    m, v = _as_list("exp_avgs", exp_avgs), _as_list("exp_avg_sqs", exp_avg_sqs)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("exp_avgs", m, True), ("exp_avg_sqs", v, True),
                 ("max_exp_avg_sqs", vmax, True)]
        gs, norm, skip = _grad_transform(threads, "adam", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.adam(
        p, g, m, v, vmax, *s, *gs, maximize,
        torch_exact, _threads.resolve(threads, _n_elements(p), "adam"),
    )  # fmt: skip
    return norm


def adamw(
    params: ArrayOrList,
    grads: ArrayOrList,
    exp_avgs: ArrayOrList,
    exp_avg_sqs: ArrayOrList,
    max_exp_avg_sqs: Optional[ArrayOrList] = None,
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
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r""":func:`adam` with ``decoupled_weight_decay=True`` and torch's AdamW default ``weight_decay=1e-2``.

    :math:`\theta \leftarrow \theta(1-\eta\lambda)` before the Adam step. (optax ``adamw`` defaults
    to ``1e-4``, Keras ``AdamW`` to ``4e-3``.) All other keywords as :func:`adam`.
    """
    return adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step=step, lr=lr, beta1=beta1,
        beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        decoupled_weight_decay=True, epsilon_hat=epsilon_hat, eps_root=eps_root, torch_exact=torch_exact,
        grad_scale=grad_scale,
        found_inf=found_inf, clip_value=clip_value, max_grad_norm=max_grad_norm, clip_coef=clip_coef,
        skip_if_nonfinite=skip_if_nonfinite, threads=threads,
    )  # fmt: skip


def adagrad(
    params: ArrayOrList,
    grads: ArrayOrList,
    state_sums: ArrayOrList,
    *,
    step: int,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    maximize: bool = False,
    grad_scale: Optional[float] = None,
    found_inf: Any = None,
    clip_value: Optional[float] = None,
    max_grad_norm: Optional[float] = None,
    clip_coef: Optional[float] = None,
    skip_if_nonfinite: bool = False,
    threads: Optional[int] = None,
) -> Optional[float]:
    r"""Adagrad, exactly as ``torch.optim.Adagrad``.

    .. math::
        g &\leftarrow \pm\nabla + \lambda\theta \\
        S &\leftarrow S + g^2 \\
        \theta &\leftarrow \theta - \frac{\eta}{1 + (t-1)\,\delta}\,\frac{g}{\sqrt{S} + \epsilon}

    Args:
        state_sums: ``S`` (updated; torch starts it at ``initial_accumulator_value``).
        step: :math:`t \ge 1`. lr: :math:`\eta`. lr_decay: :math:`\delta`. eps: :math:`\epsilon`.
        weight_decay: :math:`\lambda` (L2, coupled).
        grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: see :func:`sgd`.

    Conventions: optax ``adagrad`` puts eps (1e-7) inside the root and starts ``S`` at 0.1.
    """
    t = check.step_count("step", step)
    lr = check.non_negative("lr", lr)
    lr_decay = check.non_negative("lr_decay", lr_decay)
    wd = check.non_negative("weight_decay", weight_decay)
    eps = check.non_negative("eps", eps)
    p, g = _as_list("params", params), _as_list("grads", grads)
    s = _scalars.adagrad_scalars(step=t, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=wd)
    maximize = check.flag("maximize", maximize)
    sums = _as_list("state_sums", state_sums)
    gs, norm = _scalars.NO_GRAD_TRANSFORM, None
    if not _no_grad_options(grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite):
        roles = [("params", p, True), ("grads", g, False), ("state_sums", sums, True)]
        gs, norm, skip = _grad_transform(threads, "adagrad", roles, grad_scale, found_inf, clip_value,
                                         max_grad_norm, clip_coef, skip_if_nonfinite)  # fmt: skip
        if skip:
            return norm
    _core.adagrad(
        p, g, sums, *s, *gs, maximize,
        _threads.resolve(threads, _n_elements(p), "adagrad"),
    )  # fmt: skip
    return norm
