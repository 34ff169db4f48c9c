"""Adafactor (torch.optim.Adafactor, torch 2.13, its loop form): the step driver shared by
:func:`fusedopt.functional.adafactor`, :class:`fusedopt.Adafactor` (NumPy) and
:class:`fusedopt.torch.Adafactor`.

Its states have other shapes than the parameters (``row_var [..., R, 1]`` and ``col_var
[..., 1, C]`` for a parameter of two or more dims, factored over its last two, the leading ones
being a batch; a same-shape ``variance`` for a vector or a 0-d parameter), so it is not one of
the engine's same-shape descriptions: the front ends are written here by hand, the lists passed
as torch's functional passes them (None where a parameter has no such state). The step itself is
ONE native call per dtype and step count (``_core.adafactor``, cpp/kernels/adafactor.inl): the
reductions (sum of p^2, row and column sums of g^2, mean of the row factor, sum of u^2) and the
update in one parallel region, deterministic for every ISA and thread count (fixed blocking and
summation order, squares accumulated in float64). Spec: :func:`fusedopt.reference.adafactor`.

Parity with torch: the element-wise arithmetic is torch's (float32: bitwise, given torch's
reductions — ``reference.adafactor(..., reductions=...)``); torch's norms and means accumulate in
float32 in an ISA-dependent order, fusedopt's in float64 in a fixed order, so whole steps agree
to a few ulp (tests/test_adafactor.py). float64 uses ``a*b + c`` where torch fuses (as every
fusedopt kernel's float64 path).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core, _scalars, _threads
from . import _validation as check
from ._handwritten import HandWrittenOptimizer

#: torch.optim.Adafactor's defaults (the param-group keys, in torch's order; the docstring says
#: weight_decay 1e-2, the code default is 0.0)
DEFAULTS: Dict[str, Any] = {
    "lr": 1e-2,
    "beta2_decay": -0.8,
    "eps": (None, 1e-3),
    "d": 1.0,
    "weight_decay": 0.0,
    "foreach": None,
    "maximize": False,
}

Hypers = Dict[str, Any]


def _number(name: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def check_hypers(h: Mapping[str, Any]) -> Hypers:
    """Validated hyperparameters (a new dict, every key of :data:`DEFAULTS`): types first, then
    torch's checks with torch's messages, in torch's order."""
    eps = h["eps"]
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
    lr, beta2_decay, d, wd = (_number(k, h[k]) for k in ("lr", "beta2_decay", "d", "weight_decay"))
    eps1 = None if eps[0] is None else _number("eps[0]", eps[0])
    eps2 = _number("eps[1]", eps[1])
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if eps1 is not None and not 0.0 <= eps1:
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps1}")
    if not 0.0 <= eps2:
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps2}")
    if not 1.0 <= d:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
    if not 0.0 <= wd:
        raise ValueError(f"weight_decay should be >= 0 but is: {wd}")
    foreach = h.get("foreach")
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"foreach must be None or a bool, got {type(foreach).__name__}")
    return {"lr": lr, "beta2_decay": beta2_decay, "eps": (eps1, eps2), "d": d, "weight_decay": wd,
            "foreach": foreach, "maximize": check.flag("maximize", h["maximize"])}  # fmt: skip


def state_shapes(shape: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """The state arrays of a parameter of this shape (torch's keys and shapes)."""
    if len(shape) >= 2:
        return {"row_var": (*shape[:-1], 1), "col_var": (*shape[:-2], 1, shape[-1])}
    return {"variance": tuple(shape)}


def call(params: Sequence[Any], grads: Sequence[Any], row_vars: Sequence[Any], col_vars: Sequence[Any],
         variances: Sequence[Any], h: Hypers, eps1: float, step: float, threads: Optional[int],
         counters: Optional[Sequence[Any]] = None, check_only: bool = False) -> None:  # fmt: skip
    """One native call: every parameter of one dtype at step count ``step`` (the new count)."""
    s = _scalars.adafactor_scalars(step=step, lr=h["lr"], beta2_decay=h["beta2_decay"], eps1=eps1, eps2=h["eps"][1],
                                   d=h["d"], weight_decay=h["weight_decay"])  # fmt: skip
    n = sum(p.size if isinstance(p, np.ndarray) else p.numel() for p in params)
    t = _threads.resolve(threads, n, "adafactor")
    _core.adafactor(params, grads, row_vars, col_vars, variances, *s, h["weight_decay"] != 0, h["maximize"], t,
                    counters, check_only)  # fmt: skip


def _as_list(name: str, x: Any) -> List[Any]:
    if isinstance(x, np.ndarray) or x is None:
        return [x]
    if isinstance(x, (list, tuple)):
        return list(x)
    raise TypeError(f"{name} must be a numpy.ndarray or a list/tuple of them, got {type(x).__name__}")


def adafactor(params: Any, grads: Any, row_vars: Any, col_vars: Any, variances: Any, *, step: int,
              lr: float = 1e-2, beta2_decay: float = -0.8, eps1: Optional[float] = None, eps2: float = 1e-3,
              d: float = 1.0, weight_decay: float = 0.0, maximize: bool = False,
              threads: Optional[int] = None) -> None:  # fmt: skip
    """torch.optim.Adafactor's step (its loop form) on arrays, in place, one native call.

    ``row_vars[i]`` (shape ``[..., R, 1]``) and ``col_vars[i]`` (``[..., 1, C]``) for a parameter
    of two or more dims, None otherwise; ``variances[i]`` (the parameter's shape) for one of at
    most one dim, None otherwise (torch's functional lists). ``step``: the count including this
    step (1 first), shared by the call. ``eps1=None``: ``finfo(params[0].dtype).eps``. One dtype
    per call (float32 or float64). Exact arithmetic: :func:`fusedopt.reference.adafactor`."""
    h = check_hypers(dict(lr=lr, beta2_decay=beta2_decay, eps=(eps1, eps2), d=d, weight_decay=weight_decay,
                          foreach=None, maximize=maximize))  # fmt: skip
    p, g, r, c, v = (_as_list(n, x) for n, x in (("params", params), ("grads", grads), ("row_vars", row_vars),
                                                  ("col_vars", col_vars), ("variances", variances)))  # fmt: skip
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count including this step), got {step}")
    if threads is not None:
        _threads._check_count("threads", threads)
    e1 = h["eps"][0]
    if e1 is None:
        e1 = float(np.finfo(p[0].dtype).eps) if p and isinstance(p[0], np.ndarray) else 0.0
    call(p, g, r, c, v, h, e1, int(step), threads)


class Adafactor(HandWrittenOptimizer):
    """torch.optim.Adafactor on NumPy arrays: ``Adafactor(params, lr=1e-2, beta2_decay=-0.8,
    eps=(None, 1e-3), d=1.0, weight_decay=0.0, *, foreach=None, maximize=False)`` (torch's
    arguments, defaults, checks and messages; ``foreach`` is accepted and ignored: there is one
    fused kernel).

    float32/float64 arrays of any shape. State per parameter (made at its first step): ``step``
    (int), ``row_var``/``col_var`` (two or more dims) or ``variance``. ``step(grads)`` takes one
    gradient per parameter (``None`` skips it) and makes one native call per param group, dtype
    and step count (usually one per group). ``eps[0]=None`` is the ``finfo(dtype).eps`` of the
    group's first parameter with a gradient (torch's rule). Everything is checked before anything
    is written. ``state_dict()`` has torch's layout (loads into torch.optim.Adafactor with tensors
    made from its arrays, and torch's loads here)."""

    NAME = "Adafactor"
    DEFAULTS = DEFAULTS
    OPTIONAL_KEYS = frozenset({"foreach"})

    def _check_hypers(self, h: Mapping[str, Any]) -> Hypers:
        return check_hypers(h)

    def __init__(self, params: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: Tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False) -> None:  # fmt: skip
        self._init_groups(check_hypers(dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                            foreach=foreach, maximize=maximize)), params)  # fmt: skip

    def step(self, grads: Any) -> None:
        """Update every parameter with a gradient (``None``: skip it) in place; see the class doc."""
        grads = self._grads(grads)
        calls = []
        new_states: Dict[int, Dict[str, Any]] = {}
        for group in self.param_groups:  # every check first: nothing is written before they all pass
            h = check_hypers(group)
            eps1 = h["eps"][0]
            buckets: Dict[Any, List[int]] = {}
            for i in group["params"]:
                if grads[i] is None:
                    continue
                if eps1 is None:  # torch: the first param with a gradient fixes eps1 for the group
                    eps1 = float(np.finfo(self._params[i].dtype).eps)
                st = self.state[i]
                if not st:
                    p = self._params[i]
                    st = new_states[i] = {"step": 0, **{k: np.zeros(s, p.dtype)
                                                        for k, s in state_shapes(p.shape).items()}}  # fmt: skip
                buckets.setdefault((self._params[i].dtype, st["step"] + 1), []).append(i)
            for (_, t), idx in buckets.items():
                sts = [self.state[i] or new_states[i] for i in idx]
                lists = ([self._params[i] for i in idx], [grads[i] for i in idx],
                         [st.get("row_var") for st in sts], [st.get("col_var") for st in sts],
                         [st.get("variance") for st in sts])  # fmt: skip
                calls.append((lists, h, eps1, t, sts))
        if len(calls) > 1:  # (one call checks everything itself before writing anything)
            for lists, h, eps1, t, sts in calls:
                call(*lists, h, eps1, t, None, sts, check_only=True)
            written = list(self._params)
            for _, _, _, _, sts in calls:
                written += [a for st in sts for k, a in st.items() if k != "step"]
            _core.check_overlap(written, [g for g in grads if g is not None])
        for lists, h, eps1, t, sts in calls:
            call(*lists, h, eps1, t, None, sts)
        for i, st in new_states.items():
            self.state[i] = st
        self.last_native_calls = len(calls)

    def _load_param_state(self, key: Any, st: Any, p: np.ndarray) -> Dict[str, Any]:
        """``step`` (a tensor becomes an int) and ``row_var``/``col_var`` or ``variance``."""
        shapes = state_shapes(p.shape)
        if not isinstance(st, Mapping) or set(st) != {"step", *shapes}:
            raise ValueError(f"state of parameter {key!r} must be a dict with 'step' and {sorted(shapes)} "
                             f"(a parameter of shape {p.shape})")  # fmt: skip
        step = st["step"]
        step = float(step.item()) if hasattr(step, "item") else step
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)) or \
                not float(step).is_integer() or step < 0:  # fmt: skip
            raise ValueError(f"'step' of parameter {key!r} must be a whole number >= 0, got {st['step']!r}")
        out: Dict[str, Any] = {"step": int(step)}
        for k, shape in shapes.items():
            out[k] = self._array(k, key, st[k], p, shape)
        return out
