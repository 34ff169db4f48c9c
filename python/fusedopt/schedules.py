r"""Learning-rate schedules for fusedopt optimizers, with torch.optim.lr_scheduler's interface.

A scheduler sets ``group["lr"]`` of every param group of an optimizer, once per call of
:meth:`~LRScheduler.step` (one step, or one epoch: the unit is yours). It works with every
fusedopt optimizer (and with anything else whose ``param_groups`` is a list of dicts with an
``"lr"``, e.g. a ``torch.optim`` optimizer). Without an optimizer (``optimizer=None`` and
``base_lr=``) it is just the schedule's math: :meth:`~LRScheduler.lr_at`, :meth:`~LRScheduler.get_lr`.

Conventions (those of ``torch.optim.lr_scheduler``):

* Each param group keeps its own base learning rate ``lr_0``: ``group["lr"]`` when the scheduler
  is made, stored in the group as ``group["initial_lr"]``. If the group already has an
  ``"initial_lr"`` (a scheduler was made on this optimizer before) that value is the base.
* ``last_epoch`` counts the steps taken. The constructor applies step 0 (``last_epoch == 0``,
  ``lr = lr_t(0)``); each :meth:`~LRScheduler.step` adds one and writes ``lr_t(last_epoch)``.
  Typical loop: ``opt.step(grads); sched.step()``.
* :meth:`~LRScheduler.get_last_lr` returns the learning rates the last step wrote (one per group).
* :meth:`~LRScheduler.state_dict` is a plain dict of Python numbers, strings and lists;
  :meth:`~LRScheduler.load_state_dict` checks all of it first, raises ``ValueError`` on anything
  malformed (leaving the scheduler unchanged) and writes the restored learning rates into the
  optimizer's groups.

Unlike torch's "chainable" recursive forms (``lr ← lr·γ``), every schedule here except
:class:`ReduceLROnPlateau` is a closed form of ``(lr_0, t)``: no rounding accumulates, and an lr
edited by hand between steps is overwritten by the next step (torch would carry the edit on).
The sequences equal torch's to within a few ulps.

Schedules (exact formulas in each docstring; ``t = last_epoch``; torch / optax / Keras names):

* :class:`ExponentialLR`: ``lr_0·γ^t`` (or ``γ^(t/d)``, ``γ^⌊t/d⌋``) — ExponentialLR /
  exponential_decay / ExponentialDecay;
* :class:`StepLR`: ``lr_0·γ^⌊t/step_size⌋`` — StepLR / exponential_decay(staircase=True) /
  ExponentialDecay(staircase=True);
* :class:`MultiStepLR`: ``lr_0·γ^(number of milestones <= t)`` — MultiStepLR /
  piecewise_constant_schedule / PiecewiseConstantDecay;
* :class:`LinearLR`: ``lr_0·(s + (e − s)·min(t, n)/n)`` (linear warm-up) — LinearLR /
  linear_schedule / —;
* :class:`WarmupCosine`: linear warm-up, cosine decay to ``min_lr``, then constant — LinearLR then
  CosineAnnealingLR / warmup_cosine_decay_schedule / CosineDecay(warmup_target=...);
* :class:`InverseTimeLR`: ``lr_0/(1 + k·t)`` (or ``t/d``, ``⌊t/d⌋``) — none / none / InverseTimeDecay;
* :class:`ReduceLROnPlateau`: ``lr·factor`` when a metric stops improving — ReduceLROnPlateau /
  contrib.reduce_on_plateau / callbacks.ReduceLROnPlateau;
* :class:`SequentialLR`: schedules one after another, each restarted at its milestone —
  SequentialLR / join_schedules / none;
* :class:`ChainedScheduler`: schedules applied on top of each other — ChainedScheduler.

docs/SCHEDULES.md has the full table and the differences from each framework.
"""

from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple, Union

from . import _validation as check

__all__ = [
    "LRScheduler",
    "ExponentialLR",
    "StepLR",
    "MultiStepLR",
    "LinearLR",
    "WarmupCosine",
    "InverseTimeLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
]

Number = Union[int, float]
LrArg = Union[Number, Sequence[Number]]


# -- argument checks (messages name the argument) --------------------------------------------------
# Numbers, flags: the package's shared checks (fusedopt._validation).
_real, _non_negative, _positive, _flag = check.real, check.non_negative, check.positive, check.flag


def _real_or_inf(name: str, value: Any) -> float:
    """A real number that may be infinite (ReduceLROnPlateau's ``best`` starts at ±inf)."""
    if isinstance(value, float) and math.isinf(value):
        return value
    return _real(name, value)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    n = int(value)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def _choice(name: str, value: Any, options: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _milestones(name: str, value: Any) -> List[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of ints, got {type(value).__name__}")
    out = [_int(f"{name}[{i}]", m, 1) for i, m in enumerate(value)]
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            raise ValueError(f"{name} must be strictly increasing, got {out}")
    return out


def _per_group(name: str, value: Any, n: int) -> Union[float, List[float]]:
    """A non-negative number, or a list of one per param group."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} param groups")
        return [_non_negative(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return _non_negative(name, value)


def _expand(value: Union[float, List[float]], n: int) -> List[float]:
    return list(value) if isinstance(value, list) else [value] * n


def _lr_list(name: str, value: Any) -> List[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of numbers, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    return [_non_negative(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _param_groups(optimizer: Any) -> List[MutableMapping[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, MutableMapping) for g in groups):
        raise TypeError(
            f"optimizer must have param_groups (a list of dicts with an 'lr'), got {type(optimizer).__name__}"
        )
    if not groups:
        raise ValueError("optimizer has no param groups")
    for i, g in enumerate(groups):
        if "lr" not in g:
            raise ValueError(f"optimizer.param_groups[{i}] has no 'lr'")
    return groups


def _base_lrs(optimizer: Any, base_lr: Optional[LrArg], resume: bool) -> List[float]:
    """Base learning rates, one per group, read without modifying anything."""
    if optimizer is None:
        if base_lr is None:
            raise TypeError("base_lr is required when optimizer is None")
        if isinstance(base_lr, (list, tuple)):
            return _lr_list("base_lr", base_lr)
        return [_non_negative("base_lr", base_lr)]
    if base_lr is not None:
        raise ValueError("give either an optimizer or base_lr, not both (the base lr comes from group['lr'])")
    out = []
    for i, g in enumerate(_param_groups(optimizer)):
        if "initial_lr" in g:
            out.append(_non_negative(f"optimizer.param_groups[{i}]['initial_lr']", g["initial_lr"]))
        elif resume:
            raise ValueError(
                f"optimizer.param_groups[{i}] has no 'initial_lr': last_epoch != -1 resumes a schedule "
                "and needs the base lr a scheduler stored there"
            )
        else:
            out.append(_non_negative(f"optimizer.param_groups[{i}]['lr']", g["lr"]))
    return out


class _SchedulerBase:
    """What every scheduler has: the optimizer (or None), last_epoch, get_last_lr, state dicts."""

    optimizer: Any
    last_epoch: int
    _last_lr: List[float]

    def get_last_lr(self) -> List[float]:
        """The learning rates written by the last step (or the constructor), one per param group."""
        return list(self._last_lr)

    def _check_groups(self, n: int) -> Optional[List[MutableMapping[str, Any]]]:
        if self.optimizer is None:
            return None
        groups = _param_groups(self.optimizer)
        if len(groups) != n:
            raise ValueError(
                f"the optimizer has {len(groups)} param groups but {type(self).__name__} was made for {n}"
            )
        return groups

    # -- state dicts ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _parse_state(self, state_dict: Any) -> List[Tuple[Any, Dict[str, Any]]]:
        """Validate a state dict; return (object, new attributes) pairs to commit. Changes nothing."""
        raise NotImplementedError

    def _restore(self) -> None:
        """After new attributes are committed: recompute and write the learning rates."""
        raise NotImplementedError

    def _check_keys(self, state_dict: Any, keys: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}")
        unknown = sorted(set(state_dict) - set(keys), key=str)
        if unknown:
            raise ValueError(f"state_dict has unknown key(s) {unknown} for {type(self).__name__}")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"state_dict is for a {state_dict['type']!r}, not a {type(self).__name__!r}")
        return state_dict

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict` (counters, base lrs and hyperparameters).

        Everything is checked first: on malformed input ``ValueError`` is raised and the scheduler
        (and its optimizer) are left unchanged. The restored learning rates are written into the
        optimizer's param groups, so the schedule continues exactly where it was saved whether the
        optimizer's own state dict is loaded before or after.
        """
        try:
            updates = self._parse_state(state_dict)
        except TypeError as exc:
            raise ValueError(f"state_dict: {exc}") from None
        saved = [(obj, dict(obj.__dict__)) for obj, _ in updates]
        try:
            for obj, attrs in updates:
                obj.__dict__.update(attrs)
            self._restore()
        except BaseException as exc:
            for obj, old in saved:
                obj.__dict__.clear()
                obj.__dict__.update(old)
            if isinstance(exc, OverflowError):  # e.g. gamma**last_epoch beyond the float range
                raise ValueError(f"state_dict: the learning rate it describes overflows ({exc})") from None
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class LRScheduler(_SchedulerBase):
    r"""Base class of the closed-form schedules: ``lr_t = f(lr_0, t)`` for each param group.

    Subclasses define :meth:`_value` (the formula) and their hyperparameters (``_HYPER``,
    :meth:`_check_hyper`). Arguments common to all:

    * ``optimizer``: an object with ``param_groups`` (list of dicts with ``"lr"``), or ``None``;
    * ``base_lr`` (keyword, only with ``optimizer=None``): ``lr_0``, a number or one per "group";
    * ``last_epoch`` (keyword, default -1): -1 starts the schedule; ``k >= 0`` resumes it at step
      ``k + 1`` (like torch, this needs ``group["initial_lr"]`` in every group).
    """

    _HYPER: Tuple[str, ...] = ()
    base_lrs: List[float]

    def __init__(self, optimizer: Any, hyper: Mapping[str, Any], *, base_lr: Optional[LrArg] = None,
                 last_epoch: int = -1) -> None:  # fmt: skip
        last_epoch = _int("last_epoch", last_epoch, -1)
        bases = _base_lrs(optimizer, base_lr, resume=last_epoch != -1)
        checked = self._check_hyper(dict(hyper), bases)
        # nothing has been modified up to here: a bad argument leaves the optimizer untouched
        self.optimizer = optimizer
        self.base_lrs = bases
        self.__dict__.update(checked)
        if optimizer is not None:
            for g, b in zip(optimizer.param_groups, bases):
                g.setdefault("initial_lr", b)
        self.last_epoch = last_epoch
        self._last_lr = []
        self.step()

    # -- subclass interface -------------------------------------------------------------------------
    def _check_hyper(self, hyper: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        """Validate hyperparameters (the constructor's and a loaded state dict's)."""
        raise NotImplementedError

    def _value(self, i: int, base: float, t: int) -> float:
        """The learning rate of group ``i`` with base lr ``base`` at step ``t >= 0``."""
        raise NotImplementedError

    # -- the schedule ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> List[float]:
        """The learning rates (one per group) at step ``step >= 0``; changes nothing."""
        t = _int("step", step, 0)
        out = [float(self._value(i, b, t)) for i, b in enumerate(self.base_lrs)]
        for i, lr in enumerate(out):
            if not math.isfinite(lr) or lr < 0.0:
                raise ValueError(f"{type(self).__name__}: the learning rate of group {i} at step {t} is {lr}")
        return out

    def get_lr(self) -> List[float]:
        """The learning rates at the current step ``last_epoch`` (closed form)."""
        return self.lr_at(self.last_epoch)

    def step(self) -> None:
        """Advance one step (or epoch) and write the new learning rate into every param group."""
        lrs = self.lr_at(self.last_epoch + 1)
        groups = self._check_groups(len(lrs))
        if groups is not None:
            for g, lr in zip(groups, lrs):
                g["lr"] = lr
        self.last_epoch += 1
        self._last_lr = lrs

    # -- state dicts ----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """``{"type", "last_epoch", "base_lrs", <hyperparameters>}``: plain Python values (copies)."""
        out: Dict[str, Any] = {"type": type(self).__name__, "last_epoch": self.last_epoch,
                               "base_lrs": list(self.base_lrs)}  # fmt: skip
        for k in self._HYPER:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, list) else v
        return out

    def _parse_state(self, state_dict: Any) -> List[Tuple[Any, Dict[str, Any]]]:
        sd = self._check_keys(state_dict, ("type", "last_epoch", "base_lrs") + self._HYPER)
        last_epoch = _int("last_epoch", sd["last_epoch"], 0)
        bases = _lr_list("base_lrs", sd["base_lrs"])
        if len(bases) != len(self.base_lrs):
            raise ValueError(f"state_dict has {len(bases)} base_lrs but the scheduler has {len(self.base_lrs)} groups")
        hyper = self._check_hyper({k: sd[k] for k in self._HYPER}, bases)
        return [(self, {"last_epoch": last_epoch, "base_lrs": bases, **hyper})]

    def _restore(self) -> None:
        lrs = self.get_lr()
        groups = self._check_groups(len(lrs))
        if groups is not None:
            for g, b, lr in zip(groups, self.base_lrs, lrs):
                g["initial_lr"] = b
                g["lr"] = lr
        self._last_lr = lrs


# -- the schedules --------------------------------------------------------------------------------------
def _check_decay_steps(h: Dict[str, Any]) -> Dict[str, Any]:
    """``decay_steps`` (an int >= 1 or a float > 0) and ``staircase`` of the decay schedules."""
    d = h["decay_steps"]
    h["decay_steps"] = _int("decay_steps", d, 1) if isinstance(d, numbers.Integral) else _positive("decay_steps", d)
    h["staircase"] = _flag("staircase", h["staircase"])
    return h


def _decay_exponent(t: int, decay_steps: Number, staircase: bool) -> Number:
    """``t/decay_steps``, floored with ``staircase`` (TF/Keras/optax decay schedules)."""
    if staircase:
        return math.floor(t / decay_steps)
    return t if decay_steps == 1 else t / decay_steps


class ExponentialLR(LRScheduler):
    r"""Exponential decay: ``lr_t = lr_0 · γ^e`` with ``e = t / decay_steps`` (``⌊t / decay_steps⌋``
    when ``staircase``). The default ``decay_steps=1`` is the textbook form ``lr_0·γ^t``.

    Equivalents: ``torch.optim.lr_scheduler.ExponentialLR(opt, gamma)`` (decay_steps=1);
    ``optax.exponential_decay(lr_0, transition_steps=decay_steps, decay_rate=γ, staircase=...)``;
    Keras ``ExponentialDecay(lr_0, decay_steps, decay_rate=γ, staircase=...)``.
    With ``staircase=True`` and an integer ``decay_steps`` this equals :class:`StepLR`.

    ``gamma > 0`` (``> 1`` grows the lr), ``decay_steps > 0`` (int or float).
    """

    _HYPER = ("gamma", "decay_steps", "staircase")
    gamma: float
    decay_steps: Number
    staircase: bool

    def __init__(self, optimizer: Any, gamma: float, *, decay_steps: Number = 1, staircase: bool = False,
                 base_lr: Optional[LrArg] = None, last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(gamma=gamma, decay_steps=decay_steps, staircase=staircase),
                         base_lr=base_lr, last_epoch=last_epoch)  # fmt: skip

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["gamma"] = _positive("gamma", h["gamma"])
        return _check_decay_steps(h)

    def _value(self, i: int, base: float, t: int) -> float:
        e = _decay_exponent(t, self.decay_steps, self.staircase)
        return base * self.gamma**e


class StepLR(LRScheduler):
    r"""Step decay: ``lr_t = lr_0 · γ^⌊t / step_size⌋`` (times γ every ``step_size`` steps).

    Equivalents: ``torch.optim.lr_scheduler.StepLR(opt, step_size, gamma)``;
    ``optax.exponential_decay(lr_0, step_size, γ, staircase=True)``; Keras
    ``ExponentialDecay(lr_0, step_size, γ, staircase=True)``. ``step_size >= 1``, ``gamma > 0``.
    """

    _HYPER = ("step_size", "gamma")
    step_size: int
    gamma: float

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1, *, base_lr: Optional[LrArg] = None,
                 last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(step_size=step_size, gamma=gamma), base_lr=base_lr, last_epoch=last_epoch)

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["step_size"] = _int("step_size", h["step_size"], 1)
        h["gamma"] = _positive("gamma", h["gamma"])
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        return base * self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    r"""Multi-step decay: ``lr_t = lr_0 · γ^n(t)``, ``n(t)`` = the number of milestones ``<= t``.

    Equivalents: ``torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma)`` (whose
    milestones may repeat; here they must be strictly increasing ints >= 1);
    ``optax.piecewise_constant_schedule(lr_0, {m - 1: γ for m in milestones})``; Keras
    ``PiecewiseConstantDecay(boundaries=[m - 1 for m in milestones], values=[lr_0·γ^k ...])``
    (optax and Keras switch *after* a boundary ``b``, at step ``b + 1``; torch and fusedopt *at*
    the milestone).
    """

    _HYPER = ("milestones", "gamma")
    milestones: List[int]
    gamma: float

    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1, *,
                 base_lr: Optional[LrArg] = None, last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(milestones=milestones, gamma=gamma), base_lr=base_lr, last_epoch=last_epoch)

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["milestones"] = _milestones("milestones", h["milestones"])
        h["gamma"] = _positive("gamma", h["gamma"])
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        return base * self.gamma ** bisect_right(self.milestones, t)


class LinearLR(LRScheduler):
    r"""Linear ramp of the lr factor: ``lr_t = lr_0 · (s + (e − s)·min(t, n)/n)`` with
    ``s = start_factor``, ``e = end_factor``, ``n = total_iters``; constant ``e·lr_0`` from step ``n``.

    The usual linear warm-up (``e = 1``) to put in front of any decay with :class:`SequentialLR`.
    Equivalents: ``torch.optim.lr_scheduler.LinearLR(opt, start_factor, end_factor, total_iters)``
    (same defaults; torch requires ``s > 0``); ``optax.linear_schedule(s·lr_0, e·lr_0, n)``;
    Keras: the warm-up part of ``CosineDecay(warmup_steps=n)``. ``0 <= s, e <= 1``, ``n >= 1``.
    """

    _HYPER = ("start_factor", "end_factor", "total_iters")
    start_factor: float
    end_factor: float
    total_iters: int

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 *, base_lr: Optional[LrArg] = None, last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(start_factor=start_factor, end_factor=end_factor, total_iters=total_iters),
                         base_lr=base_lr, last_epoch=last_epoch)  # fmt: skip

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        for k in ("start_factor", "end_factor"):
            x = _real(k, h[k])
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"{k} must be in [0, 1], got {x}")
            h[k] = x
        h["total_iters"] = _int("total_iters", h["total_iters"], 1)
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return base * (s + (e - s) * min(t, n) / n)


class WarmupCosine(LRScheduler):
    r"""Linear warm-up, then cosine decay to ``min_lr``, then constant. With ``W = warmup_steps``,
    ``T = total_steps``, ``s = warmup_start_factor``, ``m = min_lr``:

    .. code-block:: text

        t < W:       lr_t = lr_0 · (s + (1 − s)·t/W)                       # s·lr_0 → lr_0
        W <= t <= T: lr_t = m + (lr_0 − m) · (1 + cos(π·(t − W)/(T − W)))/2  # lr_0 → m
        t > T:       lr_t = m

    Equivalents: torch ``SequentialLR(opt, [LinearLR(opt, s, 1.0, W), CosineAnnealingLR(opt,
    T − W, eta_min=m)], milestones=[W])`` for ``t <= T`` (torch needs ``s > 0``; its cosine
    rises again after ``T``); ``optax.warmup_cosine_decay_schedule(init_value=s·lr_0,
    peak_value=lr_0, warmup_steps=W, decay_steps=T, end_value=m)``; Keras
    ``CosineDecay(s·lr_0, decay_steps=T − W, alpha=m/lr_0, warmup_target=lr_0, warmup_steps=W)``.

    ``0 <= W < T``; ``0 <= s <= 1``; ``min_lr >= 0`` is absolute (like torch's ``eta_min``), one
    number or one per param group.
    """

    _HYPER = ("warmup_steps", "total_steps", "min_lr", "warmup_start_factor")
    warmup_steps: int
    total_steps: int
    min_lr: Union[float, List[float]]
    warmup_start_factor: float

    def __init__(self, optimizer: Any, warmup_steps: int, total_steps: int, min_lr: LrArg = 0.0,
                 warmup_start_factor: float = 0.0, *, base_lr: Optional[LrArg] = None,
                 last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr,
                                         warmup_start_factor=warmup_start_factor),
                         base_lr=base_lr, last_epoch=last_epoch)  # fmt: skip

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["warmup_steps"] = w = _int("warmup_steps", h["warmup_steps"], 0)
        h["total_steps"] = t = _int("total_steps", h["total_steps"], 1)
        if t <= w:
            raise ValueError(f"total_steps must be > warmup_steps, got total_steps={t}, warmup_steps={w}")
        h["min_lr"] = _per_group("min_lr", h["min_lr"], len(base_lrs))
        s = _real("warmup_start_factor", h["warmup_start_factor"])
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {s}")
        h["warmup_start_factor"] = s
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        w, total = self.warmup_steps, self.total_steps
        m = self.min_lr[i] if isinstance(self.min_lr, list) else self.min_lr
        if t < w:
            s = self.warmup_start_factor
            return base * (s + (1.0 - s) * t / w)
        if t >= total:
            return m
        return m + (base - m) * (1.0 + math.cos(math.pi * (t - w) / (total - w))) / 2.0


class InverseTimeLR(LRScheduler):
    r"""Inverse-time decay: ``lr_t = lr_0 / (1 + k·e)`` with ``k = decay_rate`` and
    ``e = t / decay_steps`` (``⌊t / decay_steps⌋`` when ``staircase``); the default
    ``decay_steps=1`` is the textbook ``lr_0 / (1 + k·t)``.

    Equivalents: Keras ``InverseTimeDecay(lr_0, decay_steps, decay_rate=k, staircase=...)``;
    no torch scheduler (``LambdaLR(opt, lambda t: 1/(1 + k·t))``; ``torch.optim.Adagrad``'s
    ``lr_decay`` is the same formula built into the optimizer, with ``t − 1``); optax has no named
    schedule for it. ``decay_rate >= 0``, ``decay_steps > 0`` (int or float).
    """

    _HYPER = ("decay_rate", "decay_steps", "staircase")
    decay_rate: float
    decay_steps: Number
    staircase: bool

    def __init__(self, optimizer: Any, decay_rate: float, *, decay_steps: Number = 1, staircase: bool = False,
                 base_lr: Optional[LrArg] = None, last_epoch: int = -1) -> None:  # fmt: skip
        super().__init__(optimizer, dict(decay_rate=decay_rate, decay_steps=decay_steps, staircase=staircase),
                         base_lr=base_lr, last_epoch=last_epoch)  # fmt: skip

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["decay_rate"] = _non_negative("decay_rate", h["decay_rate"])
        return _check_decay_steps(h)

    def _value(self, i: int, base: float, t: int) -> float:
        e = _decay_exponent(t, self.decay_steps, self.staircase)
        return base / (1.0 + self.decay_rate * e)


# -- composition ---------------------------------------------------------------------------------------
def _children(name: str, schedulers: Any, optimizer: Any) -> List[LRScheduler]:
    if isinstance(schedulers, (str, bytes)) or not isinstance(schedulers, Sequence):
        raise TypeError(f"{name} must be a list of schedulers, got {type(schedulers).__name__}")
    out = list(schedulers)
    if not out:
        raise ValueError(f"{name} must contain at least one scheduler")
    for k, s in enumerate(out):
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(f"{name}[{k}] is a ReduceLROnPlateau, which has no closed form and cannot be composed")
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{name}[{k}] must be a fusedopt.schedules scheduler, got {type(s).__name__}")
        if s.optimizer is not optimizer:
            raise ValueError(f"{name}[{k}] belongs to a different optimizer than {name}[0] / the optimizer given")
        if s.base_lrs != out[0].base_lrs:
            raise ValueError(f"{name}[{k}] has base lrs {s.base_lrs}, unlike {name}[0]'s {out[0].base_lrs}")
    return out


class _Composite(LRScheduler):
    """Shared by SequentialLR and ChainedScheduler: children, their state dicts."""

    schedulers: List[LRScheduler]

    def state_dict(self) -> Dict[str, Any]:
        """As :meth:`LRScheduler.state_dict`, plus ``"schedulers"``: the inner schedulers' state dicts."""
        out = super().state_dict()
        out["schedulers"] = [s.state_dict() for s in self.schedulers]
        return out

    def _parse_state(self, state_dict: Any) -> List[Tuple[Any, Dict[str, Any]]]:
        if not isinstance(state_dict, Mapping) or "schedulers" not in state_dict:
            raise ValueError("state_dict must be a dict with 'schedulers'")
        sd = dict(state_dict)
        children = sd.pop("schedulers")
        updates = super()._parse_state(sd)
        if isinstance(children, (str, bytes)) or not isinstance(children, Sequence):
            raise ValueError("state_dict['schedulers'] must be a list")
        if len(children) != len(self.schedulers):
            raise ValueError(f"state_dict has {len(children)} schedulers, this {type(self).__name__} has {len(self.schedulers)}")
        for k, (s, csd) in enumerate(zip(self.schedulers, children)):
            try:
                updates.extend(s._parse_state(csd))
            except ValueError as exc:
                raise ValueError(f"state_dict['schedulers'][{k}]: {exc}") from None
        return updates


class SequentialLR(_Composite):
    r"""One schedule after another: ``schedulers[k]`` runs from ``milestones[k-1]`` (restarted at
    its own step 0) until ``milestones[k]``. With ``m_0 = 0``:

    .. code-block:: text

        k = number of milestones <= t;   lr_t = schedulers[k].lr_at(t − m_k)

    Same semantics as ``torch.optim.lr_scheduler.SequentialLR(opt, schedulers, milestones)``;
    optax ``join_schedules(schedules, boundaries=milestones)``. The inner schedulers (made on the
    same optimizer, or all standalone with equal base lrs) serve as formulas: step only the
    ``SequentialLR``. ``milestones``: strictly increasing ints >= 1, one fewer than schedulers.
    Linear warm-up then step decay, e.g.: ``SequentialLR(opt, [LinearLR(opt, 0.01, 1.0, 100),
    StepLR(opt, 1000, 0.5)], milestones=[100])`` (warm-up then cosine: :class:`WarmupCosine`).
    """

    _HYPER = ("milestones",)
    milestones: List[int]

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler], milestones: Sequence[int], *,
                 last_epoch: int = -1) -> None:  # fmt: skip
        children = _children("schedulers", schedulers, optimizer)
        self.schedulers = children
        super().__init__(optimizer, dict(milestones=milestones),
                         base_lr=None if optimizer is not None else list(children[0].base_lrs),
                         last_epoch=last_epoch)  # fmt: skip

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        h["milestones"] = ms = _milestones("milestones", h["milestones"])
        if len(ms) != len(self.schedulers) - 1:
            raise ValueError(f"milestones must have {len(self.schedulers) - 1} entries (one fewer than "
                             f"schedulers), got {len(ms)}")  # fmt: skip
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        k = bisect_right(self.milestones, t)
        start = self.milestones[k - 1] if k else 0
        return self.schedulers[k]._value(i, base, t - start)


class ChainedScheduler(_Composite):
    r"""Schedules applied on top of each other at the same step: each formula takes the previous
    one's result as its base lr,

    .. code-block:: text

        lr_t = f_K( … f_2( f_1(lr_0, t), t) …, t)

    For multiplicative schedules (``lr_0·φ(t)``: Exponential, Step, MultiStep, InverseTime,
    WarmupCosine with ``min_lr=0``) this is ``lr_0·φ_1(t)·φ_2(t)···``, which is what
    ``torch.optim.lr_scheduler.ChainedScheduler(schedulers)`` computes; optax: ``chain`` of
    ``scale_by_schedule``. The inner schedulers serve as formulas: step only the chain.
    """

    _HYPER = ()

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Any = None) -> None:
        if optimizer is None and isinstance(schedulers, Sequence) and schedulers:
            optimizer = getattr(schedulers[0], "optimizer", None)
        children = _children("schedulers", schedulers, optimizer)
        self.schedulers = children
        super().__init__(optimizer, {}, base_lr=None if optimizer is not None else list(children[0].base_lrs))

    def _check_hyper(self, h: Dict[str, Any], base_lrs: List[float]) -> Dict[str, Any]:
        return h

    def _value(self, i: int, base: float, t: int) -> float:
        lr = base
        for s in self.schedulers:
            lr = s._value(i, lr, t)
        return lr


# -- reduce on plateau ------------------------------------------------------------------------------------
class ReduceLROnPlateau(_SchedulerBase):
    r"""Multiply the lr by ``factor`` when a metric has stopped improving (torch's semantics).

    ``step(metric)`` once per evaluation. With ``best`` the best metric so far (initially +∞ for
    ``mode="min"``, −∞ for ``"max"``), a metric ``a`` is an improvement when

    .. code-block:: text

        min, rel: a < best·(1 − threshold)      min, abs: a < best − threshold
        max, rel: a > best·(1 + threshold)      max, abs: a > best + threshold

    and then each step does::

        if improvement: best = a; num_bad_epochs = 0  else: num_bad_epochs += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad_epochs = 0
        if num_bad_epochs > patience:
            for each group: new = max(lr·factor, min_lr[i]); if lr − new > eps: lr = new
            cooldown_counter = cooldown; num_bad_epochs = 0

    So the lr drops after ``patience + 1`` consecutive non-improving steps. A NaN metric is never
    an improvement. Identical to ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (same argument
    names and defaults). With an optimizer it reads and writes ``group["lr"]`` (an lr changed by
    hand is the one reduced); standalone (``optimizer=None, base_lr=...``) it keeps its own lrs.
    Keras ``callbacks.ReduceLROnPlateau(factor, patience=p, min_delta=δ, cooldown, min_lr)`` is
    close to ``threshold_mode="abs", threshold=δ, patience=p − 1`` (Keras reduces after ``p`` bad
    epochs and does not count epochs in cool-down); optax: ``contrib.reduce_on_plateau``.

    ``0 <= factor < 1``, ``patience >= 0``, ``threshold >= 0``, ``cooldown >= 0``, ``eps >= 0``,
    ``min_lr >= 0`` (one number or one per group).
    """

    _HYPER = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    mode: str
    factor: float
    patience: int
    threshold: float
    threshold_mode: str
    cooldown: int
    min_lr: Union[float, List[float]]
    eps: float
    best: float
    num_bad_epochs: int
    cooldown_counter: int

    def __init__(self, optimizer: Any = None, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: LrArg = 0.0,
                 eps: float = 1e-8, *, base_lr: Optional[LrArg] = None) -> None:  # fmt: skip
        if optimizer is None:
            lrs = _base_lrs(None, base_lr, resume=False)
        else:
            if base_lr is not None:
                raise ValueError("give either an optimizer or base_lr, not both (the lr comes from group['lr'])")
            lrs = [_non_negative(f"optimizer.param_groups[{i}]['lr']", g["lr"])
                   for i, g in enumerate(_param_groups(optimizer))]  # fmt: skip
        hyper = self._check_hyper(dict(mode=mode, factor=factor, patience=patience, threshold=threshold,
                                       threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps),
                                  len(lrs))  # fmt: skip
        self.optimizer = optimizer
        self.__dict__.update(hyper)
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._lrs = lrs  # standalone only: the current lrs
        self._last_lr = list(lrs)

    @staticmethod
    def _check_hyper(h: Dict[str, Any], n: int) -> Dict[str, Any]:
        h["mode"] = _choice("mode", h["mode"], ("min", "max"))
        f = _real("factor", h["factor"])
        if not 0.0 <= f < 1.0:
            raise ValueError(f"factor must be in [0, 1), got {f}")
        h["factor"] = f
        h["patience"] = _int("patience", h["patience"], 0)
        h["threshold"] = _non_negative("threshold", h["threshold"])
        h["threshold_mode"] = _choice("threshold_mode", h["threshold_mode"], ("rel", "abs"))
        h["cooldown"] = _int("cooldown", h["cooldown"], 0)
        h["min_lr"] = _per_group("min_lr", h["min_lr"], n)
        h["eps"] = _non_negative("eps", h["eps"])
        return h

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def is_better(self, a: float, best: float) -> bool:
        """Whether metric ``a`` improves on ``best`` (the table in the class docstring)."""
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def get_lr(self) -> List[float]:
        """The current learning rates: the groups' (or, standalone, the scheduler's own)."""
        if self.optimizer is None:
            return list(self._lrs)
        return [_non_negative(f"optimizer.param_groups[{i}]['lr']", g["lr"])
                for i, g in enumerate(_param_groups(self.optimizer))]  # fmt: skip

    def step(self, metrics: Any) -> None:
        """Record one value of the monitored metric (a number, or anything ``float()`` accepts)."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a number, got {type(metrics).__name__}") from None
        groups = self._check_groups(len(self._lrs))
        lrs = self.get_lr()
        min_lrs = _expand(self.min_lr, len(lrs))
        best, bad, cool = self.best, self.num_bad_epochs, self.cooldown_counter
        if self.is_better(current, best):
            best, bad = current, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        new = list(lrs)
        if bad > self.patience:
            for i, old in enumerate(lrs):
                cand = max(old * self.factor, min_lrs[i])
                if old - cand > self.eps:
                    new[i] = cand
            cool, bad = self.cooldown, 0
        if groups is not None:
            for g, old, lr in zip(groups, lrs, new):
                if lr != old:
                    g["lr"] = lr
        self._lrs = new
        self.best, self.num_bad_epochs, self.cooldown_counter = best, bad, cool
        self.last_epoch += 1
        self._last_lr = list(new)

    def state_dict(self) -> Dict[str, Any]:
        """Counters (``best``, ``num_bad_epochs``, ``cooldown_counter``, ``last_epoch``), the current
        ``lrs`` and the hyperparameters, as plain Python values (``best`` may be ±inf)."""
        out: Dict[str, Any] = {"type": "ReduceLROnPlateau", "last_epoch": self.last_epoch, "best": self.best,
                               "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter,
                               "lrs": self.get_lr()}  # fmt: skip
        for k in self._HYPER:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, list) else v
        return out

    def _parse_state(self, state_dict: Any) -> List[Tuple[Any, Dict[str, Any]]]:
        keys = ("type", "last_epoch", "best", "num_bad_epochs", "cooldown_counter", "lrs") + self._HYPER
        sd = self._check_keys(state_dict, keys)
        lrs = _lr_list("lrs", sd["lrs"])
        n = len(self._lrs)
        if len(lrs) != n:
            raise ValueError(f"state_dict has {len(lrs)} lrs but the scheduler has {n} groups")
        hyper = self._check_hyper({k: sd[k] for k in self._HYPER}, n)
        return [(self, {
            "last_epoch": _int("last_epoch", sd["last_epoch"], 0),
            "best": _real_or_inf("best", sd["best"]),
            "num_bad_epochs": _int("num_bad_epochs", sd["num_bad_epochs"], 0),
            "cooldown_counter": _int("cooldown_counter", sd["cooldown_counter"], 0),
            "_lrs": lrs,
            "_last_lr": list(lrs),
            **hyper,
        })]  # fmt: skip

    def _restore(self) -> None:
        groups = self._check_groups(len(self._lrs))
        if groups is not None:
            for g, lr in zip(groups, self._lrs):
                g["lr"] = lr
