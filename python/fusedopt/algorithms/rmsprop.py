"""RMSprop, exactly as ``torch.optim.RMSprop`` (eps outside the square root).

.. math::
    g &\\leftarrow \\pm\\nabla + \\lambda\\theta \\\\
    v &\\leftarrow \\alpha v + (1-\\alpha) g^2 \\\\
    a &\\leftarrow \\sqrt{v - \\bar g^2} + \\epsilon,\\ \\ \\bar g \\leftarrow \\alpha\\bar g + (1-\\alpha) g
        \\ \\text{(centered)}, \\qquad a \\leftarrow \\sqrt{v} + \\epsilon \\ \\text{(otherwise)} \\\\
    b &\\leftarrow \\mu b + g/a,\\ \\ \\theta \\leftarrow \\theta - \\eta b \\ \\text{(momentum)}, \\qquad
        \\theta \\leftarrow \\theta - \\eta g / a \\ \\text{(otherwise)}

All state starts at zero; there is no bias correction. Centered: if rounding makes
:math:`v - \\bar g^2 < 0` the result is NaN, as in torch (no clamp).

Conventions (docs/CONVENTIONS.md): torch = the defaults; Ng's RMSprop = the defaults with
``alpha=beta2``; Keras 3 ``RMSprop(rho, momentum, epsilon, centered)`` and TF
``ApplyRMSProp``/``ApplyCenteredRMSProp`` = ``eps_in_sqrt=True, lr_in_momentum=True`` (Keras
defaults: ``alpha=0.9, eps=1e-7``); optax ``rmsprop(eps_in_sqrt=True)`` without momentum =
``eps_in_sqrt=True``. Exact per-element order: :func:`fusedopt.reference.rmsprop`.
"""

from __future__ import annotations

from .. import _scalars, reference
from ._spec import UNIT, Algorithm, StateRole, flag, real

RMSPROP = Algorithm(
    name="rmsprop",
    kernel="rmsprop",
    doc=__doc__ or "",
    hypers=(
        real("lr", 1e-2, torch_msg="Invalid learning rate: {}", doc=":math:`\\eta`"),
        # torch checks alpha >= 0 only; alpha >= 1 lets the average of squares go negative
        real("alpha", 0.99, UNIT, torch_msg="Invalid alpha value: {}", torch_ok=lambda x: x >= 0.0,
             doc=":math:`\\alpha`"),
        real("eps", 1e-8, torch_msg="Invalid epsilon value: {}", doc=":math:`\\epsilon`"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}", doc=":math:`\\lambda` (L2, coupled)"),
        real("momentum", 0.0, torch_msg="Invalid momentum value: {}", doc=":math:`\\mu`"),
        flag("centered", doc="divide by the root of the centered second moment"),
        flag("maximize", doc="ascend"),
        flag("eps_in_sqrt", convention=True,
             doc="TF/Keras/optax form :math:`a = \\sqrt{v + \\epsilon}` (centered: "
                 ":math:`\\sqrt{v - \\bar g^2 + \\epsilon}`) instead of :math:`\\sqrt{v} + \\epsilon`"),
        flag("lr_in_momentum", convention=True,
             doc="TF/Keras form (lr inside the buffer, matters when lr changes): "
                 ":math:`b \\leftarrow \\mu b + \\eta g / a,\\ \\theta \\leftarrow \\theta - b`. "
                 "Without momentum it changes nothing"),
    ),
    states=(
        StateRole("square_avgs", "square_avg", nonneg=True),
        StateRole("grad_avgs", "grad_avg", lambda h: h["centered"], "centered=True"),
        StateRole("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] > 0.0, "momentum > 0"),
    ),
    scalars=lambda h, t: _scalars.rmsprop_scalars(
        lr=h["lr"], alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"], momentum=h["momentum"],
        eps_in_sqrt=h["eps_in_sqrt"], lr_in_momentum=h["lr_in_momentum"],
    ),  # fmt: skip
    flags=lambda h: (h["maximize"],),
    reference=reference.rmsprop,
    step_arg=False,
    uses_step=lambda h: False,
    torch_order=("lr", "eps", "momentum", "weight_decay", "alpha"),
    torch_optim="RMSprop",
)
