"""PyTorch drop-in optimizers: ``from fusedopt.torch import AdamW``.

``SGD``, ``Momentum``, ``RMSprop``, ``Adam``, ``AdamW`` and ``Adagrad`` subclass
:class:`torch.optim.Optimizer` with torch.optim's constructor arguments, defaults, param groups,
``add_param_group``, ``zero_grad``, closures, hooks and ``lr_scheduler`` support. ``step()``
updates CPU float32/float64 parameters (and bfloat16/float16 ones: "Low precision" below) **in
place** (never a copy) with one native fusedopt call per (param group, dtype, step count) bucket
— normally a single call for the whole model. The
tensors themselves go to the native core, which reads each one's data pointer, dtype, shape,
strides, device and storage bounds through torch's DLPack export and C methods at every step (no
NumPy view is made, so storages stay resizable) and keeps each storage alive while the kernel runs.
After a full step, a C++ plan (``_core.TorchPlan``, cpp/bindings/torch_plan.hpp) does the next
steps: it re-checks every parameter, state and step tensor against what the full step validated,
reads each fresh gradient in full, and hands anything that changed to the full step. It keeps no
tensor alive (storages only weakly), so a replaced parameter's memory is released at once.
After the update the autograd version counters of the parameters, state tensors and step
counters advance, as with torch.optim's in-place updates; inference tensors are stepped only
inside ``torch.inference_mode()`` (torch's own error otherwise). A KeyboardInterrupt arriving
during a step is delivered after it (``fusedopt._core.defer_interrupts``).

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
  a dtype other than float32/float64/bfloat16/float16 (complex parameters are refused), a
  gradient whose dtype is neither its parameter's nor (for bfloat16/float16 parameters) float32;
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

Low precision (bfloat16/float16 parameters, zero-copy; keyword-only options of every class, the
same as :mod:`fusedopt.optimizers`'; with none given everything behaves as torch.optim, whose
bfloat16 layout the state keeps):

* gradients in the parameter's dtype or float32 (for float32 gradients of a bfloat16 leaf, torch
  >= 2.10 needs ``p.grad_dtype = None``); the arithmetic is float32, each buffer is loaded exactly
  and stored rounded to nearest even.
* ``master_weights="fp32"``: each bfloat16/float16 parameter has a float32 master, state key
  ``'master_param'`` (made from the parameter, an exact upcast, at its first step, also after
  loading a state dict without it); the update is applied to the master and the parameter is
  written as its round-to-nearest-even. ``"split"`` (bfloat16 only): state key ``'master_trail'``,
  an int16 tensor holding the low 16 bits of the float32 master (``.view(torch.uint16)`` shows
  them; int16 because torch cannot unpickle uint16 tensors): parameter and trail together are the
  master (:func:`fusedopt.reference.split_decode`), except that a master whose low half is exactly
  0x8000 with an odd high half is stored one float32 ulp away from zero (the parameter is then
  still its round-to-nearest-even; :func:`fusedopt.reference.split_encode`). The trail goes to the
  core as a NumPy view: "split" needs C-contiguous parameters (a channels_last one raises naming
  its ``'master_trail'``; ``"fp32"`` takes them). float32/float64 parameters of the optimizer get
  no master and are stepped as usual.
* ``stochastic_rounding=True`` (no master; bfloat16 parameters; float32/float64 ones are stepped as
  usual, float16 ones refused): parameters are written with stochastic rounding, 16 random bits
  per element from Philox4x32-10 with key ``group['seed']`` and counter (element position in the memory of its
  parameter, step count after this step): bitwise the same for every thread count and ISA. Two
  parameters of the same shape at the same step get the same random bits. ``seed=None`` draws
  the seed from torch's default generator at construction (``torch.manual_seed`` reproduces a
  run); every param group keeps it as ``'seed'`` (saved and restored by the state dict). SGD and
  Lion keep a ``'step'`` count in this mode (torch.optim's do not).
* ``state_dtype``: ``None`` keeps states in the dtype of what is stepped (the parameter's dtype,
  as torch.optim; float32 with a master), ``"float32"`` or ``"bfloat16"`` (not for float16
  parameters); float64 parameters always keep float64 states.
* ``state_dtype="8bit"`` (issue 14) with ``min_8bit_size=4096`` (an int >= 0, fixed like the other
  options): every state of a float32/bfloat16/float16 parameter of ``min_8bit_size`` elements or
  more is block-quantized (:mod:`fusedopt.reference`'s Q8 section, bitsandbytes' dynamic code
  books: unsigned for ``'exp_avg_sq'``, ``'max_exp_avg_sq'``, ``'square_avg'``, ``'sum'``, signed
  for the others): ``state[key]`` the uint8 codes (the parameter's shape and strides; blocks of 256
  counted in its memory order) and ``state[key + '_absmax']`` a float32 tensor of one absmax per
  block (about 2.02 bytes of Adam state per element instead of 8). Smaller parameters keep float32
  states (float64 ones float64). New states are the code of 0 with absmax 0 (Adagrad's ``'sum'``
  the quantized ``initial_accumulator_value``). Each step decodes, updates and re-encodes in one
  native pass (the 8-bit tensors in one call, the others in another, all checked before either
  writes), bitwise :func:`fusedopt.reference.lowp_step` with :class:`fusedopt.reference.Q8State`;
  with a master or stochastic rounding as above. ``state_dict()`` adds ``key + '_qmap'`` (the
  float32 code book, 256 values) per 8-bit state. ``load_state_dict`` takes 8-bit state dicts
  (codes copied exactly; the absmax count, dtypes, shapes and any ``'_qmap'``, which must equal
  fusedopt's bitwise, are checked first, nothing loaded on error), float ones (quantized with
  :func:`fusedopt.reference.q8_encode` where this optimizer keeps 8-bit states), and, into
  ``Adam``/``AdamW``, ``bitsandbytes.optim.AdamW8bit``/``Adam8bit`` state dicts (its
  ``'__bnb_optimizer_quant_state__'`` with ``'state1'``/``'state2'``, ``'absmax1'``/``'absmax2'``,
  ``'qmap1'``/``'qmap2'``: the same format, loaded exactly; its group keys ``'alpha'``,
  ``'t_alpha'``, ``'t_beta3'`` dropped). An optimizer without 8-bit states loads 8-bit state dicts
  decoded. :func:`fp32_state_dict` (= :meth:`~_FusedOptimizer.fp32_state_dict`) decodes them.
* ``load_state_dict`` puts state tensors in the dtype this optimizer keeps them in (torch casts to
  the parameter's dtype, which would drop a float32 master's or float32 state's low bits): a
  torch.optim state dict of a bfloat16 model loads (its bfloat16 states upcast exactly, masters
  made from the parameters); a non-floating state tensor, a master of the wrong dtype or shape, or
  a master this optimizer does not keep raises TypeError/ValueError naming it, nothing loaded.
* Export: :meth:`~_FusedOptimizer.master_params` (the float32 masters, decoded split masters or
  upcast parameters) and :meth:`~_FusedOptimizer.fp32_state_dict` (states as float32, no master
  keys), which torch.optim loads on an fp32 copy of the model holding ``master_params()``.
* Every step of an optimizer with low-precision parameters or options runs the full Python path
  (no C++ plan); float16 has no loss scaling hook here (torch.optim's fused ``grad_scale`` /
  ``found_inf`` are not offered): use the NumPy classes' ``step(grad_scale=, found_inf=)`` or
  unscale before ``step()``.
"""

from __future__ import annotations

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fusedopt.torch needs PyTorch, which is not installed. Install it with "
        "`pip install fusedopt[torch]` (or `pip install torch`)."
    ) from _exc

import importlib
import inspect
import math
import numbers
import re
import warnings
from operator import attrgetter, itemgetter
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, cast

import numpy as np
from torch.utils.weak import WeakIdKeyDictionary

from . import _core, _engine, _fork, _lowp, _threads, reference
from . import _validation as check
from ._lowp import ABSMAX_SUFFIX, MASTER_KEY, MIN_8BIT_SIZE, QMAP_SUFFIX, TRAIL_KEY
from .algorithms import (
    ADAGRAD,
    ADAM,
    ADAMAX,
    ALGORITHMS,
    FIRST_STEP,
    LAMB_TORCH,
    LARS_TORCH,
    LION,
    MOMENTUM,
    NADAM,
    RADAM,
    RMSPROP,
    ZEROS,
    Algorithm,
    StateRole,
    TorchName,
)
from .algorithms import SGD as _SGD

# From now on the native core accepts CPU torch tensors wherever it accepts NumPy arrays
# (cpp/bindings/arrays.hpp): it reads their data pointer, shape, strides and storage bounds
# through torch's own methods, without NumPy views.
_core._register_torch(torch.Tensor, torch.float32, torch.float64, torch.strided, torch.bfloat16, torch.float16)

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Adagrad", "Lion", "Adamax", "RAdam", "NAdam", "Lamb", "LAMB", "LARS", "fp32_state_dict"]

_DTYPES = (torch.float32, torch.float64)
_LOWP_DTYPES = (torch.bfloat16, torch.float16)
_KIND = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_TORCH_DTYPE = {v: k for k, v in _KIND.items()}
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


def _check_scalar_state(name: str, value: Any) -> float:
    """A per-parameter scalar state (NAdam's ``'mu_product'``) as torch keeps it: a one-element
    float32/float64 CPU tensor holding a finite value. TypeError/ValueError naming it otherwise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a one-element float32/float64 tensor, got {type(value).__name__}")
    _check_dense_cpu(name, value)
    if value.numel() != 1 or value.dtype not in _DTYPES:
        raise TypeError(f"{name} must be a one-element float32/float64 tensor, "
                        f"got {value.dtype} with {value.numel()} elements")  # fmt: skip
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
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


def _check_absmax(name: str, aname: str, absmax: Any, n: int, tail: str) -> None:
    """The absmax of the 8-bit state ``name`` (``n`` elements): a float32 CPU tensor of one value per
    block (TypeError/ValueError naming ``aname``; ``tail`` ends each message)."""
    if absmax is None:
        raise ValueError(f"{name} holds 8-bit codes (uint8) but {aname} is missing{tail}")
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32:
        what = absmax.dtype if isinstance(absmax, torch.Tensor) else type(absmax).__name__
        raise TypeError(f"{aname} must be a float32 tensor, got {what}{tail}")
    _check_dense_cpu(aname, absmax)
    want = reference.q8_blocks(n)
    if absmax.numel() != want:
        raise ValueError(f"{aname} has {absmax.numel()} elements; {want} expected (one per block of "
                         f"{reference.Q8_BLOCK} of {n}){tail}")  # fmt: skip


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype in _DTYPES or t.dtype in _LOWP_DTYPES:
        return
    if t.is_complex():
        raise TypeError(
            f"{name} is complex ({t.dtype}); fusedopt.torch supports real float32/float64/bfloat16/float16 "
            "parameters only (use torch.optim for complex parameters)"
        )
    raise TypeError(f"{name} has dtype {t.dtype}; fusedopt.torch supports float32 and float64 "
                    "(and bfloat16/float16) parameters only")  # fmt: skip


def _one_block(t: torch.Tensor) -> bool:
    """Whether t's elements fill one dense, non-overlapping block of memory: C-contiguous, or any
    order of its dimensions (channels_last, a transpose). Such a tensor is stepped in place as flat
    memory (its gradient and state must then have the same strides: checked at each step)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _check_param(name: str, p: Any) -> None:
    _check_dense_cpu(name, p)
    _check_dtype(name, p)
    if p.is_neg() or p.is_conj():
        raise ValueError(f"{name} is a lazily negated/conjugated view; fusedopt.torch cannot update it in place")
    if not _one_block(p):
        raise ValueError(
            f"{name} is not contiguous (strides {tuple(p.stride())}) and its elements are not one dense "
            "non-overlapping block; fusedopt.torch updates parameters in place and never copies"
        )


#: the native calls' role names -> torch's state keys (error messages are given in torch's terms)
_ROLE_KEYS = {r.arg: r.key for a in ALGORITHMS.values() for r in a.states}
_KEY_ROLES = {key: role for role, key in _ROLE_KEYS.items()}
_NAMED = re.compile(r"\b(params|grads|counters|masters|" + "|".join(_ROLE_KEYS) + r")(_absmax)?\[(\d+)\]")

_INFERENCE_MSG = (
    "Inplace update to inference tensor outside InferenceMode is not allowed.You can make a clone to get a "
    "normal tensor before doing inplace update.See https://github.com/pytorch/rfcs/pull/17 for more details."
)  # torch's own message (what torch.optim raises for such a parameter)

_TWO24 = 16777216.0  # 2**24: a float32 step counter saturates there (x + 1 == x), as torch's does
_is_inference = torch.Tensor.is_inference
_dtype = attrgetter("dtype")
_item = torch.Tensor.item
_numel = torch.Tensor.numel


class _Entry:
    """One parameter stepped now: its tensors, and the state this step creates (committed only
    after the update succeeded); ``master`` its fp32 master or int16 trail (the uint16 bits) (None: none)."""

    __slots__ = ("p", "g", "index", "staged", "tensors", "step", "master", "absmax")

    def __init__(self, p: torch.Tensor, g: torch.Tensor, index: int, staged: Dict[str, Any],
                 tensors: List[torch.Tensor], step: Optional[torch.Tensor],
                 master: Optional[torch.Tensor] = None,
                 absmax: Optional[List[torch.Tensor]] = None) -> None:  # fmt: skip
        self.p, self.g, self.index, self.staged, self.tensors, self.step = p, g, index, staged, tensors, step
        self.master = master
        #: 8-bit states (``tensors`` are then their uint8 codes): the float32 absmax of each, else None
        self.absmax = absmax


def _codes_arg(t: torch.Tensor) -> Any:
    """8-bit codes (a uint8 tensor) as the binding takes them: a NumPy view of the same memory."""
    return t.detach().numpy()


#: bitsandbytes' state-dict layout (``bnb.optim.AdamW8bit``/``Adam8bit``): each parameter's state is
#: ``{'step': int, '__bnb_optimizer_quant_state__': {...}}`` with these keys -> fusedopt's
_BNB_KEY = "__bnb_optimizer_quant_state__"
_BNB_NAMES = {
    "state1": "exp_avg", "state2": "exp_avg_sq",
    "absmax1": "exp_avg" + ABSMAX_SUFFIX, "absmax2": "exp_avg_sq" + ABSMAX_SUFFIX,
    "qmap1": "exp_avg" + QMAP_SUFFIX, "qmap2": "exp_avg_sq" + QMAP_SUFFIX,
}  # fmt: skip
#: bitsandbytes' group entries with no meaning here (its AdEMAMix options), dropped when loading
_BNB_GROUP_KEYS = ("alpha", "t_alpha", "t_beta3")


def _check_min_8bit_size(value: Any) -> int:
    """``min_8bit_size``: an int >= 0 (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"min_8bit_size must be an int >= 0, got {type(value).__name__}")
    if int(value) < 0:
        raise ValueError(f"min_8bit_size must be an int >= 0, got {int(value)}")
    return int(value)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The elements of a one-block tensor (:func:`_one_block`) in memory order, as a 1-D view: the
    order in which 8-bit blocks are counted (the flat order the kernels step)."""
    return t.as_strided((t.numel(),), (1,))


def _q8_encode_like(p: torch.Tensor, values: torch.Tensor, signed: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """New (codes, absmax) of an 8-bit state of ``p`` (codes with ``p``'s strides) holding
    ``values`` (``p``'s shape): :func:`fusedopt.reference.q8_encode` in ``p``'s memory order."""
    codes = torch.empty_like(p, dtype=torch.uint8, memory_format=torch.preserve_format)
    src = torch.empty_like(codes, dtype=torch.float32, memory_format=torch.preserve_format)
    src.copy_(values.detach())
    c, a = reference.q8_encode(_flat(src).numpy(), signed)
    _flat(codes).copy_(torch.from_numpy(c))
    return codes, torch.from_numpy(a)


def _q8_decode(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values of an 8-bit state (a new tensor with the codes' shape and strides;
    the codes are one block, :func:`_one_block`)."""
    codes = codes.detach()
    out = torch.empty_like(codes, dtype=torch.float32, memory_format=torch.preserve_format)
    a = absmax.detach().reshape(-1).to(torch.float32).numpy()
    _flat(out).copy_(torch.from_numpy(reference.q8_decode(_flat(codes).numpy(), a, signed)))
    return out


def _is_q8_state(st: Dict[str, Any], key: str) -> bool:
    """Whether ``st[key]`` is an 8-bit state (uint8 codes with an absmax)."""
    v = st.get(key)
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and key + ABSMAX_SUFFIX in st


def _master_arg(m: torch.Tensor) -> Any:
    """A master as the step binding takes it: a float32 tensor as is, a split trail (int16 tensor)
    as a uint16 NumPy view of its memory (the core takes uint16 trails as NumPy arrays)."""
    return m.numpy().view(np.uint16) if m.dtype == torch.int16 else m


class _Call:
    """One native call: a bucket of parameters with equal hyperparameters, dtype and step count;
    ``lowp`` the binding's low-precision arguments (empty, or (masters, stochastic_rounding, seed,
    sr_step))."""

    __slots__ = ("hyper", "t", "entries", "n", "lowp", "absmax")

    def __init__(self, hyper: Dict[str, Any], t: Any, entries: List[_Entry], n: int,
                 lowp: Tuple[Any, ...] = ()) -> None:  # fmt: skip
        self.hyper, self.t, self.entries, self.n, self.lowp = hyper, t, entries, n, lowp
        #: 8-bit states: per state key, the absmax tensors of the entries (else None)
        self.absmax: Optional[List[List[torch.Tensor]]] = None
        if entries and entries[0].absmax is not None:
            self.absmax = [[cast(List[torch.Tensor], e.absmax)[j] for e in entries] for j in range(len(entries[0].absmax))]

    def lists(self, nkeys: int) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[List[torch.Tensor]]]:
        es = self.entries
        return [e.p for e in es], [e.g for e in es], [[e.tensors[j] for e in es] for j in range(nkeys)]

    def native_lists(self, nkeys: int) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[List[Any]]]:
        """:meth:`lists` as the binding takes them: 8-bit codes (uint8 tensors) as NumPy views of
        their memory (the core takes torch tensors of float dtypes only)."""
        P, G, S = self.lists(nkeys)
        if self.absmax is not None:
            S = [[_codes_arg(t) for t in s] for s in S]
        return P, G, S

    def native_lowp(self) -> Tuple[Any, ...]:
        """The binding's trailing low-precision arguments, with the absmax lists (in state-key
        order) of 8-bit states."""
        if self.absmax is None:
            return self.lowp
        return (*(self.lowp or (None, False, 0, 0)), self.absmax)

    def counters(self) -> Optional[List[torch.Tensor]]:
        steps = [e.step for e in self.entries if e.step is not None]
        return steps or None


def _torch_names(message: str, entries: List[_Entry]) -> str:
    """A native error message with the call's list positions turned into torch's names:
    ``grads[1]`` -> ``params[7].grad``, ``exp_avgs[1]`` -> ``state[params[7]]['exp_avg']``."""

    def name(m: "re.Match[str]") -> str:
        role, suffix, k = m.group(1), m.group(2), int(m.group(3))
        i = entries[k].index if k < len(entries) else k
        if suffix:  # an 8-bit state's absmax
            return f"state[params[{i}]][{_ROLE_KEYS.get(role, role) + ABSMAX_SUFFIX!r}]"
        if role == "params":
            return f"params[{i}]"
        if role == "grads":
            return f"params[{i}].grad"
        if role == "counters":
            return f"state[params[{i}]]['step']"
        if role == "masters":
            e = entries[k] if k < len(entries) else None
            key = TRAIL_KEY if e is not None and e.master is not None and e.master.dtype == torch.int16 else MASTER_KEY
            return f"state[params[{i}]][{key!r}]"
        return f"state[params[{i}]][{_ROLE_KEYS.get(role, role)!r}]"

    return _NAMED.sub(name, message)


#: value types cached by ``_group_plan``: immutable, so a value equal to the cached one (and of the
#: same type) is the value that was validated
_PLAIN = frozenset({float, int, bool, str, type(None), np.float64, np.float32, np.int64, np.int32, np.bool_})


def _immutable(vals: Tuple[Any, ...]) -> bool:
    """Whether a group's hyperparameter values are all immutable (see ``_group_plan``): then the same
    value objects are the values validated."""
    for v in vals:
        t = type(v)
        if t not in _PLAIN and not (t is tuple and _PLAIN.issuperset(map(type, v))):
            return False
    return True


#: a private switch for measurements and tests: the C++ steady-state step (_make_tplan)
_USE_TPLAN = True

# torch's step hooks and profiler range (see _FusedOptimizer.step)
_GLOBAL_PRE_HOOKS = importlib.import_module("torch.optim.optimizer")._global_optimizer_pre_hooks
_GLOBAL_POST_HOOKS = importlib.import_module("torch.optim.optimizer")._global_optimizer_post_hooks
_profiler_enabled = torch._C._autograd._profiler_enabled


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

    #: the low-precision options, read-only after construction (values in the instance's __dict__)
    master_weights = _lowp.FixedOption()
    stochastic_rounding = _lowp.FixedOption()
    state_dtype = _lowp.FixedOption()
    min_8bit_size = _lowp.FixedOption()
    #: whether the state has torch's float ``'step'`` counter
    _HAS_STEP = True
    #: the group keys a loaded state dict must have (torch's step reads them; torch's
    #: ``__setstate__`` fills in the others from the defaults)
    _REQUIRED_GROUP_KEYS: Tuple[str, ...] = ("lr",)
    _lock: Any  # threading.RLock, or _fork.ForkedMidCall in a forked child (see fusedopt._fork)
    #: the C++ steady-state step (see _make_tplan) and, per group, (state keys, uses_step) it was made for
    _tplan: Optional[_core.TorchPlan]
    _tplan_groups: List[Tuple[Tuple[str, ...], bool]]

    def __init__(self, params: Any, defaults: Dict[str, Any],
                 lowp: Tuple[Any, ...] = (None, False, None, None, MIN_8BIT_SIZE)) -> None:  # fmt: skip
        self._lock = _fork.new_lock(self)
        mw, sr, seed, sd = _lowp.check_options(*lowp[:4])
        m8 = _check_min_8bit_size(lowp[4] if len(lowp) > 4 else MIN_8BIT_SIZE)
        if sr and seed is None:  # from torch's default generator: torch.manual_seed reproduces it
            seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        #: the low-precision options (see the module docstring); ``seed`` is each param group's
        #: default ``group["seed"]``
        self.__dict__["master_weights"] = mw  # (read-only: _lowp.FixedOption)
        self.__dict__["stochastic_rounding"] = sr
        self.seed: Optional[int] = seed
        self.__dict__["state_dtype"] = sd
        #: state_dtype="8bit": parameters with fewer elements keep float32 states
        self.__dict__["min_8bit_size"] = m8
        #: each parameter with a master -> its autograd version after fusedopt's last step: a
        #: parameter changed in place since (``load_state_dict`` of the model, ``copy_`` or ``fill_``
        #: under ``no_grad``) gets its master made again from it (see sync_masters)
        self._master_versions: Any = WeakIdKeyDictionary()
        #: whether every step takes the full Python path (low-precision parameters or options)
        self._lowp_path = mw is not None or sr or sd is not None
        if sr and not self._HAS_STEP:  # the SR counter is the step count: kept also by SGD and Lion
            self._HAS_STEP = True
        self._forget_caches()
        # torch's constructor checks (its order, types and messages), then fusedopt's own, before
        # any group is made; the implementation flags are checked per group, after its parameters
        self._hyper(defaults, construction=True)
        super().__init__(params, defaults)

    # -- derived from the description (fusedopt.algorithms) ---------------------------------------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        algo = cls.__dict__.get("_algo")
        if algo is not None:
            cls._HAS_STEP = algo.has_step
            cls._PAIRS = {p.name: p for p in algo.torch_pairs}
            cls._ROLES = {r.key: r for r in algo.states}
            cls._SCALAR_KEYS = tuple(s.key for s in algo.scalar_states)

    _algo: Algorithm
    _PAIRS: Dict[str, TorchName] = {}
    _ROLES: Dict[str, StateRole] = {}  # torch state key -> role
    #: the state keys of the per-parameter scalar states (algorithms._spec.ScalarState)
    _SCALAR_KEYS: Tuple[str, ...] = ()
    #: torch.optim's own check of a Tensor ``lr``/``betas`` with ``foreach`` (Adam and AdamW)
    _TENSOR_FOREACH_CHECK = False

    def _hyper(self, group: Dict[str, Any], construction: bool = False) -> Dict[str, Any]:
        """Validated functional hyperparameters of this group (raises on bad values).

        torch.optim's checks come first, in its order, with its exception types and messages (which
        it applies to the constructor's arguments only; here to every group, at every change); then
        fusedopt's own (finite values, the description's ranges, bools as flags). ``construction``
        adds the checks torch applies to the constructor's arguments only (Adam's betas types).
        """
        algo = self._algo
        foreach_only = self._TENSOR_FOREACH_CHECK and bool(group.get("foreach")) and not group.get("capturable")
        if foreach_only and isinstance(group["lr"], torch.Tensor):
            msg = "lr as a Tensor is not supported for capturable=False and foreach=True"
            raise ValueError(msg) if construction else RuntimeError(msg)
        raw: Dict[str, Any] = {}  # functional name -> (display name, value as given)
        for name, pair in self._PAIRS.items():
            a, b = pair.unpack(group[name])
            raw[pair.parts[0]], raw[pair.parts[1]] = (f"{name}[0]", a), (f"{name}[1]", b)
        fixed = dict(algo.fixed)
        hypers = [h for h in algo.group_hypers if h.name not in fixed]
        for h in hypers:
            if h.name not in raw:
                raw[h.name] = (h.name, group[h.name])
        nums: Dict[str, float] = {}
        for name in algo.torch_order:  # torch's range checks, in its order and with its messages
            shown, v = raw[name]
            h = algo.hyper(name)
            x = nums[name] = _num(shown, v)
            if not h.torch_ok(x):
                raise ValueError(cast(str, h.torch_msg).format(v))
        for h in hypers:
            if not h.is_flag and h.name not in nums:
                nums[h.name] = _num(raw[h.name][0], raw[h.name][1])
        if algo.torch_relation_msg is not None:
            try:
                algo.relations({**nums, **{h.name: bool(raw[h.name][1]) for h in hypers if h.is_flag}})
            except ValueError:
                raise ValueError(algo.torch_relation_msg) from None
        if construction and self._PAIRS:
            for name in self._PAIRS:
                a, b = group[name]
                if not (isinstance(a, float) and isinstance(b, float)
                        or isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):  # fmt: skip
                    raise ValueError(f"{name} must be either both floats or both Tensors")
                for k, x in enumerate((a, b)):
                    if isinstance(x, torch.Tensor) and foreach_only:
                        raise ValueError(f"{name}[{k}] as a Tensor is not supported for capturable=False and foreach=True")
        out = {h.name: h.default for h in algo.hypers}
        for h in hypers:  # fusedopt's own checks
            shown, v = raw[h.name]
            out[h.name] = _bool(shown, v) if h.is_flag else h.check(_finite(shown, v, nums[h.name]), shown)
        out.update(algo.fixed)
        algo.relations(out)
        _lowp.check_8bit_hypers(algo.name, out, self.__dict__.get("state_dtype"))
        return out

    def _state_keys(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        """Names of the state tensors (other than 'step') the update reads and writes."""
        return tuple(r.key for r in self._algo.states if r.present(hyper))

    def _required_state(self, hyper: Dict[str, Any]) -> Tuple[str, ...]:
        """The state keys a parameter with state must have (torch's step reads them: KeyError); a
        missing FIRST_STEP buffer is started from the gradient, as torch does."""
        return tuple(r.key for r in self._algo.states if r.present(hyper) and r.init != FIRST_STEP)

    def _new_states(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """State ``key`` of ``p``: ``{key: tensor}``, or for an 8-bit state ``{key: codes, key +
        '_absmax': absmax}`` (zeros: the code of 0 and absmax 0, as q8_encode of zeros)."""
        if not self._is_q8(p):
            return {key: self._new_state(key, p, group)}
        role = self._ROLES[key]
        signed = not role.nonneg
        if role.init in (ZEROS, FIRST_STEP):  # (a FIRST_STEP buffer is written by the step)
            codes = torch.full_like(p, reference.q8_map(signed).zero, dtype=torch.uint8,
                                    memory_format=torch.preserve_format)  # fmt: skip
            absmax = torch.zeros(reference.q8_blocks(p.numel()), dtype=torch.float32)
        else:
            codes, absmax = _q8_encode_like(p, torch.full_like(p, float(group[role.init]), dtype=torch.float32), signed)
        return {key: codes, key + ABSMAX_SUFFIX: absmax}

    def _is_q8(self, p: torch.Tensor) -> bool:
        """Whether ``p``'s states are 8-bit (state_dtype="8bit", not float64, ``min_8bit_size``
        elements or more)."""
        return bool(self.state_dtype == "8bit" and p.dtype != torch.float64 and p.numel() >= self.min_8bit_size)

    def _new_state(self, key: str, p: torch.Tensor, group: Dict[str, Any]) -> torch.Tensor:
        """A state tensor for ``p`` with ``p``'s strides (a parameter is one dense block, C order or
        not, e.g. channels_last: the state is stepped as the same flat memory), as torch makes it."""
        init = self._ROLES[key].init
        dt = self._state_dtype(p)
        if init == ZEROS:
            return torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
        if init == FIRST_STEP:  # written (b = g) by the first step, as torch's fused SGD does
            return torch.empty_like(p, dtype=dt, memory_format=torch.preserve_format)
        return torch.full_like(p, float(group[init]), dtype=dt, memory_format=torch.preserve_format)

    # -- low-precision storage -------------------------------------------------------------------
    def _state_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype of ``p``'s state tensors (:func:`fusedopt._lowp.state_kind`)."""
        if not self._lowp_path:
            return p.dtype
        if self.state_dtype == "8bit":  # (the float states of small parameters; float64 keeps float64)
            return torch.float64 if p.dtype == torch.float64 else torch.float32
        return _TORCH_DTYPE[_lowp.state_kind(_KIND.get(p.dtype, "float32"), self.master_weights, self.state_dtype)]

    def _master_kind(self, p: torch.Tensor) -> Optional[str]:
        if self.master_weights is None:
            return None
        return _lowp.master_kind(_KIND.get(p.dtype, "float32"), self.master_weights)

    @staticmethod
    def _new_master(p: torch.Tensor, kind: str) -> torch.Tensor:
        """A master made from the parameter: its exact float32 upcast, or a trail of zeros."""
        if kind == "fp32":
            return p.detach().to(torch.float32, memory_format=torch.preserve_format, copy=True)
        return torch.zeros_like(p, dtype=torch.int16, memory_format=torch.preserve_format)  # (the uint16 bits)

    def _lowp_args(self, group: Dict[str, Any], es: List[_Entry], step: Optional[float]) -> Tuple[Any, ...]:
        """The binding's low-precision arguments for a call over ``es`` (empty for float32/float64
        parameters): the masters (a trail as a uint16 NumPy view of its int16 tensor), stochastic
        rounding with the group's seed and the step count after this step."""
        p = es[0].p
        if p.dtype not in _LOWP_DTYPES:
            return ()
        masters = None
        if es[0].master is not None:
            masters = [_master_arg(cast(torch.Tensor, e.master)) for e in es]
        sr = self.stochastic_rounding and p.dtype == torch.bfloat16
        seed = _lowp.check_seed("param group 'seed'", group.get("seed", self.seed or 0)) if sr else 0
        return (masters, sr, seed, int(step) if sr and step is not None else 0)

    def _uses_step(self, hyper: Dict[str, Any]) -> bool:
        """Whether the update depends on the step number (else all step counts share one call)."""
        return bool(self._algo.uses_step(hyper))

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
        self._tplan = None
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
            if p.dtype in _LOWP_DTYPES:
                _lowp.check_param_kind(f"params[{start + i}]", _KIND[p.dtype], self.master_weights,
                                       self.stochastic_rounding, self.state_dtype)  # fmt: skip
            j = first.setdefault(id(p), i)
            if j != i:
                raise ValueError(
                    f"params[{start + i}] is the same tensor as params[{start + j}]: a parameter may be listed only "
                    "once (a fused step would update it twice)"
                )
        for k in ("master_weights", "stochastic_rounding", "state_dtype", "min_8bit_size"):
            if k in param_group:
                raise ValueError(f"{k} is an option of the whole optimizer, not of a param group: give it to the "
                                 f"constructor ({type(self).__name__}(params, {k}=...))")  # fmt: skip
        if "seed" in param_group and not self.stochastic_rounding:
            raise ValueError("a param group's 'seed' keys stochastic rounding: this optimizer has "
                             "stochastic_rounding=False")  # fmt: skip
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_impl_flags(merged)
        self._hyper(merged)
        if self.stochastic_rounding:  # each group's Philox key (state_dict saves it)
            param_group["seed"] = _lowp.check_seed("seed", param_group.get("seed", self.seed))
        param_group["params"] = raw
        super().add_param_group(param_group)
        self._lowp_path = self._lowp_path or any([p.dtype in _LOWP_DTYPES for p in tensors])
        eager = [r.key for r in self._algo.states if r.init_hyper is not None]
        if eager:  # state that starts at a hyperparameter's value is made with the parameter, as torch does
            group = self.param_groups[-1]
            with torch.no_grad():
                for p in group["params"]:
                    st = self.state[p]
                    if self._HAS_STEP:
                        st["step"] = torch.tensor(0.0, dtype=_step_dtype(group))
                    for k in eager:
                        st.update(self._new_states(k, p, group))

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # (load_state_dict ends here too): a damaged state is refused before anything is replaced
        self._check_loaded(state)
        super().__setstate__(state)
        if "_lock" not in self.__dict__:  # unpickled or deep-copied: a lock of its own
            self._lock = _fork.new_lock(self)
        for k, v in (("master_weights", None), ("stochastic_rounding", False), ("seed", None), ("state_dtype", None),
                     ("min_8bit_size", MIN_8BIT_SIZE), ("_lowp_path", False)):  # fmt: skip
            self.__dict__.setdefault(k, v)
        self._master_versions = WeakIdKeyDictionary()  # (loaded masters are taken as they are)
        self._forget_caches()
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            if self._HAS_STEP:
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "step" in st and not torch.is_tensor(st["step"]):
                        st["step"] = torch.tensor(float(st["step"]), dtype=_step_dtype(group))
                    for key in self._SCALAR_KEYS:  # as torch.optim.NAdam's __setstate__ ('mu_product')
                        if st and key in st and not torch.is_tensor(st[key]):
                            st[key] = torch.tensor(float(st[key]), dtype=_scalar_dtype())

    # -- caches ---------------------------------------------------------------------------------
    def _forget_caches(self) -> None:
        #: id(group) -> (group, types of its hyperparameter values, (index, item types) of each
        #: tuple value, the values, (hyper, state keys, uses_step)); see _group_plan
        self._plans: Dict[int, Tuple[Any, ...]] = {}
        #: the group's hyperparameter values, in the order of self.defaults
        self._hget: Optional[Callable[[Dict[str, Any]], Tuple[Any, ...]]] = None
        self._tplan = None
        self._tplan_groups = []

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (state is cast to each parameter's dtype; steps stay as saved).

        A damaged state dict is refused with nothing loaded: a parameter with state but no
        ``'step'`` or no state tensor the step reads (``'exp_avg'``, ...), or a group without a
        hyperparameter torch's step reads (``'lr'``, ...), raises torch's ``KeyError(key)``; a
        ``'step'`` that is not a whole number >= 0 (``-5``, ``2.5``, ``inf``, ``nan``) or not a
        one-element float32/float64 tensor (or a number) raises ValueError/TypeError naming it.
        """
        if _fork.forked_mid_call(self):
            self._lock = _fork.new_lock(self)  # (forked child) loading replaces the half-updated state
        with self._lock:
            # 8-bit states (ours or bitsandbytes'): checked and converted to what this optimizer keeps
            state_dict, q8_keep, q8_skip = self._q8_load_prepare(state_dict)
            self._forget_caches()
            if not self._lowp_path:
                super().load_state_dict(state_dict)
                return
            # torch casts every state tensor to its parameter's dtype: a float32 master or float32
            # states of a bfloat16 parameter would lose their low bits. The tensors are checked and
            # kept here, and put back cast to the dtypes this optimizer keeps (exactly, or rounded
            # to nearest even when narrowing, e.g. float32 states into state_dtype="bfloat16").
            state_dict, keep = self._lowp_load_prepare(state_dict, q8_skip)
            super().load_state_dict(state_dict)
            with torch.no_grad():
                for p, kept in keep + q8_keep:
                    st = self.state[p]
                    for k, v in kept.items():
                        st[k] = v
            if self.stochastic_rounding:  # a torch.optim state dict has no seeds: this optimizer's own
                for group in self.param_groups:
                    group.setdefault("seed", self.seed)

    def _lowp_load_prepare(
        self, state_dict: Dict[str, Any], skip: Any = frozenset()
    ) -> Tuple[Dict[str, Any], List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]]:
        """Check the state tensors of a state dict against this optimizer's low-precision layout
        and make them in the dtypes kept here (nothing is modified on error): state tensors must be
        floating point (cast to the state dtype), ``'master_param'`` a float32 tensor and
        ``'master_trail'`` an int16 (or uint16) tensor of the parameter's shape, present only where this
        optimizer keeps that master. Returns the state dict to give torch's loader (a SGD/Lion
        state without ``'step'`` gets ``step = 0`` under stochastic rounding) and, per parameter,
        the tensors to put in its state afterwards."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            return state_dict, []  # torch's loader raises its own error
        saved_groups = state_dict["param_groups"]
        if self.stochastic_rounding and isinstance(saved_groups, (list, tuple)):
            for gi, sg in enumerate(saved_groups):
                if isinstance(sg, dict) and "seed" in sg:
                    _lowp.check_seed(f"param_groups[{gi}]['seed']", sg["seed"])
        id_map: Dict[Any, Tuple[int, torch.Tensor]] = {}
        index = 0
        for g, sg in zip(self.param_groups, saved_groups):
            for p, pid in zip(g["params"], sg.get("params", [])):
                id_map[pid] = (index, p)
                index += 1
        new_state: Dict[Any, Any] = {}
        keep: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = []
        for pid, st in state_dict["state"].items():
            if pid not in id_map or not isinstance(st, dict):
                new_state[pid] = st
                continue
            i, p = id_map[pid]
            master = self._master_kind(p)
            sdt = self._state_dtype(p)
            kept: Dict[str, torch.Tensor] = {}
            dropped: List[str] = []
            for k, v in st.items():
                name = f"state[params[{i}]][{k!r}]"
                if (pid, k) in skip:  # an 8-bit state's placeholder (_q8_load_prepare)
                    continue
                if k in (MASTER_KEY, TRAIL_KEY) and not isinstance(v, torch.Tensor):
                    raise TypeError(f"{name} must be a tensor, got {type(v).__name__}; nothing was loaded")
                if k == "step" or k in self._SCALAR_KEYS or not isinstance(v, torch.Tensor):
                    continue
                if v.shape != p.shape:
                    raise ValueError(f"{name} has shape {tuple(v.shape)}, params[{i}] {tuple(p.shape)}; "
                                     "nothing was loaded")  # fmt: skip
                if k in (MASTER_KEY, TRAIL_KEY) and v.dtype == p.dtype and p.dtype in _LOWP_DTYPES:
                    # passed through torch.optim, which casts every state to the parameter's dtype: the
                    # master's low bits are gone (and a trail's bits mean nothing): made again from the
                    # parameter at the next step
                    warnings.warn(f"{name} has the parameter's dtype {v.dtype} (a state dict that went through "
                                  f"torch.optim): it is dropped and made again from params[{i}]; export with "
                                  "fp32_state_dict() to hand masters to torch.optim", stacklevel=3)  # fmt: skip
                    dropped.append(k)
                    continue
                if k in (MASTER_KEY, TRAIL_KEY):
                    want = MASTER_KEY if master == "fp32" else TRAIL_KEY if master == "split" else None
                    if k != want:
                        raise ValueError(f"{name}: this optimizer keeps no such master for params[{i}] ({p.dtype}, "
                                         f"master_weights={self.master_weights!r}); nothing was loaded")  # fmt: skip
                    mdt = torch.float32 if k == MASTER_KEY else torch.int16
                    if k == TRAIL_KEY and v.dtype == torch.uint16:
                        v = v.view(torch.int16)  # the same bits
                    if v.dtype != mdt:
                        raise TypeError(f"{name} has dtype {v.dtype}; it must be {mdt}; nothing was loaded")
                    kept[k] = torch.empty_like(p, dtype=mdt, memory_format=torch.preserve_format).copy_(v)
                    continue
                if not v.is_floating_point():
                    raise TypeError(f"{name} has dtype {v.dtype}; state tensors must be floating point (they are "
                                    f"kept in {sdt}); nothing was loaded")  # fmt: skip
                if v.dtype != p.dtype or sdt != p.dtype:  # with the parameter's strides, as made states
                    kept[k] = torch.empty_like(p, dtype=sdt, memory_format=torch.preserve_format).copy_(v)
            if dropped:
                st = {k: v for k, v in st.items() if k not in dropped}
            if self._HAS_STEP and not self._algo.has_step and st and "step" not in st:
                st = {**st, "step": torch.tensor(0.0, dtype=_scalar_dtype())}
            new_state[pid] = st
            if kept:
                keep.append((p, kept))
        return {**state_dict, "state": new_state}, keep

    def _id_map(self, saved_groups: Any) -> Dict[Any, Tuple[int, torch.Tensor]]:
        """Saved parameter id -> (index, parameter), as torch's loader pairs them."""
        id_map: Dict[Any, Tuple[int, torch.Tensor]] = {}
        index = 0
        if not isinstance(saved_groups, (list, tuple)):
            return id_map
        for g, sg in zip(self.param_groups, saved_groups):
            pids = sg.get("params", []) if isinstance(sg, dict) else []
            for p, pid in zip(g["params"], pids):
                id_map[pid] = (index, p)
                index += 1
        return id_map

    def _from_bnb(self, i: int, st: Dict[str, Any]) -> Dict[str, Any]:
        """A parameter's state in bitsandbytes' layout (``{'step', '__bnb_optimizer_quant_state__':
        {'state1', 'state2', 'absmax1', 'absmax2', 'qmap1', 'qmap2'}}``, or unwrapped) in this
        optimizer's keys (``'exp_avg'``, ``'exp_avg_absmax'``, ...)."""
        if self._algo is not ADAM:
            raise ValueError(f"state[params[{i}]] is a bitsandbytes Adam state ('state1', '{_BNB_KEY}'): it loads "
                             f"into fusedopt.torch.Adam/AdamW only, not {type(self).__name__}; nothing was loaded")  # fmt: skip
        inner = st.get(_BNB_KEY, {})
        if not isinstance(inner, dict):
            raise TypeError(f"state[params[{i}]][{_BNB_KEY!r}] must be a dict, got {type(inner).__name__}; "
                            "nothing was loaded")  # fmt: skip
        merged = {**{k: v for k, v in st.items() if k != _BNB_KEY}, **inner}
        out: Dict[str, Any] = {}
        for k, v in merged.items():
            if k == "step":
                out[k] = v
            elif k in _BNB_NAMES:
                out[_BNB_NAMES[k]] = v
            else:  # e.g. 'unorm_vec' (max_unorm), 'gnorm_vec' (percentile_clipping): no such state here
                raise ValueError(f"state[params[{i}]] (bitsandbytes layout) has {k!r}, which fusedopt has no "
                                 "state for; nothing was loaded")  # fmt: skip
        return out

    def _q8_load_prepare(
        self, state_dict: Any
    ) -> Tuple[Any, List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]], Any]:
        """Check and convert the 8-bit states of a state dict (nothing is modified on error):
        ours (``'exp_avg'`` uint8 codes, ``'exp_avg_absmax'`` float32, optional ``'exp_avg_qmap'``
        equal to fusedopt's code book bitwise) and bitsandbytes' (its keys and wrapping, mapped to
        ours). A parameter with 8-bit states here gets them (copied exactly when the layout is
        ours, else quantized with :func:`fusedopt.reference.q8_encode`, e.g. from a float32 state
        dict); one with float states gets the decoded values. Returns the state dict to load (an
        8-bit state's key holding a placeholder without memory), the (parameter, {key: tensor})
        to put in the state afterwards and the (saved id, key) of the placeholders."""
        keep: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = []
        skip: Set[Tuple[Any, str]] = set()
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
            return state_dict, keep, skip  # torch's loader raises its own error
        states = state_dict["state"]
        bnb = any([isinstance(st, dict) and (_BNB_KEY in st or "state1" in st) for st in states.values()])
        if not bnb and self.state_dtype != "8bit":
            suffixes = (ABSMAX_SUFFIX, QMAP_SUFFIX)
            if not any([isinstance(st, dict) and any([isinstance(k, str) and k.endswith(suffixes) for k in st])
                        for st in states.values()]):  # fmt: skip
                return state_dict, keep, skip  # nothing 8-bit here or in the state dict
        id_map = self._id_map(state_dict.get("param_groups"))
        new_state: Dict[Any, Any] = {}
        for pid, st in states.items():
            if pid not in id_map or not isinstance(st, dict):
                new_state[pid] = st
                continue
            i, p = id_map[pid]
            if _BNB_KEY in st or "state1" in st:
                st = self._from_bnb(i, st)
            want8 = self._is_q8(p)
            out = dict(st)
            kept: Dict[str, torch.Tensor] = {}
            for k, role in self._ROLES.items():
                signed = not role.nonneg
                name = f"state[params[{i}]][{k!r}]"
                v, a, q = st.get(k), out.pop(k + ABSMAX_SUFFIX, None), out.pop(k + QMAP_SUFFIX, None)
                if v is None:
                    if a is not None or q is not None:
                        raise ValueError(f"state[params[{i}]] has {k + ABSMAX_SUFFIX!r}/{k + QMAP_SUFFIX!r} but no "
                                         f"{k!r}; nothing was loaded")  # fmt: skip
                    continue
                if not isinstance(v, torch.Tensor):
                    raise TypeError(f"{name} must be a tensor, got {type(v).__name__}; nothing was loaded")
                if v.shape != p.shape:
                    raise ValueError(f"{name} has shape {tuple(v.shape)}, params[{i}] {tuple(p.shape)}; "
                                     "nothing was loaded")  # fmt: skip
                is8 = v.dtype == torch.uint8
                if is8:
                    self._check_q8_loaded(i, k, v, a, q, signed)
                elif a is not None or q is not None:
                    raise ValueError(f"{name} has dtype {v.dtype} but the state dict has its 8-bit "
                                     f"{k + ABSMAX_SUFFIX!r}/{k + QMAP_SUFFIX!r}; 8-bit codes are uint8; "
                                     "nothing was loaded")  # fmt: skip
                elif not v.is_floating_point():
                    raise TypeError(f"{name} has dtype {v.dtype}; state tensors must be floating point or uint8 "
                                    f"(8-bit codes with {k + ABSMAX_SUFFIX!r}); nothing was loaded")  # fmt: skip
                if want8:
                    mine = torch.empty_like(p, dtype=torch.uint8, memory_format=torch.preserve_format)
                    if is8 and v.stride() == mine.stride():  # our layout: exact copies
                        codes = mine.copy_(v)
                        absmax = cast(torch.Tensor, a).detach().reshape(-1).to(torch.float32, copy=True)
                    else:  # float values, or codes in another memory order: quantized in ours
                        codes, absmax = _q8_encode_like(p, _q8_decode(v, cast(torch.Tensor, a), signed) if is8 else v,
                                                        signed)  # fmt: skip
                    kept[k], kept[k + ABSMAX_SUFFIX] = codes, absmax
                    out[k] = torch.zeros((), dtype=p.dtype).expand(p.shape)  # (no memory; torch's loader keeps it)
                    skip.add((pid, k))
                elif is8:
                    out[k] = _q8_decode(v, cast(torch.Tensor, a), signed)
            new_state[pid] = out
            if kept:
                keep.append((p, kept))
        result = {**state_dict, "state": new_state}
        groups = state_dict.get("param_groups")
        if bnb and isinstance(groups, (list, tuple)):
            result["param_groups"] = [{k: v for k, v in g.items() if k not in _BNB_GROUP_KEYS or k in self.defaults}
                                      if isinstance(g, dict) else g for g in groups]  # fmt: skip
        return result, keep, skip

    @staticmethod
    def _check_q8_loaded(i: int, key: str, codes: torch.Tensor, absmax: Any, qmap: Any, signed: bool) -> None:
        """A loaded 8-bit state: codes one dense CPU block, absmax float32 with one value per block,
        the code book (when given) fusedopt's bitwise. ValueError/TypeError naming it."""
        name = f"state[params[{i}]][{key!r}]"
        _check_dense_cpu(name, codes)
        if not _one_block(codes):
            raise ValueError(f"{name} (8-bit codes) is not one dense block of memory; nothing was loaded")
        aname = f"state[params[{i}]][{key + ABSMAX_SUFFIX!r}]"
        _check_absmax(name, aname, absmax, codes.numel(), "; nothing was loaded")
        bad = torch.isinf(absmax) | (torch.signbit(absmax) & ~torch.isnan(absmax))
        if bool(bad.any()):  # a negative absmax would decode to sign-flipped moments
            raise ValueError(f"{aname} has a negative or infinite value at block {int(bad.reshape(-1).int().argmax())} "
                             "(absmax values are >= 0 and finite, or NaN); nothing was loaded")  # fmt: skip
        if qmap is not None:
            qname = f"state[params[{i}]][{key + QMAP_SUFFIX!r}]"
            if not isinstance(qmap, torch.Tensor) or qmap.dtype != torch.float32 or qmap.numel() != 256:
                what = f"{qmap.dtype} {tuple(qmap.shape)}" if isinstance(qmap, torch.Tensor) else type(qmap).__name__
                raise TypeError(f"{qname} must be a float32 tensor of 256 values, got {what}; nothing was loaded")
            _check_dense_cpu(qname, qmap)
            ours = reference.q8_map(signed).value
            if not np.array_equal(qmap.detach().reshape(-1).numpy().view(np.uint32), ours.view(np.uint32)):
                kind = "signed" if signed else "unsigned"
                raise ValueError(f"{qname} is not the {kind} dynamic code book fusedopt uses (bitsandbytes' "
                                 f"create_dynamic_map(signed={signed})): codes made with another map cannot be "
                                 "stepped here; nothing was loaded")  # fmt: skip

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override,unused-ignore]
        """torch's ``state_dict()``; with 8-bit states, each one's code book as ``key + '_qmap'``
        (a float32 tensor of 256 values) next to its codes (``key``, uint8) and ``key + '_absmax'``."""
        sd: Dict[str, Any] = super().state_dict()
        if self.state_dtype != "8bit":
            return sd
        state = sd["state"]
        for pid, st in list(state.items()):
            extra = {k + QMAP_SUFFIX: torch.from_numpy(reference.q8_map(not r.nonneg).value.copy())
                     for k, r in self._ROLES.items() if _is_q8_state(st, k)}  # fmt: skip
            if extra:
                state[pid] = {**st, **extra}  # (torch's own dict is the live state: not modified)
        return sd

    def __getstate__(self) -> Dict[str, Any]:
        """torch's, plus the low-precision options (pickle and copy.deepcopy keep them)."""
        out: Dict[str, Any] = super().__getstate__()
        for k in ("master_weights", "stochastic_rounding", "seed", "state_dtype", "min_8bit_size", "_lowp_path"):
            if k in self.__dict__:
                out[k] = self.__dict__[k]
        if "_HAS_STEP" in self.__dict__:
            out["_HAS_STEP"] = self.__dict__["_HAS_STEP"]
        return out

    # -- low-precision export --------------------------------------------------------------------
    def sync_masters(self) -> None:
        """Make every master again from its parameter (the exact float32 upcast; a split master's
        trail set to zero), e.g. after writing parameters through ``p.data``, which torch's version
        counter does not see. In-place changes it sees (``model.load_state_dict``, ``p.copy_()`` or
        ``p.fill_()`` under ``torch.no_grad()``) are picked up at the next step by themselves."""
        with self._lock, torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    st = self.state.get(p)
                    kind = self._master_kind(p)
                    key = MASTER_KEY if kind == "fp32" else TRAIL_KEY
                    if st and kind is not None and isinstance(st.get(key), torch.Tensor):
                        st[key] = self._new_master(p, kind)
                        self._master_versions.pop(p, None)

    def master_params(self) -> List[torch.Tensor]:
        """The float32 master of every parameter, in ``param_groups`` order, as new tensors: the
        fp32 master (``master_weights="fp32"``), the decoded split master (``"split"``:
        :func:`fusedopt.reference.split_decode` of the parameter and its trail), else the exact
        float32 upcast of the parameter (also before its first step, and for float32/float64
        parameters: their float32 copy, float64 rounded to nearest)."""
        out = []
        with self._lock, torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    st = self.state.get(p) or {}
                    m = st.get(MASTER_KEY)
                    t = st.get(TRAIL_KEY)
                    if isinstance(m, torch.Tensor):
                        out.append(m.detach().clone())
                    elif isinstance(t, torch.Tensor) and p.dtype == torch.bfloat16:
                        bits = p.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
                        trail = t.contiguous().numpy().view(np.uint16)
                        out.append(torch.from_numpy(reference.split_decode(bits, trail).reshape(tuple(p.shape))))
                    else:
                        out.append(p.detach().to(torch.float32, copy=True))
        return out

    def fp32_state_dict(self) -> Dict[str, Any]:
        """:meth:`state_dict` for an fp32 copy of the model, as new tensors: every state tensor as
        float32 (exact upcasts of bfloat16/float16 ones, 8-bit ones decoded (their ``'_absmax'`` and
        ``'_qmap'`` keys dropped); float64 ones rounded to nearest), the master
        keys dropped (their values are :meth:`master_params`), ``'step'`` as is, the ``'seed'`` group entries dropped. ``torch.optim``'s class of the same
        name loads it on a float32 model whose parameters hold :meth:`master_params`."""
        sd = self.state_dict()
        state = {}
        for pid, st in sd["state"].items():
            new = {}
            q8 = {k for k in self._ROLES if _is_q8_state(st, k)}
            dropped = {k + s for k in q8 for s in (ABSMAX_SUFFIX, QMAP_SUFFIX)}
            for k, v in st.items():
                if k in (MASTER_KEY, TRAIL_KEY) or k in dropped:
                    continue
                if k in q8:  # 8-bit: the decoded values
                    v = _q8_decode(v, st[k + ABSMAX_SUFFIX], not self._ROLES[k].nonneg)
                elif isinstance(v, torch.Tensor):  # copies (torch's own state_dict() shares the tensors)
                    v = v.to(torch.float32, copy=True) if k != "step" and v.is_floating_point() else v.clone()
                new[k] = v
            state[pid] = new
        groups = [{k: v for k, v in g.items() if k != "seed"} for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

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
        for key in self._SCALAR_KEYS:  # torch's __setstate__ reads them too (KeyError), numbers made tensors
            for i, _, st in entries:
                if key not in st:
                    raise _key_error(key, f"state[params[{i}]] has state but no {key!r}")
                v = st[key]
                name = f"state[params[{i}]][{key!r}]"
                if isinstance(v, torch.Tensor):
                    _check_scalar_state(name, v)
                elif isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                    raise TypeError(f"{name} must be a one-element float32/float64 tensor (or a number), "
                                    f"got {type(v).__name__}")  # fmt: skip
                elif not math.isfinite(float(v)):
                    raise ValueError(f"{name} must be finite, got {v}")
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
        if _immutable(vals):
            self._plans[id(group)] = (group, types, inner, vals, plan)
        return plan

    # -- the step ------------------------------------------------------------------------------
    def _native(self, hyper: Dict[str, Any], t: Any, P: List[torch.Tensor], G: List[torch.Tensor],
                S: List[List[torch.Tensor]], counters: Optional[List[torch.Tensor]], threads: int,
                lowp: Tuple[Any, ...] = ()) -> None:  # fmt: skip
        """One native call over tensor lists (state lists in ``_state_keys`` order): the scalars from
        ``hyper`` (validated by :meth:`_hyper`) and the step count ``t`` (for an algorithm without
        a step count: whether FIRST_STEP buffers are made by this step); ``counters`` are the
        'step' tensors, advanced by the same call right after the update."""
        algo = self._algo
        it = iter(S)
        lists = [next(it) if r.present(hyper) else None for r in algo.states]
        if len(lowp) > 4 and lowp[4] is not None:  # 8-bit states: absmax lists in role order too
            ia = iter(lowp[4])
            lowp = (*lowp[:4], [next(ia) if r.present(hyper) else None for r in algo.states])
        if not algo.has_step:
            hyper = {**hyper, "first_step": bool(t)}
            t = 1
        _engine.native_call(algo, hyper, t if t is not None else 1, P, G, lists, threads, None, counters, lowp=lowp)

    def step(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override,unused-ignore]
        """Perform one optimization step (``step(closure=None)``: ``closure`` re-evaluates the model
        and returns the loss).

        Everything is checked before the first write; state created by this step (lazy
        initialization), the step counters and the autograd version counters are committed only
        after the update succeeded, and a KeyboardInterrupt arriving meanwhile is delivered after
        the step completed (all or nothing).

        Step hooks (``register_step_pre_hook``/``register_step_post_hook``, and the global ones)
        and the profiler's ``Optimizer.step#<class>.step`` range behave as torch's: when any hook
        is registered or the autograd profiler is on, the step runs inside torch's own wrapper
        (``Optimizer.profile_hook_step``); otherwise that wrapper, whose profiler range alone costs
        tens of microseconds, is skipped.
        """
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _GLOBAL_PRE_HOOKS
                or _GLOBAL_POST_HOOKS or _profiler_enabled()):  # fmt: skip
            return _HOOKED_STEP(self, *args, **kwargs)
        out = self._locked_step(*args, **kwargs)
        self._optimizer_step_code()
        return out

    step.hooked = True  # type: ignore[attr-defined]  # torch.optim.Optimizer does not wrap it again

    def _locked_step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        with self._lock:  # concurrent steps of one optimizer are serialized (closure included)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._step()
            return loss

    def _entry(self, p: torch.Tensor, g: torch.Tensor, index: int, group: Dict[str, Any],
               keys: Tuple[str, ...]) -> _Entry:  # fmt: skip
        """The tensors of one parameter's update; missing state is made (staged, not committed)."""
        st = self.state.get(p)
        staged: Dict[str, Any] = {}
        step = None
        if self._HAS_STEP:
            step = st.get("step") if st else None
            if step is None:
                with torch.no_grad():
                    step = staged["step"] = torch.tensor(0.0, dtype=_step_dtype(group))
            elif not isinstance(step, torch.Tensor):
                raise TypeError(f"state[params[{index}]]['step'] must be a one-element tensor, got {type(step).__name__}")
        tensors = []
        q8 = self._lowp_path and bool(keys) and self._is_q8(p)
        absmax: Optional[List[torch.Tensor]] = [] if q8 else None
        for k in keys:
            t = st.get(k) if st else None
            if t is None:
                with torch.no_grad():
                    new = self._new_states(k, p, group)
                staged.update(new)
                t = new[k]
                if absmax is not None:
                    absmax.append(new[k + ABSMAX_SUFFIX])
            elif absmax is not None:
                absmax.append(self._check_q8(index, k, p, t, cast(Dict[str, Any], st).get(k + ABSMAX_SUFFIX)))
            elif isinstance(t, torch.Tensor) and t.dtype == torch.uint8:
                raise TypeError(f"state[params[{index}]][{k!r}] is uint8 (8-bit codes), but this optimizer keeps "
                                f"float states for params[{index}] (state_dtype={self.state_dtype!r}, "
                                f"{p.numel()} elements, min_8bit_size={self.min_8bit_size})")  # fmt: skip
            tensors.append(t)
        master = None
        kind = self._master_kind(p) if self._lowp_path else None
        if kind is not None:
            mkey = MASTER_KEY if kind == "fp32" else TRAIL_KEY
            master = st.get(mkey) if st else None
            if master is None or self._master_versions.get(p, p._version) != p._version:
                # made from the parameter at its first step (or after loading torch.optim's state), and
                # again when the parameter was changed in place since fusedopt's last step of it
                with torch.no_grad():
                    master = staged[mkey] = self._new_master(p, kind)
            elif not isinstance(master, torch.Tensor):
                raise TypeError(f"state[params[{index}]][{mkey!r}] must be a tensor, got {type(master).__name__}")
            elif master.dtype != (torch.float32 if kind == "fp32" else torch.int16):
                raise TypeError(f"state[params[{index}]][{mkey!r}] has dtype {master.dtype}; it must be "
                                f"{'torch.float32' if kind == 'fp32' else 'torch.int16'}")  # fmt: skip
        return _Entry(p, g, index, staged, tensors, step, master, absmax)

    @staticmethod
    def _check_q8(index: int, key: str, p: torch.Tensor, codes: Any, absmax: Any) -> torch.Tensor:
        """An 8-bit state's codes and absmax as the step needs them (TypeError/ValueError naming the
        state); returns the absmax."""
        name = f"state[params[{index}]][{key!r}]"
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
            what = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise TypeError(f"{name} must be a uint8 tensor (8-bit codes: params[{index}] has 8-bit states), "
                            f"got {what}")  # fmt: skip
        _check_dense_cpu(name, codes)
        if codes.shape != p.shape:
            raise ValueError(f"{name} has shape {tuple(codes.shape)}, params[{index}] {tuple(p.shape)}")
        _check_absmax(name, f"state[params[{index}]][{key + ABSMAX_SUFFIX!r}]", absmax, p.numel(), "")
        if not absmax.is_contiguous():
            raise ValueError(f"state[params[{index}]][{key + ABSMAX_SUFFIX!r}] must be a contiguous tensor")
        return cast(torch.Tensor, absmax)

    @staticmethod
    def _next_counts(entries: List[_Entry]) -> List[float]:
        """The step count of every entry after this step, as torch counts: +1 in the counter's
        dtype (a float32 count saturates at 2**24). Raises ValueError/TypeError naming the state."""
        steps = [cast(torch.Tensor, e.step) for e in entries]
        old: Optional[List[Any]] = None
        if all([d in _DTYPES for d in map(_dtype, steps)]):
            try:
                if len(steps) <= 8:  # (one stack costs as much as a few item() calls)
                    if all([n == 1 for n in map(_numel, steps)]):
                        old = [*map(_item, steps)]
                else:
                    stacked = torch.stack(steps)
                    if stacked.is_cpu and stacked.numel() == len(steps):
                        old = stacked.reshape(-1).tolist()
            except (RuntimeError, TypeError, ValueError):  # mixed shapes or devices: one by one, below
                old = None
        if old is None:  # one by one; _check_step_value names what is wrong
            old = [_check_step_value(f"state[params[{e.index}]]['step']", s) for e, s in zip(entries, steps)]
        new = []
        for e, s, v in zip(entries, steps, old):
            if not (math.isfinite(v) and v >= 0.0 and v == int(v)):
                _check_step_value(f"state[params[{e.index}]]['step']", v)  # raises
            if v + 1.0 < _TWO24 or s.dtype == torch.float64:
                new.append(v + 1.0)
            else:  # torch increments in the counter's dtype: a float32 count saturates at 2**24
                new.append(float(np.float32(v) + np.float32(1.0)))
        return new

    def _step(self) -> None:
        """The C++ plan's step when everything it cached still holds (:meth:`_fast_step`), else the
        full step (:meth:`_full_step`), after which a new plan is made."""
        tp = self._tplan
        if tp is not None:
            if self._fast_step(tp):
                return
            self._tplan = None
        self._full_step()

    def _fast_step(self, tp: "_core.TorchPlan") -> bool:
        """One step by the plan (True), or False having changed nothing. A group whose
        hyperparameters changed (a schedule's new ``lr``) is validated here, as the full step would
        (raising its errors), and given to the plan when its state layout is unchanged."""
        for _ in range(len(self.param_groups) + 1):
            with _core.defer_interrupts:  # a KeyboardInterrupt waits until the step is complete
                r = tp.step(self.param_groups, self.state, _threads.get_num_threads())
            if r == -1:
                return True
            if r < 0:
                return False
            group = self.param_groups[r]
            hyper, keys, uses_step = self._group_plan(group)
            vals = cast(Callable[[Dict[str, Any]], Tuple[Any, ...]], self._hget)(group)
            if not _immutable(vals) or (keys, uses_step) != self._tplan_groups[r]:
                return False  # a value that can change in place (a Tensor lr, a list betas), another state layout
            tp.refresh(r, vals, self._view(hyper))
        return False

    def _view(self, hyper: Dict[str, Any]) -> Dict[str, Any]:
        """The plan's functional hyperparameters: a planned step never makes FIRST_STEP buffers."""
        return hyper if self._algo.has_step else {**hyper, "first_step": False}

    def _make_tplan(self, calls: List[Tuple[Tuple[str, ...], "_Call"]], groups: List[Tuple[Any, ...]],
                    written: List[torch.Tensor]) -> Optional["_core.TorchPlan"]:  # fmt: skip
        """The C++ steady-state step (cpp/bindings/torch_plan.hpp) after a full step that made one
        native call per (group, dtype), whose groups' hyperparameters are all immutable values and
        whose written tensors are not inference tensors; None otherwise (every step then takes the
        full path)."""
        if not _USE_TPLAN or not calls or self._lowp_path or any(map(_is_inference, written)):
            return None  # (low-precision storage: every step is a full step)
        if self._algo.scalar_states:
            return None  # per-parameter scalar states (NAdam's mu_product) are read and advanced in Python
        if len({(id(c.hyper), e.p.dtype) for _, c in calls for e in c.entries}) != len(calls):
            return None  # a group with several step counts
        get = cast(Callable[[Dict[str, Any]], Tuple[Any, ...]], self._hget)
        specs, layouts = [], []
        for group, (hyper, keys, uses_step, _, _) in zip(self.param_groups, groups):
            vals = get(group)
            if not _immutable(vals):
                return None
            role_keys = [r.key if r.present(hyper) else None for r in self._algo.states]
            specs.append((tuple(self.defaults), vals, self._view(hyper), role_keys, uses_step))
            layouts.append((keys, uses_step))
        try:
            tp = _core.TorchPlan(self._algo.kernel, self._HAS_STEP, self.param_groups, self.state, specs,
                                 torch._C._increment_version, _threads.SERIAL_BELOW[self._algo.threads])  # fmt: skip
        except (TypeError, ValueError):
            return None
        self._tplan_groups = layouts
        return tp

    def _scalar_state_values(self, entries: List[_Entry], groups: List[Tuple[Any, ...]],
                             news: List[float]) -> List[Tuple[float, ...]]:  # fmt: skip
        """Per entry, the values of the per-parameter scalar states (:class:`~fusedopt.algorithms._spec.ScalarState`,
        NAdam's ``'mu_product'``) after this step, advanced in the dtype each is kept in; a missing
        one is staged at its start value (a 0-dim tensor of torch's scalar dtype; a state with a
        ``'step'`` but without it raises torch's KeyError). Checks each (a one-element
        float32/float64 CPU tensor, finite; the new value in the functional's range):
        TypeError/ValueError naming it. Nothing is written here (committed after the update)."""
        specs = self._algo.scalar_states
        per_key: List[List[Tuple[float, str]]] = []
        for s in specs:
            tensors = []
            for e in entries:
                st = self.state.get(e.p)
                cur = st.get(s.key) if st else None
                if cur is None:
                    if st and "step" in st:  # (torch's step reads it: KeyError)
                        err = KeyError(s.key)
                        add_note = getattr(err, "add_note", None)  # (Python 3.11+)
                        if add_note is not None:
                            add_note(f"state[params[{e.index}]] has a 'step' but no {s.key!r}; nothing was modified")
                        raise err
                    cur = e.staged[s.key] = torch.tensor(s.init, dtype=_scalar_dtype())
                tensors.append(cur)
            values: Optional[List[float]] = None
            if all([type(t) is torch.Tensor for t in tensors]):
                dts = set(map(_dtype, tensors))
                if dts <= set(_DTYPES):
                    try:  # (one stack costs as much as a few item() calls; see _next_counts)
                        stacked = torch.stack(tensors)
                        if stacked.is_cpu and stacked.numel() == len(tensors) and stacked.layout == torch.strided:
                            values = stacked.reshape(-1).tolist()
                    except (RuntimeError, TypeError, ValueError):  # mixed shapes or devices: one by one, below
                        values = None
            if values is None:
                values = [_check_scalar_state(f"state[params[{e.index}]][{s.key!r}]", t)
                          for e, t in zip(entries, tensors)]  # fmt: skip
            per_key.append([(x, _KIND[t.dtype]) for x, t in zip(values, tensors)])
        out: List[Tuple[float, ...]] = []
        cache: Dict[Tuple[Any, ...], float] = {}  # (group, key, step, value, dtype) -> new value
        for a_gi, (hyper, _keys, _uses_step, a, b) in enumerate(groups):
            for i in range(a, b):
                e = entries[i]
                vals = []
                for j, s in enumerate(specs):
                    x, kind = per_key[j][i]
                    ck = (a_gi, j, news[i], x, kind)
                    new = cache.get(ck)
                    if new is None:
                        name = f"state[params[{e.index}]][{s.key!r}]"
                        if not math.isfinite(x):
                            raise ValueError(f"{name} must be finite, got {x}")
                        new = self._algo.hyper(s.key).check(s.advance(hyper, int(news[i]), x, kind),
                                                            f"{name} after this step")  # fmt: skip
                        cache[ck] = new
                    vals.append(new)
                out.append(tuple(vals))
        return out

    def _commit_scalar_states(self, entries: List[_Entry], values: List[Tuple[float, ...]]) -> None:
        """Write the scalar states' new values (:meth:`_scalar_state_values`) into their tensors, in
        place (as torch's ``mu_product *= mu``): one ``_foreach_copy_`` per distinct value and dtype."""
        by_value: Dict[Tuple[Any, ...], List[torch.Tensor]] = {}
        for e, vals in zip(entries, values):
            st = self.state[e.p]
            for k, v in zip(self._SCALAR_KEYS, vals):
                t = st[k]
                by_value.setdefault((v, t.dtype), []).append(t)
        with torch.no_grad():
            for (v, dt), ts in by_value.items():
                src = torch.tensor(v, dtype=dt)
                torch._foreach_copy_(ts, [src] * len(ts))

    def _full_step(self) -> None:
        """Check everything (naming the culprit), stage missing state, step, commit."""
        has_step = self._HAS_STEP
        entries: List[_Entry] = []
        groups: List[Tuple[Dict[str, Any], Tuple[str, ...], bool, int, int]] = []
        index = 0
        for group in self.param_groups:
            hyper, keys, uses_step = self._group_plan(group)
            first = len(entries)
            for p in group["params"]:
                g = p.grad
                if g is not None:
                    entries.append(self._entry(p, g, index, group, keys))
                index += 1
            groups.append((hyper, keys, uses_step, first, len(entries)))
        if not entries:
            return
        news = self._next_counts(entries) if has_step else []
        scalar_news = self._scalar_state_values(entries, groups, news) if self._algo.scalar_states else None
        first_keys = [r.key for r in self._algo.states if r.init == FIRST_STEP]
        calls: List[Tuple[Tuple[str, ...], _Call]] = []
        lowp_path = self._lowp_path
        algo_step = self._algo.has_step
        for gi, (hyper, keys, uses_step, a, b) in enumerate(groups):
            buckets: Dict[Any, List[int]] = {}
            for i in range(a, b):
                e = entries[i]
                if algo_step:
                    key: Tuple[Any, ...] = (e.p.dtype, int(news[i]) if uses_step else None)
                else:  # SGD: buffers created by this step start at b = g (FIRST_STEP)
                    key = (e.p.dtype, any([k in e.staged for k in first_keys]))
                if lowp_path:  # one gradient dtype and (stochastic rounding's counter) one step count per call
                    key = (*key, e.g.dtype, int(news[i]) if has_step else None, e.absmax is not None)
                if scalar_news is not None:  # per-parameter scalar states (NAdam's mu_product): one value per call
                    key = (*key, scalar_news[i])
                buckets.setdefault(key, []).append(i)
            for bkey, idx in buckets.items():
                es = [entries[i] for i in idx]
                lowp = self._lowp_args(self.param_groups[gi], es, bkey[3]) if lowp_path else ()
                h = hyper if scalar_news is None else {**hyper, **dict(zip(self._SCALAR_KEYS, scalar_news[idx[0]]))}
                calls.append((keys, _Call(h, bkey[1], es, sum(map(_numel, [e.p for e in es])), lowp)))
        written = [e.p for e in entries] + [t for e in entries for t in e.tensors]
        if self._lowp_path:
            written += [e.master for e in entries if e.master is not None]
            written += [a for e in entries if e.absmax is not None for a in e.absmax]
        if not torch.is_inference_mode_enabled() and any(map(_is_inference, written)):
            raise RuntimeError(_INFERENCE_MSG)
        if len(calls) > 1:
            self._precheck(calls)
        threads = [_threads.resolve(None, c.n, self._algo.threads) for _, c in calls]
        staged = [e for e in entries if e.staged]
        with _core.defer_interrupts:  # a KeyboardInterrupt waits until the step is complete
            for (keys, c), nt in zip(calls, threads):
                P, G, S = c.native_lists(len(keys))
                try:
                    self._native(c.hyper, c.t, P, G, S, c.counters(), nt, c.native_lowp())
                except (TypeError, ValueError) as exc:  # (only a single call can fail here: prechecked)
                    raise type(exc)(_torch_names(str(exc), c.entries)) from None
            for e in staged:
                self.state[e.p].update(e.staged)
            if scalar_news is not None:  # committed with the step counts, only now that the step is applied
                self._commit_scalar_states(entries, scalar_news)
            # as torch.optim's in-place updates do (a no-op for inference tensors, which have none)
            torch._C._increment_version(written + [e.step for e in entries if e.step is not None])
            for e in entries:
                if e.master is not None:
                    self._master_versions[e.p] = e.p._version
        self._tplan = self._make_tplan(calls, groups, written)

    def _precheck(self, calls: List[Tuple[Tuple[str, ...], _Call]]) -> None:
        """A step of several native calls: everything any call would refuse is found before the
        first one writes (each call's own checks, and no overlap across calls)."""
        for keys, c in calls:
            P, G, S = c.native_lists(len(keys))
            roles = [("params", P, True), ("grads", G, False)]
            roles += [(_KEY_ROLES[k], S[j], True) for j, k in enumerate(keys)]
            try:
                if c.absmax is not None:
                    masters, sr = (c.lowp[0], c.lowp[1]) if c.lowp else (None, False)
                    _core.check([*roles, ("masters", masters, True)], lowp=True, stochastic_rounding=sr,
                                absmax=c.absmax)  # fmt: skip
                elif c.lowp:
                    _core.check([*roles, ("masters", c.lowp[0], True)], lowp=True, stochastic_rounding=c.lowp[1])
                else:
                    _core.check(roles, lowp=True)
            except (TypeError, ValueError) as exc:
                raise type(exc)(_torch_names(str(exc), c.entries)) from None
        written: List[torch.Tensor] = []
        names: List[str] = []
        read: List[torch.Tensor] = []
        read_names: List[str] = []
        for keys, c in calls:
            for e in c.entries:
                written.append(e.p)
                names.append(f"params[{e.index}]")
                for k, t in zip(keys, e.tensors):
                    written.append(_codes_arg(t) if e.absmax is not None else t)
                    names.append(f"state[params[{e.index}]][{k!r}]")
                for k, a in zip(keys, e.absmax or []):
                    written.append(a)
                    names.append(f"state[params[{e.index}]][{k + ABSMAX_SUFFIX!r}]")
                if e.master is not None:
                    written.append(_master_arg(e.master))  # (a trail as its uint16 view)
                    key = MASTER_KEY if e.master.dtype == torch.float32 else TRAIL_KEY
                    names.append(f"state[params[{e.index}]][{key!r}]")
                read.append(e.g)
                read_names.append(f"params[{e.index}].grad")
        try:
            _core.check_overlap(written, read)
        except ValueError as exc:
            msg = re.sub(r"\bwritten\[(\d+)\]", lambda m: names[int(m.group(1))], str(exc))
            msg = re.sub(r"\bread\[(\d+)\]", lambda m: read_names[int(m.group(1))], msg)
            raise ValueError(msg) from None


def fp32_state_dict(optimizer: "_FusedOptimizer") -> Dict[str, Any]:
    """``optimizer.fp32_state_dict()`` (:meth:`_FusedOptimizer.fp32_state_dict`): every state of a
    ``fusedopt.torch`` optimizer (8-bit, bfloat16, masters) as a plain float32 ``state_dict`` that
    the ``torch.optim`` class of the same name loads."""
    if not isinstance(optimizer, _FusedOptimizer):
        raise TypeError(f"optimizer must be a fusedopt.torch optimizer, got {type(optimizer).__name__}")
    return optimizer.fp32_state_dict()


#: the step inside torch's wrapper (step hooks, profiler range), when hooks or the profiler are on
_HOOKED_STEP = torch.optim.Optimizer.profile_hook_step(_FusedOptimizer._locked_step)
_FusedOptimizer.step.__signature__ = inspect.signature(_FusedOptimizer._locked_step)  # type: ignore[attr-defined]


def _bool(name: str, v: Any) -> bool:
    return check.flag(name, v)


class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, L2 weight decay, maximize).

    State: ``'momentum_buffer'`` (only with ``momentum != 0``), set to the gradient on the first step
    as in torch. No step counter.
    """

    _algo = _SGD
    _REQUIRED_GROUP_KEYS = ("lr", "momentum", "dampening", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
        weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
        foreach: Optional[bool] = None, differentiable: bool = False, fused: Optional[bool] = None,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class Momentum(_FusedOptimizer):
    """Momentum as an exponential moving average of gradients (Ng): :func:`fusedopt.functional.momentum`.

    ``v = beta*v + (1-beta)*g; p -= lr*v`` (``lr/(1-beta**t)`` with ``bias_correction``). Not in
    torch.optim: ``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)`` matches it only for a constant
    learning rate. State: ``'step'`` (0-dim float tensor, as torch's) and ``'velocity'`` (zeros).
    """

    _algo = MOMENTUM
    _REQUIRED_GROUP_KEYS = ("lr", "beta", "weight_decay", "bias_correction")

    def __init__(self, params: Any, lr: float, beta: float = 0.9, weight_decay: float = 0,
                 bias_correction: bool = False, *, master_weights: Optional[str] = None,
                 stochastic_rounding: bool = False, seed: Optional[int] = None,
                 state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay, bias_correction=bias_correction),
                         (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class RMSprop(_FusedOptimizer):
    """``torch.optim.RMSprop`` (eps outside the root, centered, momentum, L2 weight decay, maximize).

    State: ``'step'``, ``'square_avg'``, ``'momentum_buffer'`` (momentum > 0), ``'grad_avg'``
    (centered), zeros, created on the first step as in torch.
    """

    _algo = RMSPROP
    _REQUIRED_GROUP_KEYS = ("lr", "alpha", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
        momentum: float = 0, centered: bool = False, capturable: bool = False, foreach: Optional[bool] = None,
        maximize: bool = False, differentiable: bool = False, *,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` (amsgrad over the raw ``v``, L2 or decoupled weight decay, maximize).

    State: ``'step'`` (0-dim float32 tensor), ``'exp_avg'``, ``'exp_avg_sq'``,
    ``'max_exp_avg_sq'`` (amsgrad), zeros, created on the first step as in torch.
    """

    _algo = ADAM
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")
    _TENSOR_FOREACH_CHECK = True

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, amsgrad: bool = False, *, foreach: Optional[bool] = None, maximize: bool = False,
        capturable: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class AdamW(Adam):
    """``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay, default ``weight_decay=1e-2``."""

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
        foreach: Optional[bool] = None, capturable: bool = False, differentiable: bool = False,
        fused: Optional[bool] = None,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, seed=seed, state_dtype=state_dtype,
                         min_8bit_size=min_8bit_size)  # fmt: skip

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch.optim.AdamW


class Adagrad(_FusedOptimizer):
    """``torch.optim.Adagrad`` (lr_decay, initial_accumulator_value, L2 weight decay, maximize).

    State: ``'step'`` and ``'sum'`` (filled with ``initial_accumulator_value``), created when the
    parameter is added, as in torch.
    """

    _algo = ADAGRAD
    _REQUIRED_GROUP_KEYS = ("lr", "lr_decay", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
        initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: Optional[bool] = None, *,
        maximize: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class Adamax(_FusedOptimizer):
    """``torch.optim.Adamax`` (infinity norm with ``eps`` inside the max, L2 weight decay, maximize).

    State: ``'step'`` (0-dim float32 tensor), ``'exp_avg'``, ``'exp_inf'``, zeros, created on the
    first step as in torch.
    """

    _algo = ADAMAX
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, foreach: Optional[bool] = None, *, maximize: bool = False,
        differentiable: bool = False, capturable: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class Lamb(_FusedOptimizer):
    """LAMB as torch_optimizer's ``Lamb`` (torch.optim has none): ``Lamb(params, lr=1e-3,
    betas=(0.9, 0.999), eps=1e-6, weight_decay=0, clamp_value=10, adam=False, debias=False)``, its
    argument names, defaults, checks and messages, and its state keys ``'step'``, ``'exp_avg'``,
    ``'exp_avg_sq'``::

        u = m/(sqrt(v) + eps) + weight_decay*p          (weight decay inside u and ||u||)
        p = p - lr*c*min(||p||, clamp_value)/||u|| * u  (ratio 1 if either norm is 0, or adam=True)

    with ``c = sqrt(1-beta2^t)/(1-beta1^t)`` when ``debias`` else 1: :func:`fusedopt.functional.lamb`
    with ``bias_correction=False``. Differences from torch_optimizer: ``clamp_value``, ``adam`` and
    ``debias`` are param-group keys (torch_optimizer keeps them on the optimizer; its state dicts load
    here with this optimizer's values); ``'step'`` is a float32 tensor as in torch.optim (an int
    ``'step'`` loads); the diagnostic state entries ``'weight_norm'``, ``'adam_norm'``,
    ``'trust_ratio'`` are not kept. The norms are float64 sums in a fixed order (torch.norm's float32
    order is not reproducible): parity with torch_optimizer is within float32 rounding, not bitwise.
    float32/float64 parameters only (no low-precision options).
    """

    _algo = LAMB_TORCH
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
        weight_decay: float = 0, clamp_value: float = 10, adam: bool = False, debias: bool = False, *,
        maximize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      clamp_value=clamp_value, adam=adam, debias=debias, maximize=maximize))


#: the name of fusedopt's NumPy class (:class:`fusedopt.LAMB`) for the same optimizer
LAMB = Lamb


class LARS(_FusedOptimizer):
    """LARS as facebookresearch/barlowtwins' (and DINO's) ``LARS`` (torch.optim has none):
    ``LARS(params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=False,
    lars_adaptation_filter=False)``, its argument names, defaults and state key ``'mu'``::

        d = grad + weight_decay*p                 (not for 1-D p with weight_decay_filter)
        q = eta*||p||/||d||, 1 if either is 0     (1 for 1-D p with lars_adaptation_filter)
        mu = momentum*mu + q*d;  p -= lr*mu

    :func:`fusedopt.functional.lars`. Differences from barlowtwins: ``lars_adaptation`` (default
    True) and ``maximize`` are also group keys; hyperparameters are checked (finite, >= 0). The
    norms are float64 sums in a fixed order (torch.norm's float32 order is not reproducible):
    parity is within float32 rounding, not bitwise. With a filter on, the 1-D parameters of a group
    take a native call of their own and every step takes the Python path. float32/float64
    parameters only (no low-precision options).
    """

    _algo = LARS_TORCH
    _REQUIRED_GROUP_KEYS = ("lr", "weight_decay", "momentum", "eta")

    def __init__(
        self, params: Any, lr: float, weight_decay: float = 0, momentum: float = 0.9, eta: float = 0.001,
        weight_decay_filter: bool = False, lars_adaptation_filter: bool = False, *,
        lars_adaptation: bool = True, maximize: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      weight_decay_filter=weight_decay_filter,
                                      lars_adaptation_filter=lars_adaptation_filter, lars_adaptation=lars_adaptation,
                                      maximize=maximize))  # fmt: skip

    def _native(self, hyper: Dict[str, Any], t: Any, P: List[torch.Tensor], G: List[torch.Tensor],
                S: List[List[torch.Tensor]], counters: Optional[List[torch.Tensor]], threads: int,
                lowp: Tuple[Any, ...] = ()) -> None:  # fmt: skip
        """barlowtwins' filters: the 1-D parameters (biases, norm weights) in a call of their own,
        without weight decay (``weight_decay_filter``) / trust ratio (``lars_adaptation_filter``)."""
        wf, af = hyper["weight_decay_filter"], hyper["lars_adaptation_filter"]
        one_d = [i for i, p in enumerate(P) if p.ndim == 1] if wf or af else []
        if not one_d:
            super()._native(hyper, t, P, G, S, counters, threads, lowp)
            return
        rest = [i for i in range(len(P)) if P[i].ndim != 1]
        filtered = {**hyper, **({"weight_decay": 0.0} if wf else {}), **({"lars_adaptation": False} if af else {})}
        for idx, h in ((rest, hyper), (one_d, filtered)):
            if idx:
                super()._native(h, t, [P[i] for i in idx], [G[i] for i in idx], [[s[i] for i in idx] for s in S],
                                None, _threads.resolve(None, sum(P[i].numel() for i in idx), self._algo.threads),
                                lowp)  # fmt: skip

    def _make_tplan(self, calls: List[Tuple[Tuple[str, ...], "_Call"]], groups: List[Tuple[Any, ...]],
                    written: List[torch.Tensor]) -> Optional["_core.TorchPlan"]:  # fmt: skip
        """No C++ steady-state step with a filter on (it would step the 1-D parameters unfiltered)."""
        if any(g.get("weight_decay_filter") or g.get("lars_adaptation_filter") for g in self.param_groups):
            return None
        return super()._make_tplan(calls, groups, written)

    def _fast_step(self, tp: "_core.TorchPlan") -> bool:
        """(A filter switched on after the plan was made: the full step, which drops the plan.)"""
        if any(g.get("weight_decay_filter") or g.get("lars_adaptation_filter") for g in self.param_groups):
            return False
        return super()._fast_step(tp)


class RAdam(_FusedOptimizer):
    """``torch.optim.RAdam`` (variance rectification when ``rho_t > 5``, L2 or decoupled weight decay,
    maximize).

    State: ``'step'`` (0-dim float32 tensor), ``'exp_avg'``, ``'exp_avg_sq'``, zeros, created on the
    first step as in torch.
    """

    _algo = RADAM
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, decoupled_weight_decay: bool = False, *, foreach: Optional[bool] = None,
        maximize: bool = False, capturable: bool = False, differentiable: bool = False,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)  # fmt: skip
        super().__init__(params, defaults, (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


class NAdam(_FusedOptimizer):
    """``torch.optim.NAdam`` (its loop form, torch's CPU default): the momentum schedule
    ``mu_t = beta1*(1 - 0.5*0.96**(t*momentum_decay))``, L2 or decoupled weight decay (NAdamW),
    maximize. See :func:`fusedopt.functional.nadam` for the exact update.

    State: ``'step'`` and ``'mu_product'`` (0-dim tensors of torch's scalar dtype: float32, float64
    under a float64 default dtype), ``'exp_avg'``, ``'exp_avg_sq'`` (zeros), created on the first step
    as in torch. ``'mu_product'`` is advanced as torch's ``mu_product *= mu`` rounds it (in the dtype
    it is kept in: a loaded state dict's ``'mu_product'`` is cast to the parameter's dtype by torch's
    loader, as in torch.optim) and committed with the step count only when the step is applied;
    parameters with different products are stepped by different native calls, as parameters with
    different step counts. A loaded ``'mu_product'`` must be a finite one-element float tensor (or a
    number); a product that would leave ``[0, 1)`` raises ValueError naming it (torch divides by
    ``1 - mu_product``). Every step takes the Python path (no C++ plan: the products are read and
    advanced in Python). float32/float64 parameters only (no low-precision options).
    """

    _algo = NADAM
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "momentum_decay")

    def __init__(
        self, params: Any, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
        foreach: Optional[bool] = None, maximize: bool = False, capturable: bool = False,
        differentiable: bool = False,
    ) -> None:  # fmt: skip
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable)  # fmt: skip
        super().__init__(params, defaults)


class Lion(_FusedOptimizer):
    """Lion (Chen et al. 2023), torch-style: ``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
    maximize=False)``, decoupled decay ``p *= 1 - lr*weight_decay`` (lucidrains/lion-pytorch's form):
    :func:`fusedopt.functional.lion`. Not in torch.optim; checks and messages in torch's style.

    State: ``'exp_avg'`` (zeros), created on the first step. No ``'step'`` counter.
    ``sign(0) = 0``; a NaN gradient makes the parameter NaN (``torch.sign`` would silently stop it).
    """

    _algo = LION
    _REQUIRED_GROUP_KEYS = ("lr", "betas", "weight_decay")

    def __init__(
        self, params: Any, lr: float = 1e-4, betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
        maximize: bool = False, *,
        master_weights: Optional[str] = None, stochastic_rounding: bool = False, seed: Optional[int] = None,
        state_dtype: Optional[str] = None, min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize),
                         (master_weights, stochastic_rounding, seed, state_dtype, min_8bit_size))


# -- Muon ------------------------------------------------------------------------------------------
def newton_schulz_torch(u: torch.Tensor, h: Dict[str, Any], ns_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Muon's Newton-Schulz iteration on a 2-D tensor with torch's matmul (BLAS), in ``u``'s dtype
    (fusedopt._muon's docstring): the same algorithm as :func:`fusedopt.reference.muon_newton_schulz`
    (norm accumulated in float64, rounded once) with torch's ``addmm`` for ``b*A + c*A@A`` and
    ``a*X + B@X``. ``ns_dtype=torch.bfloat16``: torch 2.13's own iteration (the update cast to
    bfloat16, its bfloat16 norm and GEMMs), returned upcast exactly to ``u``'s dtype.
    A new contiguous tensor of ``u``'s shape and dtype."""
    a, b, c = h["ns_coefficients"]
    transposed = u.size(0) > u.size(1)
    if ns_dtype == torch.bfloat16:
        x = u.bfloat16()
        if transposed:
            x = x.T
        x.div_(x.norm().clamp(min=h["eps"]))
        for _ in range(h["ns_steps"]):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return (x.T if transposed else x).to(u.dtype).contiguous()
    np_t = np.float32 if u.dtype == torch.float32 else np.float64
    norm = float(np_t(math.sqrt(float(torch.linalg.vector_norm(u, dtype=torch.float64) ** 2))))
    x = (u.T if transposed else u) / max(norm, float(np_t(h["eps"])))
    for _ in range(h["ns_steps"]):
        gram = torch.mm(x, x.T)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T.contiguous() if transposed else x


class Muon(torch.optim.Optimizer):  # type: ignore[misc,unused-ignore]
    """torch.optim.Muon, fused: ``Muon(params, lr=1e-3, weight_decay=0.1, momentum=0.95,
    nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5,
    adjust_lr_fn=None, *, ns_dtype=None)``: torch's arguments, defaults, checks and messages, param
    groups and state (``'momentum_buffer'``, made at the first step; no step counter), so state
    dicts load both ways. Only 2-D float32/float64 CPU parameters (others: torch's ValueError).

    A step per param group and dtype: one native momentum call, the Newton-Schulz products with
    torch's matmul in the parameter's dtype (``ns_dtype=torch.bfloat16``: torch 2.13's bfloat16
    iteration, then bitwise torch.optim.Muon's step), one native apply call per distinct adjusted
    lr (see fusedopt._muon). ``ns_dtype`` is an option of the optimizer, not of its param groups
    (not in the state dict)."""

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True,
                 ns_coefficients: Tuple[float, float, float] = reference.MUON_NS_COEFFICIENTS,
                 eps: float = reference.MUON_EPS, ns_steps: int = reference.MUON_NS_STEPS,
                 adjust_lr_fn: Optional[str] = None, *, ns_dtype: Optional[torch.dtype] = None) -> None:  # fmt: skip
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
            lr = float(lr.item())
        _muon.check_hypers(dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
        if ns_dtype not in (None, torch.float32, torch.float64, torch.bfloat16):
            raise ValueError(f"ns_dtype must be None (the parameter's dtype) or torch.bfloat16, got {ns_dtype}")
        self.ns_dtype = None if ns_dtype in (torch.float32, torch.float64) else ns_dtype
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(_muon.not_2d_message(p.size()))
        #: native calls made by the last step (see the class docstring)
        self.last_native_calls = 0

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.ndim != 2 and hasattr(self, "last_native_calls"):  # (the constructor checks its own)
                self.param_groups.pop()
                raise ValueError(_muon.not_2d_message(p.size()))

    def _newton_schulz(self, u: torch.Tensor, h: Dict[str, Any]) -> torch.Tensor:
        return newton_schulz_torch(u, h, self.ns_dtype)

    @torch.no_grad()  # type: ignore[misc,untyped-decorator,unused-ignore]
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step of every parameter with a ``.grad`` (see the class docstring). Every group's
        hyperparameters and every tensor are checked before anything is written."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = []
        new_bufs: Dict[torch.Tensor, torch.Tensor] = {}
        for group in self.param_groups:
            lr = group["lr"]
            h = _muon.check_hypers({**group, "lr": float(lr.item()) if isinstance(lr, torch.Tensor) else lr})
            buckets: Dict[torch.dtype, List[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if p.grad.ndim != 2:
                    raise ValueError(_muon.GRAD_NOT_2D)
                buckets.setdefault(p.dtype, []).append(p)
            for ps in buckets.values():
                bufs = []
                for p in ps:
                    b = self.state[p].get("momentum_buffer")
                    if b is None:
                        b = new_bufs[p] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                    bufs.append(b)
                gs = [p.grad for p in ps]
                _core.check([("params", ps, True), ("grads", gs, False), ("momentum_buffers", bufs, True)])
                calls.append((h, ps, gs, bufs))
        n = 0
        for h, ps, gs, bufs in calls:
            n += _muon.step_lists(ps, gs, bufs, [torch.empty_like(p, memory_format=torch.contiguous_format)
                                                 for p in ps], h, None, self._newton_schulz)  # fmt: skip
        for p, b in new_bufs.items():
            self.state[p]["momentum_buffer"] = b
        self.last_native_calls = n
        return loss


from . import _muon  # noqa: E402

__all__ += ["Muon"]


# -- Adafactor -------------------------------------------------------------------------------------
class Adafactor(torch.optim.Optimizer):  # type: ignore[misc,unused-ignore]
    """torch.optim.Adafactor, fused: ``Adafactor(params, lr=1e-2, beta2_decay=-0.8,
    eps=(None, 1e-3), d=1.0, weight_decay=0.0, *, foreach=None, maximize=False)``: torch's
    arguments, defaults, checks and messages, param groups and state (``step`` a 0-dim float
    tensor; ``row_var [..., R, 1]`` and ``col_var [..., 1, C]`` for parameters of two or more dims,
    ``variance`` otherwise, made at the first step), so state dicts load both ways. float32/float64
    CPU tensors (low precision is refused with a TypeError naming the parameter).

    A step is one native call per param group, dtype and step count (usually one per group): the
    reductions and the update of every parameter in one parallel region, deterministic for every
    thread count (fusedopt._adafactor). torch's loop arithmetic; the norms/means are float64 sums in
    a fixed order, so results agree with torch.optim.Adafactor to a few ulp. ``foreach`` is
    accepted and ignored. Every tensor is checked before anything (state included) is written."""

    def __init__(self, params: Any, lr: Any = 1e-2, beta2_decay: float = -0.8,
                 eps: Tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False) -> None:  # fmt: skip
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        _adafactor.check_hypers(dict(lr=float(lr.item()) if isinstance(lr, torch.Tensor) else lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                     foreach=foreach, maximize=maximize))  # fmt: skip
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize)  # fmt: skip
        super().__init__(params, defaults)
        #: native calls made by the last step
        self.last_native_calls = 0

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            for p in group["params"]:
                st = self.state.get(p, {})
                if len(st) != 0 and not torch.is_tensor(st["step"]):
                    st["step"] = torch.tensor(float(st["step"]), dtype=_scalar_dtype())

    @torch.no_grad()  # type: ignore[misc,untyped-decorator,unused-ignore]
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step of every parameter with a ``.grad`` (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        calls = []
        new_states: Dict[torch.Tensor, Dict[str, torch.Tensor]] = {}
        scalar_dtype = _scalar_dtype()
        for group in self.param_groups:
            lr = group["lr"]
            h = _adafactor.check_hypers({**group, "lr": float(lr.item()) if isinstance(lr, torch.Tensor) else lr})
            eps1 = h["eps"][0]
            buckets: Dict[Tuple[torch.dtype, float], List[torch.Tensor]] = {}
            sts: Dict[torch.Tensor, Dict[str, torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if torch.is_complex(p):
                    raise RuntimeError("Adafactor does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                if p.dtype not in (torch.float32, torch.float64):
                    raise TypeError(f"Adafactor steps float32 or float64 parameters only (no bfloat16/float16 "
                                    f"storage), got a {p.dtype} parameter")  # fmt: skip
                if eps1 is None:  # torch: the first param with a gradient fixes eps1 for the group
                    eps1 = float(torch.finfo(p.dtype).eps)
                st = self.state[p] if len(self.state.get(p, {})) else None
                if st is None:
                    g = p.grad
                    st = new_states[p] = {"step": torch.tensor(0.0, dtype=scalar_dtype)}
                    for k, shape in _adafactor.state_shapes(tuple(g.shape)).items():
                        st[k] = g.new_zeros(shape) if k != "variance" else \
                            torch.zeros_like(g, memory_format=torch.preserve_format)  # fmt: skip
                sts[p] = st
                t = float((st["step"] + 1).item())  # torch: step_t += 1 in its dtype, then .item()
                buckets.setdefault((p.dtype, t), []).append(p)
            for (_, t), ps in buckets.items():
                ss = [sts[p] for p in ps]
                lists = (ps, [p.grad for p in ps], [s.get("row_var") for s in ss], [s.get("col_var") for s in ss],
                         [s.get("variance") for s in ss])  # fmt: skip
                calls.append((lists, h, eps1, t, [s["step"] for s in ss]))
        if len(calls) > 1:  # (one call checks everything itself before writing anything)
            written: List[torch.Tensor] = []
            read: List[torch.Tensor] = []
            for lists, h, eps1, t, counters in calls:
                _adafactor.call(*lists, h, eps1, t, None, counters, check_only=True)
                written += lists[0] + [x for lst in lists[2:] for x in lst if x is not None]
                read += lists[1]
            _core.check_overlap(written, read)
        for lists, h, eps1, t, counters in calls:
            _adafactor.call(*lists, h, eps1, t, None, counters)
        for p, st in new_states.items():
            self.state[p].update(st)
        self.last_native_calls = len(calls)
        return loss


from . import _adafactor  # noqa: E402

__all__ += ["Adafactor"]
