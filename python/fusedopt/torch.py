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
  gradients or state tensors, shape mismatches, overlapping memory, invalid hyperparameters, a
  parameter listed twice in a group (torch only warns; a fused step would update it twice).

Hyperparameters are checked as torch.optim checks them, in its order, with its exception types
and messages (``ValueError: Invalid learning rate: -1.0``, ``Invalid beta parameter at index 0:
1.5``, ``betas must be either both floats or both Tensors``, ``Tensor lr must be 1-element``, ...),
then by fusedopt's own checks where the kernels need more than torch asks (finite values, RMSprop's
``alpha < 1``, SGD's ``dampening <= 1``, bools as flags only). torch checks the constructor's
arguments only; here the same checks (and messages) also apply in ``add_param_group`` and at every
step to a changed value. A changed hyperparameter, also one edited in place (a ``betas`` list, a
Tensor ``lr``), takes effect and is validated at the next step, as torch reads it then.

``load_state_dict`` refuses a damaged state dict with nothing loaded: a missing ``'step'``,
``'exp_avg'``, ... of a parameter with state, or a missing ``'lr'``, ... of a group, raises
torch's ``KeyError`` (torch raises it when loading or at its next step); a ``'step'`` that is not a
whole number >= 0 (``-5``, ``2.5``, ``inf``, ``nan``) or not a one-element float32/float64 tensor
raises ``ValueError``/``TypeError`` naming it.

Threads: concurrent ``step()`` calls (closure included), ``load_state_dict()`` and
``add_param_group()`` of one optimizer are serialized by a lock of the optimizer. ``pickle`` and
``copy.deepcopy`` work (a copy has a lock of its own). In a child forked while another thread was
inside one of these calls, that call never finishes: ``step()`` raises ``RuntimeError`` there
instead of waiting forever, until ``load_state_dict()`` replaces the state.

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

import math
import numbers
import os
import threading
import weakref
from operator import attrgetter, itemgetter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, cast

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


def _num(name: str, x: Any) -> float:
    """A hyperparameter's value for the range checks, as a float: a 1-element Tensor's (else torch's
    ``Tensor lr must be 1-element``) or a real number's (bools too: :func:`_finite` refuses them
    after torch's checks, which take them as numbers); TypeError naming it for anything else."""
    if type(x) is float:
        return x
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        if x.is_complex() or x.device.type == "meta":
            raise TypeError(f"{name} must be a real number, got a {x.dtype} Tensor on {x.device}")
        return float(x)
    if type(x) is not int and not isinstance(x, (numbers.Real, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:  # an int beyond the float range: not finite (fusedopt's check, after torch's)
        return math.inf if cast(int, x) > 0 else -math.inf


def _finite(name: str, value: Any, x: float) -> float:
    """fusedopt's own checks, after torch's: no bools, and finite (the kernels need it; torch accepts
    ``lr=inf``, and ``lr=nan`` in SGD)."""
    if (type(value) is float or type(value) is int) and x - x == 0.0:  # the common case (inf - inf is nan)
        return x
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    return check.real(name, x)


def _check_step_value(name: str, value: Any) -> float:
    """A ``state['step']`` as torch keeps it (a one-element float32/float64 CPU tensor, or a number
    that ``__setstate__`` turns into one): a finite whole number >= 0 (the count of steps taken).
    TypeError/ValueError naming the entry otherwise."""
    if isinstance(value, torch.Tensor):
        _check_dense_cpu(name, value)
        if value.numel() != 1 or value.dtype not in _DTYPES:
            raise TypeError(
                f"{name} must be a one-element float32/float64 tensor, "
                f"got {value.dtype} with {value.numel()} elements"
            )
        x = float(value)
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of steps (a one-element float tensor), got {type(value).__name__}")
    else:
        try:
            x = float(value)
        except OverflowError:  # an int beyond float range (10**400)
            raise ValueError(f"{name} must be a finite number of steps, got {value}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number of steps, got {x}")
    if x < 0.0 or not x.is_integer():
        raise ValueError(f"{name} must be a whole number of steps >= 0, got {x}")
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


#: one native call: (hyper, bucket key, param views, grad views, one list of views per state key)
_Call = Tuple[Dict[str, Any], Any, List[np.ndarray], List[np.ndarray], List[List[np.ndarray]]]

# unbound methods and getters for map() on the hot path
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numpy = torch.Tensor.numpy
_grad = attrgetter("grad")
_dtype = attrgetter("dtype")
_shape = attrgetter("shape")
_item = np.ndarray.item

_TWO24 = 16777216.0  # 2**24: a float32 step counter saturates there (x + 1 == x), as torch's does


class _Bucket:
    """One native call of a cached plan: positions (in the group's stepped parameters) and views."""

    __slots__ = ("pos", "p_arrs", "s_arrs", "step1s", "step_dtype")

    def __init__(self, pos: List[int], p_arrs: List[np.ndarray], s_arrs: List[List[np.ndarray]],
                 step1s: List[np.ndarray], step_dtype: Any) -> None:  # fmt: skip
        self.pos = pos
        self.p_arrs = p_arrs
        self.s_arrs = s_arrs  # one list per state key
        self.step1s = step1s  # 1-element views of the 'step' tensors (empty without a counter)
        self.step_dtype = step_dtype  # NumPy scalar type of every counter of the bucket


class _GroupPlan:
    """What one param group's step looked like last time, with everything needed to check that it still does.

    The plan holds references to every tensor it names, so ``id()`` values cannot be reused
    while it exists and lists of ids compare identity at C speed.
    """

    __slots__ = ("group", "param_ids", "keys", "uses_step", "params", "absent", "indices", "p_ptrs",
                 "checks", "grad_dtypes", "shapes", "nbytes", "buckets", "whole")  # fmt: skip
    group: Dict[str, Any]
    param_ids: List[int]  # id() of every parameter of the group, in order
    keys: Tuple[str, ...]  # state keys
    uses_step: bool
    params: List[Any]  # the parameters stepped (those with a gradient), in order
    absent: List[Any]  # the parameters skipped (grad None): they must still have none
    indices: List[int]  # global index of each stepped parameter (for error messages)
    p_ptrs: List[int]  # data_ptr() of each stepped parameter
    checks: List[Tuple[Any, List[int], List[int]]]  # per state key: (getter, tensor ids, data_ptrs)
    grad_dtypes: List[Any]  # what each gradient's view must look like (the parameter's dtype and shape)
    shapes: List[Tuple[int, ...]]
    nbytes: List[int]
    buckets: List[_Bucket]
    whole: bool  # a single bucket holding every stepped parameter of the group, in order

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class _Plan:
    """The cached bucketing of a whole step (see ``_FusedOptimizer._step_planned``)."""

    __slots__ = ("groups", "intervals")

    def __init__(self, groups: List[_GroupPlan], intervals: Optional[Tuple[np.ndarray, np.ndarray]]) -> None:
        self.groups = groups
        #: sorted written intervals (starts, ends) when a step needs several native calls
        self.intervals = intervals


#: value types cached by ``_group_plan``: immutable, so a value equal to the cached one (and of the
#: same type) is the value that was validated
_PLAIN = frozenset({float, int, bool, str, type(None), np.float64, np.float32, np.int64, np.int32, np.bool_})
_PLAIN_OR_TUPLE = _PLAIN | {tuple}

#: every live optimizer, for the child side of ``fork()`` (weak: the set keeps none alive)
_LIVE: "weakref.WeakSet[_FusedOptimizer]" = weakref.WeakSet()


class _ForkedMidStep:
    """Stands in for the lock of an optimizer that another thread held (inside ``step()``,
    ``load_state_dict()`` or ``add_param_group()``) when the process forked: in the child that call
    never finishes, so the lock would never be released and the state may be half updated. Stepping
    raises instead of hanging; ``load_state_dict()`` replaces the state and makes a new lock."""

    def __enter__(self) -> None:
        raise RuntimeError(
            "this fusedopt.torch optimizer was being stepped (or loaded) by another thread when the process "
            "forked; in this child process that call never completed, so its state may be half updated. "
            "Load a state dict (load_state_dict) or make a new optimizer"
        )

    def __exit__(self, *exc: Any) -> None:  # pragma: no cover - __enter__ always raises
        return None


def _after_fork_in_child() -> None:
    """A lock held by a thread that does not exist in the child is never released: mark it."""
    for opt in list(_LIVE):
        lock = opt.__dict__.get("_lock")
        if lock is None or isinstance(lock, _ForkedMidStep):
            continue
        if lock.acquire(blocking=False):  # free, or held by the forking thread itself (re-entrant)
            lock.release()
        else:
            opt._lock = _ForkedMidStep()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _key_error(key: str, note: str) -> KeyError:
    """torch's ``KeyError(key)`` (same type and message), with a note saying where (Python 3.11+)."""
    err = KeyError(key)
    add_note = getattr(err, "add_note", None)
    if add_note is not None:
        add_note(f"{note}; nothing was loaded")
    return err


class _FusedOptimizer(torch.optim.Optimizer):  # type: ignore[misc,unused-ignore]
    """Shared machinery. Subclasses define the state they keep and one call into fusedopt.functional.

    A parameter listed twice in one group is refused (torch.optim only warns): a fused step would
    update it twice.

    Concurrent calls of ``step()`` (closure included), ``load_state_dict()`` and
    ``add_param_group()`` on one optimizer are serialized by a re-entrant lock, as the NumPy
    classes serialize theirs: eight threads stepping one optimizer take eight whole steps. The lock
    is not part of the pickled state (``__getstate__`` is torch's): ``pickle`` and ``copy.deepcopy``
    give an optimizer with a lock of its own.
    """

    #: whether the state has torch's float ``'step'`` counter
    _HAS_STEP = True
    #: the group keys a loaded state dict must have (torch's step reads them; torch's
    #: ``__setstate__`` fills in the others from the defaults)
    _REQUIRED_GROUP_KEYS: Tuple[str, ...] = ("lr",)
    #: the bucketing of the last step, reused while nothing changes (see _step_planned)
    _plan: Optional["_Plan"]
    _lock: Any  # threading.RLock, or _ForkedMidStep in a forked child (see _after_fork_in_child)

    def __init__(self, params: Any, defaults: Dict[str, Any]) -> None:
        self._lock = threading.RLock()
        _LIVE.add(self)
        self._forget_caches()
        # torch's constructor checks (its order, types and messages), then fusedopt's own, before
        # any group is made; the implementation flags are checked per group, after its parameters
        self._hyper(defaults, construction=True)
        super().__init__(params, defaults)

    # -- subclass interface --------------------------------------------------------------------
    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        """Validated keyword arguments of the functional call for this group (raises on bad values).

        torch.optim's checks come first, in its order, with its exception types and messages (which
        it applies to the constructor's arguments only; here to every group, at every change); then
        fusedopt's own (finite values, ranges the kernels need, bools as flags). ``construction``
        adds the checks torch applies to the constructor's arguments only (Adam's betas types).
        """
        raise NotImplementedError

    def _required_state(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        """The state keys a parameter with state must have (torch's step reads them: KeyError)."""
        return self._state_keys(hyper)

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        """Names of the state tensors (other than 'step') the update reads and writes."""
        raise NotImplementedError

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.contiguous_format)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        """Whether the update depends on the step number (else all step counts share one call)."""
        return True

    def _call(self, hyper: Dict[str, Any], t: Any, P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        """One functional call: parameter, gradient and per-key state views (in ``_state_keys`` order)."""
        raise NotImplementedError

    # -- construction --------------------------------------------------------------------------
    @staticmethod
    def _check_impl_flags(group: Dict[str, Any]) -> None:
        if group.get("fused") and group.get("differentiable", False):
            raise RuntimeError("`fused` does not support `differentiable`")  # torch's check and message
        if group.get("fused") and group.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if group.get("differentiable", False):
            raise ValueError("differentiable=True is not supported by fusedopt.torch (use torch.optim)")
        if group.get("capturable", False):
            raise ValueError("capturable=True is not supported by fusedopt.torch (CPU tensors only)")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a param group (torch semantics); every parameter is checked to be steppable first.

        A parameter listed twice in one group is refused (torch only warns): a fused step would
        update it twice. In two groups it is refused by torch's own check.
        """
        with self._lock:
            self._add_param_group(param_group)

    def _add_param_group(self, param_group: Dict[str, Any]) -> None:
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
        first: Dict[int, int] = {}
        for i, p in enumerate(tensors):
            _check_param(f"params[{start + i}]", p)
            j = first.setdefault(id(p), i)
            if j != i:
                raise ValueError(
                    f"params[{start + i}] is the same tensor as params[{start + j}]: a parameter may be listed only "
                    "once (a fused step would update it twice)"
                )
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_impl_flags(merged)
        self._hyper(merged)
        param_group["params"] = raw
        self._plan = None
        super().add_param_group(param_group)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # (load_state_dict ends here too): a damaged state is refused before anything is replaced
        self._check_loaded(state)
        super().__setstate__(state)
        if "_lock" not in self.__dict__:  # unpickled or deep-copied: a lock of its own
            self._lock = threading.RLock()
            _LIVE.add(self)
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
        #: id(group) -> (group, types of its hyperparameter values, (index, item types) of each
        #: tuple value, the values, (hyper, state keys, uses_step)); see _group_plan
        self._plans: Dict[int, Tuple[Any, ...]] = {}
        #: the group's hyperparameter values, in the order of self.defaults
        self._hget: Optional[Callable[[Dict[str, Any]], Tuple[Any, ...]]] = None
        self._plan = None

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (state is cast to each parameter's dtype; steps stay as saved).

        A damaged state dict is refused with nothing loaded: a parameter with state but no
        ``'step'`` or no state tensor the step reads (``'exp_avg'``, ...), or a group without a
        hyperparameter torch's step reads (``'lr'``, ...), raises torch's ``KeyError(key)``; a
        ``'step'`` that is not a whole number >= 0 (``-5``, ``2.5``, ``inf``, ``nan``) or not a
        one-element float32/float64 tensor (or a number) raises ValueError/TypeError naming it.
        """
        if isinstance(self._lock, _ForkedMidStep):
            self._lock = threading.RLock()  # (forked child) loading replaces the half-updated state
        with self._lock:
            self._forget_caches()
            super().load_state_dict(state_dict)

    def _check_loaded(self, state: Dict[str, Any]) -> None:
        """Refuse a state about to replace this optimizer's (``load_state_dict``, unpickling)."""
        groups, states = state["param_groups"], state["state"]
        defaults = state["defaults"] if "defaults" in state else self.defaults
        entries = []  # (global index, group, state) of every parameter with state
        i = 0
        for group in groups:
            for p in group["params"]:
                st = states.get(p)
                if st is not None and not isinstance(st, dict):
                    raise TypeError(f"state[params[{i}]] must be a dict, got {type(st).__name__}")
                if st:
                    entries.append((i, group, st))
                i += 1
        if self._HAS_STEP:  # torch's __setstate__ reads every 'step' (KeyError) before its step reads the rest
            for i, _, st in entries:
                if "step" not in st:
                    raise _key_error("step", f"state[params[{i}]] has state but no 'step'")
            for i, _, st in entries:
                _check_step_value(f"state[params[{i}]]['step']", st["step"])
        for k_group, group in enumerate(groups):
            for k in self._REQUIRED_GROUP_KEYS:
                if k not in group:
                    raise _key_error(k, f"param_groups[{k_group}] has no {k!r}")
        required: Dict[int, Tuple[str, ...]] = {}
        for i, group, st in entries:
            keys = required.get(id(group))
            if keys is None:
                try:
                    keys = self._required_state(self._hyper({**defaults, **group}))
                except (TypeError, ValueError, RuntimeError):
                    keys = ()  # invalid hyperparameters: the step refuses the group before reading state
                required[id(group)] = keys
            for k in keys:
                if k not in st:
                    raise _key_error(k, f"state[params[{i}]] has state but no {k!r}")

    def _group_plan(self, group: Dict[str, Any]) -> Tuple[Dict[str, Any], Tuple[str, ...], bool]:
        """(functional kwargs, state keys, uses_step) of a group, validated by ``_hyper``.

        Cached while every hyperparameter is equal to, and of the same type as, the value
        validated (so an edited value is validated again before the step writes anything). Only
        immutable values are cached: a list (``betas`` set to ``[0.9, 0.99]``, which can be edited
        in place) or a Tensor (``lr``) is read and validated at every step, as torch reads them.
        """
        get = self._hget
        if get is None:  # (a KeyError for a group without a hyperparameter, as torch's step raises)
            get = self._hget = itemgetter(*self.defaults)
        vals = get(group)
        types = tuple(map(type, vals))
        c = self._plans.get(id(group))
        if c is not None and c[0] is group and c[1] == types:
            for i, inner in c[2]:  # tuples (betas): their items' types before their values
                if tuple(map(type, vals[i])) != inner:
                    break
            else:
                if c[3] == vals:
                    cached: Tuple[Dict[str, Any], Tuple[str, ...], bool] = c[4]
                    return cached
        self._check_impl_flags(group)
        hyper = self._hyper(group)
        plan = (hyper, self._state_keys(hyper), self._uses_step(hyper))
        inner = tuple((i, tuple(map(type, v))) for i, v in enumerate(vals) if type(v) is tuple)
        if _PLAIN_OR_TUPLE.issuperset(types) and all(map(_PLAIN.issuperset, (ts for _, ts in inner))):
            self._plans[id(group)] = (group, types, inner, vals, plan)
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
        with self._lock:  # concurrent steps of one optimizer are serialized (closure included)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self._step_planned():
                self._step_general()
            return loss

    def _step_planned(self) -> bool:
        """The common case, in O(1) Python operations per parameter: the step looks like the last one.

        Same param groups and parameters, the same parameters have a gradient, same parameter and
        state tensors with the same memory, state keys and (for algorithms whose math uses it) equal
        step counts in each bucket. Every assumption of the cached plan is re-checked here with
        identity / data_ptr comparisons of whole lists (C speed); returns False, having changed
        nothing, whenever anything differs, and the general path (which checks and names everything)
        then runs and rebuilds the plan.
        """
        plan = self._plan
        if plan is None or len(self.param_groups) != len(plan.groups):
            return False
        state = self.state
        calls: List[_Call] = []
        counters: List[Tuple[List[np.ndarray], List[float]]] = []
        g_ptrs: List[List[int]] = []
        for group, gp in zip(self.param_groups, plan.groups):
            if group is not gp.group or [*map(id, group["params"])] != gp.param_ids:
                return False
            hyper, keys, uses_step = self._group_plan(group)  # revalidates edited hyperparameters
            if keys != gp.keys or uses_step != gp.uses_step:
                return False  # the state layout or the bucketing changes
            for p in gp.absent:
                if p.grad is not None:
                    return False
            # (map() over unbound methods: the cheapest per-element loop Python has)
            ps = gp.params
            # the parameters: same memory, still contiguous (p.data = ... changes the pointer)
            if [*map(_data_ptr, ps)] != gp.p_ptrs or not all(map(_is_contiguous, ps)):
                return False
            # the state: the very tensors of the plan (same objects, same memory) under each key
            sts = [*map(state.get, ps)]
            try:
                for get_k, ids, ptrs in gp.checks:
                    ts = [*map(get_k, sts)]  # KeyError, or TypeError for a missing state dict
                    if [*map(id, ts)] != ids or [*map(_data_ptr, ts)] != ptrs:
                        return False
                gs = [*map(_grad, ps)]
                # Tensor.numpy() refuses (RuntimeError/TypeError) what cannot be viewed without a copy:
                # requires_grad, sparse, not on the CPU, negated/conjugated; None is no Tensor (TypeError)
                g_arrs = [*map(_numpy, gs)]
            except (KeyError, TypeError, AttributeError, RuntimeError):
                return False
            if (
                [*map(_dtype, g_arrs)] != gp.grad_dtypes
                or [*map(_shape, g_arrs)] != gp.shapes
                or not all(map(_is_contiguous, gs))
            ):
                return False
            if plan.intervals is not None:
                g_ptrs.append([*map(_data_ptr, gs)])
            for b in gp.buckets:
                t: Any = False  # SGD: no buffer is created by this step
                if b.step_dtype is not None:
                    old = [*map(_item, b.step1s)]
                    if max(old) + 1.0 < _TWO24:
                        new = [x + 1.0 for x in old]
                    else:  # torch increments in the counter's dtype: a float32 count saturates at 2**24
                        one = b.step_dtype(1.0)
                        new = [float(b.step_dtype(x) + one) for x in old]
                    if uses_step:
                        if old.count(old[0]) != len(old):
                            return False  # step counts edited by hand: re-bucket
                        t = int(new[0])
                    else:
                        t = None
                    counters.append((b.step1s, new))
                gb = g_arrs if gp.whole else [g_arrs[i] for i in b.pos]
                calls.append((hyper, t, b.p_arrs, gb, b.s_arrs))
        if plan.intervals is not None:
            # Several native calls: the new gradients must not overlap anything written (the
            # parameters and state were checked when the plan was made and have not moved).
            s, e = plan.intervals
            starts = np.asarray([q for ptrs in g_ptrs for q in ptrs], dtype=np.uint64)
            nbytes = np.asarray([n for gp in plan.groups for n in gp.nbytes], dtype=np.uint64)
            itemsizes = np.asarray([d.itemsize for gp in plan.groups for d in gp.grad_dtypes], dtype=np.uint64)
            indices = [i for gp in plan.groups for i in gp.indices]
            self._check_grads(s, e, starts, nbytes, itemsizes, indices)
        for hyper, t, P, G, S in calls:
            self._call(hyper, t, P, G, S)
        for step1s, new in counters:
            for a, v in zip(step1s, new):
                a[0] = v
        return True

    def _step_general(self) -> None:
        """Check everything (naming the culprit), stage missing state, step, commit, make the plan."""
        calls: List[Tuple[Dict[str, Any], Any, List[_Entry]]] = []
        #: per group: (group, state keys, uses_step, stepped entries, parameters without a gradient)
        seen: List[Tuple[Dict[str, Any], Tuple[str, ...], bool, List[_Entry], List[Any]]] = []
        views, state, has_step = self._views, self.state, self._HAS_STEP
        index = 0
        for group in self.param_groups:
            hyper, keys, uses_step = self._group_plan(group)
            buckets: Dict[Any, List[_Entry]] = {}
            stepped: List[_Entry] = []
            absent: List[Any] = []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    absent.append(p)
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
                    if new >= _TWO24:  # a float32 counter saturates there, as torch's
                        new = float(step1.dtype.type(old) + step1.dtype.type(1.0))
                    key = (item[0].dtype, int(new) if uses_step else None)
                else:
                    new = None
                    key = (item[0].dtype, bool(staged))  # SGD: buffers created now take b = g
                entry = (p, index) + item + (new,)
                buckets.setdefault(key, []).append(entry)
                stepped.append(entry)
                index += 1
            calls.extend((hyper, key, items) for key, items in buckets.items())
            seen.append((group, keys, uses_step, stepped, absent))
        if len(calls) > 1:
            # Several native calls: whatever the core would refuse in a later call must be found
            # now, before the first call writes (dtype/shape/contiguity were checked above).
            self._check_disjoint([it for _, _, items in calls for it in items])
        for hyper, key, items in calls:
            self._call(hyper, key[1], [it[2] for it in items], [it[3] for it in items],
                       [[it[4][k] for it in items] for k in range(len(items[0][4]))])  # fmt: skip
        for _, _, items in calls:
            for it in items:
                if it[6]:
                    self.state[it[0]].update(it[6])
                if it[5] is not None:
                    it[5][0] = it[8]
        self._plan = self._make_plan(seen)

    def _make_plan(self, seen: List[Tuple[Dict[str, Any], Tuple[str, ...], bool, List[_Entry], List[Any]]]) -> Optional[_Plan]:
        """The plan of the step just committed by the general path (None when it cannot be cached)."""
        groups = []
        n_buckets = 0
        for group, keys, uses_step, stepped, absent in seen:
            if not isinstance(group["params"], list):
                return None
            ps = [it[0] for it in stepped]
            ents = [self._views[id(p)] for p in ps]  # made or validated by this step
            checks = [(itemgetter(k), [id(e[2][i]) for e in ents], [e[3][i] for e in ents]) for i, k in enumerate(keys)]
            if self._HAS_STEP:
                checks.append((itemgetter("step"), [id(e[4]) for e in ents], [e[5] for e in ents]))
            by_key: Dict[Any, List[int]] = {}
            for i, it in enumerate(stepped):
                # the counters were just committed: equal counts stay equal while every step is planned
                by_key.setdefault((it[2].dtype, it[8] if uses_step else None), []).append(i)
            buckets = []
            for pos in by_key.values():
                step1s = [ents[i][8] for i in pos] if self._HAS_STEP else []
                dts = {a.dtype for a in step1s}
                if len(dts) > 1:
                    return None  # float32 and float64 counters in one call: left to the general path
                buckets.append(_Bucket(pos, [ents[i][6] for i in pos], [[ents[i][7][k] for i in pos] for k in range(len(keys))],
                                       step1s, dts.pop().type if dts else None))  # fmt: skip
            n_buckets += len(buckets)
            groups.append(_GroupPlan(
                group=group, param_ids=[*map(id, group["params"])], keys=keys, uses_step=uses_step,
                params=ps, absent=absent, indices=[it[1] for it in stepped], p_ptrs=[e[1] for e in ents],
                checks=checks, grad_dtypes=[e[6].dtype for e in ents], shapes=[e[6].shape for e in ents],
                nbytes=[e[6].nbytes for e in ents], buckets=buckets, whole=len(buckets) == 1,
            ))  # fmt: skip
        intervals = None
        if n_buckets > 1:
            try:
                intervals = self._write_intervals([(i, e[1:2] + e[3], (e[6],) + e[7]) for gp in groups
                                                   for i, e in zip(gp.indices, (self._views[id(p)] for p in gp.params))])  # fmt: skip
            except ValueError:  # pragma: no cover - the general path checked this before stepping
                return None
        return _Plan(groups, intervals)

    @staticmethod
    def _write_intervals(bufs: List[Tuple[int, Tuple[int, ...], Tuple[np.ndarray, ...]]]) -> Tuple[np.ndarray, np.ndarray]:
        """Sorted starts and ends of the written buffers, given as (param index, data_ptrs, views);
        ValueError (naming the parameter) if two of them overlap."""
        w_start, w_end, w_index = [], [], []
        for index, ptrs, arrs in bufs:
            for ptr, a in zip(ptrs, arrs):
                if a.nbytes:
                    w_start.append(ptr)
                    w_end.append(ptr + a.nbytes)
                    w_index.append(index)
        s = np.asarray(w_start, dtype=np.uint64)
        e = np.asarray(w_end, dtype=np.uint64)
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
        if s.size > 1:
            bad = np.flatnonzero(s[1:] < np.maximum.accumulate(e)[:-1])
            if bad.size:
                i = w_index[int(order[bad[0] + 1])]
                raise ValueError(f"params[{i}] or its state shares memory with another parameter or state")
        return s, e

    @staticmethod
    def _check_grads(s: np.ndarray, e: np.ndarray, g_s: np.ndarray, g_n: np.ndarray, g_item: np.ndarray,
                     indices: List[int]) -> None:  # fmt: skip
        """Every gradient (start, nbytes, itemsize) is aligned and overlaps no written interval [s, e)."""
        unaligned = np.flatnonzero(g_s % g_item)
        if unaligned.size:
            raise ValueError(f"params[{indices[int(unaligned[0])]}].grad is not aligned to its dtype")
        if not s.size:
            return
        g_e = g_s + g_n
        pos = np.searchsorted(s, g_e, side="left").astype(np.int64) - 1
        hit = (pos >= 0) & (g_e > g_s)
        hit[hit] = e[pos[hit]] > g_s[hit]  # (disjoint intervals sorted by start have sorted ends)
        if hit.any():
            raise ValueError(f"params[{indices[int(np.flatnonzero(hit)[0])]}].grad shares memory with a parameter or state")

    @classmethod
    def _check_disjoint(cls, items: List[_Entry]) -> None:
        """No written buffer (parameter or state) overlaps any other buffer of the step; grads aligned."""
        s, e = cls._write_intervals([(it[1], it[7], (it[2],) + it[4]) for it in items])
        gs = [it[3] for it in items]
        cls._check_grads(s, e,
                         np.asarray([a.__array_interface__["data"][0] for a in gs], dtype=np.uint64),
                         np.asarray([a.nbytes for a in gs], dtype=np.uint64),
                         np.asarray([a.itemsize for a in gs], dtype=np.uint64),
                         [it[1] for it in items])  # fmt: skip


def _bool(name: str, v: Any) -> bool:
    return check.flag(name, v)


class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, L2 weight decay, maximize).

    State: ``'momentum_buffer'`` (only with ``momentum != 0``), set to the gradient on the first step
    as in torch. No step counter.
    """

    _HAS_STEP = False
    _REQUIRED_GROUP_KEYS = ("lr", "momentum", "dampening", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
        weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
        foreach: Optional[bool] = None, differentiable: bool = False, fused: Optional[bool] = None,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)  # fmt: skip
        super().__init__(params, defaults)

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        lr_v, mom_v, damp_v, wd_v = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        # torch.optim.SGD's checks (lr < 0 lets NaN through: fusedopt refuses it below)
        lr = _num("lr", lr_v)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr_v}")
        momentum = _num("momentum", mom_v)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {mom_v}")
        wd = _num("weight_decay", wd_v)
        if wd < 0.0:
            raise ValueError(f"Invalid weight_decay value: {wd_v}")
        dampening = _num("dampening", damp_v)
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return dict(
            lr=_finite("lr", lr_v, lr),
            momentum=_finite("momentum", mom_v, momentum),
            dampening=check.unit_interval_closed("dampening", _finite("dampening", damp_v, dampening)),
            weight_decay=_finite("weight_decay", wd_v, wd),
            nesterov=_bool("nesterov", group["nesterov"]),
            maximize=_bool("maximize", group["maximize"]),
        )

    def _required_state(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ()  # torch starts a missing momentum buffer at the gradient, as on the first step

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        # written (b = g) by the first step, as torch's fused SGD does
        return torch.empty_like(p, memory_format=torch.contiguous_format)

    def _call(self, hyper: Dict[str, Any], first_step: Any, P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        # the bucket key of SGD is the first-step flag (buffers created in this step), not a step number
        F.sgd(P, G, S[0] if hyper["momentum"] != 0 else None, first_step=bool(first_step), **hyper)


class Momentum(_FusedOptimizer):
    """Momentum as an exponential moving average of gradients (Ng): :func:`fusedopt.functional.momentum`.

    ``v = beta*v + (1-beta)*g; p -= lr*v`` (``lr/(1-beta**t)`` with ``bias_correction``). Not in
    torch.optim: ``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)`` matches it only for a constant
    learning rate. State: ``'step'`` (0-dim float tensor, as torch's) and ``'velocity'`` (zeros).
    """

    _REQUIRED_GROUP_KEYS = ("lr", "beta", "weight_decay", "bias_correction")

    def __init__(self, params: Any, lr: float, beta: float = 0.9, weight_decay: float = 0,
                 bias_correction: bool = False) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction))

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        lr_v, beta_v, wd_v = group["lr"], group["beta"], group["weight_decay"]
        # not in torch.optim: its checks in torch's style
        lr = _num("lr", lr_v)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr_v}")
        beta = _num("beta", beta_v)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta value: {beta_v}")
        wd = _num("weight_decay", wd_v)
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd_v}")
        return dict(
            lr=_finite("lr", lr_v, lr),
            beta=_finite("beta", beta_v, beta),
            weight_decay=_finite("weight_decay", wd_v, wd),
            bias_correction=_bool("bias_correction", group["bias_correction"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("velocity",)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        return bool(hyper["bias_correction"])

    def _call(self, hyper: Dict[str, Any], t: Optional[int], P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        F.momentum(P, G, S[0], step=t if t is not None else 1, **hyper)


class RMSprop(_FusedOptimizer):
    """``torch.optim.RMSprop`` (eps outside the root, centered, momentum, L2 weight decay, maximize).

    State: ``'step'``, ``'square_avg'``, ``'momentum_buffer'`` (momentum > 0), ``'grad_avg'``
    (centered), zeros, created on the first step as in torch.
    """

    _REQUIRED_GROUP_KEYS = ("lr", "alpha", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
        momentum: float = 0, centered: bool = False, capturable: bool = False, foreach: Optional[bool] = None,
        maximize: bool = False, differentiable: bool = False,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)  # fmt: skip
        super().__init__(params, defaults)

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        lr_v, alpha_v, eps_v = group["lr"], group["alpha"], group["eps"]
        wd_v, mom_v = group["weight_decay"], group["momentum"]
        # torch.optim.RMSprop's checks
        lr = _num("lr", lr_v)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr_v}")
        eps = _num("eps", eps_v)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps_v}")
        momentum = _num("momentum", mom_v)
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {mom_v}")
        wd = _num("weight_decay", wd_v)
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd_v}")
        alpha = _num("alpha", alpha_v)
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha_v}")
        return dict(
            lr=_finite("lr", lr_v, lr),
            # alpha >= 1 lets the average of squares go negative (a NaN update): fusedopt refuses it
            alpha=check.unit_interval("alpha", _finite("alpha", alpha_v, alpha)),
            eps=_finite("eps", eps_v, eps),
            weight_decay=_finite("weight_decay", wd_v, wd),
            momentum=_finite("momentum", mom_v, momentum),
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

    def _call(self, hyper: Dict[str, Any], t: Any, P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        k = 1
        bufs = gavg = None
        if hyper["momentum"] > 0:
            bufs = S[k]
            k += 1
        if hyper["centered"]:
            gavg = S[k]
        F.rmsprop(P, G, S[0], gavg, bufs, **hyper)


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` (amsgrad over the raw ``v``, L2 or decoupled weight decay, maximize).

    State: ``'step'`` (0-dim float32 tensor), ``'exp_avg'``, ``'exp_avg_sq'``,
    ``'max_exp_avg_sq'`` (amsgrad), zeros, created on the first step as in torch.
    """

    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

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

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        lr_v, betas, eps_v, wd_v = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        # torch.optim.Adam's checks; a Tensor lr with foreach (and not capturable) is a ValueError
        # of its constructor, a RuntimeError of its step
        foreach_only = bool(group.get("foreach")) and not group.get("capturable")
        if isinstance(lr_v, torch.Tensor) and foreach_only:
            msg = "lr as a Tensor is not supported for capturable=False and foreach=True"
            raise ValueError(msg) if construction else RuntimeError(msg)
        lr = _num("lr", lr_v)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr_v}")
        eps = _num("eps", eps_v)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps_v}")
        try:
            b1_v, b2_v = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        b1 = _num("betas[0]", b1_v)
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {b1_v}")
        b2 = _num("betas[1]", b2_v)
        if not 0.0 <= b2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {b2_v}")
        wd = _num("weight_decay", wd_v)
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd_v}")
        if construction:
            if not (isinstance(b1_v, float) and isinstance(b2_v, float)
                    or isinstance(b1_v, torch.Tensor) and isinstance(b2_v, torch.Tensor)):  # fmt: skip
                raise ValueError("betas must be either both floats or both Tensors")
            for k, b in enumerate((b1_v, b2_v)):
                if isinstance(b, torch.Tensor) and foreach_only:
                    raise ValueError(f"betas[{k}] as a Tensor is not supported for capturable=False and foreach=True")
        return dict(
            lr=_finite("lr", lr_v, lr),
            beta1=_finite("betas[0]", b1_v, b1),
            beta2=_finite("betas[1]", b2_v, b2),
            eps=_finite("eps", eps_v, eps),
            weight_decay=_finite("weight_decay", wd_v, wd),
            amsgrad=_bool("amsgrad", group["amsgrad"]),
            maximize=_bool("maximize", group["maximize"]),
            decoupled_weight_decay=_bool("decoupled_weight_decay", group["decoupled_weight_decay"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _call(self, hyper: Dict[str, Any], t: int, P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        F.adam(P, G, S[0], S[1], S[2] if hyper["amsgrad"] else None, step=t, **hyper)


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

    _REQUIRED_GROUP_KEYS = ("lr", "lr_decay", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
        initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: Optional[bool] = None, *,
        maximize: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)  # fmt: skip
        super().__init__(params, defaults)

    def _add_param_group(self, param_group: Dict[str, Any]) -> None:
        super()._add_param_group(param_group)
        group = self.param_groups[-1]
        with torch.no_grad():
            for p in group["params"]:
                st = self.state[p]
                st["step"] = torch.tensor(0.0, dtype=_step_dtype(group))
                st["sum"] = self._new_state("sum", p, group)

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        return torch.full_like(p, float(group["initial_accumulator_value"]), memory_format=torch.contiguous_format)

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        lr_v, decay_v, wd_v = group["lr"], group["lr_decay"], group["weight_decay"]
        init_v, eps_v = group["initial_accumulator_value"], group["eps"]
        # torch.optim.Adagrad's checks
        lr = _num("lr", lr_v)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr_v}")
        lr_decay = _num("lr_decay", decay_v)
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {decay_v}")
        wd = _num("weight_decay", wd_v)
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd_v}")
        init = _num("initial_accumulator_value", init_v)
        if not 0.0 <= init:
            raise ValueError(f"Invalid initial_accumulator_value value: {init_v}")
        eps = _num("eps", eps_v)
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps_v}")
        _finite("initial_accumulator_value", init_v, init)
        return dict(
            lr=_finite("lr", lr_v, lr),
            lr_decay=_finite("lr_decay", decay_v, lr_decay),
            weight_decay=_finite("weight_decay", wd_v, wd),
            eps=_finite("eps", eps_v, eps),
            maximize=_bool("maximize", group["maximize"]),
        )

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        return ("sum",)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        return bool(hyper["lr_decay"] != 0)

    def _call(self, hyper: Dict[str, Any], t: Optional[int], P: List[np.ndarray], G: List[np.ndarray],
              S: List[List[np.ndarray]]) -> None:  # fmt: skip
        F.adagrad(P, G, S[0], step=t if t is not None else 1, **hyper)
