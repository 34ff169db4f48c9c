"""PyTorch drop-in optimizers: ``from fusedopt.torch import AdamW``.

``SGD``, ``Momentum``, ``RMSprop``, ``Adam``, ``AdamW`` and ``Adagrad`` subclass
:class:`torch.optim.Optimizer` with torch.optim's constructor arguments, defaults, param groups,
``add_param_group``, ``zero_grad``, closures, hooks and ``lr_scheduler`` support. ``step()``
updates CPU float32/float64 parameters **in place through shared memory** (``Tensor.numpy()``
views, never a copy) with one native fusedopt call per (param group, dtype, step count) bucket —
normally a single call for the whole model.

State lives in ``self.state[p]`` as torch tensors with torch.optim's key names and layout
(``'step'`` a 0-dim float32 tensor, ``'exp_avg'``, ``'exp_avg_sq'``, ``'max_exp_avg_sq'``,
``'momentum_buffer'``, ``'square_avg'``, ``'grad_avg'``, ``'sum'``; ``Momentum``: ``'velocity'``),
and ``state_dict()``/``load_state_dict()`` are torch's own: a ``torch.optim.Adam`` state dict loads
into ``fusedopt.torch.Adam`` and back. The arithmetic is :mod:`fusedopt.functional`'s, which
follows torch.optim (agreement to float rounding; see :mod:`fusedopt.reference`).

The implementation selectors ``foreach`` and ``fused`` are accepted (and kept in the param groups
so that state dicts have torch's keys) but ignored. ``capturable=True`` and
``differentiable=True`` are refused.

Errors are raised before anything is modified (no step is ever half applied):

* ``TypeError``: a parameter or gradient that is not a dense strided tensor (sparse gradients),
  a dtype other than float32/float64 (float16/bfloat16 are not supported yet, complex parameters
  are refused), a gradient whose dtype differs from its parameter's;
* ``ValueError``: tensors that are not on the CPU (CUDA, meta, ...), non-contiguous parameters,
  gradients or state tensors, shape mismatches, overlapping memory, invalid hyperparameters.

Parameters whose ``.grad`` is ``None`` are skipped, as in torch.
"""

from __future__ import annotations

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fusedopt.torch needs PyTorch, which is not installed. Install it with "
        "`pip install fusedopt[torch]` (or `pip install torch`)."
    ) from _exc

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from . import _validation as check
from . import functional as F

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Adagrad"]

_DTYPES = (torch.float32, torch.float64)
_ONE = {torch.float32: np.float32(1.0), torch.float64: np.float64(1.0)}


def _scalar_dtype() -> torch.dtype:
    """dtype of torch's ``state['step']`` for non-fused optimizers (float64 only under a float64 default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _step_dtype(group: Dict[str, Any]) -> torch.dtype:
    """As torch: float32 for fused/capturable groups, else the scalar dtype."""
    return torch.float32 if group.get("fused") or group.get("capturable") else _scalar_dtype()


def _num(x: Any) -> Any:
    """A 1-element tensor hyperparameter (lr, betas) as a Python number; anything else unchanged."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError("a Tensor hyperparameter must have exactly one element")
        return float(x)
    return x


def _check_dense_cpu(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; fusedopt.torch supports dense (strided) tensors only")
    if t.device.type != "cpu":
        raise ValueError(
            f"{name} is on device '{t.device}'; fusedopt.torch steps CPU tensors only "
            "(use torch.optim for GPU/meta tensors)"
        )


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype in _DTYPES:
        return
    if t.is_complex():
        raise TypeError(
            f"{name} is complex ({t.dtype}); fusedopt.torch supports real float32/float64 parameters "
            "only (use torch.optim for complex parameters)"
        )
    if t.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"{name} has dtype {t.dtype}; fusedopt.torch supports float32 and float64 only "
            "(float16/bfloat16 are not supported yet: keep float32 master weights or use torch.optim)"
        )
    raise TypeError(f"{name} has dtype {t.dtype}; fusedopt.torch supports float32 and float64 only")


def _check_param(name: str, p: Any) -> None:
    _check_dense_cpu(name, p)
    _check_dtype(name, p)
    if p.is_neg() or p.is_conj():
        raise ValueError(f"{name} is a lazily negated/conjugated view; fusedopt.torch cannot update it in place")
    if not p.is_contiguous():
        raise ValueError(
            f"{name} is not contiguous (strides {tuple(p.stride())}); fusedopt.torch updates parameters "
            "in place and never copies"
        )


def _check_like(name: str, t: Any, p: torch.Tensor, pname: str) -> None:
    """A gradient or state tensor that must match its parameter exactly."""
    _check_dense_cpu(name, t)
    if t.dtype != p.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {pname} has {p.dtype}; they must match exactly")
    if t.shape != p.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {pname} has shape {tuple(p.shape)}")
    if t.is_neg() or t.is_conj():
        raise ValueError(f"{name} is a lazily negated/conjugated view; fusedopt.torch cannot read it without a copy")
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {tuple(t.stride())}); fusedopt.torch never copies")


def _np(t: torch.Tensor) -> np.ndarray:
    """The NumPy view sharing ``t``'s memory (no copy)."""
    arr: np.ndarray = (t.detach() if t.requires_grad else t).numpy()
    return arr


#: one parameter in a step: (param, index, param view, grad view, state views, step view,
#: staged state, data pointers of param and state, new step value)
_Entry = Tuple[Any, ...]


def _P(items: List[_Entry]) -> List[np.ndarray]:
    return [it[2] for it in items]


def _G(items: List[_Entry]) -> List[np.ndarray]:
    return [it[3] for it in items]


def _S(items: List[_Entry], k: int) -> List[np.ndarray]:
    return [it[4][k] for it in items]


class _FusedOptimizer(torch.optim.Optimizer):  # type: ignore[misc,unused-ignore]
    """Shared machinery. Subclasses define the state they keep and one call into fusedopt.functional."""

    #: whether the state has torch's float ``'step'`` counter
    _HAS_STEP = True

    def __init__(self, params: Any, defaults: Dict[str, Any]) -> None:
        self._forget_caches()
        self._check_impl_flags(defaults)
        self._hyper(defaults)  # validate the defaults before any group is made
        super().__init__(params, defaults)

    # -- subclass interface --------------------------------------------------------------------
    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        """Validated keyword arguments of the functional call for this group (raises on bad values)."""
        raise NotImplementedError

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        """Names of the state tensors (other than 'step') the update reads and writes."""
        raise NotImplementedError

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.contiguous_format)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        """Whether the update depends on the step number (else all step counts share one call)."""
        return True

    def _call(self, hyper: Dict[str, Any], t: int, items: List[_Entry]) -> None:
        raise NotImplementedError

    # -- construction --------------------------------------------------------------------------
    @staticmethod
    def _check_impl_flags(group: Dict[str, Any]) -> None:
        if group.get("differentiable", False):
            raise ValueError("differentiable=True is not supported by fusedopt.torch (use torch.optim)")
        if group.get("capturable", False):
            raise ValueError("capturable=True is not supported by fusedopt.torch (CPU tensors only)")
        if group.get("fused") and group.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group (torch semantics); every parameter is checked to be steppable first."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group = dict(param_group)
        raw = param_group.get("params")
        if isinstance(raw, torch.Tensor):
            raw = [raw]
        elif isinstance(raw, (set, type(None))) or not isinstance(raw, Iterable):
            raise TypeError(
                "params must be an ordered iterable of Tensors (or of (name, Tensor) pairs), "
                f"got {type(raw).__name__}"
            )
        raw = list(raw)
        tensors = [x[1] if isinstance(x, tuple) else x for x in raw]
        start = sum(len(g["params"]) for g in self.param_groups)
        for i, p in enumerate(tensors):
            _check_param(f"params[{start + i}]", p)
        if len(set(tensors)) != len(tensors):
            raise ValueError("a parameter appears more than once in the param group; each may appear only once")
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_impl_flags(merged)
        self._hyper(merged)
        param_group["params"] = raw
        super().add_param_group(param_group)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._forget_caches()
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            if self._HAS_STEP:
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "step" in st and not torch.is_tensor(st["step"]):
                        st["step"] = torch.tensor(float(st["step"]), dtype=_step_dtype(group))

    # -- caches ---------------------------------------------------------------------------------
    def _forget_caches(self) -> None:
        #: id(param) -> (state keys, param data_ptr, state tensors, their data_ptrs, step tensor,
        #:               its data_ptr, param view, state views, 1-element step view, param)
        #: (keyed by id: Tensor.__hash__ is a Python-level function, slow on the hot path)
        self._views: Dict[int, Tuple[Any, ...]] = {}
        #: id(group) -> (group, hyperparameter values, (hyper, state keys, uses_step))
        self._plans: Dict[int, Tuple[Any, ...]] = {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (state is cast to each parameter's dtype; steps stay as saved)."""
        self._forget_caches()
        super().load_state_dict(state_dict)

    def _group_plan(self, group: Dict[str, Any]) -> Tuple[Dict[str, Any], Tuple[str, ...], bool]:
        """(functional kwargs, state keys, uses_step) of a group, cached while its hyperparameters are unchanged."""
        vals = tuple(group.get(k) for k in self.defaults)
        c = self._plans.get(id(group))
        if c is not None and c[0] is group and c[1] == vals:
            cached: Tuple[Dict[str, Any], Tuple[str, ...], bool] = c[2]
            return cached
        self._check_impl_flags(group)
        hyper = self._hyper(group)
        plan = (hyper, self._state_keys(hyper), self._uses_step(hyper))
        if not any(isinstance(v, torch.Tensor) or isinstance(v, (list, tuple)) and any(
                isinstance(x, torch.Tensor) for x in v) for v in vals):  # fmt: skip
            self._plans[id(group)] = (group, vals, plan)
        return plan

    # -- the step ------------------------------------------------------------------------------
    def _prepare(self, p: torch.Tensor, index: int, g: torch.Tensor, group: Dict[str, Any],
                 keys: Tuple[str, ...]) -> Tuple[Any, ...]:  # fmt: skip
        """Slow path: check everything, stage missing state, (re)build the NumPy views.

        Returns (param view, grad view, state views, step view, staged state, data pointers).
        """
        name = f"params[{index}]"
        _check_param(name, p)
        _check_like(f"{name}.grad", g, p, name)
        st = self.state.get(p)
        cur = st if st is not None else {}
        staged: Dict[str, Any] = {}
        step: Any = None
        if self._HAS_STEP:
            step = cur.get("step")
            if not torch.is_tensor(step):
                step = staged["step"] = torch.tensor(0.0 if step is None else float(step), dtype=_step_dtype(group))
            _check_dense_cpu(f"state[{name}]['step']", step)
            if step.numel() != 1 or step.dtype not in _DTYPES:
                raise TypeError(
                    f"state[{name}]['step'] must be a one-element float32/float64 tensor, "
                    f"got {step.dtype} with {step.numel()} elements"
                )
        tensors = []
        with torch.no_grad():
            for k in keys:
                t = cur.get(k)
                if t is None:
                    t = staged[k] = self._new_state(k, p, group)
                _check_like(f"state[{name}][{k!r}]", t, p, name)
                tensors.append(t)
        p_arr = _np(p)
        arrs = tuple(_np(t) for t in tensors)
        for a, what in [(p_arr, name)] + [(a, f"state[{name}][{k!r}]") for a, k in zip(arrs, keys)]:
            if not a.flags.writeable:
                raise ValueError(f"{what} is read-only, but it is updated in place")
            if not a.flags.aligned:
                raise ValueError(f"{what} is not aligned to its dtype")
        step1 = None if step is None else _np(step).reshape(1)
        ptrs = (p.data_ptr(),) + tuple(t.data_ptr() for t in tensors)
        self._views[id(p)] = (keys, ptrs[0], tuple(tensors), ptrs[1:], step,
                              None if step is None else step.data_ptr(), p_arr, arrs, step1, p)  # fmt: skip
        return p_arr, _np(g), arrs, step1, staged, ptrs

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override,unused-ignore]
        """Perform one optimization step (``closure`` re-evaluates the model and returns the loss).

        Everything is checked before the first write; state created by this step (lazy
        initialization) and the step counters are committed only after the update succeeded.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan: List[Tuple[Dict[str, Any], Any, List[_Entry]]] = []
        views, state, has_step = self._views, self.state, self._HAS_STEP
        index = 0
        for group in self.param_groups:
            hyper, keys, uses_step = self._group_plan(group)
            buckets: Dict[Any, List[_Entry]] = {}
            for p in group["params"]:
                g = p.grad
                if g is None:
                    index += 1
                    continue
                item: Optional[_Entry] = None
                # Fast path: nothing moved since the views were made (same tensors, same memory).
                e = views.get(id(p))
                st = state.get(p)
                if e is not None and e[9] is p and e[0] == keys and p.data_ptr() == e[1] and p.is_contiguous():
                    ok = st is not None or not (keys or has_step)  # (SGD without momentum has no state)
                    for k, t, q in zip(keys, e[2], e[3]):
                        if not ok or st.get(k) is not t or t.data_ptr() != q:
                            ok = False
                            break
                    if ok and has_step:
                        ok = st.get("step") is e[4] and e[4].data_ptr() == e[5]
                    if ok:
                        p_arr = e[6]
                        try:
                            g_arr = g.numpy()
                        except (RuntimeError, TypeError):  # requires_grad, sparse, not on the CPU, ...
                            g_arr = None
                        if (
                            g_arr is not None
                            and g_arr.shape == p_arr.shape
                            and g_arr.dtype is p_arr.dtype
                            and g.is_contiguous()
                        ):
                            item = (p_arr, g_arr, e[7], e[8], None, (e[1],) + e[3])
                if item is None:
                    item = self._prepare(p, index, g, group, keys)
                step1, staged = item[3], item[4]
                if step1 is not None:
                    # torch increments the (float) counter before the update; count in its dtype
                    old = step1.item(0)
                    new = old + 1.0
                    if new >= 16777216.0:  # 2**24: a float32 counter saturates there, as torch's
                        new = float(step1.dtype.type(old) + step1.dtype.type(1.0))
                    key = (item[0].dtype, int(new) if uses_step else None)
                else:
                    new = None
                    key = (item[0].dtype, bool(staged))  # SGD: buffers created now take b = g
                buckets.setdefault(key, []).append((p, index) + item + (new,))
                index += 1
            plan.extend((hyper, key, items) for key, items in buckets.items())
        if len(plan) > 1:
            # Several native calls: whatever the core would refuse in a later call must be found
            # now, before the first call writes (dtype/shape/contiguity were checked above).
            self._check_disjoint([it for _, _, items in plan for it in items])
        for hyper, key, items in plan:
            self._call(hyper, key[1], items)
        for _, _, items in plan:
            for it in items:
                if it[6]:
                    self.state[it[0]].update(it[6])
                if it[5] is not None:
                    it[5][0] = it[8]
        return loss

    @staticmethod
    def _check_disjoint(items: List[_Entry]) -> None:
        """No written buffer (parameter or state) overlaps any other buffer of the step; grads aligned."""
        w_start, w_end, w_index = [], [], []
        for it in items:
            for ptr, a in zip(it[7], (it[2],) + it[4]):
                if a.nbytes:
                    w_start.append(ptr)
                    w_end.append(ptr + a.nbytes)
                    w_index.append(it[1])
        for it in items:
            if not it[3].flags.aligned:
                raise ValueError(f"params[{it[1]}].grad is not aligned to its dtype")
        if not w_start:
            return
        s = np.asarray(w_start, dtype=np.uint64)
        e = np.asarray(w_end, dtype=np.uint64)
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
        if s.size > 1:
            bad = np.flatnonzero(s[1:] < np.maximum.accumulate(e)[:-1])
            if bad.size:
                i = w_index[int(order[bad[0] + 1])]
                raise ValueError(f"params[{i}] or its state shares memory with another parameter or state")
        g_s = np.asarray([it[3].__array_interface__["data"][0] for it in items], dtype=np.uint64)
        g_e = g_s + np.asarray([it[3].nbytes for it in items], dtype=np.uint64)
        pos = np.searchsorted(s, g_e, side="left").astype(np.int64) - 1
        hit = (pos >= 0) & (g_e > g_s)
        hit[hit] = e[pos[hit]] > g_s[hit]
        if hit.any():
            i = items[int(np.flatnonzero(hit)[0])][1]
            raise ValueError(f"params[{i}].grad shares memory with a parameter or state")


def _bool(name: str, v: Any) -> bool:
    return check.flag(name, v)


class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, L2 weight decay, maximize).

    State: ``'momentum_buffer'`` (only with ``momentum != 0``), set to the gradient on the first step
    as in torch. No step counter.
    """

    _HAS_STEP = False

    def __init__(
        self, params: Any, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
        weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
        foreach: Optional[bool] = None, differentiable: bool = False, fused: Optional[bool] = None,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)  # fmt: skip
        super().__init__(params, defaults)

    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        h = dict(
            lr=check.non_negative("lr", _num(group["lr"])),
            momentum=check.non_negative("momentum", group["momentum"]),
            dampening=check.unit_interval_closed("dampening", group["dampening"]),
            weight_decay=check.non_negative("weight_decay", _num(group["weight_decay"])),
            nesterov=_bool("nesterov", group["nesterov"]),
            maximize=_bool("maximize", group["maximize"]),
        )
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return h

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        # written (b = g) by the first step, as torch's fused SGD does
        return torch.empty_like(p, memory_format=torch.contiguous_format)

    def _call(self, hyper: Dict[str, Any], first_step: Any, items: List[_Entry]) -> None:
        # the bucket key of SGD is the first-step flag (buffers created in this step), not a step number
        F.sgd(_P(items), _G(items),
              _S(items, 0) if hyper["momentum"] != 0 else None,
              first_step=bool(first_step), **hyper)  # fmt: skip


class Momentum(_FusedOptimizer):
    """Momentum as an exponential moving average of gradients (Ng): :func:`fusedopt.functional.momentum`.

    ``v = beta*v + (1-beta)*g; p -= lr*v`` (``lr/(1-beta**t)`` with ``bias_correction``). Not in
    torch.optim: ``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)`` matches it only for a constant
    learning rate. State: ``'step'`` (0-dim float tensor, as torch's) and ``'velocity'`` (zeros).
    """

    def __init__(self, params: Any, lr: float, beta: float = 0.9, weight_decay: float = 0,
                 bias_correction: bool = False) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction))

    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        return dict(
            lr=check.non_negative("lr", _num(group["lr"])),
            beta=check.unit_interval("beta", _num(group["beta"])),
            weight_decay=check.non_negative("weight_decay", _num(group["weight_decay"])),
            bias_correction=_bool("bias_correction", group["bias_correction"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("velocity",)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        return bool(hyper["bias_correction"])

    def _call(self, hyper: Dict[str, Any], t: Optional[int], items: List[_Entry]) -> None:
        F.momentum(_P(items), _G(items), _S(items, 0),
                   step=t if t is not None else 1, **hyper)  # fmt: skip


class RMSprop(_FusedOptimizer):
    """``torch.optim.RMSprop`` (eps outside the root, centered, momentum, L2 weight decay, maximize).

    State: ``'step'``, ``'square_avg'``, ``'momentum_buffer'`` (momentum > 0), ``'grad_avg'``
    (centered), zeros, created on the first step as in torch.
    """

    def __init__(
        self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
        momentum: float = 0, centered: bool = False, capturable: bool = False, foreach: Optional[bool] = None,
        maximize: bool = False, differentiable: bool = False,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)  # fmt: skip
        super().__init__(params, defaults)

    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        return dict(
            lr=check.non_negative("lr", _num(group["lr"])),
            alpha=check.unit_interval("alpha", group["alpha"]),
            eps=check.non_negative("eps", group["eps"]),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"]),
            momentum=check.non_negative("momentum", group["momentum"]),
            centered=_bool("centered", group["centered"]),
            maximize=_bool("maximize", group["maximize"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        keys: Tuple[str, ...] = ("square_avg",)
        if hyper["momentum"] > 0:
            keys += ("momentum_buffer",)
        if hyper["centered"]:
            keys += ("grad_avg",)
        return keys

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        return False  # counted (as torch does) but not used by the math

    def _call(self, hyper: Dict[str, Any], t: Any, items: List[_Entry]) -> None:
        k = 1
        bufs = gavg = None
        if hyper["momentum"] > 0:
            bufs = _S(items, k)
            k += 1
        if hyper["centered"]:
            gavg = _S(items, k)
        F.rmsprop(_P(items), _G(items), _S(items, 0),
                  gavg, bufs, **hyper)  # fmt: skip


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` (amsgrad over the raw ``v``, L2 or decoupled weight decay, maximize).

    State: ``'step'`` (0-dim float32 tensor), ``'exp_avg'``, ``'exp_avg_sq'``,
    ``'max_exp_avg_sq'`` (amsgrad), zeros, created on the first step as in torch.
    """

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, amsgrad: bool = False, *, foreach: Optional[bool] = None, maximize: bool = False,
        capturable: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)  # fmt: skip
        super().__init__(params, defaults)

    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        b1, b2 = check.betas("betas", tuple(_num(b) for b in group["betas"]))
        return dict(
            lr=check.non_negative("lr", _num(group["lr"])),
            beta1=b1,
            beta2=b2,
            eps=check.non_negative("eps", group["eps"]),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"]),
            amsgrad=_bool("amsgrad", group["amsgrad"]),
            maximize=_bool("maximize", group["maximize"]),
            decoupled_weight_decay=_bool("decoupled_weight_decay", group["decoupled_weight_decay"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _call(self, hyper: Dict[str, Any], t: int, items: List[_Entry]) -> None:
        F.adam(_P(items), _G(items), _S(items, 0),
               _S(items, 1),
               _S(items, 2) if hyper["amsgrad"] else None, step=t, **hyper)  # fmt: skip


class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay, default ``weight_decay=1e-2``."""

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
        foreach: Optional[bool] = None, capturable: bool = False, differentiable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)  # fmt: skip

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch.optim.AdamW


class Adagrad(_FusedOptimizer):
    """``torch.optim.Adagrad`` (lr_decay, initial_accumulator_value, L2 weight decay, maximize).

    State: ``'step'`` and ``'sum'`` (filled with ``initial_accumulator_value``), created when the
    parameter is added, as in torch.
    """

    def __init__(
        self, params: Any, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
        initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: Optional[bool] = None, *,
        maximize: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)  # fmt: skip
        super().__init__(params, defaults)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        with torch.no_grad():
            for p in group["params"]:
                st = self.state[p]
                st["step"] = torch.tensor(0.0, dtype=_step_dtype(group))
                st["sum"] = self._new_state("sum", p, group)

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        return torch.full_like(p, float(group["initial_accumulator_value"]), memory_format=torch.contiguous_format)

    def _hyper(self, group: Dict[str, Any]) -> Dict[str, Any]:
        check.non_negative("initial_accumulator_value", group["initial_accumulator_value"])
        return dict(
            lr=check.non_negative("lr", _num(group["lr"])),
            lr_decay=check.non_negative("lr_decay", group["lr_decay"]),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"]),
            eps=check.non_negative("eps", group["eps"]),
            maximize=_bool("maximize", group["maximize"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("sum",)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        return bool(hyper["lr_decay"] != 0)

    def _call(self, hyper: Dict[str, Any], t: Optional[int], items: List[_Entry]) -> None:
        F.adagrad(_P(items), _G(items), _S(items, 0),
                  step=t if t is not None else 1, **hyper)  # fmt: skip
