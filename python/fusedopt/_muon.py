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


class Muon:
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

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True,
                 ns_coefficients: Tuple[float, float, float] = reference.MUON_NS_COEFFICIENTS,
                 eps: float = reference.MUON_EPS, ns_steps: int = reference.MUON_NS_STEPS,
                 adjust_lr_fn: Optional[str] = None) -> None:  # fmt: skip
        self.defaults: Hypers = check_hypers(dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                  nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps,
                                                  ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))  # fmt: skip
        self.param_groups: List[Dict[str, Any]] = []
        self._params: List[np.ndarray] = []
        self.state: List[Dict[str, np.ndarray]] = []
        #: native calls made by the last step (1 momentum call + 1 apply call per distinct adjusted
        #: lr, per param group and dtype)
        self.last_native_calls = 0
        items = [params] if isinstance(params, np.ndarray) else list(params)
        if not items:
            raise ValueError("params is an empty list: an optimizer needs at least one parameter")
        if all(isinstance(x, Mapping) for x in items):
            for group in items:
                self.add_param_group(group)  # type: ignore[arg-type]
        elif any(isinstance(x, Mapping) for x in items):
            raise TypeError("params must be a list of arrays or a list of param-group dicts, not a mix")
        else:
            self.add_param_group({"params": items})

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of 2-D parameters with its own hyperparameters (missing ones: the defaults)."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("param_group must be a dict with a 'params' entry")
        raw = param_group["params"]
        arrays = [raw] if isinstance(raw, np.ndarray) else list(raw)
        start = len(self._params)
        for i, a in enumerate(arrays):
            check.param_array(f"params[{start + i}]", a)
            if a.ndim != 2:
                raise ValueError(not_2d_message(tuple(a.shape)))
        unknown = set(param_group) - set(DEFAULTS) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for Muon")
        group = check_hypers({k: param_group.get(k, v) for k, v in self.defaults.items()})
        check.no_overlap("params", self._params + arrays)
        group["params"] = list(range(start, start + len(arrays)))
        self.param_groups.append(group)
        self._params.extend(arrays)
        self.state.extend({} for _ in arrays)

    @property
    def params(self) -> List[np.ndarray]:
        """All parameter arrays, in the order ``step`` expects their gradients."""
        return list(self._params)

    def step(self, grads: Any) -> None:
        """Update every parameter with a gradient (``None``: skip it) in place; see the class doc."""
        if isinstance(grads, np.ndarray):
            grads = [grads]
        grads = list(grads)
        if len(grads) != len(self._params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(self._params)} parameters")
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

    def state_dict(self) -> Dict[str, Any]:
        """A copy in torch.optim.Muon's layout: ``{"state": {i: {"momentum_buffer": array}},
        "param_groups": [{lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
        adjust_lr_fn, "params": [i...]}]}``."""
        state = {i: {k: v.copy() for k, v in st.items()} for i, st in enumerate(self.state) if st}
        groups = [{**{k: g[k] for k in DEFAULTS}, "params": list(g["params"])} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s layout (also torch.optim.Muon's, tensors accepted: copied into
        arrays of the parameter's dtype). Everything is checked first; on error nothing changes."""
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a mapping with 'state' and 'param_groups'")
        groups_in = list(state_dict["param_groups"])
        if len(groups_in) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups_in)} param groups but the optimizer has "
                             f"{len(self.param_groups)}")  # fmt: skip
        index: Dict[Any, int] = {}
        new_groups = []
        for gi, (gin, mine) in enumerate(zip(groups_in, self.param_groups)):
            if not isinstance(gin, Mapping) or "params" not in gin:
                raise ValueError(f"state_dict['param_groups'][{gi}] must be a dict with 'params'")
            ids = list(gin["params"])
            if len(ids) != len(mine["params"]):
                raise ValueError(f"param group {gi} of state_dict has {len(ids)} parameters, the optimizer's has "
                                 f"{len(mine['params'])}")  # fmt: skip
            missing = set(DEFAULTS) - set(gin)
            if missing:
                raise ValueError(f"param group {gi} of state_dict lacks {sorted(missing)}")
            hyper = check_hypers({k: gin[k] for k in DEFAULTS})
            new_groups.append({**hyper, "params": list(mine["params"])})
            index.update(zip(ids, mine["params"]))
        states_in = state_dict["state"]
        if not isinstance(states_in, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        new_state: List[Dict[str, np.ndarray]] = [{} for _ in self._params]
        for key, st in states_in.items():
            if key not in index:
                raise ValueError(f"state_dict['state'] has an entry for unknown parameter {key!r}")
            i, p = index[key], self._params[index[key]]
            if not isinstance(st, Mapping) or set(st) - {"momentum_buffer"}:
                raise ValueError(f"state of parameter {key!r} must be a dict with only 'momentum_buffer'")
            if "momentum_buffer" in st:
                b = st["momentum_buffer"]
                b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
                if b.shape != p.shape or b.dtype.kind != "f":
                    raise ValueError(f"momentum_buffer of parameter {key!r} must be a float array of shape "
                                     f"{p.shape}, got {b.dtype} {b.shape}")  # fmt: skip
                new_state[i]["momentum_buffer"] = np.array(b, dtype=p.dtype, order="C")
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state

    def __repr__(self) -> str:
        return f"Muon({len(self._params)} parameters, {len(self.param_groups)} groups, defaults={self.defaults})"
