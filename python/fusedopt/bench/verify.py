"""The correctness guard: before anything is timed, each contender makes one step on the live
arrays and is compared with :mod:`fusedopt.reference` applied to a snapshot (fusedopt: bitwise;
NumPy: within 2 ulp; torch: within 1e-5 relative; DeepSpeed: within 3e-6 of each array's largest
magnitude, see :data:`NORM_TOLERANCE`). A contender that fails is reported as WRONG and never timed."""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from .runner import Runner
from .specs import STEP, Spec

__all__ = ["max_ulp", "mismatch", "verify"]

#: relative tolerance of the "rel" contenders (torch): |got - want| / |want| per element, |want|
#: floored at REL_FLOOR max|want| (cancellation near zero)
REL_TOLERANCE = 1e-5
#: torch's first moment ``m.lerp_(g, 1 - beta1)`` (m + 0.1 (g - m) in float32) is off the exact
#: update by ~ulp(g)/10 where 0.9 m and 0.1 g nearly cancel: from the bench's start arrays (m ~ 0.1,
#: g ~ 1) 3-4e-5 of a 1e-3 max|m| floor in every torch form of Adam, AdamW, RAdam, Adamax (2^16,
#: 2^22); <= 5.4e-6 of a 1e-2 floor. (Measured on fresh arrays: a contender verified after others
#: had stepped them saw a larger max|m| and passed by chance.)
REL_FLOOR = 1e-2
#: tolerance of the "norm" contenders (DeepSpeed): max|got - want| / max|want| per array (about 25
#: float32 ulps of the largest element). DeepSpeed derives 1 - beta in float32 (1 - 0.999f is 1.3e-5
#: off) and contracts its updates into FMAs, so element by element it differs from the float64-derived
#: reference by up to ~1e-4 relative (v, and m near cancellation) while agreeing to < 1e-6 of the
#: array's scale; a different algorithm (no bias correction, no weight decay, Adam for AdamW) moves
#: the parameters by >= 1e-5 of their scale and fails.
NORM_TOLERANCE = 3e-6


def _ordered(a: np.ndarray) -> np.ndarray:
    """Map floats to int64 whose differences count ulps (monotone across zero)."""
    if a.dtype == np.float32:
        i = a.view(np.int32).astype(np.int64)
        mag = i & 0x7FFFFFFF
    else:
        i = a.view(np.int64)
        mag = i & 0x7FFFFFFFFFFFFFFF
    return np.where(i < 0, -mag, mag)


def max_ulp(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.inf if not np.array_equal(a, b, equal_nan=True) else 0.0
    return float(np.max(np.abs(_ordered(a) - _ordered(b))))


def max_rel(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| / |want|, with |want| floored at REL_FLOOR max|want| (cancellation near zero)."""
    if want.size == 0:
        return 0.0
    w = want.astype(np.float64)
    err = np.abs(got.astype(np.float64) - w)
    floor = REL_FLOOR * float(np.max(np.abs(w)))
    return float(np.max(err / np.maximum(np.abs(w), floor)))


def max_norm_rel(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max|want| (0 for empty arrays)."""
    if want.size == 0:
        return 0.0
    w = want.astype(np.float64)
    scale = float(np.max(np.abs(w)))
    err = float(np.max(np.abs(got.astype(np.float64) - w)))
    return err / scale if scale > 0 else err


def mismatch(got: np.ndarray, want: np.ndarray, tolerance: str) -> Optional[str]:
    """None if ``got`` matches ``want`` within the contender's tolerance, else a description."""
    if tolerance == "exact":
        if np.array_equal(got, want):
            return None
        return f"not bitwise equal (max {max_ulp(got, want):g} ulp)"
    if tolerance == "ulp":
        ulp = max_ulp(got, want)
        return None if ulp <= 2 else f"max {ulp:g} ulp > 2"
    if tolerance == "rel":
        rel = max_rel(got, want)
        return None if rel <= REL_TOLERANCE else f"max relative error {rel:.3g} > {REL_TOLERANCE:g}"
    if tolerance == "norm":
        rel = max_norm_rel(got, want)
        return None if rel <= NORM_TOLERANCE else f"max error {rel:.3g} of the largest magnitude > {NORM_TOLERANCE:g}"
    return None


def verify(spec: Spec, arrays: List[np.ndarray], runner: Runner) -> Optional[str]:
    """One step of ``runner`` on the live arrays against the reference on a snapshot."""
    if runner.tolerance == "none":
        return None
    snap = [a.copy() for a in arrays]
    runner.step()
    spec.reference(*snap, **spec.kwargs(STEP))
    got = runner.readback() if runner.readback is not None else [arrays[0], *arrays[2:]]
    want = [snap[0], *snap[2:]]
    if not np.array_equal(arrays[1], snap[1]):
        return "grad was modified"
    for label, x, y in zip(("param",) + spec.state, got, want):
        bad = mismatch(x, y, runner.tolerance)
        if bad:
            return f"{label}: {bad}"
    return None
