"""The same-run bandwidth references: the native traffic probe (``ceiling``) and ``np.copyto`` (``copy``)."""

from __future__ import annotations

from typing import List

import numpy as np

from .. import _core, _threads
from .arrays import Allocator
from .runner import Runner
from .specs import Spec

__all__ = ["ceiling", "copy", "copy_bytes"]


def copy_length(spec: Spec, n: int) -> int:
    """Elements of each of copy's two arrays: together the size of the optimizer's working set."""
    return max(1, (spec.n_arrays * n + 1) // 2)


def copy_bytes(spec: Spec, n: int, itemsize: int) -> int:
    """Bytes one copy moves, counted STREAM style (read + write)."""
    return 2 * copy_length(spec, n) * itemsize


def copy(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Runner:
    """np.copyto between two arrays whose total size equals the optimizer's working set."""
    n, dtype = arrays[0].size, arrays[0].dtype
    length = copy_length(spec, n)
    src, dst = alloc.empty(length, dtype), alloc.empty(length, dtype)
    src[...] = 1
    dst[...] = 0

    def step() -> None:
        np.copyto(dst, src)

    return Runner(step, "none", keep=[src, dst])


def ceiling(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Runner:
    """The same-run ceiling: a native probe (``_core._traffic_probe``) that moves exactly the bytes
    of this step -- the parameter and every state array read and written, the gradient read --
    with trivial arithmetic, on separate arrays placed like the optimizer's, with the same
    thread policy as the fusedopt contender. A two-phase step (LAMB, LARS: the spec's
    ``extra_passes``) first re-reads that many of those arrays (``_core.sum_of_squares``, the
    norm pass such a step makes), so the ceiling moves the step's bytes in the same two phases."""
    n, dtype = arrays[0].size, arrays[0].dtype
    written = [alloc.empty(n, dtype) for _ in range(1 + len(spec.state))]
    read = alloc.empty(n, dtype)
    for a in written + [read]:
        a[...] = 0
    policy = spec.name if spec.name in _threads.SERIAL_BELOW else "adam"
    threads = _threads.resolve(None, n, policy)
    w_lists = [[a] for a in written]
    r_list = [read]
    reread = (written + [read])[: spec.extra_passes]

    def step() -> None:
        if reread:
            _core.sum_of_squares(reread, threads)
        _core._traffic_probe(w_lists, r_list, 0.0, threads)

    return Runner(step, "none", keep=[written, read])
