"""The parts an algorithm description is made of (see :mod:`fusedopt.algorithms`).

A description says, once, everything the layers above the kernel need to know about an
algorithm: its hyperparameters (name, default, range), its state arrays (the functional's
argument name, torch's state key, the order of the native call's lists, when each is present and
how it starts), how the per-step scalars derive from the hyperparameters and the step count
(a function of :mod:`fusedopt._scalars`), the flags the kernel takes, its reference function and
its native entry point. The functional API, the NumPy and torch optimizer classes, the benchmark
and the test tables are built from it. A per-parameter scalar state that is not a function of the
step count (NAdam's ``mu_product``) is a :class:`ScalarState`: a functional hyperparameter that the
classes fill per parameter from their state and advance with the step count.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _validation as check

Hypers = Mapping[str, Any]


# -- ranges ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """The values a real hyperparameter may take: finite, ``low <= x`` (``low < x`` when
    ``open_low``) and ``x < high`` (``x <= high`` when ``closed_high``)."""

    low: float = 0.0
    high: float = math.inf
    closed_high: bool = False
    open_low: bool = False

    def contains(self, x: float) -> bool:
        if self.open_low:
            if not x > self.low:
                return False
        elif not x >= self.low:
            return False
        return x <= self.high if self.closed_high else x < self.high

    def text(self) -> str:
        if self.high == math.inf:
            return f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
        lo = "(" if self.open_low else "["
        hi = "]" if self.closed_high else ")"
        return f"in {lo}{self.low:g}, {self.high:g}{hi}"


NON_NEGATIVE = Range()
UNIT = Range(0.0, 1.0)  # [0, 1): betas, alpha, decay rates
UNIT_CLOSED = Range(0.0, 1.0, closed_high=True)  # [0, 1]: dampening


def check_real(name: str, value: Any, rng: Range) -> float:
    """A finite real number in ``rng`` (bools refused), ``TypeError``/``ValueError`` naming it."""
    if type(value) is float and value - value == 0.0 and rng.contains(value):  # the common case
        return value
    x = check.real(name, value)
    if not rng.contains(x):
        raise ValueError(f"{name} must be {rng.text()}, got {x}")
    return x


# -- hyperparameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Hyper:
    """One hyperparameter of the functional form (the kernel's parameterization).

    ``rng`` None: a flag (a bool). ``torch_msg``: torch.optim's message for a value out of its
    range (``"Invalid learning rate: {}"``), used by :mod:`fusedopt.torch`; ``torch_low``: the
    bound torch itself checks (``x >= 0``) when fusedopt's range is stricter (fusedopt's check
    follows with its own message). ``convention``: a formula convention of another framework
    (Keras, optax), set per optimizer (``set_conventions``), not per param group.
    """

    name: str
    default: Any
    rng: Optional[Range] = NON_NEGATIVE
    torch_msg: Optional[str] = None
    convention: bool = False
    doc: str = ""
    #: torch's own range check, applied before fusedopt's (default ``x >= 0``; SGD's ``lr`` lets
    #: NaN through to fusedopt's check: ``not x < 0``)
    torch_ok: Callable[[float], bool] = lambda x: x >= 0.0

    @property
    def is_flag(self) -> bool:
        return self.rng is None

    def check(self, value: Any, name: Optional[str] = None) -> Any:
        n = self.name if name is None else name
        if self.rng is None:
            return check.flag(n, value)
        return check_real(n, value, self.rng)


def flag(name: str, default: bool = False, *, convention: bool = False, doc: str = "") -> Hyper:
    return Hyper(name, default, None, convention=convention, doc=doc)


def real(name: str, default: Any, rng: Range = NON_NEGATIVE, *, torch_msg: Optional[str] = None,
         convention: bool = False, doc: str = "", torch_ok: Optional[Callable[[float], bool]] = None) -> Hyper:  # fmt: skip
    if torch_ok is None:
        torch_ok = (lambda x: 0.0 <= x < 1.0) if rng is UNIT else (lambda x: x >= 0.0)
    return Hyper(name, default, rng, torch_msg, convention, doc, torch_ok)


#: the default of a functional keyword that must be given (SGD's ``lr``)
REQUIRED = object()


# -- state -------------------------------------------------------------------------------------
#: how a state array starts: zeros, a constant hyperparameter's value, or "written by the first
#: step" (SGD's momentum buffer is set to the gradient by the kernel's first_step flag)
ZEROS = "zeros"
FIRST_STEP = "first_step"


@dataclass(frozen=True)
class StateRole:
    """One state array per parameter, in the order of the native call's lists.

    ``arg``: the functional's argument (a list of arrays); ``key``: torch's state-dict key.
    ``when``: present only for these hyperparameters (a predicate over the functional
    hyperparameters) and ``when_text`` says so in messages (``"amsgrad=True"``); None: always.
    ``init``: :data:`ZEROS`, :data:`FIRST_STEP`, or the name of the hyperparameter whose value
    fills it (Adagrad's ``initial_accumulator_value``; then the state is made with the parameter,
    as torch makes it).
    """

    arg: str
    key: str
    when: Optional[Callable[[Hypers], bool]] = None
    when_text: str = ""
    init: str = ZEROS
    #: holds squares (never negative: a second moment, an accumulator)
    nonneg: bool = False

    def present(self, h: Hypers) -> bool:
        return self.when is None or bool(self.when(h))

    @property
    def init_hyper(self) -> Optional[str]:
        """The hyperparameter whose value fills this array (made with the parameter), or None."""
        return None if self.init in (ZEROS, FIRST_STEP) else self.init


@dataclass(frozen=True)
class ScalarState:
    """A per-parameter scalar state (NAdam's ``mu_product``): one number per parameter, not an array,
    that the per-step scalars read and that is not a function of the step count alone (a loaded
    checkpoint carries its own value; the hyperparameters it is updated with may change between
    steps).

    ``key``: its state key (torch's; the NumPy classes' too) and the name of the functional
    hyperparameter that receives, per native call, its value **after** this step's update (the
    description declares that hyperparameter; the classes do not keep it in their param groups).
    ``init``: the value of a new state. ``advance(h, t, value, dtype)``: the value after step ``t``
    from the value before, rounded as torch rounds it in the state's ``dtype`` (``"float32"`` or
    ``"float64"``). The classes compute the new value before the step, bucket parameters by it (as
    by step count), pass it as the hyperparameter, and commit it with the step count only when the
    step is applied (a step that raises or is skipped leaves it unchanged).
    """

    key: str
    init: float
    advance: Callable[[Hypers, int, float, str], float]


# -- the description ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchName:
    """A torch-style constructor argument that is a pair of functional hyperparameters (Adam's
    ``betas=(beta1, beta2)``)."""

    name: str
    parts: Tuple[str, str]

    def unpack(self, value: Any) -> Tuple[Any, Any]:
        """The two values of the pair, or TypeError naming it."""
        try:
            a, b = value
        except (TypeError, ValueError):
            raise TypeError(f"{self.name} must be a pair ({self.parts[0]}, {self.parts[1]}), got {value!r}") from None
        return a, b


@dataclass(frozen=True)
class Algorithm:
    """Everything about one algorithm that is not its kernel. See the module docstring.

    ``scalars(h, t)`` returns the per-step scalars (a NamedTuple of :mod:`fusedopt._scalars`) for
    validated functional hyperparameters ``h`` and step number ``t`` (1 for an algorithm without
    a step count); ``flags(h)`` the trailing flags of the native call. ``uses_step(h)``: whether
    the update depends on ``t`` (else parameters at different counts share one native call).
    ``relations(h)`` raises on combinations no single range excludes (``nesterov`` needs
    momentum), with ``torch_relation_msg`` torch's message for it when torch checks it too.
    """

    name: str
    kernel: str  # the fusedopt._core entry
    hypers: Tuple[Hyper, ...]
    states: Tuple[StateRole, ...]
    scalars: Callable[[Hypers, int], Tuple[Any, ...]]
    flags: Callable[[Hypers], Tuple[Any, ...]]
    reference: Callable[..., Any]
    has_step: bool = True
    uses_step: Callable[[Hypers], bool] = lambda h: True
    relations: Callable[[Hypers], None] = lambda h: None
    torch_relation_msg: Optional[str] = None
    threads_key: str = ""  # fusedopt._threads.SERIAL_BELOW key (default: name)
    doc: str = ""
    #: the functional takes ``step=`` (the scalars depend on the step number)
    step_arg: bool = True
    #: hyperparameters fixed by this form (AdamW: decoupled_weight_decay=True), not arguments
    fixed: Tuple[Tuple[str, Any], ...] = ()
    #: checks of the parameters that depend on hyperparameters (torch_exact: float32 only)
    check_params: Callable[[Hypers, Sequence[Any]], None] = lambda h, p: None
    #: the order in which torch checks the hyperparameters (the first bad one is reported)
    torch_order: Tuple[str, ...] = ()
    #: the torch.optim class with this update and these state keys ("" when torch has none)
    torch_optim: str = ""
    #: torch-style constructor arguments that bundle functional hyperparameters
    torch_pairs: Tuple[TorchName, ...] = ()
    #: hyperparameters of the torch-style classes that the kernel does not read (Adagrad's
    #: initial_accumulator_value is only the state's start value): name -> Hyper
    class_only: Tuple[Hyper, ...] = ()
    #: per-parameter scalar states (:class:`ScalarState`): functional hyperparameters of the same
    #: names that the classes fill per parameter from their state, not from the param group
    scalar_states: Tuple[ScalarState, ...] = ()
    #: a trust-ratio algorithm (cpp/kernels/trust.inl): its update of a tensor reads the tensor's
    #: norms of p and of its update direction; the native call can run each of its two phases
    #: alone (``trust=(phase, sums)``: fusedopt.distributed splits a tensor over ranks)
    trust_ratio: bool = False
    _by_name: Dict[str, Hyper] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({h.name: h for h in self.hypers + self.class_only})

    def variant(self, name: str, *, defaults: Mapping[str, Any] = {}, fixed: Mapping[str, Any] = {},
                **changes: Any) -> "Algorithm":  # fmt: skip
        """The same algorithm under another name with other defaults and some hyperparameters
        fixed (AdamW = Adam with decoupled decay and ``weight_decay=1e-2``)."""
        hypers = tuple(replace(h, default=defaults.get(h.name, h.default)) for h in self.hypers)
        return replace(self, name=name, hypers=hypers, fixed=self.fixed + tuple(fixed.items()),
                       threads_key=self.threads, _by_name={}, **changes)  # fmt: skip

    @property
    def arguments(self) -> Tuple[Hyper, ...]:
        """The functional's keyword hyperparameters, in order (fixed ones excluded)."""
        fixed = dict(self.fixed)
        return tuple(h for h in self.hypers if h.name not in fixed)

    @property
    def threads(self) -> str:
        return self.threads_key or self.name

    def hyper(self, name: str) -> Hyper:
        return self._by_name[name]

    @property
    def group_hypers(self) -> Tuple[Hyper, ...]:
        """The hyperparameters a param group holds (not the conventions; torch-style pairs are
        kept as their parts here)."""
        scalar = {s.key for s in self.scalar_states}
        return tuple(h for h in self.hypers + self.class_only
                     if not h.convention and h.name != "first_step" and h.name not in scalar)  # fmt: skip

    @property
    def conventions(self) -> Tuple[Hyper, ...]:
        return tuple(h for h in self.hypers if h.convention)

    def check(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """Every functional hyperparameter validated (a missing one takes its default; the fixed
        ones are set), then the relations between them. Raises naming the first bad one."""
        out = {}
        for h in self.hypers:
            out[h.name] = h.check(values[h.name]) if h.name in values else h.default
        out.update(self.fixed)
        self.relations(out)
        return out

    def present_states(self, h: Hypers) -> Tuple[StateRole, ...]:
        return tuple(r for r in self.states if r.present(h))

    def structure(self, h: Hypers) -> Tuple[bool, ...]:
        """Which state arrays exist (a change of it changes the shape of the native call)."""
        return tuple(r.present(h) for r in self.states)


def is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
