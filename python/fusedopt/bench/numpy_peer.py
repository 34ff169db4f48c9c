"""The NumPy peers: each benchmarked algorithm as NumPy code, in two forms.

``numpy-textbook``: the formulas as NumPy expressions (a temporary per operation, several passes),
like :mod:`fusedopt.reference`; ``numpy-inplace``: careful NumPy, two preallocated scratch arrays,
``out=`` on every ufunc, state updated in place -- the baseline fusedopt has to beat.

They implement the benchmarked configuration of each :class:`~fusedopt.bench.specs.Spec` (no
maximize, no L2 decay, ...): the correctness guard compares them with :mod:`fusedopt.reference`
(2 ulp) before anything is timed, so a configuration they do not implement shows as WRONG. Their
per-step scalars are the package's own (:func:`peer_scalars`), rounded once to the array dtype.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Optional

import numpy as np

from .arrays import Allocator
from .runner import Runner
from .specs import STEP, Spec

__all__ = ["inplace", "peer_scalars", "textbook"]


def peer_scalars(spec: Spec, dtype: Any, step: int = STEP) -> Any:
    """The per-step scalars of the spec's call, derived by :mod:`fusedopt._scalars` (float64, as
    the functional API derives them) and rounded once to ``dtype``, as attributes named like the
    fields of the ``_scalars`` tuples."""
    T = np.dtype(dtype).type
    algo = spec.algorithm
    h = algo.check(spec.hyperparameters())
    for sc in algo.scalar_states:  # NAdam's mu_product: the benchmarked call's value
        h[sc.key] = spec.kwargs(step)[sc.key]
    s: Any = algo.scalars(h, step)  # the description's derivation
    return SimpleNamespace(**{k: T(v) if isinstance(v, float) else v for k, v in s._asdict().items()})


#: the algorithms with NumPy peers (the other contenders still run for the rest)
PEERS = ("sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad", "nadam")


def textbook(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Optional[Runner]:
    """The update as plain NumPy expressions (a temporary per operation), in the reference's order."""
    if spec.name not in PEERS:
        return None
    p, g, *st = arrays
    c = peer_scalars(spec, p.dtype)
    name = spec.name

    if name == "sgd":
        (buf,) = st

        def step() -> None:
            buf[...] = c.momentum * buf + g
            p[...] = p - c.lr * buf

    elif name == "momentum":
        (vel,) = st

        def step() -> None:
            vel[...] = c.beta * vel + c.one_minus_beta * g
            p[...] = p - c.step_size * vel

    elif name == "rmsprop":
        (sq,) = st

        def step() -> None:
            sq[...] = c.alpha * sq + (c.one_minus_alpha * g) * g
            p[...] = p - (c.lr * g) / (np.sqrt(sq) + c.eps_outside)

    elif name in ("adam", "adamw"):
        m, v = st
        decoupled = c.decay_factor != 1.0  # (AdamW; the folded form of fusedopt._scalars.AdamScalars)

        def step() -> None:
            if decoupled:
                p[...] = p * c.decay_factor
            m[...] = c.beta1 * m + c.one_minus_beta1 * g
            v[...] = c.beta2 * v + (c.one_minus_beta2 * g) * g
            p[...] = p + (c.neg_step_size * m) / (np.sqrt(v) + c.eps_scaled)

    elif name == "adagrad":
        (ssum,) = st

        def step() -> None:
            ssum[...] = ssum + g * g
            p[...] = p + (c.neg_clr * g) / (np.sqrt(ssum) + c.eps)

    elif name == "nadam":
        m, v = st

        def step() -> None:
            m[...] = c.beta1 * m + c.one_minus_beta1 * g
            v[...] = c.beta2 * v + (c.one_minus_beta2 * g) * g
            den = np.sqrt(v / c.bias_correction2) + c.eps
            p[...] = p + (c.grad_coef * g) / den
            p[...] = p + (c.momentum_coef * m) / den

    else:
        raise KeyError(f"no NumPy peer for {name!r}")
    return Runner(step, "ulp")


def inplace(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Optional[Runner]:
    """Careful NumPy: two preallocated scratch arrays, out= on every ufunc, state updated in place."""
    if spec.name not in PEERS:
        return None
    p, g, *st = arrays
    n = p.size
    a, b = alloc.empty(n, p.dtype), alloc.empty(n, p.dtype)
    c = peer_scalars(spec, p.dtype)
    name = spec.name
    mul, add, sub, div, sqrt = np.multiply, np.add, np.subtract, np.divide, np.sqrt

    if name == "sgd":
        (buf,) = st

        def step() -> None:
            mul(buf, c.momentum, out=buf)
            add(buf, g, out=buf)
            mul(buf, c.lr, out=a)
            sub(p, a, out=p)

    elif name == "momentum":
        (vel,) = st

        def step() -> None:
            mul(vel, c.beta, out=vel)
            mul(g, c.one_minus_beta, out=a)
            add(vel, a, out=vel)
            mul(vel, c.step_size, out=a)
            sub(p, a, out=p)

    elif name == "rmsprop":
        (sq,) = st

        def step() -> None:
            mul(sq, c.alpha, out=sq)
            mul(g, c.one_minus_alpha, out=a)
            mul(a, g, out=a)
            add(sq, a, out=sq)
            sqrt(sq, out=a)
            add(a, c.eps_outside, out=a)
            mul(g, c.lr, out=b)
            div(b, a, out=b)
            sub(p, b, out=p)

    elif name in ("adam", "adamw"):
        m, v = st
        decoupled = c.decay_factor != 1.0  # (AdamW; the folded form of fusedopt._scalars.AdamScalars)

        def step() -> None:
            if decoupled:
                mul(p, c.decay_factor, out=p)
            mul(m, c.beta1, out=m)
            mul(g, c.one_minus_beta1, out=a)
            add(m, a, out=m)
            mul(v, c.beta2, out=v)
            mul(g, c.one_minus_beta2, out=a)
            mul(a, g, out=a)
            add(v, a, out=v)
            sqrt(v, out=a)
            add(a, c.eps_scaled, out=a)
            mul(m, c.neg_step_size, out=b)
            div(b, a, out=b)
            add(p, b, out=p)

    elif name == "adagrad":
        (ssum,) = st

        def step() -> None:
            mul(g, g, out=a)
            add(ssum, a, out=ssum)
            sqrt(ssum, out=a)
            add(a, c.eps, out=a)
            mul(g, c.neg_clr, out=b)
            div(b, a, out=b)
            add(p, b, out=p)

    elif name == "nadam":
        m, v = st

        def step() -> None:
            mul(m, c.beta1, out=m)
            mul(g, c.one_minus_beta1, out=a)
            add(m, a, out=m)
            mul(v, c.beta2, out=v)
            mul(g, c.one_minus_beta2, out=a)
            mul(a, g, out=a)
            add(v, a, out=v)
            div(v, c.bias_correction2, out=a)
            sqrt(a, out=a)
            add(a, c.eps, out=a)
            mul(g, c.grad_coef, out=b)
            div(b, a, out=b)
            add(p, b, out=p)
            mul(m, c.momentum_coef, out=b)
            div(b, a, out=b)
            add(p, b, out=p)

    else:
        raise KeyError(f"no NumPy peer for {name!r}")
    return Runner(step, "ulp", keep=[a, b])
