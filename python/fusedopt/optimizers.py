"""Stateful optimizers with torch.optim's names, defaults and semantics, on NumPy arrays.

An optimizer holds a list of parameter arrays (optionally in several *param groups* with their
own hyperparameters, as in torch) and their state arrays. ``opt.step(grads)`` takes one gradient
per parameter, in order (``None`` skips a parameter for this step, as a missing ``.grad`` does in
torch), and updates every parameter in place with one native call per (group, dtype, step count)
— normally exactly one call. Hyperparameters live in ``opt.param_groups[i]`` and may be changed
between steps (learning-rate schedules). ``state_dict()``/``load_state_dict()`` round-trip exactly.

The arithmetic is that of :mod:`fusedopt.functional` (documented there, specified by
:mod:`fusedopt.reference`).

Steady state (``_step_planned``): after one full step, the bucketing, the validated
hyperparameters and a :class:`fusedopt._core.Plan` per native call (params and state arrays
validated once in C++) are kept. Each later step checks by identity that the hyperparameter values
are the same objects, and a value that can change in place (a list) item by item (an edited value
is validated again), that step counts are valid ints that agree per bucket, builds the state
lists from ``opt.state`` (so a replaced state array is honoured) and calls ``_core`` directly; the
native side re-checks only that the same, unchanged arrays came back and validates the gradients.
Anything else (a ``None`` gradient, a new param group, loaded state, non-torch conventions, gradient
options) takes the general path through :mod:`fusedopt.functional`.

Low precision (issue 13; keyword-only options of every class, the same as :mod:`fusedopt.torch`'s;
the defaults behave exactly as before and as torch.optim). Parameters may be float32, float64,
float16 or bfloat16 (``ml_dtypes.bfloat16``: ``pip install fusedopt[bf16]``; a uint16 array is not
a bfloat16 one); gradients have the parameter's dtype or float32 (one gradient dtype per native
call: parameters are bucketed by it). Arithmetic is float32 (float64 for float64 parameters);
buffers are loaded exactly and stored rounded to nearest even (:func:`fusedopt.reference.lowp_step`).

* ``master_weights=None | "fp32" | "split"``: ``"fp32"`` keeps a float32 copy of each
  bfloat16/float16 parameter as state ``"master_param"`` (made at the parameter's first step, its
  exact upcast); the update is applied to it and the parameter written as its
  round-to-nearest-even. ``"split"`` (bfloat16 only; ValueError for float16) keeps the low 16 bits
  of the float32 master as a uint16 state ``"master_trail"`` (zeros at first: the master is the
  parameter): parameter and trail together are the master bit for bit
  (:func:`fusedopt.reference.split_decode`), except where the master's low half is exactly 0x8000
  and its high half odd: that master is stored one float32 ulp away from zero (about 2^-16 of
  element-steps; :func:`fusedopt.reference.split_encode`). float32/float64 parameters get no
  master and are stepped as usual.
* ``stochastic_rounding=False | True`` with ``seed=None | int`` (excludes a master; bfloat16
  parameters; float16 ones are refused, float32/float64 ones stepped as usual): each updated
  bfloat16 parameter is written with stochastic rounding, 16 random bits per element from
  Philox4x32-10 keyed by the param group's ``"seed"``, counter = (element position in the memory of its
  parameter, step count after this step) (:func:`fusedopt.reference.sr_bits`): bitwise the same
  for every thread count and ISA, reproducible from the seed. Two parameters of the same shape at
  the same step get the same random bits. ``seed=None`` draws one at construction from NumPy's
  legacy global generator (``np.random.seed`` reproduces it); each param group keeps its seed as
  ``group["seed"]``, saved by :meth:`state_dict`. SGD and Lion keep a ``"step"`` count in this mode.
* ``state_dtype=None | "float32" | "bfloat16"``: ``None`` keeps the states in the dtype of what is
  stepped (the parameter's dtype, as torch.optim; float32 with a master). ``"bfloat16"`` is not
  available for float16 parameters; float64 parameters always keep float64 states.
* ``state_dtype="8bit"`` with ``min_8bit_size=4096`` (issue 14; an int >= 0, fixed at construction
  like the options above): every parameter of at least ``min_8bit_size`` elements (float32,
  float16 or bfloat16, with any master or stochastic rounding) keeps each state ``key`` as block
  quantized 8-bit codes: ``state[key]`` uint8 of the parameter's shape, ``state[key + "_absmax"]``
  float32, one per block of 256 elements (:func:`fusedopt.reference.q8_encode`; bitsandbytes'
  signed code book, or its unsigned one for never-negative states: Adam's ``exp_avg_sq``,
  RMSprop's ``square_avg``, Adagrad's ``sum``). New states are the codes of zero (absmax 0);
  Adagrad's ``initial_accumulator_value`` fill is quantized. Each step decodes, updates in float32
  and re-quantizes in the same pass, bitwise :func:`fusedopt.reference.lowp_step` with
  :class:`fusedopt.reference.Q8State`; smaller parameters keep float32 states (float64 ones
  float64) and are stepped by a separate native call. :meth:`Optimizer.state_dict` adds
  ``key + "_qmap"`` (the code book); :meth:`Optimizer.load_state_dict` quantizes float states and
  decodes 8-bit ones as the optimizer needs; :meth:`Optimizer.fp32_state_dict` exports decoded
  float32 states; :meth:`Optimizer.state_bytes` reports the state memory (Adam: about 2.03 bytes
  per element instead of 8).
* An optimizer with low-precision parameters or options takes the general path for its first step
  (one functional call per bucket, :mod:`fusedopt.functional`'s low-precision keywords), then the
  planned path below without native Plans (the step binding validates every array at each call)
  and never the C++ Stepper (which steps float32/float64 storage only). ``grad_scale``/``found_inf``
  work as for float32 (a skipped step leaves parameters, masters, states and step counts as they
  were). :meth:`Optimizer.master_params` returns the float32 masters.

Fast path (``_make_stepper``): when the plan is a single native call over every parameter (one param
group, one dtype, one step count) and no hyperparameter can change in place, a
:class:`fusedopt._core.Stepper` does all of the above in C++ (identity checks, the step counts,
the per-step scalars, bitwise those of :mod:`fusedopt._scalars`, the kernel and the count update);
whenever anything it cached differs it steps nothing and the Python path runs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union, cast

import numpy as np

from . import _core, _engine, _fork, _lowp, _threads, reference
from . import _validation as check
from . import functional as F
from ._lowp import ABSMAX_SUFFIX, MASTER_KEY, MASTER_KEYS, QMAP_SUFFIX, TRAIL_KEY
from .algorithms import (
    ADAGRAD,
    ADAM,
    ADAMAX,
    ADAMW,
    FIRST_STEP,
    LION,
    MOMENTUM,
    NADAM,
    RADAM,
    RMSPROP,
    ZEROS,
    Algorithm,
    TorchName,
)
from .algorithms import LAMB as _LAMB
from .algorithms import LARS as _LARS
from .algorithms import SGD as _SGD
from .algorithms._spec import StateRole
from .algorithms.lamb import NO_CLAMP
from .arena import FlatParams

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Adagrad", "Lion", "Adamax", "RAdam", "NAdam", "LAMB", "LARS", "Optimizer"]

ParamsArg = Union[np.ndarray, FlatParams, Iterable[np.ndarray], Iterable[Mapping[str, Any]]]
State = Dict[str, Any]



class Optimizer:
    """Base class: param groups, per-parameter state, ``step``, ``state_dict``.

    Subclasses declare their hyperparameters (``_check_hyper``), their state (``_new_state``,
    ``_STATE_ARRAYS``) and one call into :mod:`fusedopt.functional` (``_update``).

    ``copy.deepcopy`` and ``pickle`` give an independent optimizer (its own lock, copies of the
    parameters and state) equal to this one, which steps bitwise like it; objects copied in the
    same call keep sharing what they shared (an arena, an EMA's parameters, a scheduler's
    optimizer). In a child forked while another thread was inside ``step()`` or
    ``load_state_dict()``, ``step()`` raises ``RuntimeError`` instead of waiting forever, until
    ``load_state_dict()`` replaces the half-updated state (:mod:`fusedopt._fork`).
    """

    #: the algorithm's description (fusedopt.algorithms): everything below is derived from it
    _algo: Algorithm
    #: convention options of the class (name -> torch-form default); see :meth:`set_conventions`
    _CONVENTIONS: Dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        algo = cls.__dict__.get("_algo")
        if algo is not None:  # derived from the description, once per class
            cls._STATE_ARRAYS = tuple(r.key for r in algo.states)
            cls._HAS_STEP = algo.has_step
            cls._CONVENTIONS = {h.name: h.default for h in algo.conventions}
            cls._PAIRS = {p.name: p for p in algo.torch_pairs}

    _STATE_ARRAYS: Tuple[str, ...] = ()
    _HAS_STEP = True
    _PAIRS: Dict[str, TorchName] = {}

    #: the low-precision options, read-only after construction (values in the instance's __dict__)
    master_weights = _lowp.FixedOption()
    stochastic_rounding = _lowp.FixedOption()
    state_dtype = _lowp.FixedOption()
    min_8bit_size = _lowp.FixedOption()

    def __init__(self, params: ParamsArg, defaults: Mapping[str, Any], *, master_weights: Optional[str] = None,
                 stochastic_rounding: bool = False, seed: Optional[int] = None,
                 state_dtype: Optional[str] = None, min_8bit_size: int = _lowp.MIN_8BIT_SIZE) -> None:  # fmt: skip
        mw, sr, seed, sd = _lowp.check_options(master_weights, stochastic_rounding, seed, state_dtype)
        min8 = _lowp.check_min_8bit_size(min_8bit_size)
        if sd == "bfloat16":
            _lowp.bf16_dtype("state_dtype='bfloat16'")  # ImportError naming ml_dtypes when it is missing
        if sr and seed is None:  # from NumPy's legacy global generator: np.random.seed reproduces it
            seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))  # noqa: NPY002  (the legacy one, on purpose)
        #: the low-precision options (see the class docstrings and fusedopt._lowp); the same for
        #: every param group, except ``seed``, which each group keeps as ``group["seed"]``
        self.__dict__["master_weights"] = mw  # (read-only: _lowp.FixedOption)
        self.__dict__["stochastic_rounding"] = sr
        self.seed: Optional[int] = seed
        self.__dict__["state_dtype"] = sd
        #: parameters with at least this many elements get 8-bit states under state_dtype="8bit"
        self.__dict__["min_8bit_size"] = min8
        if sr and not self._HAS_STEP:  # the SR counter is the step count: kept also by SGD and Lion
            self._HAS_STEP = True
        self.param_groups: List[Dict[str, Any]] = []
        self._params: List[np.ndarray] = []
        self.state: List[State] = []
        self._lock = _fork.new_lock(self)  # re-entrant; replaced after a fork mid-call (_fork)
        self._version = 0  # bumped whenever params or state layout change
        self._plan: Optional[_Plan] = None
        #: the C++ fast path of the planned step (see _make_stepper); dropped with the plan
        self._stepper: Optional[_core.Stepper] = None
        self._stepper_serial = True  # the Stepper's call runs on one thread (_threads.serial)
        self._arena: Optional[FlatParams] = None
        #: whether every step takes the general path (low-precision parameters or options: the
        #: planned path and the C++ Stepper step float32/float64 storage only)
        self._lowp_path = mw is not None or sr or sd is not None
        self._conventions: Dict[str, Any] = self._check_conventions(dict(self._CONVENTIONS))
        self.defaults: Dict[str, Any] = self._check_hyper(dict(defaults))
        #: extra keywords of the functional calls: the gradient pre-processing while a step with
        #: such options runs (empty in the common case: the planned path calls _core directly)
        self._call_kw: Dict[str, Any] = {}
        if isinstance(params, FlatParams):
            # One flat tensor; state buffers come from the arena, placed to avoid cache aliasing.
            self._arena = params
            params = [params.flat]
        if isinstance(params, np.ndarray):
            params = [params]
        items = list(params)
        if not items:
            raise ValueError("params is an empty list: an optimizer needs at least one parameter")
        if all(isinstance(x, Mapping) for x in items):
            for group in items:
                self.add_param_group(group)  # type: ignore[arg-type]
        elif any(isinstance(x, Mapping) for x in items):
            raise TypeError("params must be a list of arrays or a list of param-group dicts, not a mix")
        else:
            self.add_param_group({"params": items})

    # -- derived from the description ------------------------------------------------------------
    def _check_hyper(self, hyper: Dict[str, Any]) -> Dict[str, Any]:
        """Validate and normalize a param group's hyperparameters (torch-style names, e.g.
        ``betas``), then their relations; raise ValueError/TypeError naming them."""
        algo = self._algo
        for k, v in hyper.items():
            pair = self._PAIRS.get(k)
            if pair is not None:
                a, b = pair.unpack(v)
                hyper[k] = (algo.hyper(pair.parts[0]).check(a, f"{k}[0]"), algo.hyper(pair.parts[1]).check(b, f"{k}[1]"))
            else:
                hyper[k] = algo.hyper(k).check(v)
        for name, value in algo.fixed:
            if name in hyper and hyper[name] != value:
                raise ValueError(f"{type(self).__name__} always uses {name}={value!r}")
        view = self._view(hyper)
        algo.relations(view)
        _lowp.check_8bit_hypers(algo.name, view, self.__dict__.get("state_dtype"))
        return hyper

    def _view(self, hyper: Mapping[str, Any]) -> Dict[str, Any]:
        """The functional hyperparameters of a checked group (pairs unpacked, conventions and fixed
        values added): what the description's scalars, flags and roles read."""
        out = {h.name: h.default for h in self._algo.hypers}
        for k, v in hyper.items():
            pair = self._PAIRS.get(k)
            if pair is None:
                out[k] = v
            else:
                out[pair.parts[0]], out[pair.parts[1]] = v
        out.update(self._conventions)
        out.update(self._algo.fixed)
        return out

    def _group_view(self, group: Mapping[str, Any]) -> Dict[str, Any]:
        return self._view(self._check_hyper({k: group[k] for k in self.defaults}))

    def _check_conventions(self, conv: Dict[str, Any]) -> Dict[str, Any]:
        """Validate and normalize the convention options (raise naming them)."""
        algo = self._algo
        conv = {k: algo.hyper(k).check(v) for k, v in conv.items()}
        algo.relations({**{h.name: h.default for h in algo.hypers}, **conv})
        algo.check_params(conv, getattr(self, "_params", []))
        return conv

    @property
    def conventions(self) -> Dict[str, Any]:
        """The formula convention of every step (a copy, e.g. ``{"eps_in_sqrt": False, ...}``): the
        same for all param groups, set by the preset constructors or :meth:`set_conventions`. Not
        part of :meth:`state_dict` (whose layout is torch's): build the optimizer the same way
        before loading a state dict."""
        return dict(self._conventions)

    def set_conventions(self, **options: Any) -> None:
        """Switch formula conventions (names and meaning: the class docstring and
        :mod:`fusedopt.functional`), e.g. ``RMSprop.set_conventions(eps_in_sqrt=True)``. Validated
        before anything changes; applies from the next step on, to every param group."""
        unknown = set(options) - set(type(self)._CONVENTIONS)
        if unknown:
            raise ValueError(f"unknown convention option(s) {sorted(unknown)} for {type(self).__name__}; "
                             f"known: {sorted(type(self)._CONVENTIONS)}")  # fmt: skip
        with self._lock:
            self._conventions = self._check_conventions({**self._conventions, **options})
            self._version += 1  # the planned steps hold the old conventions
            self._stepper = None

    def _new_state(self, param: np.ndarray, group: Mapping[str, Any]) -> State:
        """State of a parameter before its first step: the step count, and the arrays that start
        at a hyperparameter's value (made with the parameter, as torch makes them)."""
        st: State = {"step": 0} if self._HAS_STEP else {}
        for r in self._algo.states:
            if r.init_hyper is not None:
                value = group[r.init_hyper]
                q8 = self._is_q8(param)
                sdt = np.dtype(np.float32) if q8 else self._state_dtype(param)
                with np.errstate(over="ignore"):
                    if not np.isfinite(np.asarray(value, np.float64).astype(sdt).astype(np.float64)):
                        raise ValueError(f"{r.init_hyper}={value} overflows the state dtype {sdt}")
                if q8:  # the quantized float32 fill (torch makes it with the parameter)
                    self._put_q8(st, r, param, np.full(param.shape, value, dtype=np.float32))
                else:
                    a = self._zeros(param)
                    a.fill(value)
                    st[r.key] = a
        return st

    # -- 8-bit states ----------------------------------------------------------------------------
    def _is_q8(self, param: np.ndarray) -> bool:
        """Whether ``param``'s states are 8-bit (state_dtype="8bit", not float64, at least
        ``min_8bit_size`` elements)."""
        return self.state_dtype == "8bit" and param.size >= self.min_8bit_size and param.dtype != np.float64

    def _new_state_array(self, st: State, r: StateRole, param: np.ndarray) -> None:
        """Put a zero state ``r`` for ``param`` in ``st``: a float array, or the codes of 0 with
        absmax 0 (what :func:`fusedopt.reference.q8_encode` gives for zeros)."""
        if self._is_q8(param):
            codes = _zeros_in_phase(param, np.dtype(np.uint8))
            codes.fill(reference.q8_map(not r.nonneg).zero)
            st[r.key] = codes
            st[r.key + ABSMAX_SUFFIX] = np.zeros(reference.q8_blocks(param.size), dtype=np.float32)
        else:
            st[r.key] = self._zeros(param)

    def _put_q8(self, st: State, r: StateRole, param: np.ndarray, values: np.ndarray) -> None:
        """Put state ``r`` of ``param`` in ``st`` as the quantization of float32 ``values``."""
        c, a = reference.q8_encode(values, not r.nonneg)
        codes = _zeros_in_phase(param, np.dtype(np.uint8))
        codes[...] = c.reshape(param.shape)
        st[r.key] = codes
        st[r.key + ABSMAX_SUFFIX] = a

    def _absmax_lists(self, hyper: Mapping[str, Any], states: List[State]) -> List[Optional[List[np.ndarray]]]:
        """The absmax lists of a native call over 8-bit states, in role order (KeyError when a
        state lacks one)."""
        return [[st[r.key + ABSMAX_SUFFIX] for st in states] if r.present(hyper) else None
                for r in self._algo.states]  # fmt: skip

    def _complete_state(self, state: State, param: np.ndarray, hyper: Mapping[str, Any]) -> State:
        """Add the zero arrays this step needs that the state lacks (a flag turned on, or the first
        step); FIRST_STEP arrays are made by :meth:`_update`, which tells the kernel."""
        for r in self._algo.states:
            if r.init == ZEROS and r.key not in state and r.present(hyper):
                self._new_state_array(state, r, param)
        master = self._master_kind(param)
        if master == "fp32" and MASTER_KEY not in state:  # the exact upcast of the parameter
            m = _zeros_in_phase(param, np.dtype(np.float32))
            m[...] = param
            state[MASTER_KEY] = m
        elif master == "split" and TRAIL_KEY not in state:  # trail 0: the master is the parameter
            state[TRAIL_KEY] = _zeros_in_phase(param, np.dtype(np.uint16))
        return state

    # -- low-precision storage -------------------------------------------------------------------
    def _state_dtype(self, param: np.ndarray) -> np.dtype:
        """The dtype of ``param``'s state arrays (:func:`fusedopt._lowp.state_kind`)."""
        if not self._lowp_path:
            return param.dtype
        kind = _lowp.numpy_kind(param.dtype) or "float32"
        sk = _lowp.state_kind(kind, self.master_weights, self.state_dtype)
        if sk == "8bit":  # the codes; float32 states below min_8bit_size
            return np.dtype(np.uint8) if self._is_q8(param) else np.dtype(np.float32)
        if sk == kind:
            return param.dtype
        return _lowp.bf16_dtype() if sk == "bfloat16" else np.dtype(sk)

    def _master_kind(self, param: np.ndarray) -> Optional[str]:
        if self.master_weights is None:
            return None
        return _lowp.master_kind(_lowp.numpy_kind(param.dtype) or "float32", self.master_weights)

    def _lowp_call(self, group: Mapping[str, Any], params: List[np.ndarray], states: List[State]) -> Tuple[Any, ...]:
        """The low-precision arguments of one native call (``_engine.native_call``'s ``lowp``):
        empty for float32/float64 parameters with float states; else (masters, stochastic_rounding,
        seed, sr_step) with the masters of the states and the step count after this step as
        ``sr_step``, plus ``True`` for 8-bit states (replaced by the absmax lists,
        :meth:`_absmax_lists`, when the states are complete)."""
        q8 = bool(params) and self._is_q8(params[0])
        if not params or (params[0].dtype.itemsize != 2 and not q8):
            return ()
        if params[0].dtype.itemsize != 2:
            return (None, False, 0, 0, True)
        master = self._master_kind(params[0])
        masters = None
        if master is not None:
            masters = [st[MASTER_KEY if master == "fp32" else TRAIL_KEY] for st in states]
        sr = self.stochastic_rounding and _lowp.is_bf16(params[0].dtype)
        seed = _lowp.check_seed("param group 'seed'", group.get("seed", self.seed or 0)) if sr else 0
        step = states[0].get("step", 0) + 1 if sr else 0
        return (masters, sr, seed, step, True) if q8 else (masters, sr, seed, step)

    def _bucket(self, state: State) -> Any:
        """Parameters whose states give equal buckets are updated by one native call: the same
        step count, and the same FIRST_STEP arrays made already."""
        first = tuple(r.key in state for r in self._algo.states if r.init == FIRST_STEP)
        return (state.get("step"), first) if first else state.get("step")

    def _required_arrays(self) -> Tuple[str, ...]:
        """The arrays a stepped parameter's state must have (loaded state dicts are checked)."""
        return tuple(r.key for r in self._algo.states if r.when is None and r.init != FIRST_STEP)

    def _check_required_state(self, i: int, st: State) -> None:
        """Refuse a loaded state that lacks arrays this optimizer needs: after its first step, and
        from the start for arrays made with the parameter (Adagrad's ``sum``)."""
        missing = [r.key for r in self._algo.states if r.init_hyper is not None and r.key not in st]
        if not missing and st.get("step", 1) > 0:
            missing = [k for k in self._required_arrays() if k not in st]
        if missing:
            raise ValueError(f"state of parameter {i} lacks {missing}")

    def _structure(self, hyper: Mapping[str, Any]) -> Tuple[Any, ...]:
        """Which state arrays exist (a change needs the general path)."""
        return self._algo.structure(hyper)

    def _state_keys(self, hyper: Mapping[str, Any]) -> Tuple[str, ...]:
        """The state arrays a step with these hyperparameters reads and writes."""
        return tuple(r.key for r in self._algo.present_states(hyper))

    def _zeros(self, param: np.ndarray) -> np.ndarray:
        """A zero state array for ``param``: from the arena, placed, when there is one; otherwise
        at the same address modulo 64 bytes as ``param``, so that the kernels' vector loop, which
        starts at a 64-byte boundary of the parameter (cpp/kernels/parallel.inl), finds the state
        arrays on cache-line boundaries too. Small NumPy arrays sit 16 bytes apart on the heap:
        state arrays of their own phase cost up to 35 % on a 196-tensor transformer step."""
        dtype = self._state_dtype(param)
        if self._arena is not None and param is self._arena.flat and dtype == param.dtype:
            return self._arena.zeros()
        return _zeros_in_phase(param, dtype)

    def _update(
        self, hyper: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray], states: List[State],
        lowp: Tuple[Any, ...] = (),
    ) -> None:  # fmt: skip
        """One call of the functional form (validates everything; any convention, any gradient
        option). FIRST_STEP arrays missing from the states are made here and the kernel told.
        ``lowp``: (masters, stochastic_rounding, seed, sr_step) of low-precision parameters."""
        algo = self._algo
        kw = {h.name: hyper[h.name] for h in algo.arguments}
        if lowp:
            kw.update(masters=lowp[0], stochastic_rounding=lowp[1], seed=lowp[2], sr_step=lowp[3])
        for r in algo.states:
            if r.init == FIRST_STEP and r.present(hyper) and r.key not in states[0]:
                for st, p in zip(states, params):
                    self._new_state_array(st, r, p)  # overwritten by the kernel's first step
                kw["first_step"] = True
        if len(lowp) > 4:  # 8-bit states
            kw["absmax"] = self._absmax_lists(hyper, states)
        if algo.step_arg:
            kw["step"] = states[0]["step"] + 1
        getattr(F, algo.name)(params, grads, *self._state_lists(hyper, states), **kw, **self._call_kw)

    def _native(self, hyper: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray],
                lists: List[Optional[List[np.ndarray]]], step: int, threads: int, plan: Any,
                counters: Optional[List[State]] = None, lowp: Tuple[Any, ...] = ()) -> None:  # fmt: skip
        """The planned path's call, straight into fusedopt._core: ``hyper`` is a checked view, there
        are no gradient options; ``lists`` are the state lists (:meth:`_state_lists`); ``step`` is
        the new step count; ``plan`` the :class:`fusedopt._core.Plan` of params and state lists
        (None for low-precision storage); ``counters`` the states whose ``step`` the native call
        advances right after its kernel (None: the caller does); ``lowp`` the low-precision
        arguments (:meth:`_lowp_call`). Planned steps come after the first: FIRST_STEP arrays exist."""
        _engine.native_call(self._algo, hyper, step or 1, params, grads, lists, threads, plan, counters, lowp=lowp)

    def _state_lists(self, hyper: Mapping[str, Any], states: List[State]) -> List[Optional[List[np.ndarray]]]:
        """The state arrays of a native call, one list per role in the description's order (None
        for a role this configuration does not use). Raises KeyError when a state lacks one."""
        return [[st[r.key] for st in states] if r.present(hyper) else None for r in self._algo.states]

    # -- param groups --------------------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones take the defaults)."""
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        raw = param_group["params"]
        arrays = [raw] if isinstance(raw, np.ndarray) else list(raw)
        start = len(self._params)
        for i, a in enumerate(arrays):
            check.param_array(f"params[{start + i}]", a, lowp=True)
            kind = _lowp.numpy_kind(a.dtype)
            if kind in ("bfloat16", "float16"):
                _lowp.check_param_kind(f"params[{start + i}]", kind, self.master_weights,
                                       self.stochastic_rounding, self.state_dtype)  # fmt: skip
        unknown = set(param_group) - set(self.defaults) - {"params"} - ({"seed"} if self.stochastic_rounding else set())
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}")
        group = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        group = self._check_hyper(group)
        if self.stochastic_rounding:  # each group's Philox key (state_dict saves it)
            group["seed"] = _lowp.check_seed("seed", param_group.get("seed", self.seed))
        self._algo.check_params(self._conventions, arrays)
        check.no_overlap("params", self._params + arrays)
        group["params"] = list(range(start, start + len(arrays)))
        states = [self._new_state(a, group) for a in arrays]  # may still refuse: commit nothing before
        self.param_groups.append(group)
        self._lowp_path = self._lowp_path or any([a.dtype.itemsize == 2 for a in arrays])
        self._params.extend(arrays)
        self.state.extend(states)
        self._version += 1
        self._plan = None  # (it holds the arrays of the old layout alive)
        self._stepper = None

    @property
    def params(self) -> List[np.ndarray]:
        """All parameter arrays, in the order ``step`` expects their gradients."""
        return list(self._params)

    # -- the step --------------------------------------------------------------------------------
    def step(
        self,
        grads: Union[np.ndarray, Sequence[Optional[np.ndarray]], None] = None,
        *,
        grad_scale: Any = None,
        found_inf: Any = None,
        clip_value: Optional[float] = None,
        max_grad_norm: Optional[float] = None,
        skip_if_nonfinite: bool = False,
    ) -> Optional[float]:
        """Update every parameter in place from its gradient (``None``: skip this parameter).

        ``grads`` matches :attr:`params` one to one; for an optimizer built on a
        :class:`~fusedopt.FlatParams` arena it defaults to the arena's gradient buffer. Every
        group's hyperparameters (read from ``param_groups`` now, also when edited in place), every
        step count and every array are checked before the first write: on any error nothing is
        modified (no array, no step count). A step is all or nothing under Ctrl-C too: a
        ``KeyboardInterrupt`` arriving while it runs is raised when it has completed, step counts
        included. Concurrent calls on one optimizer are serialized by a lock.

        Gradient pre-processing, fused into the update pass (formulas: :mod:`fusedopt.functional`);
        gradient arrays are never written:

        * ``grad_scale``: divide the gradients by this AMP loss scale.
        * ``found_inf``: nonzero skips the step entirely: parameters, state and step counts stay
          bitwise as they were (torch's fused ``found_inf`` plus GradScaler's step rollback).
          The arguments are still checked first (a bad gradient or read-only parameter raises).
        * ``clip_value``: clamp every unscaled gradient element to ``[-clip_value, clip_value]``.
        * ``max_grad_norm``: clip by the global norm of *all* given gradients of the optimizer
          (every group and dtype): ``g *= min(1, max_grad_norm / (norm + 1e-6))``
          (``math.inf``: only compute the norm). The norm is deterministic (bitwise the same for
          any thread count and ISA; :func:`fusedopt.functional.global_norm`).
        * ``skip_if_nonfinite``: compute the global norm; if it is NaN/inf, skip the step as for
          ``found_inf``.

        Returns:
            The global norm of the unscaled gradients when it was computed (``max_grad_norm``
            or ``skip_if_nonfinite``), else ``None``.
        """
        if grads is None:
            if self._arena is None:
                raise TypeError("step() needs grads (only an optimizer built on a FlatParams arena has default grads)")
            grads = [self._arena.flat_grad]
        if isinstance(grads, np.ndarray):
            grads = [grads]
        elif not isinstance(grads, list):
            grads = list(grads)
        if len(grads) != len(self._params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(self._params)} parameters")
        if grad_scale is None and found_inf is None and clip_value is None and max_grad_norm is None \
                and skip_if_nonfinite is False:  # fmt: skip
            with self._lock:
                stepper = self._stepper
                if stepper is not None and not self._lowp_path and stepper.step(grads, self.param_groups, self.state,
                                                        1 if self._stepper_serial else _threads.get_num_threads()):  # fmt: skip
                    return None  # the C++ fast path (_make_stepper) did the whole step
                if not self._step_planned(grads):
                    with _core.defer_interrupts:  # all or nothing under Ctrl-C (see _step_planned)
                        self._step_general(grads)
            return None
        return self._step_with_grad_options(grads, grad_scale, found_inf, clip_value, max_grad_norm, skip_if_nonfinite)

    def _step_with_grad_options(self, grads: List[Optional[np.ndarray]], grad_scale: Any, found_inf: Any,
                                clip_value: Any, max_grad_norm: Any, skip_if_nonfinite: Any) -> Optional[float]:  # fmt: skip
        scale, value, max_norm, _, skip = F._check_grad_options(
            grad_scale, clip_value, max_grad_norm, None, skip_if_nonfinite
        )
        if F.found_inf_set(found_inf):
            with self._lock:
                self._check_step(grads)  # a skipped step still refuses what a step would refuse
            return None  # nothing is written, the step counts do not move
        with self._lock:
            norm = None
            coef = None
            if max_norm is not None or skip:
                present = []
                for i, g in enumerate(grads):
                    if g is not None:
                        p = check.param_array(f"params[{i}]", self._params[i], lowp=True)
                        check.grad_array(f"grads[{i}]", g, p, f"params[{i}]")
                        present.append(g)
                norm = math.sqrt(F._sum_of_squares(present, None)) / scale if present else 0.0
                if skip and not math.isfinite(norm):
                    self._check_step(grads)
                    return norm
                if max_norm is not None:
                    coef = F.clip_coef(norm, max_norm)
            kw: Dict[str, Any] = {}
            if grad_scale is not None:
                kw["grad_scale"] = scale
            if coef is not None:
                kw["clip_coef"] = coef
            if clip_value is not None:
                kw["clip_value"] = value
            self._call_kw = kw
            try:
                if not self._step_planned(grads):
                    with _core.defer_interrupts:
                        self._step_general(grads)
            finally:
                self._call_kw = {}
            return norm

    def _check_step(self, grads: List[Optional[np.ndarray]]) -> None:
        """Everything a step with these gradients would check, without the step (for a step that is
        skipped): every group's hyperparameters, every step count, and every parameter, gradient
        and state array (:meth:`_precheck`). Writes nothing, allocates no state."""
        calls = []
        for group in self.param_groups:
            hyper = self._group_view(group)
            idx = [i for i in group["params"] if grads[i] is not None]
            if self._HAS_STEP:
                for i in idx:
                    check.steppable(f"state[{i}]['step']", self.state[i].get("step"))
            calls.append((hyper, idx, [grads[i] for i in idx], [self.state[i] for i in idx]))
        self._precheck(calls, grads)

    def _step_planned(self, grads: List[Optional[np.ndarray]]) -> bool:
        """The common case, with the bucketing of the previous step reused: every parameter has a
        gradient and the state layout is unchanged. Returns False (having changed nothing) when
        the general path is needed."""
        plan = self._plan
        if plan is None or plan.version != self._version:
            return False
        for g in grads:
            if g is None:
                return False
        keys = plan.keys
        revalidated = False
        for gi, group in enumerate(self.param_groups):
            # Every group is checked before any array is written. Identity, not equality: True == 1
            # and 0.0 == False, and an edited value must be validated like a constructor argument
            # (a schedule's new float revalidates, cheaply). A value that can change in place (a
            # list of betas) is also compared item by item with the items it had (_watch).
            for k, old in zip(keys, plan.snapshots[gi]):
                if group[k] is not old:
                    break
            else:
                watched = plan.watched[gi]
                if not watched or _unchanged(group, watched):
                    continue
            snapshot = tuple([group[k] for k in keys])
            hyper = self._view(self._check_hyper(dict(zip(keys, snapshot))))
            if self._structure(hyper) != plan.structures[gi]:
                return False
            plan.snapshots[gi], plan.hypers[gi], plan.watched[gi] = snapshot, hyper, _watch(keys, snapshot)
            # the fast path follows the newly validated values (a schedule's new lr)
            revalidated = True
            if plan.watched[gi]:
                self._stepper = None
            elif self._stepper is not None:
                self._stepper.refresh(snapshot, hyper)
            else:
                self._stepper = self._make_stepper(plan)
        direct = not self._call_kw  # no gradient options: straight into _core
        stepper = self._stepper
        if revalidated and direct and stepper is not None and stepper.step(
                grads, self.param_groups, self.state, 1 if self._stepper_serial else _threads.get_num_threads()):  # fmt: skip
            return True  # the values were new, the rest is the fast path's (it did the whole step)
        calls = []
        lowp_path = self._lowp_path
        for b, (gi, idx, params, core_plan, n) in enumerate(plan.buckets):
            states = [self.state[i] for i in idx]
            step = 0
            if self._HAS_STEP:
                # every bucket's count is checked before the first call; anything but a valid int
                # shared by the bucket (an edited count) takes the general path, which validates
                t = states[0]["step"]
                if t.__class__ is not int or t < 0 or t >= _MAX_STEP:
                    return False
                for st in states:
                    s = st["step"]
                    if s != t or s.__class__ is not int:
                        return False
                step = t + 1
            try:
                lists = self._state_lists(plan.hypers[gi], states)
            except KeyError:  # a state array was deleted by hand: the general path re-creates it
                return False
            # every gradient is an array here (checked above)
            gs = cast("List[np.ndarray]", [grads[i] for i in idx] if len(idx) != len(grads) else grads)
            lowp: Tuple[Any, ...] = ()
            if lowp_path:
                # the bucket's gradient dtype (bfloat16/float16 params: theirs or float32) as planned
                gdt = plan.gdtypes[b]
                for g in gs:
                    if getattr(g, "dtype", None) != gdt:
                        return False
                try:
                    lowp = self._lowp_call(self.param_groups[gi], params, states)
                    if len(lowp) > 4:
                        lowp = (*lowp[:4], self._absmax_lists(plan.hypers[gi], states))
                except KeyError:  # a master was deleted by hand: the general path re-creates it
                    return False
            calls.append((plan.hypers[gi], idx, params, gs, states, lists, step, core_plan, n, lowp))
        # A step is all or nothing under Ctrl-C too: a KeyboardInterrupt arriving while it runs is
        # raised when it is complete, step counts included. One native call advances the counts
        # itself, right after its kernel with no Python code in between (counters=); otherwise the
        # calls and the counts are inside _core.defer_interrupts (cpp/bindings/signals.cpp).
        if direct and len(calls) == 1:
            hyper, _, params, gs, states, lists, step, core_plan, n, lowp = calls[0]
            self._native(hyper, params, gs, lists, step, _threads.resolve(None, n, self._algo.threads), core_plan,
                         states if self._HAS_STEP else None, lowp)  # fmt: skip
            return True
        if len(calls) > 1:
            self._precheck([(c[0], c[1], c[3], c[4]) for c in calls], grads)
        with _core.defer_interrupts:
            for hyper, _, params, gs, states, lists, step, core_plan, n, lowp in calls:
                if direct:
                    nt = _threads.resolve(None, n, self._algo.threads)
                    self._native(hyper, params, gs, lists, step, nt, core_plan, None, lowp)
                else:
                    self._update(hyper, params, gs, states, lowp)
            if self._HAS_STEP:
                for c in calls:
                    step = c[6]
                    for st in c[4]:
                        st["step"] = step
        return True

    def _step_general(self, grads: List[Optional[np.ndarray]]) -> None:
        plan: List[Tuple[Dict[str, Any], List[int]]] = []
        staged: Dict[int, State] = {}
        hypers = []
        group_of: Dict[int, Mapping[str, Any]] = {}  # id(hyper) -> its group (the low-precision call's seed)
        for group in self.param_groups:
            hyper = self._group_view(group)
            hypers.append(hyper)
            group_of[id(hyper)] = group
            buckets: Dict[Any, List[int]] = {}
            for i in group["params"]:
                if grads[i] is None:
                    continue
                st = self._complete_state(dict(self.state[i]), self._params[i], hyper)
                if self._HAS_STEP:  # every count is checked before the first call (and made an int)
                    st["step"] = check.steppable(f"state[{i}]['step']", st.get("step"))
                staged[i] = st
                key: Tuple[Any, ...] = (self._params[i].dtype, self._bucket(st))
                if self._lowp_path:  # one gradient dtype per call (bfloat16/float16 params: theirs or float32)
                    # and 8-bit states in calls of their own
                    key = (*key, getattr(grads[i], "dtype", None), self._is_q8(self._params[i]))
                buckets.setdefault(key, []).append(i)
            plan.extend((hyper, idx) for idx in buckets.values())
        if len(plan) > 1 or len(staged) != len(self._params):
            # Several native calls, or a call on a sub-list (whose positions are not the global
            # indices): check everything here first, with global names, so that no call can fail
            # after an earlier one has written.
            self._precheck([(h, idx, [grads[i] for i in idx], [staged[i] for i in idx]) for h, idx in plan], grads)
        for hyper, idx in plan:
            gs = cast(List[np.ndarray], [grads[i] for i in idx])  # buckets hold only parameters with a gradient
            ps, sts = [self._params[i] for i in idx], [staged[i] for i in idx]
            lowp = self._lowp_call(group_of[id(hyper)], ps, sts) if self._lowp_path else ()
            self._update(hyper, ps, gs, sts, lowp)
        for i, st in staged.items():
            if self._HAS_STEP:
                st["step"] = st["step"] + 1
            self.state[i] = st
        self._version += 1
        self._plan = None
        self._stepper = None
        if len(staged) == len(self._params):
            self._plan = self._make_plan(hypers, grads)
            self._stepper = self._make_stepper(self._plan)

    def _make_stepper(self, plan: "_Plan") -> Optional[_core.Stepper]:
        """The C++ fast path of the planned step (cpp/bindings/stepper.hpp) when the plan is one
        native call over every parameter (one param group, one dtype, one step count) whose
        hyperparameters cannot change in place; None otherwise. It holds what the plan validated
        and re-checks it by identity at every step (``Stepper.step`` returns False, having changed
        nothing, when anything differs: the Python path then runs)."""
        algo = self._algo
        if self._lowp_path:  # (the Stepper steps float32/float64 storage, without masters)
            return None
        if not _USE_STEPPER or algo.kernel not in _core._stepper_kernels or len(plan.buckets) != 1 \
                or len(self.param_groups) != 1 or plan.watched[0]:  # fmt: skip
            return None
        gi, idx, params, core_plan, n = plan.buckets[0]
        if core_plan is None or len(idx) != len(self._params) or idx != list(range(len(self._params))):
            return None
        hyper = plan.hypers[gi]
        states = [self.state[i] for i in idx]
        try:
            lists = self._state_lists(hyper, states)
        except KeyError:
            return None
        role_keys = [r.key if r.present(hyper) else None for r in algo.states]
        self._stepper_serial = _threads.serial(n, algo.threads)
        return _core.Stepper(algo.kernel, core_plan, list(params), lists, role_keys, self.param_groups[gi],
                             plan.keys, plan.snapshots[gi], states, hyper, self._HAS_STEP)  # fmt: skip

    def _make_plan(self, hypers: List[Dict[str, Any]], grads: List[Optional[np.ndarray]]) -> "_Plan":
        keys = tuple(self.defaults)
        buckets: List[Tuple[int, List[int], List[np.ndarray], Optional[_core.Plan], int]] = []
        gdtypes: List[Any] = []
        lowp = self._lowp_path
        for gi, group in enumerate(self.param_groups):
            by_key: Dict[Any, List[int]] = {}
            for i in group["params"]:
                key: Tuple[Any, ...] = (self._params[i].dtype.char, self._bucket(self.state[i]))
                if lowp:  # as _step_general buckets them: by gradient dtype and 8-bit states too
                    key = (self._params[i].dtype, key[1], getattr(grads[i], "dtype", None),
                           self._is_q8(self._params[i]))  # fmt: skip
                by_key.setdefault(key, []).append(i)
            for key, idx in by_key.items():
                params = [self._params[i] for i in idx]
                # The native side validates params and state arrays once, here; later steps only
                # check that the same, unchanged arrays come back (cpp/bindings/plan.hpp). Not for
                # low-precision storage: the step binding validates those arrays at every call.
                core_plan = None if lowp else \
                    _core.Plan([params, *self._state_lists(hypers[gi], [self.state[i] for i in idx])])  # fmt: skip
                buckets.append((gi, idx, params, core_plan, sum([p.size for p in params])))
                gdtypes.append(key[2] if lowp else None)
        snapshots = [tuple([g[k] for k in keys]) for g in self.param_groups]
        return _Plan(
            version=self._version,
            keys=keys,
            snapshots=snapshots,
            watched=[_watch(keys, snap) for snap in snapshots],
            hypers=hypers,
            structures=[self._structure(h) for h in hypers],
            buckets=buckets,
            gdtypes=gdtypes,
        )

    def _precheck(self, calls: List[Tuple[Dict[str, Any], List[int], List[Any], List[State]]],
                  grads: List[Optional[np.ndarray]]) -> None:  # fmt: skip
        """Everything the native calls would check, for all calls at once, named by global index:
        every parameter, gradient and state array, and no written array overlapping any other
        array of the step (also across calls)."""
        extents: List[check.Extent] = []

        def add(a: np.ndarray, name: str, written: bool) -> None:
            e = check.extent(a, name, written)
            if e is not None:
                extents.append(e)

        for hyper, idx, _gs, states in calls:
            keys = self._state_keys(hyper)
            for i, st in zip(idx, states):
                p = check.param_array(f"params[{i}]", self._params[i], lowp=True)
                check.grad_array(f"grads[{i}]", grads[i], p, f"params[{i}]")
                add(p, f"params[{i}]", True)
                add(grads[i], f"grads[{i}]", False)  # type: ignore[arg-type]
                sdt = self._state_dtype(p)
                q8 = self._is_q8(p)
                for k in keys:
                    if k in st:
                        a = st[k]
                        name = f"state[{i}][{k!r}]"
                        if q8:
                            _check_buffer(name, a, np.dtype(np.uint8), p.shape)
                            ka = k + ABSMAX_SUFFIX
                            if ka not in st:
                                raise ValueError(f"state[{i}] lacks {ka!r} (the absmax of its 8-bit state {k!r})")
                            _check_buffer(f"state[{i}][{ka!r}]", st[ka], np.dtype(np.float32),
                                          (reference.q8_blocks(p.size),))  # fmt: skip
                            add(st[ka], f"state[{i}][{ka!r}]", True)
                        else:
                            check.param_array(name, a, lowp=True)
                        if a.dtype != sdt or a.shape != p.shape:
                            raise ValueError(f"{name} has dtype {a.dtype} and shape {a.shape}; params[{i}] needs "
                                             f"{sdt} and {p.shape}")  # fmt: skip
                        add(a, name, True)
                for k, mdt in ((MASTER_KEY, np.float32), (TRAIL_KEY, np.uint16)):
                    if k in st:
                        a = st[k]
                        name = f"state[{i}][{k!r}]"
                        if not isinstance(a, np.ndarray) or a.dtype != mdt or a.shape != p.shape \
                                or not a.flags.c_contiguous or not a.flags.writeable:  # fmt: skip
                            raise ValueError(f"{name} must be a writeable C-contiguous {np.dtype(mdt)} array of "
                                             f"shape {p.shape}")  # fmt: skip
                        add(a, name, True)
        found = check.find_overlap(extents)
        if found is not None:
            raise ValueError(f"{found[1]} shares memory with {found[0]}; arrays updated in place must not overlap")

    # -- state dicts -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """A copy of the state: ``{"state": {index: {...}}, "param_groups": [{..., "params": [index...]}]}``.

        Arrays are copies (later steps do not change a saved state dict); layout and key names
        follow torch.optim (with ``step`` as a Python int). Taken under the lock: never half way
        through a step running in another thread.

        An 8-bit state ``key`` (``state_dtype="8bit"``) is saved as ``key`` (the uint8 codes),
        ``key + "_absmax"`` (float32, one per block of 256 elements) and ``key + "_qmap"`` (the
        float32 code book, 256 values: signed, or unsigned for never-negative states); bitsandbytes'
        layout with its names (``state1``/``qmap1``/``absmax1``) is not used.
        """
        state: Dict[int, State] = {}
        with self._lock:
            for i, st in enumerate(self.state):
                if self._HAS_STEP and st.get("step", 0) == 0 and not any(k in st for k in self._STATE_ARRAYS):
                    continue
                if not st:
                    continue
                out = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                for r in self._algo.states:
                    if r.key + ABSMAX_SUFFIX in st:
                        out[r.key + QMAP_SUFFIX] = reference.q8_map(not r.nonneg).value.copy()
                state[i] = out
            groups = [{**{k: g[k] for k in self.defaults}, **({"seed": g["seed"]} if "seed" in g else {}),
                       "params": list(g["params"])} for g in self.param_groups]  # fmt: skip
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict made by :meth:`state_dict` (or torch-shaped, with array values).

        Everything is checked first (group and parameter counts, hyperparameters, state keys,
        array shapes and dtypes, step counts); a state dict that does not fit raises and leaves
        the optimizer unchanged. Arrays are copied in.

        8-bit states (``state_dtype="8bit"``, :meth:`state_dict`): codes must be uint8 of the
        parameter's shape with ``key + "_absmax"`` float32 of ``ceil(size / 256)`` values (each
        >= 0 and finite, or NaN: a poisoned block that decodes to NaN) and, when given,
        ``key + "_qmap"`` bitwise equal to this version's code book (ValueError naming it otherwise).
        A float state (float32, float16, bfloat16 or float64, converted to float32) loaded for a
        parameter with 8-bit states is quantized (:func:`fusedopt.reference.q8_encode`); an 8-bit
        state loaded for a parameter with float states (another ``state_dtype``, or one below
        ``min_8bit_size``) is decoded (:func:`fusedopt.reference.q8_decode`) and stored in the
        state dtype (rounded to nearest even). Serialized with steps by the lock. (In a
        child forked while another thread was inside a step or load, loading replaces the
        half-updated state and the lock lost with that thread: see fusedopt._fork.)
        """
        if _fork.forked_mid_call(self):
            self._lock = _fork.new_lock(self)
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a mapping with 'state' and 'param_groups'")
        groups_in = list(state_dict["param_groups"])
        if len(groups_in) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(groups_in)} param groups but the optimizer has {len(self.param_groups)}"
            )
        new_groups = []
        index_map: Dict[Any, int] = {}
        for gi, (gin, mine) in enumerate(zip(groups_in, self.param_groups)):
            if not isinstance(gin, Mapping) or "params" not in gin:
                raise ValueError(f"state_dict['param_groups'][{gi}] must be a dict with 'params'")
            ids = list(gin["params"])
            if len(ids) != len(mine["params"]):
                raise ValueError(
                    f"param group {gi} of state_dict has {len(ids)} parameters, the optimizer's has {len(mine['params'])}"
                )
            missing = set(self.defaults) - set(gin)
            if missing:
                raise ValueError(f"param group {gi} of state_dict lacks {sorted(missing)}")
            hyper = self._check_hyper({k: gin[k] for k in self.defaults})
            if self.stochastic_rounding:  # the saved seed, else this optimizer's
                saved = gin.get("seed", mine["seed"])
                hyper["seed"] = _lowp.check_seed(f"param group {gi} of state_dict: 'seed'", saved)
            new_groups.append({**hyper, "params": list(mine["params"])})
            for saved_id, i in zip(ids, mine["params"]):
                index_map[saved_id] = i
        states_in = state_dict["state"]
        if not isinstance(states_in, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        new_state = [self._new_state(p, new_groups[self._group_of(i)]) for i, p in enumerate(self._params)]
        for key, st in states_in.items():
            if key not in index_map:
                raise ValueError(f"state_dict['state'] has an entry for unknown parameter {key!r}")
            i = index_map[key]
            new_state[i] = self._check_loaded_state(i, st)
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state
        self._version += 1
        self._plan = None  # (it holds the replaced state arrays alive)
        self._stepper = None

    def _group_of(self, i: int) -> int:
        for gi, g in enumerate(self.param_groups):
            if i in g["params"]:
                return gi
        raise IndexError(i)  # pragma: no cover

    def _check_loaded_state(self, i: int, st: Any) -> State:
        if not isinstance(st, Mapping):
            raise ValueError(f"state of parameter {i} must be a dict")
        p = self._params[i]
        master = self._master_kind(p)
        allowed = set(self._STATE_ARRAYS) | ({"step"} if self._HAS_STEP else set())
        allowed |= {MASTER_KEY} if master == "fp32" else {TRAIL_KEY} if master == "split" else set()
        allowed |= {k + suffix for k in self._STATE_ARRAYS for suffix in (ABSMAX_SUFFIX, QMAP_SUFFIX)}
        unknown = set(st) - allowed
        if unknown:
            raise ValueError(f"state of parameter {i} has unknown key(s) {sorted(unknown)} for {type(self).__name__}")
        out: State = {}
        if self._HAS_STEP:
            if "step" not in st and not self._algo.has_step:
                st = {**st, "step": 0}  # saved without stochastic rounding (SGD, Lion): counted from here
            if "step" not in st:
                raise ValueError(f"state of parameter {i} lacks 'step'")
            try:
                out["step"] = check.stored_step(f"state of parameter {i}: 'step'", st["step"])
            except TypeError as exc:  # a state dict that does not fit is a ValueError, whatever the field
                raise ValueError(str(exc)) from None
        sdt = self._state_dtype(p)
        roles = {r.key: r for r in self._algo.states}
        for k in (*self._STATE_ARRAYS, MASTER_KEY, TRAIL_KEY):
            if k not in st:
                if k in roles and (k + ABSMAX_SUFFIX in st or k + QMAP_SUFFIX in st):
                    raise ValueError(f"state of parameter {i} has {k + ABSMAX_SUFFIX!r}/{k + QMAP_SUFFIX!r} "
                                     f"but no {k!r}")  # fmt: skip
                continue
            if k in roles:
                loaded = _load_q8(i, k, st, roles[k], p)
                if loaded is not None and self._is_q8(p):  # 8-bit kept as is
                    codes = _zeros_in_phase(p, np.dtype(np.uint8))
                    codes[...] = loaded[0]
                    out[k] = codes
                    out[k + ABSMAX_SUFFIX] = loaded[1].copy()
                    continue
                if loaded is not None:  # 8-bit decoded for float states
                    buf = self._zeros(p)
                    buf[...] = loaded[2].reshape(p.shape)
                    out[k] = buf
                    continue
                a = st[k]
                if self._is_q8(p) and isinstance(a, np.ndarray) and _lowp.numpy_kind(a.dtype) is not None:
                    if a.shape != p.shape:
                        raise ValueError(f"state of parameter {i}: '{k}' has shape {a.shape}, the parameter {p.shape}")
                    self._put_q8(out, roles[k], p, a.astype(np.float32))  # a float state quantized
                    continue
            a = st[k]
            want = np.dtype(np.float32) if k == MASTER_KEY else np.dtype(np.uint16) if k == TRAIL_KEY else sdt
            if not isinstance(a, np.ndarray):
                raise ValueError(f"state of parameter {i}: '{k}' must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype != want:
                raise ValueError(f"state of parameter {i}: '{k}' has dtype {a.dtype}; this optimizer keeps it in "
                                 f"{want} (parameter dtype {p.dtype}, master_weights={self.master_weights!r}, "
                                 f"state_dtype={self.state_dtype!r})")  # fmt: skip
            if a.shape != p.shape:
                raise ValueError(f"state of parameter {i}: '{k}' has shape {a.shape}, the parameter {p.shape}")
            buf = self._zeros(p) if k in self._STATE_ARRAYS else _zeros_in_phase(p, want)
            buf[...] = a
            out[k] = buf
        self._check_required_state(i, out)
        return out

    # -- low-precision export --------------------------------------------------------------------
    def sync_masters(self) -> None:
        """Make every master again from its parameter, in place: the fp32 master becomes the exact
        float32 upcast of the parameter, a split master's trail zero. Call it after changing
        parameters outside the optimizer (loading weights into them, re-initializing a layer):
        NumPy arrays have no version counter, so a master would otherwise keep the old weights and
        overwrite the change at the next step (``fusedopt.torch`` notices in-place changes itself)."""
        with self._lock:
            for p, st in zip(self._params, self.state):
                m, t = st.get(MASTER_KEY), st.get(TRAIL_KEY)
                if isinstance(m, np.ndarray):
                    m[...] = p.astype(np.float32)
                elif isinstance(t, np.ndarray):
                    t[...] = 0

    def master_params(self) -> List[np.ndarray]:
        """The float32 master of every parameter, in :attr:`params` order, as new arrays: the fp32
        master (``master_weights="fp32"``), the decoded split master (``"split"``:
        :func:`fusedopt.reference.split_decode`), else the exact float32 upcast of the parameter
        (before its first step too, and for float32/float64 parameters: a float32 copy, float64 rounded to nearest)."""
        out = []
        with self._lock:
            for p, st in zip(self._params, self.state):
                m, t = st.get(MASTER_KEY), st.get(TRAIL_KEY)
                if isinstance(m, np.ndarray):
                    out.append(m.copy())
                elif isinstance(t, np.ndarray) and _lowp.is_bf16(p.dtype):
                    out.append(reference.split_decode(p.view(np.uint16), t).reshape(p.shape))
                else:
                    out.append(p.astype(np.float32))
        return out

    def fp32_state_dict(self) -> Dict[str, Any]:
        """:meth:`state_dict` for float32 parameters (:meth:`master_params`): every state array
        as float32 (exact upcasts of bfloat16/float16 ones; float64 ones rounded to nearest), the
        master keys and the ``"seed"`` group entries dropped; 8-bit states decoded to float32
        (:func:`fusedopt.reference.q8_decode`) under their plain keys, their ``"_absmax"`` and
        ``"_qmap"`` entries dropped: a state dict for any optimizer of the class."""
        sd = self.state_dict()
        for st in sd["state"].values():
            for k in MASTER_KEYS:
                st.pop(k, None)
            for r in self._algo.states:
                st.pop(r.key + QMAP_SUFFIX, None)
                absmax = st.pop(r.key + ABSMAX_SUFFIX, None)
                if absmax is not None and r.key in st:
                    codes = st[r.key]
                    st[r.key] = reference.q8_decode(codes, absmax, not r.nonneg).reshape(codes.shape)
            for k, v in list(st.items()):
                if isinstance(v, np.ndarray):
                    st[k] = v.astype(np.float32)
        for g in sd["param_groups"]:
            g.pop("seed", None)
        return sd

    def state_bytes(self) -> int:
        """The bytes of all state arrays (states, 8-bit codes and their absmax, masters and
        trails; not the parameters, not a few bytes of placement padding): e.g. Adam keeps 8 bytes
        per float32 parameter element with float32 states, about 2.03 with ``state_dtype="8bit"``."""
        with self._lock:
            return sum([v.nbytes for st in self.state for v in st.values() if isinstance(v, np.ndarray)])

    # -- copies and pickles ----------------------------------------------------------------------
    # The lock and the cached plan (native objects holding the arrays) are not copied: a copy gets
    # its own lock and makes its plan at its first step, through the general path (which computes
    # bitwise the same update).
    _NOT_COPIED = ("_lock", "_plan", "_stepper")

    def __getstate__(self) -> Dict[str, Any]:
        """For pickle: every attribute but the lock and the plan, taken under the lock (the arrays
        themselves are read by the pickler afterwards: pickle between steps, not while another
        thread steps; :func:`copy.deepcopy` is atomic)."""
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if k not in self._NOT_COPIED}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = _fork.new_lock(self)
        self._plan = None
        self._stepper = None
        self._version += 1
        self._place_state()

    def __copy__(self) -> "Optimizer":
        """A shallow copy (``copy.copy``): its own lock, the same parameter and state objects
        (as a shallow copy of a torch optimizer); nothing of the original is changed."""
        cls = type(self)
        new = cls.__new__(cls)
        with self._lock:
            new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in self._NOT_COPIED})
        new._lock = _fork.new_lock(new)
        new._plan = None
        new._stepper = None
        return new

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Optimizer":
        """An independent optimizer with equal parameters, hyperparameters, conventions and state,
        copied under the lock (never half way through a concurrent step). Arrays shared with other
        objects copied by the same :func:`copy.deepcopy` call stay shared (``memo``)."""
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        with self._lock:
            state = {k: v for k, v in self.__dict__.items() if k not in self._NOT_COPIED}
            state = copy.deepcopy(state, memo)
        new.__setstate__(state)
        return new

    def _place_state(self) -> None:
        """Give copied state arrays the placement of :meth:`_zeros` again (a copy of an array is a
        new allocation at whatever address; the kernels are fastest with the state arrays in phase
        with their parameter)."""
        for i, st in enumerate(self.state):
            p = self._params[i]
            in_arena = self._arena is not None and p is self._arena.flat
            for k in self._STATE_ARRAYS:
                a = st.get(k)
                if isinstance(a, np.ndarray) and a.shape == p.shape and a.dtype == self._state_dtype(p) and a.size \
                        and (in_arena or (a.ctypes.data - p.ctypes.data) % 64 != 0):  # fmt: skip
                    buf = _zeros_in_phase(p, a.dtype) if a.dtype == np.uint8 else self._zeros(p)
                    buf[...] = a
                    st[k] = buf

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            for k in self.defaults:
                lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


_Opt = TypeVar("_Opt", bound=Optimizer)


def _with_conventions(cls: Type[_Opt], conventions: Dict[str, Any], params: ParamsArg, **kwargs: Any) -> _Opt:
    """An optimizer of class ``cls`` built with these convention options."""
    opt = cls.__new__(cls)
    opt._CONVENTIONS = {**cls._CONVENTIONS, **conventions}  # read by __init__ (instance attribute)
    opt.__init__(params, **kwargs)  # type: ignore[misc]
    return opt


def _zeros_in_phase(param: np.ndarray, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """Zeros shaped like ``param`` (of ``dtype``, default the parameter's), starting at the same
    element position modulo 64 bytes (a view into a buffer 64 bytes larger)."""
    dtype = param.dtype if dtype is None else dtype
    item = dtype.itemsize
    raw = np.zeros(param.size + 64 // item, dtype=dtype)
    # the same element index at a 64-byte boundary in both (state loads follow the parameter's)
    if param.dtype.itemsize == item:
        offset = (param.ctypes.data - raw.ctypes.data) % 64 // item
    else:  # the parameter's first element on a 64-byte boundary, k0, is there in the state too
        k0 = (-param.ctypes.data) % 64 // param.dtype.itemsize
        offset = (-(raw.ctypes.data // item) - k0) % (64 // item)
    return raw[offset : offset + param.size].reshape(param.shape)


def _check_buffer(name: str, a: Any, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
    """A writeable C-contiguous array of this dtype and shape (ValueError naming it)."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous \
            or not a.flags.writeable:  # fmt: skip
        raise ValueError(f"{name} must be a writeable C-contiguous {dtype} array of shape {shape}")


def _load_q8(i: int, k: str, st: Mapping[str, Any], role: StateRole, p: np.ndarray
             ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """A loaded state ``k`` that is 8-bit (has ``k + "_absmax"``), checked: (codes, absmax, decoded
    float32). None for a state without absmax (the caller checks it as a float state). Writes
    nothing."""
    a = st[k]
    name = f"state of parameter {i}: '{k}'"
    ka, kq = k + ABSMAX_SUFFIX, k + QMAP_SUFFIX
    signed = not role.nonneg
    if ka not in st:
        if kq in st:
            raise ValueError(f"state of parameter {i} has {kq!r} but no {ka!r}")
        if isinstance(a, np.ndarray) and a.dtype == np.uint8:
            raise ValueError(f"{name} is uint8 (8-bit codes) but {ka!r} is missing")
        return None
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != p.shape:
        raise ValueError(f"{name} must be a uint8 array (8-bit codes) of shape {p.shape} since {ka!r} is given, got "
                         f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}")  # fmt: skip
    m = st[ka]
    nb = reference.q8_blocks(p.size)
    if not isinstance(m, np.ndarray) or m.dtype != np.float32 or m.shape != (nb,):
        raise ValueError(f"state of parameter {i}: {ka!r} must be a float32 array of shape ({nb},), got "
                         f"{type(m).__name__} {getattr(m, 'dtype', '')} {getattr(m, 'shape', '')}")  # fmt: skip
    bad = np.isinf(m) | (np.signbit(m) & ~np.isnan(m))
    if bad.any():
        raise ValueError(f"state of parameter {i}: {ka!r} has a negative or infinite value at block "
                         f"{int(np.argmax(bad))} (absmax values are >= 0 and finite, or NaN)")  # fmt: skip
    if kq in st:
        q = st[kq]
        want = reference.q8_map(signed).value
        if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.shape != want.shape \
                or not np.array_equal(q.view(np.uint32), want.view(np.uint32)):  # fmt: skip
            raise ValueError(f"state of parameter {i}: {kq!r} is not this version's {'signed' if signed else 'unsigned'} "
                             "8-bit code book (float32, 256 values, bitwise): states quantized with another "
                             "code book cannot be loaded")  # fmt: skip
    return a, m, reference.q8_decode(a, m, signed)


#: types whose values cannot change in place (a hyperparameter of one of these types that is still
#: the same object holds the same value)
_IMMUTABLE = frozenset({float, int, bool, str, type(None), np.float64, np.float32, np.float16, np.int64, np.int32,
                        np.bool_})  # fmt: skip
_MAX_STEP = check.MAX_STEP

#: a private switch for measurements and tests (the kernels whose scalars the Stepper derives in
#: C++, checked bitwise against fusedopt._scalars by tests/test_stepper.py: _core._stepper_kernels)
_USE_STEPPER = True


def _immutable(v: Any) -> bool:
    return type(v) in _IMMUTABLE or (type(v) is tuple and all([type(x) in _IMMUTABLE for x in v]))


def _watch(keys: Tuple[str, ...], snapshot: Tuple[Any, ...]) -> Tuple[Tuple[str, Optional[Tuple[Any, ...]]], ...]:
    """The hyperparameters of a snapshot whose value may change while the object stays the same (a
    list edited in place, ``group["betas"][0] = 0.0``), each with its items then (None when the
    value cannot be compared that way: it is validated again at every step). Empty in the common
    case (floats, bools, tuples of floats)."""
    out = []
    for k, v in zip(keys, snapshot):
        if not _immutable(v):
            items = tuple(v) if type(v) is list and all([type(x) in _IMMUTABLE for x in v]) else None
            out.append((k, items))
    return tuple(out)


def _unchanged(group: Mapping[str, Any], watched: Tuple[Tuple[str, Optional[Tuple[Any, ...]]], ...]) -> bool:
    """Whether every watched value (:func:`_watch`) still holds the same items (by identity)."""
    for k, items in watched:
        v = group[k]
        if items is None or len(v) != len(items):
            return False
        for a, b in zip(v, items):
            if a is not b:
                return False
    return True


def _required(lst: Optional[List[np.ndarray]]) -> List[np.ndarray]:
    """A state list that every configuration of the algorithm has (typing only; a string type
    in cast() avoids evaluating ``List[...]`` at every step)."""
    return cast("List[np.ndarray]", lst)


class _Plan:
    """How the last full step bucketed the parameters into native calls (see Optimizer.step):
    per bucket (group index, parameter indices, parameter arrays, the native Plan of params and
    state lists, total elements)."""

    __slots__ = ("version", "keys", "snapshots", "watched", "hypers", "structures", "buckets", "gdtypes")

    def __init__(self, *, version: int, keys: Tuple[str, ...], snapshots: List[Tuple[Any, ...]],
                 watched: List[Tuple[Tuple[str, Optional[Tuple[Any, ...]]], ...]],
                 hypers: List[Dict[str, Any]], structures: List[Tuple[Any, ...]],
                 buckets: List[Tuple[int, List[int], List[np.ndarray], Optional[_core.Plan], int]],
                 gdtypes: List[Any]) -> None:  # fmt: skip
        self.version = version
        self.keys = keys
        self.snapshots = snapshots
        self.watched = watched
        self.hypers = hypers
        self.structures = structures
        self.buckets = buckets
        #: per bucket, the gradient dtype it was planned for (low-precision storage), else None
        self.gdtypes = gdtypes


def _lowp_kw(master_weights: Optional[str], stochastic_rounding: bool, seed: Optional[int],
             state_dtype: Optional[str], min_8bit_size: int) -> Dict[str, Any]:  # fmt: skip
    return dict(master_weights=master_weights, stochastic_rounding=stochastic_rounding, seed=seed,
                state_dtype=state_dtype, min_8bit_size=min_8bit_size)  # fmt: skip


class SGD(Optimizer):
    """``torch.optim.SGD``: see :func:`fusedopt.functional.sgd` for the exact update.

    State per parameter: ``momentum_buffer`` (when ``momentum != 0``; made on the first step, where
    it is set to the gradient, as torch does). SGD has no step counter.
    """

    _algo = _SGD

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))  # fmt: skip


class Momentum(Optimizer):
    """Momentum as an exponentially weighted average (Ng): see :func:`fusedopt.functional.momentum`.

    State per parameter: ``step`` and ``velocity`` (zeros).
    """

    _algo = MOMENTUM

    def __init__(
        self, params: ParamsArg, lr: float, beta: float = 0.9, weight_decay: float = 0.0,
        bias_correction: bool = False, *, master_weights: Optional[str] = None, stochastic_rounding: bool = False,
        seed: Optional[int] = None, state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class RMSprop(Optimizer):
    r"""``torch.optim.RMSprop``: see :func:`fusedopt.functional.rmsprop` for the exact update.

    State per parameter: ``step`` (counted, unused by the math, as in torch), ``square_avg``,
    ``momentum_buffer`` (momentum > 0) and ``grad_avg`` (centered), all starting at zero.

    Conventions (``opt.conventions``; :meth:`keras`/:meth:`optax` presets or :meth:`set_conventions`;
    formulas in :func:`fusedopt.functional.rmsprop`; docs/CONVENTIONS.md): ``eps_in_sqrt``
    (:math:`\sqrt{v+\epsilon}`, TF/Keras/optax) and ``lr_in_momentum`` (the buffer holds
    :math:`\eta g/a`, TF/Keras/optax). Both False (torch) by default.
    """

    _algo = RMSPROP

    def __init__(
        self, params: ParamsArg, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
        weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
        maximize: bool = False, master_weights: Optional[str] = None, stochastic_rounding: bool = False,
        seed: Optional[int] = None, state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))  # fmt: skip

    @classmethod
    def keras(
        cls, params: ParamsArg, learning_rate: float = 1e-3, rho: float = 0.9, momentum: float = 0.0,
        epsilon: float = 1e-7, centered: bool = False,
    ) -> "RMSprop":  # fmt: skip
        """Keras 3 ``keras.optimizers.RMSprop`` (and TF ``ApplyRMSProp``/``ApplyCenteredRMSProp``):
        Keras' argument names and defaults; eps inside the root, lr inside the momentum buffer
        (``eps_in_sqrt=True, lr_in_momentum=True``). Keras' ``weight_decay`` (decoupled) is not
        offered."""
        return _with_conventions(cls, dict(eps_in_sqrt=True, lr_in_momentum=True), params, lr=learning_rate,
                                 alpha=rho, eps=epsilon, momentum=momentum, centered=centered)  # fmt: skip

    @classmethod
    def optax(
        cls, params: ParamsArg, learning_rate: float, decay: float = 0.9, eps: float = 1e-8,
        centered: bool = False, momentum: Optional[float] = None,
    ) -> "RMSprop":  # fmt: skip
        """``optax.rmsprop`` with its defaults (``initial_scale=0``, ``eps_in_sqrt=True``,
        ``bias_correction=False``, ``nesterov=False``; other values are not offered): eps inside
        the root, the momentum trace applied after the lr scaling (lr inside the buffer)."""
        return _with_conventions(cls, dict(eps_in_sqrt=True, lr_in_momentum=True), params, lr=learning_rate,
                                 alpha=decay, eps=eps, momentum=momentum or 0.0, centered=centered)  # fmt: skip


class Adam(Optimizer):
    """``torch.optim.Adam``: see :func:`fusedopt.functional.adam` for the exact update.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` (amsgrad),
    all starting at zero. ``decoupled_weight_decay=True`` is AdamW.

    Conventions (``opt.conventions``; :meth:`keras`/:meth:`optax` presets or :meth:`set_conventions`;
    formulas in :func:`fusedopt.functional.adam`; docs/CONVENTIONS.md): ``epsilon_hat`` (Keras/TF),
    ``eps_root`` (optax), ``torch_exact`` (float32 bit-for-bit torch fused). torch's formula with
    plain IEEE rounding (False, 0.0, False) by default.
    """

    _algo = ADAM

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
        decoupled_weight_decay: bool = False, master_weights: Optional[str] = None, stochastic_rounding: bool = False,
        seed: Optional[int] = None, state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))  # fmt: skip

    @classmethod
    def keras(
        cls, params: ParamsArg, learning_rate: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
        epsilon: float = 1e-7, amsgrad: bool = False,
    ) -> "Adam":  # fmt: skip
        """Keras 3 ``keras.optimizers.Adam`` (and TF ``ApplyAdam``): Keras' argument names and
        defaults; the epsilon-hat form (``epsilon_hat=True``)."""
        return _with_conventions(cls, dict(epsilon_hat=True), params, lr=learning_rate, betas=(beta_1, beta_2),
                                 eps=epsilon, amsgrad=amsgrad)  # fmt: skip

    @classmethod
    def optax(
        cls, params: ParamsArg, learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
        eps_root: float = 0.0,
    ) -> "Adam":  # fmt: skip
        """``optax.adam`` (``nesterov=False``, default ``mu_dtype``): optax's argument names and
        defaults, ``eps_root`` inside the root of the corrected second moment."""
        return _with_conventions(cls, dict(eps_root=eps_root), params, lr=learning_rate, betas=(b1, b2), eps=eps)


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay, ``weight_decay=1e-2`` by default."""

    _algo = ADAMW

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True,
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))  # fmt: skip

    @classmethod
    def keras(  # type: ignore[override]
        cls, params: ParamsArg, learning_rate: float = 1e-3, weight_decay: float = 0.004, beta_1: float = 0.9,
        beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
    ) -> "AdamW":  # fmt: skip
        """Keras 3 ``keras.optimizers.AdamW``: the epsilon-hat Adam plus decoupled decay
        (Keras computes ``p - p*wd*lr``, this ``p*(1 - lr*wd)``: the same math, rounded differently)."""
        return _with_conventions(cls, dict(epsilon_hat=True), params, lr=learning_rate, betas=(beta_1, beta_2),
                                 eps=epsilon, weight_decay=weight_decay, amsgrad=amsgrad)  # fmt: skip

    @classmethod
    def optax(
        cls, params: ParamsArg, learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
        eps_root: float = 0.0, weight_decay: float = 1e-4,
    ) -> "AdamW":  # fmt: skip
        """``optax.adamw`` (no ``mask``, ``nesterov=False``): optax computes ``p - lr*(u + wd*p)``, this
        ``p*(1 - lr*wd) - lr*u``: the same math, rounded differently."""
        return _with_conventions(cls, dict(eps_root=eps_root), params, lr=learning_rate, betas=(b1, b2), eps=eps,
                                 weight_decay=weight_decay)  # fmt: skip


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: see :func:`fusedopt.functional.adagrad` for the exact update.

    State per parameter: ``step`` and ``sum`` (filled with ``initial_accumulator_value`` when the
    optimizer is built, as torch does).
    """

    _algo = ADAGRAD

    def __init__(
        self, params: ParamsArg, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))  # fmt: skip


class Lion(Optimizer):
    """Lion (Chen et al. 2023) with decoupled weight decay: see :func:`fusedopt.functional.lion`.

    State per parameter: ``exp_avg`` (zeros). No step counter (no bias correction).
    ``sign(0) = 0``; a NaN gradient makes the parameter NaN (``torch.sign`` would stop it).
    """

    _algo = LION

    def __init__(
        self, params: ParamsArg, lr: float = 1e-4, betas: Tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0, *, maximize: bool = False, master_weights: Optional[str] = None,
        stochastic_rounding: bool = False, seed: Optional[int] = None, state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class Adamax(Optimizer):
    """``torch.optim.Adamax``: see :func:`fusedopt.functional.adamax` for the exact update.

    State per parameter: ``step``, ``exp_avg`` and ``exp_inf`` (zeros). ``eps`` sits inside the
    max and is stored in ``exp_inf``; weight decay is L2.
    """

    _algo = ADAMAX

    def __init__(
        self, params: ParamsArg, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, *, maximize: bool = False, master_weights: Optional[str] = None,
        stochastic_rounding: bool = False, seed: Optional[int] = None, state_dtype: Optional[str] = None,
        min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class RAdam(Optimizer):
    """``torch.optim.RAdam``: see :func:`fusedopt.functional.radam` for the exact update.

    State per parameter: ``step``, ``exp_avg`` and ``exp_avg_sq`` (zeros). Steps with
    ``rho_t <= 5`` (the first five with the default betas) are bias-corrected momentum steps.
    """

    _algo = RADAM

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = _lowp.MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                         **_lowp_kw(master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class NAdam(Optimizer):
    """``torch.optim.NAdam`` (its loop form): see :func:`fusedopt.functional.nadam` for the exact update.

    State per parameter: ``step``, ``mu_product`` (a float, kept in float32 as torch keeps it: each
    step sets it to ``fl32(mu_product * fl32(mu_t))``, :func:`fusedopt._scalars.nadam_mu_product`;
    1.0 before the first step), ``exp_avg`` and ``exp_avg_sq`` (zeros). Parameters with different
    ``mu_product`` are updated by different native calls (as different step counts are); the
    product is committed with the step count only when the step is applied (a step that raises or
    is skipped by ``found_inf`` leaves it). A loaded ``mu_product`` must be a finite real number (or
    a one-element float array) and is rounded to float32 (as torch's ``__setstate__`` makes a
    number a float32 tensor); a product that would leave ``[0, 1)`` raises ValueError naming it.
    Every step takes the general path (the C++ fast paths read group hyperparameters only).
    float32/float64 parameters only (no low-precision options).
    """

    _algo = NADAM

    def __init__(
        self, params: ParamsArg, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
        maximize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))  # fmt: skip

    # -- the per-parameter scalar states (algorithms._spec.ScalarState) ----------------------------
    def _new_state(self, param: np.ndarray, group: Mapping[str, Any]) -> State:
        st = super()._new_state(param, group)
        for s in self._algo.scalar_states:
            st[s.key] = s.init
        return st

    def _bucket(self, state: State) -> Any:
        """The step count and the scalar states: one value of each per native call (NAdam has no
        FIRST_STEP arrays)."""
        return (state.get("step"), state.get("mu_product"))

    def _scalar_news(self, hyper: Mapping[str, Any], i: int, st: State) -> Dict[str, float]:
        """The scalar states of parameter ``i`` after this step (checked; nothing written)."""
        out = {}
        t = check.steppable(f"state[{i}]['step']", st.get("step")) + 1
        for s in self._algo.scalar_states:
            name = f"state[{i}][{s.key!r}]"
            x = check.real(name, st.get(s.key, s.init))
            out[s.key] = self._algo.hyper(s.key).check(s.advance(hyper, t, x, "float32"), f"{name} after this step")
        return out

    def _update(
        self, hyper: Mapping[str, Any], params: List[np.ndarray], grads: List[np.ndarray], states: List[State],
        lowp: Tuple[Any, ...] = (),
    ) -> None:  # fmt: skip
        """One bucket (equal step counts and scalar states): the new scalar states are the
        functional's hyperparameters; they are written into ``states`` (the general path's staged
        copies, committed with the step counts) after the call succeeded."""
        i = next((k for k, p in enumerate(self._params) if p is params[0]), 0) if params else 0
        news = self._scalar_news(hyper, i, states[0]) if states else {}
        super()._update({**hyper, **news}, params, grads, states, lowp)
        for st in states:
            st.update(news)

    def _precheck(self, calls: List[Tuple[Dict[str, Any], List[int], List[Any], List[State]]],
                  grads: List[Optional[np.ndarray]]) -> None:  # fmt: skip
        """The base checks, and every parameter's scalar states (before any call writes)."""
        super()._precheck(calls, grads)
        for hyper, idx, _gs, states in calls:
            for i, st in zip(idx, states):
                self._scalar_news(hyper, i, st)

    def _step_planned(self, grads: List[Optional[np.ndarray]]) -> bool:
        return False  # the general path: the scalar states are read and advanced per step

    def _make_stepper(self, plan: "_Plan") -> Optional[_core.Stepper]:
        return None  # (the C++ Stepper derives its scalars from group hyperparameters only)

    def _make_plan(self, hypers: List[Dict[str, Any]], grads: List[Optional[np.ndarray]]) -> "_Plan":
        # no planned path (_step_planned): an empty plan, without the native Plans of the base class
        return _Plan(version=-1, keys=(), snapshots=[], watched=[], hypers=[], structures=[], buckets=[], gdtypes=[])

    def _check_loaded_state(self, i: int, st: Any) -> State:
        if not isinstance(st, Mapping):
            raise ValueError(f"state of parameter {i} must be a dict")
        keys = [s.key for s in self._algo.scalar_states]
        out = super()._check_loaded_state(i, {k: v for k, v in st.items() if k not in keys})
        for s in self._algo.scalar_states:
            name = f"state of parameter {i}: {s.key!r}"
            if s.key not in st:
                if out.get("step", 0) > 0:
                    raise ValueError(f"state of parameter {i} lacks {s.key!r}")
                out[s.key] = s.init
                continue
            v = st[s.key]
            if isinstance(v, np.ndarray):
                if v.size != 1 or v.dtype not in (np.float32, np.float64):
                    raise ValueError(f"{name} must be a real number or a one-element float32/float64 array, "
                                     f"got {v.dtype} array of shape {v.shape}")  # fmt: skip
                v = v.reshape(()).item()
            try:
                x = check.real(name, v)
            except TypeError as exc:  # a state dict that does not fit is a ValueError, whatever the field
                raise ValueError(str(exc)) from None
            with np.errstate(over="ignore"):
                x32 = float(np.float32(x))
            if not math.isfinite(x32):
                raise ValueError(f"{name} must be finite in float32, got {x}")
            out[s.key] = x32
        return out


class LAMB(Optimizer):
    """LAMB (You et al. 2019, paper v5 Alg. 2; optax ``lamb``): Adam's direction plus decoupled weight
    decay, scaled per parameter by the trust ratio ``min(||p||, clamp_value)/||u||`` (1 when either
    norm is 0): see :func:`fusedopt.functional.lamb`. Norms and update in one native call, bitwise
    independent of the thread count.

    ``bias_correction=False`` (with ``clamp_value=10``) is torch_optimizer's ``Lamb``, ``debias=True``
    its debiased form; ``adam=True`` makes every ratio 1. State per parameter: ``step``, ``exp_avg``,
    ``exp_avg_sq`` (zeros). float32/float64 parameters only (no low-precision options).
    """

    _algo = _LAMB

    def __init__(
        self, params: ParamsArg, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
        weight_decay: float = 0.0, *, clamp_value: float = NO_CLAMP,
        bias_correction: bool = True, debias: bool = False, adam: bool = False, maximize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clamp_value=clamp_value,
                                      bias_correction=bias_correction, debias=debias, adam=adam,
                                      maximize=maximize))  # fmt: skip


class LARS(Optimizer):
    """LARS for SGD with momentum (You et al. 2017; barlowtwins/DINO form): ``d = g + wd*p``, the
    per-parameter trust ratio ``q = eta*||p||/(||d|| + eps)`` (1 when either norm is 0),
    ``mu = momentum*mu + q*d``, ``p -= lr*mu``: see :func:`fusedopt.functional.lars`. Norms and update
    in one native call, bitwise independent of the thread count.

    ``lars_adaptation=False`` (per param group) makes ``q = 1``: give biases and norm weights a group
    with it and ``weight_decay=0`` (barlowtwins' filters). State per parameter: ``mu`` (zeros). No
    step counter. float32/float64 parameters only (no low-precision options).
    """

    _algo = _LARS

    def __init__(
        self, params: ParamsArg, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3, *,
        eps: float = 0.0, lars_adaptation: bool = True, maximize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      lars_adaptation=lars_adaptation, maximize=maximize))  # fmt: skip
