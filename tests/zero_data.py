"""The gradients and parameters of tests/test_distributed.py's worlds (NumPy only; see zero_worker.py).

For the averaged gradient ``A`` of a step (multiples of 1/64 in [-1, 1)), rank 0 gets
``W*A - (W-1)*B`` and the others ``B`` (B: other multiples of 1/64), so the sum over ranks is
exactly ``W*A`` in any order and the averaged gradient is exactly ``A`` for every world size W.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

STEPS = 20
#: 3000 elements: 2 norm blocks; 10000: 5, split over ranks 0 and 1 of 2 (blocks 0-1 | 2-4) and over
#: the three ranks of 3 (0 | 1-3 | 4) (trust ratios' per-tensor sums and stochastic rounding's
#: counters across ranks); 7: one; 2049: two (one element in the second)
SHAPES: List[Tuple[int, ...]] = [(3000,), (100, 100), (7,), (2049,)]
LR = 1e-2


def grads_for(seed: int, step: int, shapes: List[Tuple[int, ...]], dtype: str, world: int, rank: int
              ) -> Tuple[List[np.ndarray], List[np.ndarray]]:  # fmt: skip
    """(averaged gradients A, this rank's gradients) of a step."""
    rng = np.random.default_rng([seed, step])
    a = [(rng.integers(-64, 64, s) / 64).astype(dtype) for s in shapes]
    b = [(rng.integers(-64, 64, s) / 64).astype(dtype) for s in shapes]
    mine = [x * world - y * (world - 1) for x, y in zip(a, b)] if rank == 0 else b
    return a, [m.astype(dtype) for m in mine]


def init_params(shapes: List[Tuple[int, ...]], dtype: str, seed: int = 7) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]
