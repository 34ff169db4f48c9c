"""Muon (torch.optim.Muon, torch 2.13): the step driver shared by :func:`fusedopt.functional.muon`,
:class:`fusedopt.Muon` (NumPy) and :class:`fusedopt.torch.Muon`.

A Muon step on a 2-D parameter is element-wise work around a matrix function::

    B = lerp(B, g, 1-mu);  U = lerp(g, B, mu) if nesterov else B       kernel, momentum phase
    X = NewtonSchulz(U)  (quintic, ns_steps iterations, Frobenius-normalized first)   BLAS
    p = p*(1 - lr*wd);  p = p - lr_adj*X                                kernel, apply phase

The two element-wise phases are one compiled kernel (cpp/kernels/muon.inl, ``_core.muon`` with
``apply=False/True``; spec :func:`fusedopt.reference.muon_momentum` / ``muon_apply``), each a
single native call over all the parameters of a call (the apply phase one call per distinct
adjusted lr: ``lr_adj`` depends on the shape). The Newton-Schulz products run on BLAS through
the front end's matmul: NumPy's (:func:`fusedopt.reference.muon_newton_schulz`, exactly) or
torch's (:func:`newton_schulz_torch`), in the parameter's dtype.

Precision: torch 2.13's ``_zeropower_via_newtonschulz`` casts the update to **bfloat16** on every
device, CPU included (``grad.bfloat16()``), and its products are bfloat16 GEMMs; fusedopt runs
them in float32 (float64 for float64 parameters), ~1e-6 from a float64 iteration where torch's is
~1e-2 away. ``fusedopt.torch.Muon(..., ns_dtype=torch.bfloat16)`` runs torch's bfloat16 iteration
(the same torch operations) and then steps bitwise as torch.optim.Muon.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core, _scalars, _threads, reference
from . import _validation as check
from ._handwritten import HandWrittenOptimizer

#: torch.optim.Muon's defaults (the param-group keys, in torch's order)
DEFAULTS: Dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.1,
    "momentum": 0.95,
    "nesterov": True,
    "ns_coefficients": reference.MUON_NS_COEFFICIENTS,
    "eps": reference.MUON_EPS,
    "ns_steps": reference.MUON_NS_STEPS,
    "adjust_lr_fn": None,
}
ADJUST_LR_FNS = ("original", "match_rms_adamw")

Hypers = Dict[str, Any]
NewtonSchulz = Callable[[Any, Hypers], Any]


def check_hypers(h: Mapping[str, Any]) -> Hypers:
    """Validated hyperparameters (a new dict, every key of :data:`DEFAULTS`): torch's checks with
    torch's messages first (``lr``, ``momentum``, ``weight_decay`` >= 0, ``adjust_lr_fn``), then
    those torch makes only inside a step (``ns_steps < 100``, three coefficients), then types."""
    lr, momentum, wd = h["lr"], h["momentum"], h["weight_decay"]
    for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", wd)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 <= momentum:
        raise ValueError(f"momentum should be >= 0 but is: {momentum}")
    if not 0.0 <= wd:
        raise ValueError(f"weight decay should be >= 0 but is: {wd}")
    fn = h["adjust_lr_fn"]
    if fn is not None and fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {fn} is not supported")
    ns_steps = h["ns_steps"]
    if isinstance(ns_steps, (bool, np.bool_)) or not isinstance(ns_steps, (int, np.integer)):
        raise TypeError(f"ns_steps must be an int, got {type(ns_steps).__name__}")
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if ns_steps < 0:
        raise ValueError(f"ns_steps must be >= 0, got {ns_steps}")
    coeffs = h["ns_coefficients"]
    if not isinstance(coeffs, (tuple, list)):
        raise TypeError(f"ns_coefficients must be a tuple of three floats, got {type(coeffs).__name__}")
    if len(coeffs) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    out: Hypers = {
        "lr": check.real("lr", lr),
        "weight_decay": check.real("weight_decay", wd),
        "momentum": check.real("momentum", momentum),
        "nesterov": check.flag("nesterov", h["nesterov"]),
        "ns_coefficients": tuple(check.real(f"ns_coefficients[{i}]", c) for i, c in enumerate(coeffs)),
        "eps": check.non_negative("eps", h["eps"]),
        "ns_steps": int(ns_steps),
        "adjust_lr_fn": fn,
    }
    return out


def not_2d_message(size: Any) -> str:
    """torch.optim.Muon's message for a parameter that is not a matrix."""
    return f"Muon only supports 2D parameters whereas we found a parameter with size: {size}"


GRAD_NOT_2D = "Param gradient must be a 2D matrix"


def newton_schulz_numpy(u: np.ndarray, h: Hypers) -> np.ndarray:
    """The NumPy front end's orthogonalization: :func:`fusedopt.reference.muon_newton_schulz`."""
    return reference.muon_newton_schulz(u, ns_coefficients=h["ns_coefficients"], ns_steps=h["ns_steps"], eps=h["eps"])


def step_lists(params: Sequence[Any], grads: Sequence[Any], bufs: Sequence[Any], updates: Sequence[Any],
               h: Hypers, threads: Optional[int], ns: NewtonSchulz) -> int:  # fmt: skip
    """One Muon step over checked lists (one dtype, every array 2-D, ``updates`` scratch arrays
    like the params). Returns the number of native calls made."""
    if not params:
        return 0
    n = sum(int(np.prod(p.shape)) for p in params)
    t = _threads.resolve(threads, n, "muon")
    mom = _scalars.muon_scalars(lr=h["lr"], momentum=h["momentum"], weight_decay=0.0, adjusted_lr=0.0)
    nesterov = h["nesterov"]
    _core.muon(params, grads, bufs, updates, *mom, *_scalars.NO_GRAD_TRANSFORM, nesterov, False, t)
    xs = [ns(u, h) for u in updates]
    by_lr: Dict[float, List[int]] = {}
    for i, p in enumerate(params):
        by_lr.setdefault(_scalars.muon_adjusted_lr(h["lr"], h["adjust_lr_fn"], tuple(p.shape)), []).append(i)
    for adjusted, idx in by_lr.items():
        s = _scalars.muon_scalars(lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                                  adjusted_lr=adjusted)  # fmt: skip
        ps, gs, bs, us = ([lst[i] for i in idx] for lst in (params, grads, bufs, xs))
        _core.muon(ps, gs, bs, us, *s, *_scalars.NO_GRAD_TRANSFORM, nesterov, True,
                   _threads.resolve(threads, sum(int(np.prod(params[i].shape)) for i in idx), "muon"))  # fmt: skip
    return 1 + len(by_lr)


def check_numpy_lists(params: Sequence[Any], grads: Sequence[Any], bufs: Sequence[Any]) -> None:
    """Every check of a NumPy Muon step before anything is written: 2-D params (torch's message),
    2-D grads, then the arrays (dtype, shape, layout, no overlap) as the kernel checks them."""
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        if p.ndim != 2:
            raise ValueError(not_2d_message(tuple(p.shape)))
    for g in grads:
        if isinstance(g, np.ndarray) and g.ndim != 2:
            raise ValueError(GRAD_NOT_2D)
    _core.check([("params", params, True), ("grads", grads, False), ("momentum_buffers", bufs, True)])


def muon(params: Any, grads: Any, momentum_buffers: Any, *, lr: float = 1e-3, weight_decay: float = 0.1,
               momentum: float = 0.95, nesterov: bool = True,
               ns_coefficients: Tuple[float, float, float] = reference.MUON_NS_COEFFICIENTS,
               eps: float = reference.MUON_EPS, ns_steps: int = reference.MUON_NS_STEPS,
               adjust_lr_fn: Optional[str] = None, threads: Optional[int] = None) -> None:  # fmt: skip
    """torch.optim.Muon's step on 2-D arrays, in place (see :mod:`fusedopt._muon`)."""
    h = check_hypers(dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                          ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
    p, g, b = (_as_list(n, x) for n, x in (("params", params), ("grads", grads), ("momentum_buffers", momentum_buffers)))
    if threads is not None:
        _threads._check_count("threads", threads)
    check_numpy_lists(p, g, b)
    step_lists(p, g, b, [np.empty_like(x) for x in p], h, threads, newton_schulz_numpy)


def _as_list(name: str, x: Any) -> List[Any]:
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, (list, tuple)):
        return list(x)
    raise TypeError(f"{name} must be a numpy.ndarray or a list/tuple of them, got {type(x).__name__}")


class Muon(HandWrittenOptimizer):
    """torch.optim.Muon on NumPy arrays: ``Muon(params, lr=1e-3, weight_decay=0.1, momentum=0.95,
    nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5,
    adjust_lr_fn=None)`` (torch's arguments, defaults, checks and messages).

    Only 2-D parameters (float32 or float64; anything else raises ValueError with torch's message).
    State per parameter: ``momentum_buffer`` (zeros, made at its first step); no step counter.
    ``step(grads)`` takes one gradient per parameter (``None`` skips it) and runs, per param group
    and dtype, one native momentum call, the Newton-Schulz products on NumPy's BLAS (float32 for
    float32 parameters; torch runs them in bfloat16) and one native apply call per distinct
    adjusted lr. Every group's hyperparameters and every array are checked before anything is
    written. ``state_dict()`` has torch's layout (loads into torch.optim.Muon with tensors made
    from its arrays, and torch's loads here)."""

    NAME = "Muon"
    DEFAULTS = DEFAULTS

    def _check_hypers(self, h: Mapping[str, Any]) -> Hypers:
        return check_hypers(h)

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True,
                 ns_coefficients: Tuple[float, float, float] = reference.MUON_NS_COEFFICIENTS,
                 eps: float = reference.MUON_EPS, ns_steps: int = reference.MUON_NS_STEPS,
                 adjust_lr_fn: Optional[str] = None) -> None:  # fmt: skip
        self._init_groups(check_hypers(dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                            adjust_lr_fn=adjust_lr_fn)), params)  # fmt: skip

    def _check_param(self, name: str, a: Any) -> None:
        check.param_array(name, a)
        if a.ndim != 2:
            raise ValueError(not_2d_message(tuple(a.shape)))

    def step(self, grads: Any) -> None:
        """Update every parameter with a gradient (``None``: skip it) in place; see the class doc."""
        grads = self._grads(grads)
        calls: List[Tuple[Hypers, List[np.ndarray], List[np.ndarray], List[np.ndarray], List[int]]] = []
        new_bufs: Dict[int, np.ndarray] = {}
        for group in self.param_groups:  # every check first: nothing is written before they all pass
            h = check_hypers(group)
            buckets: Dict[Any, List[int]] = {}
            for i in group["params"]:
                if grads[i] is not None:
                    buckets.setdefault(self._params[i].dtype, []).append(i)
            for idx in buckets.values():
                bufs = []
                for i in idx:
                    b = self.state[i].get("momentum_buffer")
                    if b is None:
                        b = new_bufs[i] = np.zeros_like(self._params[i])
                    bufs.append(b)
                ps, gs = [self._params[i] for i in idx], [grads[i] for i in idx]
                check_numpy_lists(ps, gs, bufs)
                calls.append((h, ps, gs, bufs, idx))
        check.no_overlap("params and momentum buffers", self._params + [b for c in calls for b in c[3]])
        n = 0
        for h, ps, gs, bufs, _idx in calls:
            n += step_lists(ps, gs, bufs, [np.empty_like(p) for p in ps], h, None, newton_schulz_numpy)
        for i, b in new_bufs.items():
            self.state[i]["momentum_buffer"] = b
        self.last_native_calls = n

    def _load_param_state(self, key: Any, st: Any, p: np.ndarray) -> Dict[str, Any]:
        """At most ``momentum_buffer`` (no step counter)."""
        if not isinstance(st, Mapping) or set(st) - {"momentum_buffer"}:
            raise ValueError(f"state of parameter {key!r} must be a dict with only 'momentum_buffer'")
        if "momentum_buffer" not in st:
            return {}
        return {"momentum_buffer": self._array("momentum_buffer", key, st["momentum_buffer"], p, p.shape)}
