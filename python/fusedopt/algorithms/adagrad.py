"""Adagrad, exactly as ``torch.optim.Adagrad``.

.. math::
    g &\\leftarrow \\pm\\nabla + \\lambda\\theta \\\\
    S &\\leftarrow S + g^2 \\\\
    \\theta &\\leftarrow \\theta - \\frac{\\eta}{1 + (t-1)\\,\\delta}\\,\\frac{g}{\\sqrt{S} + \\epsilon}

``S`` starts at ``initial_accumulator_value`` (torch; a constructor argument of the optimizer
classes). optax ``adagrad`` puts eps (1e-7) inside the root and starts ``S`` at 0.1.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import Algorithm, StateRole, flag, real

ADAGRAD = Algorithm(
    name="adagrad",
    kernel="adagrad",
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-2, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("lr_decay", 0.0, torch_msg="Invalid lr_decay value: {}", doc=":math:`\\delta`"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}", doc=":math:`\\lambda` (L2, coupled)"),
        real("eps", 1e-10, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`"),
        flag("maximize", doc="ascend"),
    ),
    class_only=(
        real("initial_accumulator_value", 0.0, torch_msg="Invalid initial_accumulator_value value: {}",
             doc="the start value of ``S``"),
    ),
    states=(StateRole("state_sums", "sum", init="initial_accumulator_value", nonneg=True),),
    scalars=lambda h, t: _scalars.adagrad_scalars(step=t, lr=h["lr"], lr_decay=h["lr_decay"], eps=h["eps"],
                                                  weight_decay=h["weight_decay"]),  # fmt: skip
    flags=lambda h: (h["maximize"],),
    reference=reference.adagrad,
    uses_step=lambda h: h["lr_decay"] != 0.0,
    torch_order=("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    torch_optim="Adagrad",
)
