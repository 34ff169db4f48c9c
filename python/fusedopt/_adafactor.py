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


class Adafactor:
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

    def __init__(self, params: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: Tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False) -> None:  # fmt: skip
        self.defaults: Hypers = check_hypers(dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                                  weight_decay=weight_decay, foreach=foreach, maximize=maximize))
        self.param_groups: List[Dict[str, Any]] = []
        self._params: List[np.ndarray] = []
        self.state: List[Dict[str, Any]] = []
        #: native calls made by the last step
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
        """Add a group of parameters with its own hyperparameters (missing ones: the defaults)."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("param_group must be a dict with a 'params' entry")
        raw = param_group["params"]
        arrays = [raw] if isinstance(raw, np.ndarray) else list(raw)
        start = len(self._params)
        for i, a in enumerate(arrays):
            check.param_array(f"params[{start + i}]", a)
        unknown = set(param_group) - set(DEFAULTS) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for Adafactor")
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

    def state_dict(self) -> Dict[str, Any]:
        """A copy in torch.optim.Adafactor's layout: ``{"state": {i: {"step": int, "row_var",
        "col_var" | "variance": array}}, "param_groups": [{lr, beta2_decay, eps, d, weight_decay,
        foreach, maximize, "params": [i...]}]}``."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for i, st in enumerate(self.state) if st}  # fmt: skip
        groups = [{**{k: g[k] for k in DEFAULTS}, "params": list(g["params"])} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s layout (also torch.optim.Adafactor's: tensors are copied into
        arrays of the parameter's dtype, a tensor ``step`` becomes an int). Everything is checked
        first; on error nothing changes."""
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
            missing = set(DEFAULTS) - {"foreach"} - set(gin)
            if missing:
                raise ValueError(f"param group {gi} of state_dict lacks {sorted(missing)}")
            hyper = check_hypers({k: gin.get(k) for k in DEFAULTS})
            new_groups.append({**hyper, "params": list(mine["params"])})
            index.update(zip(ids, mine["params"]))
        states_in = state_dict["state"]
        if not isinstance(states_in, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        new_state: List[Dict[str, Any]] = [{} for _ in self._params]
        for key, st in states_in.items():
            if key not in index:
                raise ValueError(f"state_dict['state'] has an entry for unknown parameter {key!r}")
            i, p = index[key], self._params[index[key]]
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
                a = st[k]
                a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
                if tuple(a.shape) != shape or a.dtype.kind != "f":
                    raise ValueError(f"{k} of parameter {key!r} must be a float array of shape {shape}, "
                                     f"got {a.dtype} {tuple(a.shape)}")  # fmt: skip
                out[k] = np.array(a, dtype=p.dtype, order="C")
            new_state[i] = out
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state

    def __repr__(self) -> str:
        return f"Adafactor({len(self._params)} parameters, {len(self.param_groups)} groups, defaults={self.defaults})"
