"""LAMB, "Layer-wise Adaptive Moments" (You et al. 2019, arXiv 1904.00962 v5, Algorithm 2).

.. math::
    m &\\leftarrow \\beta_1 m + (1-\\beta_1) g, \\qquad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2 \\\\
    u &= \\frac{\\hat m}{\\sqrt{\\hat v} + \\epsilon} + \\lambda\\theta \\\\
    \\theta &\\leftarrow \\theta - \\eta\\,\\frac{\\phi(\\lVert\\theta\\rVert)}{\\lVert u\\rVert}\\,u

per parameter tensor: :math:`\\lVert\\cdot\\rVert` is the L2 norm of the whole tensor, :math:`\\theta`
the pre-step value, :math:`\\phi(z) = \\min(z, \\text{clamp\\_value})`; the ratio is 1 when either
norm is 0 (or with ``adam=True``). Weight decay is decoupled and inside :math:`u`, so inside
:math:`\\lVert u\\rVert`. ``bias_correction=True`` (the default: paper v5 and optax ``lamb``) uses
:math:`\\hat m = m/(1-\\beta_1^t)`, :math:`\\hat v = v/(1-\\beta_2^t)`; ``bias_correction=False`` is
torch_optimizer's ``Lamb`` (``u = m/(\\sqrt v + \\epsilon) + \\lambda\\theta``), whose ``debias=True``
scales the step by :math:`\\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)` outside the ratio.

The norms are computed in the same native call as the update: a first pass updates the moments
and sums :math:`\\theta^2` and :math:`u^2` in float64 over fixed blocks of 2048 elements (8 lanes)
combined by a fixed pairwise tree per tensor; the second pass applies the step. The result is
bitwise the same for every thread count and instruction set (:func:`fusedopt.reference.lamb`).
The default ``clamp_value`` (the largest float) clamps no finite norm: :math:`\\phi` is the identity.

Mapping: optax ``lamb(lr, b1, b2, eps=1e-6, weight_decay)`` = the defaults here (optax has no
clamp; its ``eps_root``, ``mask`` are not offered); torch_optimizer ``Lamb(lr=1e-3, betas,
eps=1e-6, weight_decay=0, clamp_value=10, adam=False, debias=False)`` = ``bias_correction=False,
clamp_value=10`` (:class:`fusedopt.torch.Lamb`). apex ``FusedLAMB`` (ratio only when
``weight_decay != 0``, a global gradient clip first) is not reproduced.
"""

from __future__ import annotations

import sys

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, Hypers, StateRole, TorchName, flag, real

#: clamp_value's default: no finite norm is clamped
NO_CLAMP = sys.float_info.max


def _relations(h: Hypers) -> None:
    if h["bias_correction"] and h["debias"]:
        raise ValueError("bias_correction=True and debias=True exclude each other (debias is torch_optimizer's "
                         "form of the correction; give bias_correction=False with it)")


LAMB = Algorithm(
    name="lamb",
    kernel="lamb",
    trust_ratio=True,
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-3, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`", torch_ok=lambda x: x > 0.0),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.999, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("eps", 1e-6, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`, outside the root"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`, decoupled, inside :math:`u` and its norm"),
        real("clamp_value", NO_CLAMP, torch_msg="Invalid clamp value: {}",
             doc="upper bound of :math:`\\lVert\\theta\\rVert` in the trust ratio"),
        flag("bias_correction", True, doc="Adam's bias corrections inside :math:`u` (paper v5, optax)"),
        flag("debias", doc="torch_optimizer's debias: the step times :math:`\\sqrt{1-\\beta_2^t}/(1-\\beta_1^t)`"),
        flag("adam", doc="trust ratio 1 for every tensor (torch_optimizer's ``adam``)"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("exp_avgs", "exp_avg"), StateRole("exp_avg_sqs", "exp_avg_sq", nonneg=True)),
    scalars=lambda h, t: _scalars.lamb_scalars(
        step=t, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"], weight_decay=h["weight_decay"],
        clamp_value=h["clamp_value"], bias_correction=h["bias_correction"], debias=h["debias"]),  # fmt: skip
    flags=lambda h: (h["maximize"], h["adam"]),
    reference=reference.lamb,
    uses_step=lambda h: bool(h["bias_correction"] or h["debias"]),
    relations=_relations,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "eps", "beta1", "beta2", "weight_decay", "clamp_value"),
)

#: torch_optimizer's ``Lamb``: no bias correction inside u, ``clamp_value=10`` (fusedopt.torch.Lamb)
LAMB_TORCH = LAMB.variant("lamb", defaults={"clamp_value": 10.0}, fixed={"bias_correction": False})
