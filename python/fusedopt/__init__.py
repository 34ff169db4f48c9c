"""fusedopt: fused, in-place optimizer steps for NumPy arrays.

One pass over memory per step, SIMD chosen at run time (x86-64 SSE2 / AVX2+FMA / AVX-512,
aarch64 NEON), OpenMP threads, the GIL released. Three layers:

* :mod:`fusedopt.optimizers` (re-exported here): ``SGD``, ``Momentum``, ``RMSprop``, ``Adam``,
  ``AdamW``, ``Adagrad`` with torch.optim's names, defaults and semantics;
* :mod:`fusedopt.functional`: one in-place function per algorithm, every hyperparameter explicit;
* :mod:`fusedopt.reference`: the same math in plain NumPy, the specification the kernels are
  tested against bitwise.
"""

from __future__ import annotations

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise ImportError(
        "fusedopt's compiled extension (fusedopt._core) could not be imported. Install the package "
        "with `pip install .` (or from a wheel) instead of importing it from the source tree."
    ) from exc

from . import functional, reference, schedules
from ._adafactor import Adafactor
from ._config import show_config
from ._muon import Muon
from ._threads import MAX_THREADS, get_num_threads, set_num_threads
from .arena import FlatParams
from .ema import EMA
from .optimizers import LAMB, LARS, SGD, Adagrad, Adam, Adamax, AdamW, Lion, Momentum, NAdam, Optimizer, RAdam, RMSprop

__version__: str = _core.__version__

__all__ = [
    "Adafactor",
    "EMA",
    "SGD",
    "Adagrad",
    "Adam",
    "Adamax",
    "AdamW",
    "FlatParams",
    "LAMB",
    "LARS",
    "Lion",
    "RAdam",
    "MAX_THREADS",
    "Momentum",
    "Muon",
    "NAdam",
    "Optimizer",
    "RMSprop",
    "__version__",
    "functional",
    "get_num_threads",
    "reference",
    "schedules",
    "set_num_threads",
    "show_config",
]
