"""Sharded optimizer state across processes (ZeRO stage 1), on CPU.

:class:`ZeroOptimizer` (torch front-end, ``torch.distributed`` with gloo) wraps a fusedopt.torch
optimizer and gives each of N ranks 1/N of its state: parameters are packed by element range,
not whole tensors, each rank steps its range with one fused native call and the updated ranges
are all-gathered. Its results are bitwise a single process's given the same averaged gradients
(element-wise and trust-ratio algorithms, low precision, stochastic rounding; global-norm clipping
and non-finite skips included).
With ``fusedopt.torch.Muon`` or ``Adafactor`` (updates that read a whole tensor) it is a
``WholeParamZero`` (:mod:`fusedopt.distributed._whole`): each rank owns whole parameters (assigned
from their sizes), steps them with one ``optimizer_class`` instance and broadcasts its contiguous
range of the flat buffers; bitwise a single process's given the same averaged gradients too.

:func:`consolidate_state_dicts` turns every rank's :meth:`ZeroOptimizer.shard_state_dict` into one
ordinary state dict (loadable by a single process, by ``torch.optim``, or by a ZeroOptimizer of
another world size).

The sharding logic itself is NumPy-only (:mod:`fusedopt.distributed._shard`): the collectives
are behind :class:`Communicator`, implemented by :class:`TorchCommunicator` and, with mpi4py,
:class:`MPICommunicator`; :class:`ShardedOptimizer` is the NumPy front-end.

Importing this package does not import torch; ``ZeroOptimizer`` and ``consolidate_state_dicts``
do (on first access).
"""

from __future__ import annotations

from typing import Any

from ._numpy import ShardedOptimizer
from ._shard import ALIGN, Communicator, MPICommunicator, TorchCommunicator

__all__ = [
    "ALIGN",
    "Communicator",
    "MPICommunicator",
    "ShardedOptimizer",
    "TorchCommunicator",
    "ZeroOptimizer",
    "consolidate_state_dicts",
]


def __getattr__(name: str) -> Any:
    if name in ("ZeroOptimizer", "consolidate_state_dicts", "SHARD_FORMAT"):
        from . import _zero

        return getattr(_zero, name)
    raise AttributeError(f"module 'fusedopt.distributed' has no attribute {name!r}")
