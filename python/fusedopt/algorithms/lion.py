"""Lion, "EvoLved Sign Momentum" (Chen et al. 2023, Algorithm 2), with decoupled weight decay.

.. math::
    g &\\leftarrow \\pm\\nabla, \\qquad \\theta \\leftarrow \\theta(1-\\eta\\lambda) \\\\
    c &\\leftarrow \\beta_1 m + (1-\\beta_1) g \\\\
    \\theta &\\leftarrow \\theta - \\eta\\,\\mathrm{sign}(c) \\\\
    m &\\leftarrow \\beta_2 m + (1-\\beta_2) g

``β1`` interpolates this step's update direction, ``β2`` is the decay of the stored momentum (the
update uses the old ``m``). ``sign(±0) = 0``: an element whose ``c`` is zero does not move (e.g.
the first step with a zero gradient). ``sign(NaN) = NaN``: a NaN gradient makes the parameter NaN
(as the paper's and optax's ``jnp.sign`` do, and as every other algorithm here does), where
``torch.sign`` (lucidrains/lion-pytorch) gives 0 and the parameter silently stops moving while
its momentum stays NaN. No bias correction, no step count.

Mapping: lucidrains/lion-pytorch ``Lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0)`` is the
default (the same decay ``θ(1−ηλ)``; its ``decoupled_weight_decay=True`` divides ``wd`` by the
initial lr: pass ``weight_decay/lr_init``); optax ``lion`` (default ``weight_decay=1e-3``) and
Keras ``Lion`` (``lr=1e-3``) compute the same math rounded differently. Exact rounding:
:func:`fusedopt.reference.lion`.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, StateRole, TorchName, flag, real

LION = Algorithm(
    name="lion",
    kernel="lion",
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-4, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        real("beta1", 0.9, UNIT, torch_msg="Invalid beta parameter at index 0: {}", doc=":math:`\\beta_1`"),
        real("beta2", 0.99, UNIT, torch_msg="Invalid beta parameter at index 1: {}", doc=":math:`\\beta_2`"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}",
             doc=":math:`\\lambda`, decoupled: :math:`\\theta \\leftarrow \\theta(1-\\eta\\lambda)` before the step"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
    ),
    states=(StateRole("exp_avgs", "exp_avg"),),
    scalars=lambda h, t: _scalars.lion_scalars(lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"],
                                               weight_decay=h["weight_decay"]),  # fmt: skip
    flags=lambda h: (h["maximize"],),
    reference=reference.lion,
    has_step=False,
    step_arg=False,
    uses_step=lambda h: False,
    torch_pairs=(TorchName("betas", ("beta1", "beta2")),),
    torch_order=("lr", "beta1", "beta2", "weight_decay"),
)
