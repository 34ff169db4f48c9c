"""NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam"), as ``torch.optim.NAdam`` (its
loop form, torch's CPU default).

.. math::
    g &\\leftarrow \\pm\\nabla \\ (+\\lambda\\theta \\text{ if L2}), \\qquad
        \\theta \\leftarrow \\theta(1-\\eta\\lambda) \\ \\text{(decoupled)} \\\\
    \\mu_t &= \\beta_1\\left(1 - \\tfrac12\\, 0.96^{t\\psi}\\right), \\qquad
        \\Pi_t = \\Pi_{t-1}\\,\\mu_t \\ (\\Pi_0 = 1) \\\\
    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2 \\\\
    \\theta &\\leftarrow \\theta - \\eta\\,\\frac{1-\\mu_t}{1-\\Pi_t}\\,\\frac{g}{d}
        - \\eta\\,\\frac{\\mu_{t+1}}{1-\\Pi_t\\,\\mu_{t+1}}\\,\\frac{m}{d}, \\qquad
        d = \\sqrt{v/(1-\\beta_2^t)} + \\epsilon

``mu_product`` (:math:`\\Pi_t`) is a per-parameter scalar state (torch's ``state['mu_product']``, a
0-dim float32 tensor): ``mu_product *= mu_t`` rounds it in float32 at every step (the factor cast to
float32 first: :func:`fusedopt._scalars.nadam_mu_product`), and the step sizes use the updated value
promoted to float64. It is not a function of ``t`` alone (rounding; ``beta1``/``momentum_decay``
may change between steps; a checkpoint carries its own). **The functional takes it as** ``mu_product``:
the value *after* this step's factor, :math:`\\Pi_t` (as ``step`` is the count after incrementing),
in ``[0, 1)``; the caller updates it (``mu_product = nadam_mu_product(mu_product,
step=t, beta1=beta1, momentum_decay=momentum_decay)`` before each call, from 1.0, with
:func:`fusedopt.functional.nadam_mu_product`); the optimizer
classes keep it per parameter and do this themselves. The per-step values are float64
(:func:`fusedopt._scalars.nadam_scalars`); exact rounding: :func:`fusedopt.reference.nadam`. The
denominator is the loop form's ``sqrt(v/bc2) + eps`` (torch's foreach form, ``sqrt(v)/sqrt(bc2) + eps``,
rounds differently). ``momentum_decay = 0`` gives :math:`\\mu = \\beta_1/2` (torch).
float32/float64 arrays only (no low-precision storage).
"""

from __future__ import annotations

from typing import Any

from .. import _scalars, reference
from ._spec import REQUIRED, UNIT, Algorithm, Hypers, ScalarState, StateRole, TorchName, flag, real


def _scalars_of(h: Hypers, t: int) -> Any:
    return _scalars.nadam_scalars(
        step=t, mu_product=h["mu_product"], lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
        weight_decay=h["weight_decay"], momentum_decay=h["momentum_decay"],
        decoupled_weight_decay=h["decoupled_weight_decay"],
    )  # fmt: skip


def _advance(h: Hypers, t: int, value: float, dtype: str) -> float:
    return _scalars.nadam_mu_product(value, step=t, beta1=h["beta1"], momentum_decay=h["momentum_decay"], dtype=dtype)


NADAM = Algorithm(
    name="nadam",
    kernel="nadam",
    doc=__doc__ or "",
    hypers=(
        real("mu_product", REQUIRED, UNIT,
             doc=":math:`\\Pi_t`, the parameters' product of momentum factors **after** this step's "
                 "(``fusedopt.functional.nadam_mu_product``)"),
        real("lr", 2e-3, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.999, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("eps", 1e-8, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`, outside the root"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`: L2 (added to the gradient) or, decoupled, "
                 ":math:`\\theta \\leftarrow \\theta(1-\\eta\\lambda)` before the step"),
        real("momentum_decay", 4e-3, torch_msg="Invalid momentum_decay value: {}",
             doc=":math:`\\psi` of the momentum schedule :math:`\\mu_t`"),
        flag("decoupled_weight_decay", doc="AdamW-style decay (NAdamW)"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("exp_avgs", "exp_avg"), StateRole("exp_avg_sqs", "exp_avg_sq", nonneg=True)),
    scalars=_scalars_of,
    flags=lambda h: (h["maximize"],),
    reference=reference.nadam,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "eps", "beta1", "beta2", "weight_decay", "momentum_decay"),
    torch_optim="NAdam",
    scalar_states=(ScalarState("mu_product", 1.0, _advance),),
)
