"""The benchmarked algorithms: one small description per algorithm, keyed by name.

This table is the only place that lists the algorithms of ``python -m fusedopt.bench``; every
contender (fusedopt, the NumPy peers, torch, DeepSpeed, the ceiling) is built from a :class:`Spec`.
What a Spec does not say is read from the functional API: the function to call is
``fusedopt.functional.<name>`` (and ``fusedopt.reference.<name>`` for the correctness guard),
whether it takes ``step`` and every hyperparameter not benchmarked explicitly (its default) come
from that function's signature. ``SPECS`` is derived from the algorithm
descriptions (:mod:`fusedopt.algorithms`); only the benchmarked hyperparameters are chosen here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np

from .. import functional, reference
from ..algorithms import ALGORITHMS as _ALGORITHMS
from ..algorithms import Algorithm

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHMS", "SPECS", "STEP", "Spec", "bytes_per_element"]

#: the step number used for timing (bias corrections do not change the cost)
STEP = 10


@dataclass(frozen=True)
class Spec:
    """One benchmarked configuration of an algorithm.

    ``name``: the function of :mod:`fusedopt.functional` and :mod:`fusedopt.reference`;
    ``state``: its state arrays (all updated in place), in their positional order;
    ``nonneg``: which of them hold squares (start >= 0);
    ``hyper``: the hyperparameters benchmarked (passed to both functions; the rest keep the
    functional's defaults); ``torch_state``: torch.optim's state keys for ``state`` (empty: torch
    has no such optimizer with the same state).
    """

    name: str
    state: Tuple[str, ...]
    nonneg: Tuple[bool, ...]
    hyper: Dict[str, Any]
    torch_state: Tuple[str, ...] = ()
    #: passes beyond the one-pass count (a two-phase trust-ratio step re-reads its arrays)
    extra_passes: int = 0

    @property
    def functional(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(functional, self.name)
        return fn

    @property
    def reference(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(reference, self.name)
        return fn

    @property
    def algorithm(self) -> Algorithm:
        return _ALGORITHMS[self.name]

    @property
    def uses_step(self) -> bool:
        return "step" in inspect.signature(self.functional).parameters

    @property
    def n_arrays(self) -> int:
        return 2 + len(self.state)

    @property
    def passes(self) -> int:
        """Array passes per element: read param, grad and every state; write param and every state."""
        return 2 + 2 * len(self.state) + 1 + self.extra_passes

    def kwargs(self, step: int) -> Dict[str, Any]:
        """The keyword arguments of one benchmarked call (functional and reference)."""
        kw = dict(self.hyper)
        if self.uses_step:
            kw["step"] = step
        algo = self.algorithm
        if algo.scalar_states:  # NAdam's mu_product: its value after ``step`` steps from a new state
            h = algo.check(self.hyper)
            for s in algo.scalar_states:
                v = s.init
                for k in range(1, step + 1):
                    v = s.advance(h, k, v, "float32")
                kw[s.key] = v
        return kw

    def hyperparameters(self) -> Dict[str, Any]:
        """Every hyperparameter of the benchmarked call: the functional's defaults, then ``hyper``."""
        out = {
            k: p.default
            for k, p in inspect.signature(self.functional).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }
        out.update(self.hyper)
        return out


#: the hyperparameters benchmarked per algorithm (the rest keep the functional's defaults)
BENCHMARKED: Dict[str, Dict[str, Any]] = {
    "sgd": {"lr": 1e-2, "momentum": 0.9},
    "trace": {"lr": 1e-2},
    "momentum": {"lr": 1e-2, "beta": 0.9},
    "rmsprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
    "adagrad": {"lr": 1e-2},
    "radam": {"lr": 1e-3},
    "nadam": {"lr": 2e-3},
    "lion": {"lr": 1e-4},
    "adamax": {"lr": 2e-3},
    "lamb": {"lr": 1e-3, "weight_decay": 1e-2},
    "lars": {"lr": 0.1, "weight_decay": 1e-4},
}

#: passes beyond the one-pass count: LAMB's phase 2 reads param, exp_avg and exp_avg_sq again
#: (phase 1: read p, g, m, v, write m, v; phase 2: read p, m, v, write p: 10 passes, not 7)
#: LARS: phase 1 reads p, g; phase 2 reads p, g, mu, writes mu, p: 7 passes, not 5
EXTRA_PASSES: Dict[str, int] = {"lamb": 3, "lars": 2}


def _spec(algo: Algorithm) -> Spec:
    """The benchmark's view of a description: the state arrays this configuration uses, which hold
    squares, and torch's keys for them when torch.optim has the algorithm."""
    hyper = BENCHMARKED.get(algo.name, {})
    h = algo.check(hyper)
    roles = algo.present_states(h)
    torch_state = tuple(r.key for r in roles) if algo.torch_optim else ()
    return Spec(algo.name, tuple(r.arg for r in roles), tuple(r.nonneg for r in roles), hyper, torch_state,
                EXTRA_PASSES.get(algo.name, 0))


#: derived from the algorithm descriptions (fusedopt.algorithms), one per functional form
SPECS: Dict[str, Spec] = {name: _spec(algo) for name, algo in _ALGORITHMS.items()}

ALGORITHMS: Tuple[str, ...] = tuple(SPECS)
DEFAULT_ALGORITHMS: Tuple[str, ...] = ("momentum", "rmsprop", "adam", "adagrad")


def bytes_per_element(algorithm: str, dtype: Any) -> int:
    """Bytes one step must move per parameter element (e.g. 28 for float32 Adam)."""
    return int(SPECS[algorithm].passes * np.dtype(dtype).itemsize)
