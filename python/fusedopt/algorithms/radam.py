"""RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), as
``torch.optim.RAdam``.

.. math::
    g &\\leftarrow \\pm\\nabla \\ (+\\lambda\\theta \\text{ if L2}), \\qquad
        \\theta \\leftarrow \\theta(1-\\eta\\lambda) \\ \\text{(decoupled)} \\\\
    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2 \\\\
    \\rho_\\infty &= \\frac{2}{1-\\beta_2} - 1, \\qquad
        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1-\\beta_2^t} \\\\
    \\theta &\\leftarrow \\theta - \\frac{\\eta\\, m}{1-\\beta_1^t} \\cdot
        \\begin{cases} r_t \\frac{\\sqrt{1-\\beta_2^t}}{\\sqrt{v} + \\epsilon} & \\rho_t > 5 \\\\
        1 & \\text{otherwise} \\end{cases}, \\qquad
        r_t = \\sqrt{\\frac{(\\rho_t-4)(\\rho_t-2)\\rho_\\infty}{(\\rho_\\infty-4)(\\rho_\\infty-2)\\rho_t}}

The threshold is torch's ``rho_t > 5`` (strict; optax uses ``>= 5``): with ``beta2 >= 0.84`` the
first rectified step is t = 6, and for ``beta2 <= 2/3`` no step is ever rectified (bias-corrected
momentum SGD). ``eps`` is added to the un-corrected ``sqrt(v)`` (torch). The per-step values are
float64 (:func:`fusedopt._scalars.radam_scalars`); exact rounding: :func:`fusedopt.reference.radam`.
"""

from __future__ import annotations

from typing import Any

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, Hypers, StateRole, TorchName, flag, real


def _scalars_of(h: Hypers, t: int) -> Any:
    return _scalars.radam_scalars(
        step=t, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"], weight_decay=h["weight_decay"],
        decoupled_weight_decay=h["decoupled_weight_decay"],
    )  # fmt: skip


RADAM = Algorithm(
    name="radam",
    kernel="radam",
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-3, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.999, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("eps", 1e-8, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`, on the un-corrected root"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`: L2 (added to the gradient) or, decoupled, "
                 ":math:`\\theta \\leftarrow \\theta(1-\\eta\\lambda)` before the step"),
        flag("decoupled_weight_decay", doc="AdamW-style decay"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("exp_avgs", "exp_avg"), StateRole("exp_avg_sqs", "exp_avg_sq", nonneg=True)),
    scalars=_scalars_of,
    flags=lambda h: (h["maximize"],),
    reference=reference.radam,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "eps", "beta1", "beta2", "weight_decay"),
    torch_optim="RAdam",
)
