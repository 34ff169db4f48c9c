"""SGD with optional (Nesterov) momentum, as ``torch.optim.SGD``; and optax's ``trace``.

``sgd``:

.. math::
    g &\\leftarrow \\pm\\nabla + \\lambda\\theta \\\\
    b &\\leftarrow g \\ \\text{(first step)}, \\quad b \\leftarrow \\mu b + (1-\\tau) g \\ \\text{(later)} \\\\
    d &\\leftarrow g + \\mu b \\ \\text{(nesterov)}, \\quad d \\leftarrow b \\ \\text{(otherwise)} \\\\
    \\theta &\\leftarrow \\theta - \\eta d

The buffer holds no learning rate (torch, TF ``ApplyMomentum``); Keras/Sutskever keep ``lr*g`` in
the velocity instead, which differs once ``lr`` changes. ``optax.sgd`` equals this with
``dampening=0``. Ng's EMA momentum is :func:`momentum`. ``first_step``: the buffers hold nothing
yet: set ``b = g`` (torch skips dampening on the first step; the buffers' contents are ignored
and overwritten).
"""

from __future__ import annotations

from typing import Any

from .. import _scalars, reference
from ._spec import FIRST_STEP, REQUIRED, UNIT, UNIT_CLOSED, Algorithm, Hypers, StateRole, flag, real


def _relations(h: Hypers) -> None:
    if h.get("nesterov") and (h["momentum"] <= 0.0 or h["dampening"] != 0.0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")


SGD = Algorithm(
    name="sgd",
    kernel="sgd",
    doc=__doc__ or "",
    hypers=(
        real("lr", REQUIRED, torch_msg="Invalid learning rate: {}", torch_ok=lambda x: not x < 0.0, doc=":math:`\\eta`"),
        real("momentum", 0.0, torch_msg="Invalid momentum value: {}", torch_ok=lambda x: not x < 0.0,
             doc=":math:`\\mu`"),
        real("dampening", 0.0, UNIT_CLOSED, doc=":math:`\\tau`"),
        flag("nesterov", doc="Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``, as torch)"),
        real("weight_decay", 0.0, torch_msg="Invalid weight_decay value: {}", torch_ok=lambda x: not x < 0.0,
             doc=":math:`\\lambda`, L2 decay added to the gradient (after ``maximize``)"),
        flag("maximize", doc="ascend (use :math:`-\\nabla`)"),
        flag("first_step", doc="the buffers hold nothing yet: set ``b = g``"),
    ),
    states=(StateRole("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] != 0.0, "momentum != 0",
                      init=FIRST_STEP),),  # fmt: skip
    scalars=lambda h, t: _scalars.sgd_scalars(lr=h["lr"], weight_decay=h["weight_decay"], momentum=h["momentum"],
                                              dampening=h["dampening"]),  # fmt: skip
    flags=lambda h: (h["nesterov"], h["maximize"], h["first_step"]),
    reference=reference.sgd,
    has_step=False,
    step_arg=False,
    uses_step=lambda h: False,
    relations=_relations,
    torch_relation_msg="Nesterov momentum requires a momentum and zero dampening",
    torch_order=("lr", "momentum", "weight_decay"),
    torch_optim="SGD",
)


def _trace_scalars(h: Hypers, t: int) -> Any:
    return _scalars.sgd_scalars(lr=h["lr"], weight_decay=h["weight_decay"], momentum=h["decay"], dampening=0.0)


TRACE = Algorithm(
    name="trace",
    kernel="sgd",
    threads_key="sgd",
    doc="""Heavy-ball momentum as optax's ``trace`` (``optax.sgd``) and TF's ``ApplyMomentum``.

.. math::
    g &\\leftarrow \\pm\\nabla + \\lambda\\theta \\\\
    tr &\\leftarrow g + \\mu\\, tr \\\\
    \\theta &\\leftarrow \\theta - \\eta\\, u, \\qquad u = g + \\mu\\, tr \\ \\text{(nesterov)},
        \\quad u = tr \\ \\text{(otherwise)}

``traces`` start at zero (optax ``trace`` state, TF ``accum``) and are updated in place; there is
no first-step special case (with a zero trace the first step gives ``tr = g``, which is why this
equals ``torch.optim.SGD(momentum=decay, dampening=0)`` and :func:`sgd` with
``first_step=False``; it is computed by the same kernel). ``decay = 0`` keeps ``tr = g``. optax
``sgd`` has no weight decay; Keras ``SGD(momentum)`` keeps ``-lr*g`` in its velocity (equal for a
constant lr only; not provided as a mode).
""",
    hypers=(
        real("lr", REQUIRED, doc=":math:`\\eta`"),
        real("decay", 0.9, UNIT, doc=":math:`\\mu \\in [0, 1)`"),
        flag("nesterov", doc="optax ``trace(nesterov=True)`` / TF ``use_nesterov``"),
        real("weight_decay", 0.0, doc=":math:`\\lambda` (L2, coupled)"),
        flag("maximize", doc="ascend"),
    ),
    states=(StateRole("traces", "trace"),),
    scalars=_trace_scalars,
    flags=lambda h: (h["nesterov"], h["maximize"], False),
    reference=reference.trace,
    has_step=False,
    step_arg=False,
    uses_step=lambda h: False,
)
