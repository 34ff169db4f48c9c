"""The benchmark's arrays: placed by :func:`fusedopt.arena.placed_empty`, filled with seeded data."""

from __future__ import annotations

from typing import Any, List

import numpy as np

from ..arena import STAGGER_BYTES, placed_empty
from .specs import Spec

__all__ = ["Allocator", "make_arrays"]


class Allocator:
    """Separate arrays, each in the next slot of :func:`fusedopt.arena.placed_empty` (start address
    ``slot * STAGGER_BYTES`` modulo 64 KiB: distinct page offsets and cache lines, so the streams
    of one step do not alias in the cache), or plain ``np.empty`` arrays."""

    def __init__(self, plain: bool = False) -> None:
        self.plain = plain
        self.slot = 0

    def empty(self, n: int, dtype: Any) -> np.ndarray:
        if self.plain:
            return np.empty(n, np.dtype(dtype))
        a = placed_empty(n, np.dtype(dtype), self.slot)
        self.slot += 1
        return a

    @property
    def description(self) -> str:
        if self.plain:
            return "plain np.empty"
        return f"separate buffers placed by fusedopt.arena (start at slot*{STAGGER_BYTES} B mod 64 KiB)"


def make_arrays(spec: Spec, n: int, dtype: Any, alloc: Allocator, seed: int = 0) -> List[np.ndarray]:
    """[param, grad, *state]: param and grad ~ N(0, 1); first moments ~ 0.1 N(0, 1); squares
    0.1 |N(0, 1)| + 1e-3 (positive, far from denormals)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, nonneg in enumerate((False, False) + spec.nonneg):
        a = alloc.empty(n, dtype)
        x = rng.standard_normal(n)
        if nonneg:
            x = np.abs(x) * 0.1 + 1e-3
        elif i >= 2:
            x *= 0.1
        a[...] = x
        out.append(a)
    return out
