"""Adamax (Kingma & Ba 2015, §7.1: Adam with the infinity norm), as ``torch.optim.Adamax``.

.. math::
    g &\\leftarrow \\pm\\nabla \\ (+\\lambda\\theta \\text{ if } \\lambda \\ne 0) \\\\
    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad
    u \\leftarrow \\max(\\beta_2 u, |g| + \\epsilon) \\\\
    \\theta &\\leftarrow \\theta - \\frac{\\eta}{1-\\beta_1^t}\\,\\frac{m}{u}

``ε`` sits inside the max and is stored in ``u`` (torch, optax ``adamax``); Keras/TF keep
``max(β2 u, |g|)`` and add ``ε`` at use (the same when ``|g| ≫ ε``). A NaN in either operand of
the max makes ``u`` NaN (``torch.maximum``). Weight decay is L2 only (torch has no decoupled
flag). Exact rounding: :func:`fusedopt.reference.adamax`.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, StateRole, TorchName, flag, real

ADAMAX = Algorithm(
    name="adamax",
    kernel="adamax",
    doc=__doc__ or "",
    hypers=(
        real("lr", 2e-3, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.999, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("eps", 1e-8, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`, inside the max"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`: L2, added to the gradient"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("exp_avgs", "exp_avg"), StateRole("exp_infs", "exp_inf", nonneg=True)),
    scalars=lambda h, t: _scalars.adamax_scalars(step=t, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"],
                                                 eps=h["eps"], weight_decay=h["weight_decay"]),  # fmt: skip
    flags=lambda h: (h["maximize"],),
    reference=reference.adamax,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "eps", "beta1", "beta2", "weight_decay"),
    torch_optim="Adamax",
)
