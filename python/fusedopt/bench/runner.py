"""What a contender is: a factory ``(spec, arrays, alloc) -> Runner or None`` (None: not applicable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import numpy as np

__all__ = ["Factory", "Runner"]


@dataclass
class Runner:
    """``step()`` makes one step on the live arrays; ``readback()`` returns the written arrays as
    ``[param, *state]`` in the reference's terms (default: the live arrays; torch's SGD-form
    Momentum keeps its own buffer). ``tolerance`` of the correctness guard: "exact" (bitwise),
    "ulp" (2 ulp), "rel" (1e-5 relative), "norm" (3e-6 of the array's largest magnitude) or "none"
    (not an optimizer step: probes); see :mod:`fusedopt.bench.verify`."""

    step: Callable[[], object]
    tolerance: str
    readback: Optional[Callable[[], List[np.ndarray]]] = None
    note: str = ""
    keep: List[Any] = field(default_factory=list)  # keeps scratch / torch objects alive


Factory = Callable[..., Optional[Runner]]
