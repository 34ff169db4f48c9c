"""LARS, "Layer-wise Adaptive Rate Scaling" (You, Gitman, Ginsburg 2017, arXiv 1708.03888), for SGD
with momentum, in the form of facebookresearch/barlowtwins' and DINO's ``LARS``.

.. math::
    d &= \\nabla + \\lambda\\theta, \\qquad
    q = \\frac{\\eta\\,\\lVert\\theta\\rVert}{\\lVert d\\rVert + \\epsilon}\\ (1 \\text{ unless both norms} > 0) \\\\
    \\mu &\\leftarrow m\\,\\mu + q\\,d, \\qquad \\theta \\leftarrow \\theta - \\text{lr}\\,\\mu

per parameter tensor (:math:`\\lVert\\cdot\\rVert` the L2 norm of the whole tensor, :math:`\\theta` the
pre-step value); ``lars_adaptation=False`` makes ``q = 1`` (SGD with momentum and L2 decay: what
barlowtwins' filters give biases and norm weights). The learning rate is outside the buffer (torch
SGD's convention; optax ``lars`` puts it inside). No step count, no dampening, no Nesterov.

The norms are computed in the same native call as the update: a first pass sums :math:`\\theta^2`
and :math:`d^2` in float64 over fixed blocks of 2048 elements (8 lanes) combined by a fixed
pairwise tree per tensor; the second pass applies the step. The result is bitwise the same for
every thread count and instruction set (:func:`fusedopt.reference.lars`).

Mapping: barlowtwins/DINO ``LARS(params, lr, weight_decay=0, momentum=0.9, eta=0.001,
weight_decay_filter=False, lars_adaptation_filter=False)`` is :class:`fusedopt.torch.LARS` (same
names and state key ``'mu'``); optax ``lars(learning_rate, weight_decay, trust_coefficient=0.001,
eps=0, momentum=0.9)`` is ``eta=trust_coefficient, eps=eps`` with lr inside its trace (equal while
lr is constant). apex ``LARC`` (clipping, no decay on zero norms) is not reproduced.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import REQUIRED, Algorithm, StateRole, flag, real

LARS = Algorithm(
    name="lars",
    kernel="lars",
    trust_ratio=True,
    doc=__doc__ or "",
    hypers=(
        real("lr", REQUIRED, doc="the learning rate"),
        real("momentum", 0.9, doc=":math:`m`"),
        real("weight_decay", 0.0, doc=":math:`\\lambda`, added to the gradient, inside :math:`\\lVert d\\rVert`"),
        real("eta", 1e-3, doc=":math:`\\eta`, the trust coefficient (optax's ``trust_coefficient``)"),
        real("eps", 0.0, doc=":math:`\\epsilon`, added to :math:`\\lVert d\\rVert` (optax's; 0 in barlowtwins)"),
        flag("lars_adaptation", True, doc="scale by the trust ratio (False: ``q = 1``)"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("mus", "mu"),),
    scalars=lambda h, t: _scalars.lars_scalars(lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                                               eta=h["eta"], eps=h["eps"]),  # fmt: skip
    flags=lambda h: (h["maximize"], h["lars_adaptation"]),
    reference=reference.lars,
    has_step=False,
    step_arg=False,
    uses_step=lambda h: False,
)

#: barlowtwins' ``LARS`` (fusedopt.torch.LARS): eps 0, and its two filters (class-only group keys:
#: parameters with ``ndim == 1`` get no weight decay / no trust ratio)
LARS_TORCH = LARS.variant("lars", fixed={"eps": 0.0},
                          class_only=(flag("weight_decay_filter", doc="no weight decay for 1-D parameters"),
                                      flag("lars_adaptation_filter", doc="no trust ratio for 1-D parameters")))  # fmt: skip
