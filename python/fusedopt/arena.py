"""``FlatParams``: many parameters packed into one contiguous buffer, with matching gradient and
optimizer-state buffers placed so that their streams do not alias in the cache.

A model's weights become views into one flat parameter buffer, their gradients views into one flat
gradient buffer; an optimizer built on the arena steps the flat buffers as **one** long tensor, so
a whole-model step is a handful of long streams with no per-tensor work at all::

    arena = fusedopt.FlatParams([w1, b1, w2, b2])     # copies the values in
    w1, b1, w2, b2 = arena.params                      # keep using these views as the weights
    opt = fusedopt.Adam(arena, lr=1e-3)                # state buffers are placed by the arena
    ...
    arena.grads[0][...] = dw1                          # or compute straight into the views
    opt.step()                                         # grads default to the arena's

Placement. Streams that start at the same offset modulo 4 KiB (e.g. buffers allocated a power of
two apart) compete for the same cache sets and trip the CPU's 4K-aliasing store-forwarding checks:
PERFORMANCE.md §2 measured the same Adam kernel at 6.7 GB/s instead of 40 GB/s on such a layout.
Each buffer of an arena (parameters, gradients, then each state buffer in order of creation) is
therefore allocated so that its start address is ``slot * STAGGER_BYTES`` modulo ``PERIOD_BYTES``:
distinct 4 KiB page offsets and distinct cache lines for every stream of a step.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import numpy as np

__all__ = ["FlatParams"]

#: start of buffer k is at k*STAGGER_BYTES modulo PERIOD_BYTES (see the module docstring and
#: benchmarks/README.md for the measurement behind the choice)
STAGGER_BYTES = 4096 + 64 * 5
PERIOD_BYTES = 1 << 16


def placed_empty(n: int, dtype: np.dtype, slot: int) -> np.ndarray:
    """An uninitialized 1-D array of ``n`` elements whose address is ``slot*STAGGER_BYTES``
    modulo ``PERIOD_BYTES`` (one allocation, ``PERIOD_BYTES`` larger than needed)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + PERIOD_BYTES, dtype=np.uint8)
    base = raw.__array_interface__["data"][0]
    target = (slot * STAGGER_BYTES) % PERIOD_BYTES
    offset = (target - base) % PERIOD_BYTES
    return raw[offset : offset + n * itemsize].view(dtype)


class FlatParams:
    """Parameters packed back to back in one float32/float64 buffer, plus a gradient buffer.

    Args:
        arrays: the initial parameter values (any shapes, one float dtype); they are copied in.
        dtype: the arena's dtype (default: that of the arrays, which must agree).

    Attributes:
        flat, flat_grad: the 1-D parameter and gradient buffers.
        params, grads: per-tensor views into them, with the original shapes.
    """

    def __init__(self, arrays: Iterable[np.ndarray], *, dtype: Optional[np.dtype] = None) -> None:
        items = [arrays] if isinstance(arrays, np.ndarray) else list(arrays)
        if not items:
            raise ValueError("arrays is empty: an arena needs at least one parameter")
        for i, a in enumerate(items):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"arrays[{i}] must be a numpy.ndarray, got {type(a).__name__}")
        dt = np.dtype(dtype) if dtype is not None else items[0].dtype
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        if dtype is None:
            for i, a in enumerate(items):
                if a.dtype != dt:
                    raise TypeError(f"arrays[{i}] has dtype {a.dtype} but arrays[0] has {dt}; pass dtype= to convert")
        self.dtype = dt
        self.shapes = [a.shape for a in items]
        sizes = [int(a.size) for a in items]
        self.offsets = [int(x) for x in np.concatenate([[0], np.cumsum(sizes)])]
        total = self.offsets[-1]
        self._slots = 0
        self.flat = self.new_buffer()
        self.flat_grad = self.new_buffer()
        self.flat_grad.fill(0)
        self.params: List[np.ndarray] = self.views(self.flat)
        self.grads: List[np.ndarray] = self.views(self.flat_grad)
        for view, a in zip(self.params, items):
            view[...] = a
        assert total == self.flat.size

    @property
    def size(self) -> int:
        """Total number of elements."""
        return self.offsets[-1]

    def new_buffer(self) -> np.ndarray:
        """A new uninitialized flat buffer of the arena's size, placed in the next slot."""
        buf = placed_empty(self.size, self.dtype, self._slots)
        self._slots += 1
        return buf

    def zeros(self) -> np.ndarray:
        """A new zero-filled flat buffer (optimizer state), placed in the next slot."""
        buf = self.new_buffer()
        buf.fill(0)
        return buf

    def views(self, flat: np.ndarray) -> List[np.ndarray]:
        """Per-tensor views (original shapes) into a flat buffer of this arena's size."""
        if not isinstance(flat, np.ndarray) or flat.shape != (self.size,):
            raise ValueError(f"flat must be a 1-D array of {self.size} elements")
        return [
            flat[self.offsets[i] : self.offsets[i + 1]].reshape(shape) for i, shape in enumerate(self.shapes)
        ]

    # A copy (copy.deepcopy, pickle) copies the flat buffers, the arrays other objects share with
    # the arena (an optimizer's parameter is ``flat`` itself, so the copies must stay the same
    # objects), and makes the per-tensor views again: NumPy copies a view as an array of its own,
    # which would no longer write into the copied ``flat``.
    def __getstate__(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("params", "grads")}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.params = self.views(self.flat)
        self.grads = self.views(self.flat_grad)

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return f"FlatParams({len(self)} tensors, {self.size} elements, {self.dtype})"


