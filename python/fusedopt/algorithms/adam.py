"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), as ``torch.optim.Adam``/``AdamW``.

.. math::
    g &\\leftarrow \\pm\\nabla \\ (+\\lambda\\theta \\text{ if L2}), \\qquad
        \\theta \\leftarrow \\theta(1-\\eta\\lambda) \\ \\text{(decoupled)} \\\\
    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2 \\\\
    s &\\leftarrow \\max(s_{\\max}, v) \\ \\text{(amsgrad, over raw } v\\text{)}, \\qquad s \\leftarrow v \\\\
    \\theta &\\leftarrow \\theta - \\frac{\\eta}{1-\\beta_1^t}\\,
        \\frac{m}{\\sqrt{s}/\\sqrt{1-\\beta_2^t} + \\epsilon}

The exact rounding (which scalars are folded in float64, the order of the element operations)
is :func:`fusedopt.reference.adam`; :mod:`fusedopt._scalars` derives the per-step scalars.

Mapping to other frameworks (docs/CONVENTIONS.md): torch ``Adam``/``AdamW`` are the defaults;
Keras 3 ``Adam``/TF ``ApplyAdam`` use Kingma & Ba's epsilon-hat (``epsilon_hat=True``, Keras
default ``eps=1e-7``); optax ``adam(eps_root=r)`` is ``eps_root=r``; ``torch_exact=True`` rounds
like torch 2.13's fused CPU kernel (float32). AMSGrad takes the max over the raw ``v`` (torch,
Keras, TF); optax's (over the corrected ``v``) is not supported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, Hypers, StateRole, TorchName, flag, real


def _relations(h: Hypers) -> None:
    if int(h.get("epsilon_hat", False)) + int(h.get("eps_root", 0.0) != 0.0) + int(h.get("torch_exact", False)) > 1:
        raise ValueError("epsilon_hat (Keras/TF), eps_root (optax) and torch_exact are different conventions: use one")


def _check_params(h: Hypers, params: Sequence[Any]) -> None:
    if h.get("torch_exact"):
        for i, a in enumerate(params):
            if getattr(a, "dtype", None) != np.float32:
                raise TypeError(f"torch_exact is a float32 mode, but params[{i}] has dtype {getattr(a, 'dtype', None)}")


def _scalars_of(h: Hypers, t: int) -> Any:
    return _scalars.adam_scalars(
        step=t, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"], weight_decay=h["weight_decay"],
        decoupled_weight_decay=h["decoupled_weight_decay"], epsilon_hat=h["epsilon_hat"], eps_root=h["eps_root"],
    )  # fmt: skip


ADAM = Algorithm(
    name="adam",
    kernel="adam",
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-3, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.999, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("eps", 1e-8, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`: L2 (added to the gradient) or, decoupled (AdamW), "
                 ":math:`\\theta \\leftarrow \\theta(1-\\eta\\lambda)` before the step"),
        flag("amsgrad", doc="keep the running max of ``v`` in ``max_exp_avg_sqs``"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
        flag("decoupled_weight_decay", doc="AdamW's decay"),
        flag("epsilon_hat", convention=True,
             doc="Keras/TF form: :math:`\\alpha_t = \\eta\\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)`, "
                 ":math:`\\theta \\leftarrow \\theta - \\alpha_t m / (\\sqrt{s} + \\epsilon)`"),
        real("eps_root", 0.0, convention=True,
             doc="optax form: :math:`\\sqrt{s/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon` in the denominator"),
        flag("torch_exact", convention=True,
             doc="float32 only: round like torch 2.13's fused CPU Adam/AdamW (SEMANTICS.md §3.2; FMAs "
                 "emulated exactly in float64, identical on every ISA, slower)"),
    ),
    states=(
        StateRole("exp_avgs", "exp_avg"),
        StateRole("exp_avg_sqs", "exp_avg_sq", nonneg=True),
        StateRole("max_exp_avg_sqs", "max_exp_avg_sq", lambda h: h["amsgrad"], "amsgrad=True", nonneg=True),
    ),
    scalars=_scalars_of,
    flags=lambda h: (h["maximize"], h["torch_exact"]),
    reference=reference.adam,
    relations=_relations,
    check_params=_check_params,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "eps", "beta1", "beta2", "weight_decay"),
    torch_optim="Adam",
)

ADAMW = ADAM.variant(
    "adamw",
    defaults={"weight_decay": 1e-2},
    fixed={"decoupled_weight_decay": True},
    reference=reference.adamw,
    torch_optim="AdamW",
    doc=":func:`adam` with ``decoupled_weight_decay=True`` and torch's AdamW default ``weight_decay=1e-2``.\n\n"
    ":math:`\\theta \\leftarrow \\theta(1-\\eta\\lambda)` before the Adam step. (optax ``adamw`` defaults "
    "to ``1e-4``, Keras ``AdamW`` to ``4e-3``.)",
)
