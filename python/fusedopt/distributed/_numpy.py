"""``ShardedOptimizer``: the NumPy-only front-end of the sharded step (no torch needed)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _threads
from ..algorithms import ALGORITHMS
from ._shard import DTYPES, Communicator, GradOptions, ShardEngine, make_buckets, shard_grad_of


class ShardedOptimizer:
    """ZeRO stage 1 for NumPy arrays over any :class:`~fusedopt.distributed.Communicator`
    (e.g. :class:`~fusedopt.distributed.MPICommunicator` under ``mpirun``).

    Args:
        arrays: the initial parameter values (float32/float64; the same on every rank). They are
            copied into flat buckets: use :attr:`params` (views into them) as the parameters.
        algorithm: a :mod:`fusedopt.functional` name with an element-wise update (``"adamw"``,
            ``"sgd"``, ...) or a trust ratio (``"lamb"``, ``"lars"``: their per-tensor sums are
            exchanged, as :class:`ZeroOptimizer`'s); its keyword hyperparameters in ``**hypers``
            (functional names: ``beta1``, ``beta2``, ...).
        comm: the collectives; rank ``r`` owns ``[r*S, (r+1)*S)`` of every bucket.
        max_grad_norm, skip_if_nonfinite, clip_value, threads: as :class:`ZeroOptimizer`.

    ``step(grads)`` takes this rank's gradients (one array per parameter, each rank its own):
    they are summed over ranks (reduce-scatter) and divided by the world size, then the step is
    :class:`ZeroOptimizer`'s.
    """

    def __init__(self, arrays: Sequence[np.ndarray], algorithm: str, comm: Communicator, *,
                 max_grad_norm: Optional[float] = None, skip_if_nonfinite: bool = False,
                 clip_value: Optional[float] = None, threads: Optional[int] = None, **hypers: Any) -> None:  # fmt: skip
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        algo = ALGORITHMS[algorithm]
        if not isinstance(arrays, (list, tuple)) or not arrays:
            raise TypeError("arrays must be a non-empty list/tuple of numpy arrays")
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"arrays[{i}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype not in DTYPES:
                raise TypeError(f"arrays[{i}] has dtype {a.dtype}; float32/float64 only")
        unknown = set(hypers) - {h.name for h in algo.arguments}
        if unknown:
            raise TypeError(f"{algorithm} has no hyperparameter {sorted(unknown)[0]!r}")
        self.hypers: Dict[str, Any] = algo.check(hypers)
        GradOptions(None, None, clip_value, max_grad_norm, skip_if_nonfinite)
        if threads is not None:
            _threads._check_count("threads", threads)
        self.max_grad_norm, self.skip_if_nonfinite, self.clip_value = max_grad_norm, skip_if_nonfinite, clip_value
        self.comm = comm
        w, r = comm.world_size, comm.rank
        self.buckets = make_buckets([[(i, a.shape, a.dtype) for i, a in enumerate(arrays)]], w)
        self.flat = [np.zeros(bk.padded, dtype=bk.dtype) for bk in self.buckets]
        self.flat_grad = [np.zeros(bk.padded, dtype=bk.dtype) for bk in self.buckets]
        self.grad_shards = [g[r * bk.shard : (r + 1) * bk.shard] for g, bk in zip(self.flat_grad, self.buckets)]
        self.params: List[np.ndarray] = [np.empty(0)] * len(arrays)
        for bk, flat in zip(self.buckets, self.flat):
            for k, i in enumerate(bk.params):
                v = flat[bk.offsets[k] : bk.offsets[k] + bk.sizes[k]].reshape(bk.shapes[k])
                v[...] = arrays[i]
                self.params[i] = v
        self._param_shards = [f[r * bk.shard : (r + 1) * bk.shard] for f, bk in zip(self.flat, self.buckets)]
        self.engine = ShardEngine(algo, self.buckets, r, threads if threads is not None else _threads.get_num_threads())
        for b in range(len(self.buckets)):
            if any(role.init_hyper is not None for role in algo.states):
                self.engine.ensure_states(b, self.hypers)

    def step(self, grads: Sequence[np.ndarray], *, grad_scale: Any = None, found_inf: Any = None) -> bool:
        """One step on every rank (a collective). Returns False when the step was skipped."""
        if not isinstance(grads, (list, tuple)) or len(grads) != len(self.params):
            raise TypeError(f"grads must be a list/tuple of {len(self.params)} arrays")
        for i, (g, p) in enumerate(zip(grads, self.params)):
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype or g.shape != p.shape:
                raise TypeError(f"grads[{i}] must be a numpy array of dtype {p.dtype} and shape {p.shape}")
        opts = GradOptions(grad_scale, found_inf, self.clip_value, self.max_grad_norm, self.skip_if_nonfinite)
        w = self.comm.world_size
        for b, bk in enumerate(self.buckets):
            for k, i in enumerate(bk.params):
                self.flat_grad[b][bk.offsets[k] : bk.offsets[k] + bk.sizes[k]] = grads[i].reshape(-1)
            if w > 1:
                self.comm.reduce_scatter_sum(self.flat_grad[b])
                s = self.grad_shards[b]
                np.divide(s, s.dtype.type(w), out=s)
        n = sum(int(g.size) for g in self.grad_shards)
        gs, skip = self.engine.decide(self.comm, shard_grad_of(self.grad_shards), n, opts)
        if skip:
            return False
        self.engine.apply([self.hypers] * len(self.buckets), [[p] for p in self._param_shards],
                          [[g] for g in self.grad_shards], gs, comm=self.comm)  # fmt: skip
        if w > 1:
            for flat in self.flat:
                self.comm.all_gather(flat)
        return True
