"""Algorithm descriptions: each algorithm described once.

One module per algorithm holds its description (:class:`Algorithm`): hyperparameters with their
defaults and ranges, state arrays (functional argument, torch state key, order, presence, start
value), the per-step scalars (:mod:`fusedopt._scalars`), the kernel flags, the reference function
(:mod:`fusedopt.reference`) and the native entry point (:mod:`fusedopt._core`). Everything above
the kernel is derived from these: :mod:`fusedopt.functional` (generated functions),
:mod:`fusedopt.optimizers` and :mod:`fusedopt.torch` (classes that are a name, torch-style
defaults and a docstring), the benchmark's contenders and the test tables.

Adding an algorithm: write its description here, its kernel (cpp/kernels) and its scalars and
reference; list it in :data:`ALGORITHMS`.
"""

from __future__ import annotations

from typing import Dict

from ._spec import FIRST_STEP, REQUIRED, ZEROS, Algorithm, Hyper, Range, ScalarState, StateRole, TorchName
from .adagrad import ADAGRAD
from .adam import ADAM, ADAMW
from .adamax import ADAMAX
from .lamb import LAMB, LAMB_TORCH
from .lars import LARS, LARS_TORCH
from .lion import LION
from .momentum import MOMENTUM
from .nadam import NADAM
from .radam import RADAM
from .rmsprop import RMSPROP
from .sgd import SGD, TRACE

#: every functional form, by its function name in fusedopt.functional
ALGORITHMS: Dict[str, Algorithm] = {a.name: a for a in (SGD, TRACE, MOMENTUM, RMSPROP, ADAM, ADAMW, ADAGRAD, LION, ADAMAX, LAMB, LARS, RADAM, NADAM)}

__all__ = [
    "ADAGRAD", "ADAM", "ADAMAX", "ADAMW", "ALGORITHMS", "FIRST_STEP", "LAMB", "LAMB_TORCH", "LARS", "LARS_TORCH", "LION", "MOMENTUM", "NADAM", "RADAM", "REQUIRED", "RMSPROP", "SGD", "TRACE",
    "ZEROS", "Algorithm", "Hyper", "Range", "ScalarState", "StateRole", "TorchName",
]  # fmt: skip
