"""Momentum as an exponentially weighted average of gradients (Ng, *Deep Learning*, course 2).

.. math::
    g &\\leftarrow \\nabla + \\lambda\\theta \\\\
    v &\\leftarrow \\beta v + (1-\\beta) g \\\\
    \\theta &\\leftarrow \\theta - s_t v, \\qquad
    s_t = \\eta \\ \\text{or, with bias correction,}\\ \\eta / (1-\\beta^t)

``v`` starts at zero. ``s_t`` is computed in float64 and rounded once to the array dtype (so bias
correction divides the step size, not ``v``). Equals ``torch.optim.SGD(lr=lr*(1-beta),
momentum=beta)`` only for a constant learning rate (torch's buffer starts at ``g``, holds no
``(1-beta)`` and no lr); optax: ``optax.chain(optax.ema(beta, debias=bias_correction),
optax.scale(-lr))``.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import REQUIRED, UNIT, Algorithm, StateRole, flag, real

MOMENTUM = Algorithm(
    name="momentum",
    kernel="momentum",
    doc=__doc__ or "",
    hypers=(
        real("lr", REQUIRED, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta", 0.9, UNIT, torch_msg="Invalid beta value: {}", doc=":math:`\\beta`"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}", doc=":math:`\\lambda` (L2, coupled)"),
        flag("bias_correction", doc="use :math:`v/(1-\\beta^t)`"),
    ),
    states=(StateRole("velocities", "velocity"),),
    scalars=lambda h, t: _scalars.momentum_scalars(step=t, lr=h["lr"], beta=h["beta"], weight_decay=h["weight_decay"],
                                                   bias_correction=h["bias_correction"]),  # fmt: skip
    flags=lambda h: (),
    reference=reference.momentum,
    uses_step=lambda h: bool(h["bias_correction"]),
    torch_order=("lr", "beta", "weight_decay"),
)
