"""Low-precision options of the optimizer classes and functional calls (issue 13): validation,
the dtypes they resolve to, and the optional ``ml_dtypes`` import.

The options (same names on every optimizer class of :mod:`fusedopt.optimizers` and
:mod:`fusedopt.torch`):

* ``master_weights``: ``None`` (no master), ``"fp32"`` (a float32 copy of each bfloat16/float16
  parameter, state key :data:`MASTER_KEY`) or ``"split"`` (bfloat16 parameters only: the low 16
  bits of the float32 master as a uint16 state, key :data:`TRAIL_KEY`);
* ``stochastic_rounding`` (bool) with ``seed`` (None: drawn at construction; else an int in
  ``[0, 2**64)``);
* ``state_dtype``: ``None``, ``"float32"``, ``"bfloat16"`` or ``"8bit"`` (issue 14: block-quantized
  8-bit states, :mod:`fusedopt.reference`'s Q8 section; parameters with fewer than
  ``min_8bit_size`` elements keep float32 states).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np

#: state key of the float32 master of a low-precision parameter (master_weights="fp32")
MASTER_KEY = "master_param"
#: state key of the uint16 trail of a bfloat16 parameter (master_weights="split")
TRAIL_KEY = "master_trail"
MASTER_KEYS = (MASTER_KEY, TRAIL_KEY)

MASTER_WEIGHTS = (None, "fp32", "split")
STATE_DTYPES = (None, "float32", "bfloat16", "8bit")
#: parameters below this many elements keep float32 states under state_dtype="8bit" (as bitsandbytes
#: and torchao)
MIN_8BIT_SIZE = 4096
#: the state-dict keys of an 8-bit state ``key`` (e.g. "exp_avg"): ``key`` holds the uint8 codes,
#: ``key + ABSMAX_SUFFIX`` the float32 absmax per block, ``key + QMAP_SUFFIX`` the code book
ABSMAX_SUFFIX = "_absmax"
QMAP_SUFFIX = "_qmap"
SEED_LIMIT = 1 << 64

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def bf16_dtype(need: str = "bfloat16 arrays") -> np.dtype:
    """NumPy's bfloat16 dtype (``ml_dtypes.bfloat16``); ImportError saying what needs it when
    ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(
            f"{need}: NumPy's bfloat16 dtype comes from the ml_dtypes package, which is not installed: "
            "`pip install fusedopt[bf16]` (or `pip install ml_dtypes`)"
        ) from exc
    out: np.dtype = np.dtype(ml_dtypes.bfloat16)
    return out


def is_bf16(dtype: np.dtype) -> bool:
    """Whether a NumPy dtype is ml_dtypes' bfloat16 (checked without importing ml_dtypes)."""
    return (
        dtype.kind == "V"
        and dtype.itemsize == 2
        and getattr(dtype.type, "__name__", "") == "bfloat16"
        and str(getattr(dtype.type, "__module__", "")).startswith("ml_dtypes")
    )


def numpy_kind(dtype: np.dtype) -> Optional[str]:
    """'float32', 'float64', 'float16' or 'bfloat16' for a dtype the steps take as parameters
    (native byte order), else None."""
    if dtype == _F32 and dtype.isnative:
        return "float32"
    if dtype == _F64 and dtype.isnative:
        return "float64"
    if dtype == _F16 and dtype.isnative:
        return "float16"
    if is_bf16(dtype):
        return "bfloat16"
    return None


def check_seed(name: str, value: Any) -> int:
    """An int in ``[0, 2**64)`` (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}")
    v = int(value)
    if not 0 <= v < SEED_LIMIT:
        raise ValueError(f"{name} must be an int in [0, 2**64), got {v}")
    return v


def check_options(master_weights: Any, stochastic_rounding: Any, seed: Any,
                  state_dtype: Any) -> Tuple[Optional[str], bool, Optional[int], Optional[str]]:  # fmt: skip
    """The validated options (seed None stays None: the caller draws it). TypeError/ValueError
    naming the argument."""
    if not (master_weights is None or isinstance(master_weights, str)):
        raise TypeError(f"master_weights must be None, 'fp32' or 'split', got {type(master_weights).__name__}")
    if master_weights not in MASTER_WEIGHTS:
        raise ValueError(f"master_weights must be None, 'fp32' or 'split', got {master_weights!r}")
    if stochastic_rounding is not True and stochastic_rounding is not False:
        if isinstance(stochastic_rounding, np.bool_):
            stochastic_rounding = bool(stochastic_rounding)
        else:
            raise TypeError(f"stochastic_rounding must be a bool, got {type(stochastic_rounding).__name__}")
    if stochastic_rounding and master_weights is not None:
        raise ValueError(
            f"stochastic_rounding=True and master_weights={master_weights!r} exclude each other: stochastic "
            "rounding writes parameters that have no master (give one of the two)"
        )
    if seed is not None:
        seed = check_seed("seed", seed)
    if not (state_dtype is None or isinstance(state_dtype, str)):
        raise TypeError(f"state_dtype must be None, 'float32', 'bfloat16' or '8bit', got {type(state_dtype).__name__}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None, 'float32', 'bfloat16' or '8bit', got {state_dtype!r}")
    return master_weights, bool(stochastic_rounding), seed, state_dtype


def check_param_kind(name: str, kind: str, master_weights: Optional[str], stochastic_rounding: bool,
                     state_dtype: Optional[str]) -> None:  # fmt: skip
    """Refuse a parameter of ``kind`` that the options cannot step (ValueError naming the option)."""
    if kind == "float16":
        if master_weights == "split":
            raise ValueError(
                f"master_weights='split' is for bfloat16 parameters only; {name} is float16 (use master_weights='fp32')"
            )
        if stochastic_rounding:
            raise ValueError(f"stochastic_rounding=True is for bfloat16 parameters only; {name} is float16")
        if state_dtype == "bfloat16":
            raise ValueError(f"state_dtype='bfloat16' is not available for float16 parameters ({name}): "
                             "use None or 'float32'")  # fmt: skip


def state_kind(kind: str, master_weights: Optional[str], state_dtype: Optional[str]) -> str:
    """The dtype name of the state arrays of a parameter of ``kind``: ``state_dtype`` when given
    (float64 parameters always keep float64 states); else float32 for a low-precision parameter
    with a master, else the parameter's own dtype (torch.optim's behaviour)."""
    if kind == "float64":
        return "float64"
    if state_dtype is not None:
        return state_dtype
    if kind in ("bfloat16", "float16") and master_weights is not None:
        return "float32"
    return kind


def master_kind(kind: str, master_weights: Optional[str]) -> Optional[str]:
    """The master of a parameter of ``kind``: 'fp32', 'split' or None (float32/float64 params
    never have one)."""
    if kind in ("bfloat16", "float16"):
        return master_weights
    return None


class FixedOption:
    """A low-precision option of an optimizer (``master_weights``, ``stochastic_rounding``,
    ``state_dtype``): set once by the constructor (in the instance's ``__dict__``, which pickling
    and copies carry), read-only afterwards. Changing it on a live optimizer would leave state made
    for the old option (e.g. an fp32 master beside a split trail)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is fixed when the optimizer is made (its state was made for it): "
                             "make a new optimizer with the option and load this one's state_dict() into it")


def check_min_8bit_size(value: Any) -> int:
    """``min_8bit_size``: an int >= 0 (bools refused); TypeError/ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"min_8bit_size must be an int >= 0, got {type(value).__name__}")
    v = int(value)
    if v < 0:
        raise ValueError(f"min_8bit_size must be an int >= 0, got {v}")
    return v


def check_8bit_hypers(algorithm: str, hypers: Any, state_dtype: Optional[str]) -> None:
    """Refuse what 8-bit states cannot do (ValueError): centered RMSprop, whose ``square_avg -
    grad_avg**2`` goes negative (a NaN root) once both are quantized (bitsandbytes refuses it too)."""
    if state_dtype == "8bit" and algorithm == "rmsprop" and hypers.get("centered"):
        raise ValueError("centered=True is not available with state_dtype='8bit': once square_avg and grad_avg "
                         "are quantized, square_avg - grad_avg**2 goes negative and the root is NaN")
