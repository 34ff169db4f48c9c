"""Checks of hyperparameters and parameter arrays, with messages that name the argument.

Everything here runs before any array is touched, so a rejected call modifies nothing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _lowp
from ._scalars import _STEP_LIMIT

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def real(name: str, value: Any) -> float:
    """A finite real number (bools and complex numbers are refused)."""
    if type(value) is float:  # fast path: the common case costs one type check
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value
        raise ValueError(f"{name} must be finite, got {value}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond the float range (e.g. 10**400)
        raise ValueError(f"{name} must be finite, got a number beyond the float range") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def non_negative(name: str, value: Any) -> float:
    x = real(name, value)
    if x < 0.0:
        raise ValueError(f"{name} must be >= 0, got {x}")
    return x


def positive(name: str, value: Any) -> float:
    x = real(name, value)
    if x <= 0.0:
        raise ValueError(f"{name} must be > 0, got {x}")
    return x


def unit_interval(name: str, value: Any) -> float:
    """0 <= value < 1 (betas, alpha, momentum decay rates)."""
    x = real(name, value)
    if not 0.0 <= x < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {x}")
    return x


def unit_interval_closed(name: str, value: Any) -> float:
    """0 <= value <= 1 (dampening)."""
    x = real(name, value)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


def flag(name: str, value: Any) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def step_count(name: str, value: Any) -> int:
    """The step number t after incrementing: an int >= 1."""
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    t = int(value)
    if t < 1:
        raise ValueError(f"{name} must be >= 1 (the count after incrementing; the first step is 1), got {t}")
    return t


#: the largest step count a state may hold: the next step's number, ``step + 1``, must still
#: convert to a float (fusedopt._scalars refuses numbers >= 2**1023)
MAX_STEP = _STEP_LIMIT - 2


def stored_step(name: str, value: Any, *, integers_only: bool = False) -> int:
    """A step count kept in an optimizer's or EMA's state (the number of steps taken so far): an
    integer ``0 <= step <= MAX_STEP`` (2**1023 - 2), so that one more step still has a usable
    number. A Python int, a NumPy integer, or (unless ``integers_only``) an integer-valued float
    or a one-element array of one (torch keeps ``step`` as a float tensor) is accepted and
    returned as an int; anything else raises (TypeError for a non-number, ValueError for a number
    out of range or fractional)."""
    if type(value) is int and 0 <= value <= MAX_STEP:  # fast path
        return value
    if isinstance(value, np.ndarray) and value.size == 1 and not integers_only:
        value = value.reshape(()).item()
    wanted = numbers.Integral if integers_only else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, wanted):
        raise TypeError(f"{name} must be an int (a step count), got {type(value).__name__}")
    shown = _short(int(value)) if isinstance(value, numbers.Integral) else repr(value)
    if not isinstance(value, numbers.Integral):
        x = float(value)
        if not x.is_integer():
            raise ValueError(f"{name} must be a whole number of steps, got {shown}")
        value = int(x)
    t = int(value)
    if t < 0:
        raise ValueError(f"{name} must be >= 0, got {shown}")
    if t > MAX_STEP:
        raise ValueError(f"{name} must be <= 2**1023 - 2 (the next step's number must be a float), got {shown}")
    return t


def steppable(name: str, value: Any) -> int:
    """A stored step count (:func:`stored_step`) from which one more step can be taken: below
    MAX_STEP, so that the count it leaves behind is still a valid stored count."""
    t = stored_step(name, value)
    if t >= MAX_STEP:
        raise ValueError(f"{name} is 2**1023 - 2, the largest step count: no further step can be taken")
    return t


def _short(n: int) -> str:
    """An int for a message: digits when short, else its size."""
    s = str(n) if n.bit_length() < 200 else ""
    return s or f"an int of {n.bit_length()} bits"


def param_array(name: str, a: Any, lowp: bool = False) -> np.ndarray:
    """An array fusedopt can update in place (checked at optimizer construction); ``lowp``: float16
    and bfloat16 (``ml_dtypes.bfloat16``) arrays too."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if lowp and a.dtype not in _FLOAT_DTYPES:
        if _lowp.numpy_kind(a.dtype) is None:
            raise TypeError(f"{name} has dtype {a.dtype}; fusedopt's optimizers update float32, float64, float16 and "
                            "bfloat16 arrays (native byte order; NumPy's bfloat16 is ml_dtypes.bfloat16, a uint16 "
                            "array is not one)")  # fmt: skip
    elif a.dtype not in _FLOAT_DTYPES or not a.dtype.isnative:
        raise TypeError(f"{name} has dtype {a.dtype}; fusedopt updates float32 and float64 arrays (native byte order)")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; fusedopt updates arrays in place and never copies")
    if not a.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place")
    return a


Extent = Tuple[int, int, Any, bool]  # (first byte, end byte, label, written)


def extent(a: np.ndarray, label: Any, written: bool) -> Optional[Extent]:
    """The byte range of an array's data (None when it has no elements)."""
    if not a.size:
        return None
    start = a.__array_interface__["data"][0]
    return (start, start + a.nbytes, label, written)


def find_overlap(extents: List[Extent]) -> Optional[Tuple[Any, Any]]:
    """Labels ``(earlier, later)`` of two extents that overlap while at least one is written, or None.

    Read-only extents may overlap each other. Sorted by start, a written extent overlaps an earlier
    one iff the largest end before it exceeds its start, and a later one iff the next one starts
    before its end (the same sweep as ``check_no_overlap`` in cpp/bindings/arrays.cpp).
    """
    xs = sorted(extents, key=lambda e: e[0])
    max_end, owner = 0, None
    for i, (start, end, label, written) in enumerate(xs):
        if owner is not None and start < max_end and (written or owner[3]):
            return owner[2], label
        if written and i + 1 < len(xs) and xs[i + 1][0] < end:
            return label, xs[i + 1][2]
        if owner is None or end > max_end:
            max_end, owner = end, xs[i]
    return None


def no_overlap(name: str, arrays: Sequence[np.ndarray]) -> None:
    """No two arrays share memory (a parameter listed twice, or two overlapping views)."""
    found = find_overlap([e for i, a in enumerate(arrays) if (e := extent(a, i, True)) is not None])
    if found is not None:
        i, j = sorted(found)
        what = "is the same array as" if arrays[i] is arrays[j] else "shares memory with"
        raise ValueError(f"{name}[{j}] {what} {name}[{i}]; each parameter may appear only once")


def grad_array(name: str, g: Any, param: np.ndarray, pname: str) -> None:
    """Python-side twin of the C++ checks, used when one step needs several native calls."""
    if not isinstance(g, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(g).__name__}")
    if param.dtype.itemsize == 2 and g.dtype == np.float32:
        pass  # float16/bfloat16 parameters take float32 gradients too
    elif g.dtype != param.dtype or not g.dtype.isnative:
        if param.dtype.itemsize == 2:
            raise TypeError(f"{name} has dtype {g.dtype} but {pname} has {param.dtype}; gradients must have the "
                            "parameter's dtype or float32")  # fmt: skip
        raise TypeError(f"{name} has dtype {g.dtype} but {pname} has {param.dtype}; they must match exactly")
    if g.shape != param.shape:
        raise ValueError(f"{name} has shape {g.shape} but {pname} has shape {param.shape}")
    if not g.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; fusedopt never copies")
    if not g.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype")

