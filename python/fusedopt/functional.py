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
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import _core, _scalars, _threads
from . import _validation as check

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

__all__ = ["adagrad", "adam", "adamw", "momentum", "rmsprop", "sgd"]


def _as_list(name: str, x: ArrayOrList) -> Sequence[np.ndarray]:
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, (list, tuple)):
        return x
    raise TypeError(f"{name} must be a numpy.ndarray or a list/tuple of them, got {type(x).__name__}")


def _n_elements(params: Sequence[np.ndarray]) -> int:
    if len(params) == 1:
        return int(getattr(params[0], "size", 0))
    return sum(int(getattr(p, "size", 0)) for p in params)


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
    threads: Optional[int] = None,
) -> None:
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
    _core.sgd(
        p, g, bufs, *s, nesterov, check.flag("maximize", maximize), check.flag("first_step", first_step),
        _threads.resolve(threads, _n_elements(p), "sgd"),
    )  # fmt: skip


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
    threads: Optional[int] = None,
) -> None:
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

    Conventions: equals ``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)`` only for a constant
    learning rate (torch's buffer starts at ``g``, holds no ``(1-beta)`` and no lr); optax:
    ``optax.chain(optax.ema(beta, debias=bias_correction), optax.scale(-lr))``.
    """
    t = check.step_count("step", step)
    lr = check.non_negative("lr", lr)
    beta = check.unit_interval("beta", beta)
    wd = check.non_negative("weight_decay", weight_decay)
    bc = check.flag("bias_correction", bias_correction)
    p = _as_list("params", params)
    s = _scalars.momentum_scalars(step=t, lr=lr, beta=beta, weight_decay=wd, bias_correction=bc)
    _core.momentum(
        p, _as_list("grads", grads), _as_list("velocities", velocities), *s,
        _threads.resolve(threads, _n_elements(p), "momentum"),
    )  # fmt: skip


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
    threads: Optional[int] = None,
) -> None:
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

    Conventions: TF/Keras/optax put eps *inside* the root, :math:`\sqrt{v+\epsilon}`, and keep
    ``lr`` inside the momentum buffer; Ng's RMSprop is this with ``alpha=beta2``.
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
    s = _scalars.rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=wd, momentum=mu)
    _core.rmsprop(
        p, _as_list("grads", grads), _as_list("square_avgs", square_avgs), gavg, bufs, *s,
        check.flag("maximize", maximize), _threads.resolve(threads, _n_elements(p), "rmsprop"),
    )  # fmt: skip


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
    threads: Optional[int] = None,
) -> None:
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

    Conventions: eps is added to the bias-corrected root (Kingma & Ba, Ng, torch, optax with
    ``eps_root=0``). Keras/TF use :math:`\hat\epsilon` on the uncorrected root (larger effective eps
    early on). optax's amsgrad takes the max over the bias-corrected ``v``; torch, Keras and this
    function over the raw ``v``.
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
    s = _scalars.adam_scalars(
        step=t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd,
        decoupled_weight_decay=check.flag("decoupled_weight_decay", decoupled_weight_decay),
    )  # fmt: skip
    _core.adam(
        p, _as_list("grads", grads), _as_list("exp_avgs", exp_avgs),
        _as_list("exp_avg_sqs", exp_avg_sqs), vmax, *s, check.flag("maximize", maximize),
        _threads.resolve(threads, _n_elements(p), "adam"),
    )  # fmt: skip


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
    threads: Optional[int] = None,
) -> None:
    r""":func:`adam` with ``decoupled_weight_decay=True`` and torch's AdamW default ``weight_decay=1e-2``.

    :math:`\theta \leftarrow \theta(1-\eta\lambda)` before the Adam step. (optax ``adamw`` defaults
    to ``1e-4``, Keras ``AdamW`` to ``4e-3``.)
    """
    adam(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step=step, lr=lr, beta1=beta1,
        beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
        decoupled_weight_decay=True, threads=threads,
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
    threads: Optional[int] = None,
) -> None:
    r"""Adagrad, exactly as ``torch.optim.Adagrad``.

    .. math::
        g &\leftarrow \pm\nabla + \lambda\theta \\
        S &\leftarrow S + g^2 \\
        \theta &\leftarrow \theta - \frac{\eta}{1 + (t-1)\,\delta}\,\frac{g}{\sqrt{S} + \epsilon}

    Args:
        state_sums: ``S`` (updated; torch starts it at ``initial_accumulator_value``).
        step: :math:`t \ge 1`. lr: :math:`\eta`. lr_decay: :math:`\delta`. eps: :math:`\epsilon`.
        weight_decay: :math:`\lambda` (L2, coupled).

    Conventions: optax ``adagrad`` puts eps (1e-7) inside the root and starts ``S`` at 0.1.
    """
    t = check.step_count("step", step)
    lr = check.non_negative("lr", lr)
    lr_decay = check.non_negative("lr_decay", lr_decay)
    wd = check.non_negative("weight_decay", weight_decay)
    eps = check.non_negative("eps", eps)
    p = _as_list("params", params)
    s = _scalars.adagrad_scalars(step=t, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=wd)
    _core.adagrad(
        p, _as_list("grads", grads), _as_list("state_sums", state_sums), *s,
        check.flag("maximize", maximize), _threads.resolve(threads, _n_elements(p), "adagrad"),
    )  # fmt: skip
