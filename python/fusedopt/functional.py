"""In-place optimizer steps: one function per algorithm, every hyperparameter explicit.

Each function updates ``params`` and the state arrays **in place** and returns ``None``. Every
array argument is either one ``numpy.ndarray`` or a list/tuple of them (one entry per tensor); a
list is updated by **one** native call with one parallel region over all its elements. Arrays must
be C-contiguous, aligned and writeable where written, with their parameter's shape; no written
array may share memory with any other array of the call. Anything else raises
``TypeError``/``ValueError`` naming the argument, before any array is touched. Nothing is ever
converted or copied.

dtypes (one dtype per list): parameters float32, float64, float16 or bfloat16
(``ml_dtypes.bfloat16``; a uint16 array is not a bfloat16 one). float32/float64 parameters take
gradients and states of their own dtype (float32 parameters may also have bfloat16 states);
float16/bfloat16 parameters take gradients of their dtype or float32 and states of their dtype or
float32. The arithmetic is float32 (float64 for float64 parameters); low-precision buffers are
loaded exactly and stored with round-to-nearest-even (:func:`fusedopt.reference.lowp_step` is
the bitwise specification).

Low-precision keywords (every algorithm):

* ``masters``: None, or one array per parameter: float32 arrays are fp32 **master weights** (the
  update is applied to the master, the parameter is written as its round-to-nearest-even);
  uint16 arrays are the low 16 bits of the masters of bfloat16 parameters (**split** masters: the
  bfloat16 parameter and the uint16 trail together are the float32 master,
  :func:`fusedopt.reference.split_decode`). A new master is the parameter's exact upcast (a
  trail of zeros). Not for float32/float64 parameters.
* ``stochastic_rounding=True`` (bfloat16 parameters without masters): the parameter is written
  with stochastic rounding, 16 random bits per element from Philox4x32-10 keyed by ``seed`` (an
  int in ``[0, 2**64)``) with counter (element position in its parameter's memory, ``sr_step``)
  (:func:`fusedopt.reference.sr_bits`): bitwise the same for every thread count and ISA. Two
  parameters of the same shape stepped with the same (seed, sr_step) get the same random bits.
  ``sr_step`` defaults to ``step`` for algorithms with a step argument and is required otherwise.
* ``absmax`` (8-bit states, issue 14): None, or a list with one item per state list of the
  algorithm (None where that state list is None), each one float32 array per parameter of
  ``ceil(size / 256)`` elements. The state arrays are then uint8 **codes** of block-quantized
  states (blocks of 256 elements, one absmax each; bitsandbytes' signed code book for states of
  either sign, its unsigned one for never-negative states such as Adam's ``exp_avg_sq``): each
  step decodes them, updates in float32 and re-quantizes to the nearest code, in the same pass
  (:func:`fusedopt.reference.q8_encode` / :func:`~fusedopt.reference.q8_decode` are the spec).
  Any parameter layout above (float32, bfloat16/float16 with or without masters or stochastic
  rounding) takes 8-bit states.

The exact arithmetic (operation order and rounding) of each function is the same-named function in
:mod:`fusedopt.reference`; the kernels match it bitwise on every ISA and for any thread count.
``threads=None`` uses :func:`fusedopt.get_num_threads` threads, or 1 for small calls.

Gradient pre-processing, fused into the same pass (every algorithm; see :func:`sgd` for the
keyword arguments). Each gradient element is transformed as it is loaded, before ``maximize`` and
weight decay; **the gradient arrays are never written** (unlike torch's fused kernels, which store
the unscaled gradient back; here gradients stay read-only inputs)::

    g = g / grad_scale                       # AMP unscaling (grad_scale=None: skipped)
    g = g * c,  c = min(1, max_grad_norm / (norm + 1e-6))     # clip by global norm
    g = clamp(g, -clip_value, clip_value)    # clip by value (NaN stays NaN)

``norm`` is the global L2 norm of the *unscaled* gradients of the call, ``sqrt(sum g^2) /
grad_scale``, with the sum of squares computed in float64 by a deterministic blocked pass
(:func:`global_norm`: bitwise the same for every thread count and ISA). ``found_inf`` (nonzero)
and ``skip_if_nonfinite`` (with a NaN/inf norm) skip the step: nothing is written, but every
argument is checked first as for a step (bad input raises even when the step is skipped).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, _lowp, _scalars, _threads
from . import _validation as check

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

__all__ = [
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "radam",
    "clip_coef",
    "found_inf_set",
    "global_norm",
    "lamb",
    "lars",
    "lion",
    "momentum",
    "muon",
    "nadam",
    "nadam_mu_product",
    "rmsprop",
    "sgd",
    "trace",
]


def _as_list(name: str, x: ArrayOrList) -> Sequence[np.ndarray]:
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, (list, tuple)):
        return x
    raise TypeError(f"{name} must be a numpy.ndarray or a list/tuple of them, got {type(x).__name__}")


def _n_elements(params: Sequence[np.ndarray]) -> int:
    """Total elements of a call (for the thread policy); torch tensors count their ``numel()``,
    other non-arrays 0 (the core rejects them)."""
    try:
        return sum([p.size for p in params])
    except (AttributeError, TypeError):  # (a torch tensor's .size is a method)
        return sum(_size(p) for p in params)


def _size(a: Any) -> int:
    size = getattr(a, "size", 0)
    if isinstance(size, int):
        return size
    numel = getattr(a, "numel", None)
    return int(numel()) if callable(numel) else 0


def _scalar(name: str, value: Any) -> float:
    """A Python real, or a NumPy scalar / one-element array (e.g. an AMP scale kept in an array)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{name} must be a scalar or a one-element array, got shape {value.shape}")
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def found_inf_set(found_inf: Any) -> bool:
    """Whether an AMP ``found_inf`` flag says to skip the step: ``None``/``False``/``0`` do not,
    any other value does (``True``, ``1.0``, NaN, a nonzero one-element array)."""
    if found_inf is None or found_inf is False:
        return False
    if found_inf is True:
        return True
    return _scalar("found_inf", found_inf) != 0.0


def clip_coef(norm: float, max_norm: float) -> float:
    """The clip-by-global-norm factor ``min(1, max_norm / (norm + 1e-6))`` (torch's
    ``clip_grad_norm_`` formula, float64). NaN for a NaN norm and 0 for an infinite one, as torch."""
    return _scalars.clip_coef(norm, max_norm)


def _upcast_lowp(xs: Sequence[Any]) -> Sequence[Any]:
    """float16/bfloat16 arrays (NumPy or torch) as float32 copies (exact), others as they are: the
    norm of low-precision gradients is the norm of their exact float32 values."""
    out = None
    for i, a in enumerate(xs):
        dt = getattr(a, "dtype", None)
        lowp = False
        if isinstance(a, np.ndarray):
            lowp = dt == np.float16 or _lowp.is_bf16(a.dtype)
        elif str(dt) in ("torch.bfloat16", "torch.float16"):
            lowp = True
        if lowp:
            if out is None:
                out = list(xs)
            out[i] = a.astype(np.float32) if isinstance(a, np.ndarray) else a.float()
    return xs if out is None else out


def _sum_of_squares(xs: Sequence[np.ndarray], threads: Optional[int]) -> float:
    t = _threads.resolve(threads, _n_elements(xs), "sgd")  # a read-only pass: SGD's crossover
    xs = _upcast_lowp(xs)
    if len(xs) > 1:
        d0 = getattr(xs[0], "dtype", None)
        if any(getattr(a, "dtype", None) != d0 for a in xs):
            f32 = [a for a in xs if getattr(a, "dtype", None) == np.float32]
            f64 = [a for a in xs if getattr(a, "dtype", None) == np.float64]
            if len(f32) + len(f64) == len(xs):  # float32 part first, then float64: a fixed order
                return _core.sum_of_squares(f32, t) + _core.sum_of_squares(f64, t)
    return _core.sum_of_squares(xs, t)  # (raises naming the offending array otherwise)


def global_norm(arrays: ArrayOrList, *, threads: Optional[int] = None) -> float:
    r"""The L2 norm of all elements of all arrays, :math:`\sqrt{\sum_k \sum_i x_{k,i}^2}`, as a float.

    Deterministic: the sum of squares is taken in float64 over fixed 2048-element blocks (8
    interleaved lanes each, combined by a fixed tree) and the block sums are added by a fixed
    pairwise tree, so the result is bitwise identical for every thread count, ISA and grouping of
    work; :func:`fusedopt.reference.global_norm` is its bitwise specification. Arrays of float32
    and float64 may be mixed (their two sums are added float32 first). float32 squares are exact in
    float64; a float64 sum of squares overflows to inf above about 1e308 (norm > ~1e154).
    """
    return math.sqrt(_sum_of_squares(_as_list("arrays", arrays), threads))


def _check_grad_options(
    grad_scale: Any, clip_value: Any, max_grad_norm: Any, clip_coef: Any, skip_if_nonfinite: Any
) -> "tuple[float, float, Optional[float], float, bool]":
    """Validated (grad_scale, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite); identities
    (1, inf, None, 1) for the options not given."""
    scale = 1.0
    if grad_scale is not None:
        scale = _scalar("grad_scale", grad_scale)
        if not (scale > 0.0 and math.isfinite(scale)):
            raise ValueError(f"grad_scale must be finite and > 0, got {scale}")
    value = math.inf
    if clip_value is not None:
        value = _scalar("clip_value", clip_value)
        if not value >= 0.0:
            raise ValueError(f"clip_value must be >= 0, got {value}")
    max_norm = None
    if max_grad_norm is not None:
        max_norm = _scalar("max_grad_norm", max_grad_norm)
        if not max_norm >= 0.0:
            raise ValueError(f"max_grad_norm must be >= 0 (math.inf: report the norm, no clipping), got {max_norm}")
    coef = 1.0
    if clip_coef is not None:
        if max_norm is not None:
            raise ValueError("give clip_coef or max_grad_norm, not both")
        coef = _scalar("clip_coef", clip_coef)
        if not (0.0 <= coef < math.inf or math.isnan(coef)):  # NaN: what a NaN norm gives (as torch)
            raise ValueError(f"clip_coef must be finite and >= 0, got {coef}")
    return scale, value, max_norm, coef, check.flag("skip_if_nonfinite", skip_if_nonfinite)


def _no_grad_options(grad_scale: Any, found_inf: Any, clip_value: Any, max_grad_norm: Any, clip_coef: Any,
                     skip_if_nonfinite: Any) -> bool:  # fmt: skip
    """Whether a step has none of the gradient options (the common case: no transform, no norm)."""
    return grad_scale is None and found_inf is None and clip_value is None and max_grad_norm is None \
        and clip_coef is None and skip_if_nonfinite is False  # fmt: skip


#: one list of a native call: (name, list of arrays or None when absent, written); params first
Role = Tuple[str, Any, bool]


def _grad_transform(
    threads: Optional[int],
    algorithm: str,
    roles: Sequence[Role],
    grad_scale: Any,
    found_inf: Any,
    clip_value: Any,
    max_grad_norm: Any,
    clip_coef: Any,
    skip_if_nonfinite: Any,
    lowp: Sequence[Any] = (),
) -> "tuple[_scalars.GradScalars, Optional[float], bool]":
    """(gradient scalars, the global norm if computed, whether to skip the step). Validates the
    options; and, when the step is skipped (``found_inf``) or the gradients are read before the
    step (the norm), first every argument as the native call would (:func:`_check_arguments`),
    so that bad input raises, naming it, also when nothing is written. ``roles[1]`` are the
    gradients."""
    scale, value, max_norm, coef, skip_nonfinite = _check_grad_options(
        grad_scale, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite
    )
    if found_inf_set(found_inf):
        _check_arguments(threads, algorithm, roles, lowp)
        return _scalars.NO_GRAD_TRANSFORM, None, True
    norm = None
    if max_norm is not None or skip_nonfinite:
        _check_arguments(threads, algorithm, roles, lowp)
        norm = math.sqrt(_sum_of_squares(roles[1][1], threads)) / scale
        if skip_nonfinite and not math.isfinite(norm):
            return _scalars.NO_GRAD_TRANSFORM, norm, True
        if max_norm is not None:
            coef = _scalars.clip_coef(norm, max_norm)
    return _scalars.GradScalars(scale, coef, value), norm, False


def _check_arguments(threads: Optional[int], algorithm: str, roles: Sequence[Role], lowp: Sequence[Any] = ()) -> None:
    """Every check of the native call, without the call (``_core.check``: the same checks and
    messages, low-precision storage and ``lowp``'s masters included), and the thread count."""
    _threads.resolve(threads, _n_elements(roles[0][1]), algorithm)
    if lowp:
        _core.check([*roles, ("masters", lowp[2], True)], lowp=True, stochastic_rounding=lowp[3], absmax=lowp[6])
    else:
        _core.check(roles, lowp=True)


def _lowp_args(masters: Any, stochastic_rounding: Any, seed: Any, sr_step: Any, step: Optional[int],
               algorithm: str, absmax: Any = None) -> "tuple[Any, ...]":  # fmt: skip
    """The trailing arguments of a step binding for the low-precision keywords (validated):
    ``(plan, counters, masters, stochastic_rounding, seed, sr_step, absmax)``."""
    m = None if masters is None else _as_list("masters", masters)
    if absmax is not None:
        if not isinstance(absmax, (list, tuple)):
            raise TypeError(f"absmax must be a list/tuple with one item per state list, got {type(absmax).__name__}")
        absmax = [None if a is None else _as_list(f"absmax[{i}]", a) for i, a in enumerate(absmax)]
    sr = check.flag("stochastic_rounding", stochastic_rounding)
    seed = _lowp.check_seed("seed", seed)
    if sr_step is None:
        if step is None and sr:
            raise ValueError(f"sr_step is required with stochastic_rounding=True: {algorithm} has no step argument "
                             "(give the step count, e.g. 1 for the first step)")  # fmt: skip
        sr_step = 0 if step is None else step
    else:
        sr_step = _lowp.check_seed("sr_step", sr_step)
    return (None, None, m, sr, seed, sr_step, absmax)


# -- the algorithms: one generated function per description (fusedopt.algorithms) -------------
# Each is written by fusedopt._engine.make_functional from its description: the signature (state
# arrays positional in the native call's order, hyperparameters keyword-only with their
# defaults), the checks, the scalars and the one native call. ``fn.__source__`` shows the code.
from . import _engine  # noqa: E402  (needs the helpers above)
from .algorithms import ALGORITHMS as _ALGORITHMS  # noqa: E402

sgd: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["sgd"])
trace: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["trace"])
momentum: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["momentum"])
rmsprop: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["rmsprop"])
adam: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["adam"])
adamw: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["adamw"])
radam: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["radam"])
adagrad: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["adagrad"])
lamb: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["lamb"])
lars: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["lars"])
lion: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["lion"])
adamax: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["adamax"])
nadam: Callable[..., Optional[float]] = _engine.make_functional(_ALGORITHMS["nadam"])
#: NAdam's ``mu_product`` after step ``t`` from the one before (1.0 before the first step), rounded as
#: torch.optim.NAdam's float32 state: ``mu_product = nadam_mu_product(mu_product, step=t, beta1=...,
#: momentum_decay=...)`` before each :func:`nadam` call (see :func:`fusedopt._scalars.nadam_mu_product`)
nadam_mu_product = _scalars.nadam_mu_product

# Muon (torch.optim.Muon): element-wise kernel phases around Newton-Schulz matrix products, not one
# element-wise pass, so written by hand (fusedopt._muon), not generated from a description.
# Adafactor (torch.optim.Adafactor): states of other shapes than the params (row/column factors),
# so written by hand too (fusedopt._adafactor); one native call.
from ._adafactor import adafactor  # noqa: E402
from ._muon import muon  # noqa: E402
