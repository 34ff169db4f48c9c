"""Microbenchmarks: fusedopt against NumPy (and torch, when importable), run as ``python -m fusedopt.bench``.

Usage::

    python -m fusedopt.bench --quick               # < 10 s: float32 Adam at 2^12, 2^16, 2^20
    python -m fusedopt.bench                       # Momentum/RMSprop/Adam/Adagrad x f32/f64 x 2^10..2^24
    python -m fusedopt.bench --algorithms adam --dtypes float32 --sizes 12,16,20,24
    python -m fusedopt.bench --threads-crossover   # threads=1 vs 2, back to back and after idle
    python -m fusedopt.bench --json ...            # machine-readable results on stdout

Contenders (all update the same arrays, so they see the same memory layout and cache state):

``fusedopt``       :mod:`fusedopt.functional` with ``threads=None`` (the automatic thread policy);
``fusedopt-1t``    the same with ``threads=1``;
``numpy-textbook`` the formulas as NumPy expressions (temporaries, several passes), like
                   :mod:`fusedopt.reference`;
``numpy-inplace``  careful NumPy: preallocated scratch, ``out=`` on every ufunc, in-place updates;
``torch-fused``    ``torch.optim.<Alg>(fused=True)`` on ``torch.from_numpy`` views (Adam, AdamW,
                   Adagrad, SGD; Momentum as ``SGD(lr=lr*(1-beta), momentum=beta)``, which is the same
                   update for a constant learning rate); torch has no fused RMSprop;
``torch-foreach``  the same with ``foreach=True`` (on CPU: one ATen op per tensor operation);
``copy``           the ceiling probe: ``np.copyto`` between two arrays whose total size equals the
                   optimizer's working set; its GB/s count ``2 * nbytes`` (read + write, STREAM style).

Bytes an optimizer step must move: read every array once, write every updated array once, i.e.
``(2 + 2 * number_of_state_arrays + 1) * itemsize`` per element: float32 Adam 28 B (read p, g, m, v;
write p, m, v), Momentum / RMSprop / Adagrad / SGD-with-momentum 20 B. Effective GB/s = those bytes
/ time. "%copy" = effective GB/s / copy GB/s of the same run. An in-place read-modify-write stream
needs no write-allocate read, so a fused step can exceed 100 % of the copy figure (copy is a
single-threaded NumPy call).

Method: before anything is timed, each contender makes one step on the live arrays and its result
is compared with :mod:`fusedopt.reference` applied to a snapshot (fusedopt: bitwise; NumPy: within
2 ulp; torch: within 1e-5 relative); a contender that fails is reported as WRONG and never timed.
Then the contenders run in interleaved rounds (a new seeded random order each round); a sample is
the time of ``k`` consecutive steps with ``k`` chosen so that a sample takes >= ~2 ms, right after
one untimed step of the same contender (so no sample pays for waking threads that the previous
contender let fall asleep). Reported: median microseconds per step, spread = IQR / median (cells
marked ``~`` when above 10 %); every ratio (% of ceiling, % of copy, speedups) is the median of the
per-round ratios, which the bandwidth drifting between rounds does not move.
Progress goes to stderr, tables (or JSON) to stdout.

Arrays are separately allocated, 64-byte aligned and staggered by ``i * (4 KiB + 64 B)`` so that
the streams of one step do not alias in the cache (``--plain-alloc``: plain ``np.empty``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core, _threads, functional, reference
from ._config import show_config
from .arena import FlatParams
from .optimizers import Adam

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "CONTENDERS",
    "Spec",
    "SPECS",
    "bytes_per_element",
    "header",
    "main",
    "print_crossover",
    "print_header",
    "print_table",
    "run",
    "run_config",
    "threads_crossover",
]

ALGORITHMS: Tuple[str, ...] = ("sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad")
DEFAULT_ALGORITHMS: Tuple[str, ...] = ("momentum", "rmsprop", "adam", "adagrad")
CONTENDERS: Tuple[str, ...] = (
    "fusedopt", "fusedopt-1t", "numpy-textbook", "numpy-inplace", "torch-fused", "torch-foreach", "ceiling",
    "copy",
)  # fmt: skip
DEFAULT_SIZES: Tuple[int, ...] = tuple(1 << e for e in range(10, 25, 2))
QUICK_SIZES: Tuple[int, ...] = (1 << 12, 1 << 16, 1 << 20)
CROSSOVER_SIZES: Tuple[int, ...] = tuple(1 << e for e in range(12, 21))

#: the step number used for timing (bias corrections do not change the cost)
STEP = 10
#: minimum duration of one timing sample (seconds)
SAMPLE_SECONDS = 2e-3
#: spread (IQR / median) above which a measurement is flagged as noisy
NOISY = 0.10
#: idle time between steps in the "after idle" crossover measurement (OpenMP workers fall asleep)
IDLE_SECONDS = 5e-3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# algorithms


@dataclass(frozen=True)
class Spec:
    """One benchmarked configuration of an algorithm.

    ``state``: names of the state arrays (all updated in place), in the positional order of the
    functional and reference signatures; ``nonneg``: which of them hold squares (start >= 0);
    ``hyper``: hyperparameters passed to both :mod:`fusedopt.functional` and
    :mod:`fusedopt.reference`; ``uses_step``: whether the functions take ``step``.
    """

    name: str
    state: Tuple[str, ...]
    nonneg: Tuple[bool, ...]
    hyper: Dict[str, Any]
    uses_step: bool

    @property
    def n_arrays(self) -> int:
        return 2 + len(self.state)

    @property
    def passes(self) -> int:
        """Array passes per element: read param, grad and every state; write param and every state."""
        return 2 + 2 * len(self.state) + 1

    def kwargs(self, step: int) -> Dict[str, Any]:
        kw = dict(self.hyper)
        if self.uses_step:
            kw["step"] = step
        return kw


SPECS: Dict[str, Spec] = {
    "sgd": Spec("sgd", ("momentum_buffers",), (False,), {"lr": 1e-2, "momentum": 0.9}, False),
    "momentum": Spec("momentum", ("velocities",), (False,), {"lr": 1e-2, "beta": 0.9}, True),
    "rmsprop": Spec("rmsprop", ("square_avgs",), (True,), {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}, False),
    "adam": Spec("adam", ("exp_avgs", "exp_avg_sqs"), (False, True), {"lr": 1e-3}, True),
    "adamw": Spec("adamw", ("exp_avgs", "exp_avg_sqs"), (False, True), {"lr": 1e-3, "weight_decay": 1e-2}, True),
    "adagrad": Spec("adagrad", ("state_sums",), (True,), {"lr": 1e-2}, True),
}


def bytes_per_element(algorithm: str, dtype: Any) -> int:
    """Bytes one step must move per parameter element (e.g. 28 for float32 Adam)."""
    return int(SPECS[algorithm].passes * np.dtype(dtype).itemsize)


# --------------------------------------------------------------------------------------------
# arrays


class _Arena:
    """Allocates arrays 64-byte aligned and staggered so that the streams of one step do not alias."""

    def __init__(self, plain: bool = False) -> None:
        self.plain = plain
        self.count = 0

    def empty(self, n: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        if self.plain:
            return np.empty(n, dtype)
        offset = (self.count % 16) * (4096 + 64)
        self.count += 1
        raw = np.empty(n * dtype.itemsize + offset + 64, np.uint8)
        start = (-raw.ctypes.data) % 64 + offset
        return raw[start : start + n * dtype.itemsize].view(dtype)


def _make_arrays(spec: Spec, n: int, dtype: Any, arena: _Arena, seed: int = 0) -> List[np.ndarray]:
    """[param, grad, *state]: param and grad ~ N(0, 1); first moments ~ 0.1 N(0, 1); squares
    0.1 |N(0, 1)| + 1e-3 (positive, far from denormals)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, nonneg in enumerate((False, False) + spec.nonneg):
        a = arena.empty(n, dtype)
        x = rng.standard_normal(n)
        if nonneg:
            x = np.abs(x) * 0.1 + 1e-3
        elif i >= 2:
            x *= 0.1
        a[...] = x
        out.append(a)
    return out


# --------------------------------------------------------------------------------------------
# contenders
#
# A contender factory takes (spec, arrays, arena) and returns a _Runner or None (not applicable).
# runner.step() makes one step on the live arrays; runner.readback() returns the written arrays
# as [param, *state] in the reference's terms (torch's SGD-form Momentum keeps its own buffer).


@dataclass
class _Runner:
    step: Callable[[], None]
    tolerance: str  # "exact", "ulp" or "rel"
    readback: Optional[Callable[[], List[np.ndarray]]] = None
    note: str = ""
    keep: List[Any] = field(default_factory=list)  # keeps scratch / torch objects alive


def _fusedopt_runner(threads: Optional[int]) -> Callable[..., Optional[_Runner]]:
    def make(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> _Runner:
        fn = getattr(functional, spec.name)
        kw = spec.kwargs(STEP)
        kw["threads"] = threads

        def step() -> None:
            fn(*arrays, **kw)

        return _Runner(step, "exact")

    return make


class _Consts:
    """The per-step scalars of a Spec's configuration, derived in float64 the way the spec does
    (SEMANTICS.md §0, ``fusedopt._scalars``) and rounded once to the array dtype. Computed here so
    that the NumPy contenders do not depend on a private module; the correctness guard would catch
    any disagreement with :mod:`fusedopt.reference`."""

    def __init__(self, spec: Spec, dtype: Any, step: int = STEP) -> None:
        T = np.dtype(dtype).type
        h = spec.hyper
        lr = float(h["lr"])
        if spec.name == "sgd":
            self.momentum, self.lr = T(h["momentum"]), T(lr)  # dampening 0: (1 - dampening) * g == g
        elif spec.name == "momentum":
            beta = float(h["beta"])
            self.beta, self.one_minus_beta, self.step_size = T(beta), T(1.0 - beta), T(lr)
        elif spec.name == "rmsprop":
            alpha = float(h["alpha"])
            self.alpha, self.one_minus_alpha, self.eps, self.lr = T(alpha), T(1.0 - alpha), T(h["eps"]), T(lr)
        elif spec.name in ("adam", "adamw"):
            b1, b2, wd = 0.9, 0.999, float(h.get("weight_decay", 0.0))
            self.beta1, self.one_minus_beta1 = T(b1), T(1.0 - b1)
            self.beta2, self.one_minus_beta2 = T(b2), T(1.0 - b2)
            self.neg_step_size = T(-lr / (1.0 - b1**step))
            self.bias_correction2_sqrt = T(math.sqrt(1.0 - b2**step))
            self.eps = T(1e-8)
            self.decay_factor = T(1.0 - lr * wd)
        elif spec.name == "adagrad":
            self.neg_clr, self.eps = T(-lr), T(1e-10)  # lr_decay 0
        else:  # pragma: no cover - SPECS and this class list the same names
            raise KeyError(spec.name)


def _textbook(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> _Runner:
    """The update as plain NumPy expressions (a temporary per operation), in the spec's order."""
    p, g, *st = arrays
    c: Any = _Consts(spec, p.dtype)
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
            p[...] = p - (c.lr * g) / (np.sqrt(sq) + c.eps)

    elif name in ("adam", "adamw"):
        m, v = st
        decoupled = name == "adamw"

        def step() -> None:
            if decoupled:
                p[...] = p * c.decay_factor
            m[...] = c.beta1 * m + c.one_minus_beta1 * g
            v[...] = c.beta2 * v + (c.one_minus_beta2 * g) * g
            p[...] = p + (c.neg_step_size * m) / (np.sqrt(v) / c.bias_correction2_sqrt + c.eps)

    elif name == "adagrad":
        (ssum,) = st

        def step() -> None:
            ssum[...] = ssum + g * g
            p[...] = p + (c.neg_clr * g) / (np.sqrt(ssum) + c.eps)

    else:  # pragma: no cover
        raise KeyError(name)
    return _Runner(step, "ulp")


def _inplace(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> _Runner:
    """Careful NumPy: two preallocated scratch arrays, out= on every ufunc, state updated in place."""
    p, g, *st = arrays
    n = p.size
    a, b = arena.empty(n, p.dtype), arena.empty(n, p.dtype)
    c: Any = _Consts(spec, p.dtype)
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
            add(a, c.eps, out=a)
            mul(g, c.lr, out=b)
            div(b, a, out=b)
            sub(p, b, out=p)

    elif name in ("adam", "adamw"):
        m, v = st
        decoupled = name == "adamw"

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
            div(a, c.bias_correction2_sqrt, out=a)
            add(a, c.eps, out=a)
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

    else:  # pragma: no cover
        raise KeyError(name)
    return _Runner(step, "ulp", keep=[a, b])


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_runner(mode: str) -> Callable[..., Optional[_Runner]]:
    """torch.optim with fused=True or foreach=True, state tensors viewing our arrays where possible."""

    def make(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> Optional[_Runner]:
        torch = _torch()
        if torch is None:
            return None
        name = spec.name
        if mode == "fused" and name == "rmsprop":
            return None  # torch has no fused RMSprop
        p, g, *st = arrays
        pt = torch.from_numpy(p)
        pt.grad = torch.from_numpy(g)
        kw = {mode: True}
        h = spec.hyper
        tstep = torch.tensor(float(STEP - 1), dtype=torch.float32)  # the first step then uses t = STEP
        readback = None
        note = ""
        keep: List[Any] = [pt]
        if name == "sgd":
            opt = torch.optim.SGD([pt], lr=h["lr"], momentum=h["momentum"], **kw)
            opt.state[pt] = {"momentum_buffer": torch.from_numpy(st[0])}
        elif name == "momentum":
            beta = h["beta"]
            # torch's buffer b holds v / (1 - beta); SGD(lr*(1-beta), beta) then makes the same update
            b = arena.empty(p.size, p.dtype)
            np.divide(st[0], p.dtype.type(1.0 - beta), out=b)
            opt = torch.optim.SGD([pt], lr=h["lr"] * (1.0 - beta), momentum=beta, **kw)
            opt.state[pt] = {"momentum_buffer": torch.from_numpy(b)}
            keep.append(b)
            note = "SGD(lr=lr*(1-beta), momentum=beta)"

            def readback() -> List[np.ndarray]:
                return [p, b * p.dtype.type(1.0 - beta)]

        elif name == "rmsprop":
            opt = torch.optim.RMSprop([pt], lr=h["lr"], alpha=h["alpha"], eps=h["eps"], **kw)
            opt.state[pt] = {"step": tstep, "square_avg": torch.from_numpy(st[0])}
        elif name in ("adam", "adamw"):
            cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
            extra = {"weight_decay": h["weight_decay"]} if name == "adamw" else {}
            opt = cls([pt], lr=h["lr"], **extra, **kw)
            opt.state[pt] = {"step": tstep, "exp_avg": torch.from_numpy(st[0]), "exp_avg_sq": torch.from_numpy(st[1])}
        elif name == "adagrad":
            opt = torch.optim.Adagrad([pt], lr=h["lr"], **kw)  # creates its state eagerly: replace it
            opt.state[pt]["sum"] = torch.from_numpy(st[0])
            opt.state[pt]["step"] = tstep
        else:  # pragma: no cover
            raise KeyError(name)
        keep.append(opt)
        return _Runner(opt.step, "rel", readback=readback, note=note, keep=keep)

    return make


def _copy_runner(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> _Runner:
    """np.copyto between two arrays whose total size equals the optimizer's working set."""
    n, dtype = arrays[0].size, arrays[0].dtype
    length = max(1, (spec.n_arrays * n + 1) // 2)
    src, dst = arena.empty(length, dtype), arena.empty(length, dtype)
    src[...] = 1
    dst[...] = 0

    def step() -> None:
        np.copyto(dst, src)

    return _Runner(step, "none", keep=[src, dst])


def _ceiling_runner(spec: Spec, arrays: List[np.ndarray], arena: _Arena) -> _Runner:
    """The same-run ceiling: a native probe (``_core._traffic_probe``) that moves exactly the bytes
    of this step -- the parameter and every state array read and written, the gradient read --
    with trivial arithmetic, on separate arrays placed like the optimizer's, with the same
    thread policy as the fusedopt contender."""
    n, dtype = arrays[0].size, arrays[0].dtype
    written = [arena.empty(n, dtype) for _ in range(1 + len(spec.state))]
    read = arena.empty(n, dtype)
    for a in written + [read]:
        a[...] = 0
    policy = spec.name if spec.name in _threads.SERIAL_BELOW else "adam"
    threads = _threads.resolve(None, n, policy)
    w_lists = [[a] for a in written]
    r_list = [read]

    def step() -> None:
        _core._traffic_probe(w_lists, r_list, 0.0, threads)

    return _Runner(step, "none", keep=[written, read])


_FACTORIES: Dict[str, Callable[..., Optional[_Runner]]] = {
    "fusedopt": _fusedopt_runner(None),
    "fusedopt-1t": _fusedopt_runner(1),
    "numpy-textbook": _textbook,
    "numpy-inplace": _inplace,
    "torch-fused": _torch_runner("fused"),
    "torch-foreach": _torch_runner("foreach"),
    "ceiling": _ceiling_runner,
    "copy": _copy_runner,
}


# --------------------------------------------------------------------------------------------
# correctness guard


def _ordered(a: np.ndarray) -> np.ndarray:
    """Map floats to int64 whose differences count ulps (monotone across zero)."""
    if a.dtype == np.float32:
        i = a.view(np.int32).astype(np.int64)
        mag = i & 0x7FFFFFFF
    else:
        i = a.view(np.int64)
        mag = i & 0x7FFFFFFFFFFFFFFF
    return np.where(i < 0, -mag, mag)


def _max_ulp(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.inf if not np.array_equal(a, b, equal_nan=True) else 0.0
    return float(np.max(np.abs(_ordered(a) - _ordered(b))))


def _mismatch(got: np.ndarray, want: np.ndarray, tolerance: str) -> Optional[str]:
    """None if ``got`` matches ``want`` within the contender's tolerance, else a description."""
    if tolerance == "exact":
        if np.array_equal(got, want):
            return None
        return f"not bitwise equal (max {_max_ulp(got, want):g} ulp)"
    if tolerance == "ulp":
        ulp = _max_ulp(got, want)
        return None if ulp <= 2 else f"max {ulp:g} ulp > 2"
    if tolerance == "rel":
        w = want.astype(np.float64)
        err = np.abs(got.astype(np.float64) - w)
        floor = 1e-3 * float(np.max(np.abs(w))) if w.size else 0.0  # ignore cancellation near zero
        rel = float(np.max(err / np.maximum(np.abs(w), floor))) if w.size else 0.0
        return None if rel <= 1e-5 else f"max relative error {rel:.3g} > 1e-5"
    return None


def _verify(spec: Spec, arrays: List[np.ndarray], runner: _Runner) -> Optional[str]:
    """One step of ``runner`` on the live arrays against the reference on a snapshot."""
    if runner.tolerance == "none":
        return None
    snap = [a.copy() for a in arrays]
    runner.step()
    getattr(reference, spec.name)(*snap, **spec.kwargs(STEP))
    got = runner.readback() if runner.readback is not None else [arrays[0], *arrays[2:]]
    want = [snap[0], *snap[2:]]
    if not np.array_equal(arrays[1], snap[1]):
        return "grad was modified"
    for label, x, y in zip(("param",) + spec.state, got, want):
        bad = _mismatch(x, y, runner.tolerance)
        if bad:
            return f"{label}: {bad}"
    return None


# --------------------------------------------------------------------------------------------
# timing


def _time_k(fn: Callable[[], None], k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return time.perf_counter() - t0


def _calibrate(fn: Callable[[], None], target: float = SAMPLE_SECONDS) -> int:
    """The number of consecutive calls that takes at least ``target`` seconds (fn already warm)."""
    k = 1
    for _ in range(30):
        dt = _time_k(fn, k)
        if dt >= target:
            return k
        k = max(k + 1, min(k * 100, int(math.ceil(k * target * 1.2 / max(dt, 1e-9)))))
    return k


def _summary(samples: Sequence[float]) -> Dict[str, float]:
    med = statistics.median(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = med
    return {
        "median_s": med, "min_s": min(samples), "q1_s": q1, "q3_s": q3,
        "spread": (q3 - q1) / med if med > 0 else 0.0,
    }  # fmt: skip


def _interleaved(runners: Dict[str, Callable[[], None]], ks: Dict[str, int], rounds: int) -> Dict[str, List[float]]:
    """``rounds`` samples per contender, the contenders in a new (seeded) random order each round.

    Each sample is preceded by one untimed call of the same contender, so that every sample starts
    the way back-to-back steps do: its OpenMP team awake and its arrays where its own previous
    step left them. Without it the contender that happens to follow a long single-threaded one
    (NumPy, a torch run) pays for waking a sleeping thread team, and a cyclic order A B C, B C A, ...
    would make that the same contender in every round (measured: 5-30 % on a ResNet-18 step)."""
    names = list(runners)
    order_rng = random.Random(len(names) * 1000 + rounds)  # reproducible orders
    samples: Dict[str, List[float]] = {c: [] for c in names}
    for _ in range(rounds):
        order = names[:]
        order_rng.shuffle(order)
        for c in order:
            runners[c]()
            samples[c].append(_time_k(runners[c], ks[c]) / ks[c])
    return samples


# --------------------------------------------------------------------------------------------
# one configuration and a whole run


def run_config(
    algorithm: str,
    dtype: Any,
    n: int,
    *,
    contenders: Sequence[str] = CONTENDERS,
    rounds: int = 7,
    plain_alloc: bool = False,
) -> Dict[str, Any]:
    """Benchmark one (algorithm, dtype, size): verify every contender, then time them interleaved."""
    spec = SPECS[algorithm]
    dtype = np.dtype(dtype)
    arena = _Arena(plain_alloc)
    arrays = _make_arrays(spec, n, dtype, arena)
    bpe = bytes_per_element(algorithm, dtype)
    result: Dict[str, Any] = {
        "algorithm": algorithm, "dtype": dtype.name, "n": n, "bytes_per_element": bpe,
        "isa": _core.active_isa(), "contenders": {},
    }  # fmt: skip
    runners: Dict[str, _Runner] = {}
    for c in contenders:
        runner = _FACTORIES[c](spec, arrays, arena)
        if runner is None:
            continue
        bad = _verify(spec, arrays, runner)
        if bad is not None:
            _log(f"  WRONG RESULT: {c} on {algorithm} {dtype.name} n={n}: {bad} -- not timed")
            result["contenders"][c] = {"wrong": bad}
            continue
        runners[c] = runner
    fns = {c: r.step for c, r in runners.items()}
    for fn in fns.values():  # warm up (the verification step already touched everything once)
        fn()
    ks = {c: _calibrate(fn) for c, fn in fns.items()}
    samples = _interleaved(fns, ks, rounds)
    copy_bytes = 2 * max(1, (spec.n_arrays * n + 1) // 2) * dtype.itemsize
    for c, s in samples.items():
        info: Dict[str, Any] = dict(_summary(s))
        moved = copy_bytes if c == "copy" else bpe * n
        info.update(
            us_per_step=info["median_s"] * 1e6,
            gbps=moved / info["median_s"] / 1e9 if info["median_s"] > 0 else math.inf,
            k=ks[c],
            samples=len(s),
        )
        if runners[c].note:
            info["note"] = runners[c].note
        result["contenders"][c] = info
    # Ratios are medians of per-round ratios: each round times every contender once, within tens
    # of milliseconds, so a round's ratio is not moved by the machine's bandwidth drifting between
    # rounds (at DRAM sizes this VM's bandwidth wanders by up to 2x over a minute).
    for c in samples:
        if c != "copy" and "copy" in samples:
            result["contenders"][c]["pct_copy"] = 100.0 * _paired(samples["copy"], samples[c]) * bpe * n / copy_bytes
        if c not in ("copy", "ceiling") and "ceiling" in samples:
            result["contenders"][c]["pct_ceiling"] = 100.0 * _paired(samples["ceiling"], samples[c])
    for base in ("numpy-inplace", "numpy-textbook", "torch-fused", "torch-foreach"):
        if "fusedopt" in samples and base in samples:
            result[f"speedup_vs_{base}"] = _paired(samples[base], samples["fusedopt"])
    return result


def _paired(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of numerator[r] / denominator[r] (both one sample per round)."""
    return statistics.median([a / b for a, b in zip(numerator, denominator) if b > 0])


def run(
    algorithms: Sequence[str],
    dtypes: Sequence[Any],
    sizes: Sequence[int],
    *,
    contenders: Sequence[str] = CONTENDERS,
    rounds: int = 7,
    plain_alloc: bool = False,
) -> List[Dict[str, Any]]:
    """run_config over the grid (algorithm-major), with progress on stderr."""
    results = []
    total = len(algorithms) * len(dtypes) * len(sizes)
    i = 0
    for alg in algorithms:
        for dt in dtypes:
            for n in sizes:
                i += 1
                _log(f"[{i}/{total}] {alg} {np.dtype(dt).name} n={_fmt_n(n)} ...")
                t0 = time.perf_counter()
                res = run_config(alg, dt, n, contenders=contenders, rounds=rounds, plain_alloc=plain_alloc)
                _log(f"    done in {time.perf_counter() - t0:.1f} s")
                results.append(res)
    return results


# --------------------------------------------------------------------------------------------
# threads crossover


def _bind(fn: Callable[..., None], arrays: List[np.ndarray], kw: Dict[str, Any]) -> Callable[[], None]:
    def call() -> None:
        fn(*arrays, **kw)

    return call


def threads_crossover(
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    sizes: Sequence[int] = CROSSOVER_SIZES,
    *,
    threads: int = 2,
    rounds: int = 7,
    idle_samples: int = 21,
    dtype: Any = np.float32,
) -> Dict[str, Any]:
    """threads=1 against threads=``threads`` (explicit), back to back and after ~5 ms idle.

    "after idle": sleep IDLE_SECONDS before each step (OpenMP workers go to sleep), time only the
    step. Returns per-size medians and, per algorithm, the smallest size from which the
    multi-threaded step wins by more than 10 % after idle at that and every larger measured size.
    """
    out: Dict[str, Any] = {"threads": threads, "dtype": np.dtype(dtype).name, "idle_s": IDLE_SECONDS, "algorithms": {}}
    for alg in algorithms:
        spec = SPECS[alg]
        fn = getattr(functional, alg)
        rows = []
        for n in sizes:
            _log(f"crossover {alg} n={_fmt_n(n)} ...")
            arrays = _make_arrays(spec, n, dtype, _Arena())
            kw1 = dict(spec.kwargs(STEP), threads=1)
            kwt = dict(spec.kwargs(STEP), threads=threads)
            fns = {"1": _bind(fn, arrays, kw1), "t": _bind(fn, arrays, kwt)}
            for name, f in fns.items():
                bad = _verify(spec, arrays, _Runner(f, "exact"))
                if bad:
                    raise RuntimeError(f"fusedopt {alg} threads={kw1 if name == '1' else kwt}: {bad}")
            for f in fns.values():
                f()
            ks = {c: _calibrate(f) for c, f in fns.items()}
            b2b = {c: _summary(s) for c, s in _interleaved(fns, ks, rounds).items()}
            idle: Dict[str, List[float]] = {"1": [], "t": []}
            for r in range(idle_samples):
                for c in ("1", "t") if r % 2 == 0 else ("t", "1"):
                    time.sleep(IDLE_SECONDS)
                    t0 = time.perf_counter()
                    fns[c]()
                    idle[c].append(time.perf_counter() - t0)
            row: Dict[str, Any] = {"n": n}
            for mode, summ in (("b2b", b2b), ("idle", {c: _summary(s) for c, s in idle.items()})):
                for c in ("1", "t"):
                    row[f"{mode}_{c}_us"] = summ[c]["median_s"] * 1e6
                    row[f"{mode}_{c}_min_us"] = summ[c]["min_s"] * 1e6
                    row[f"{mode}_{c}_spread"] = summ[c]["spread"]
                row[f"{mode}_speedup"] = row[f"{mode}_1_us"] / row[f"{mode}_t_us"]
                row[f"{mode}_min_speedup"] = row[f"{mode}_1_min_us"] / row[f"{mode}_t_min_us"]
            rows.append(row)
        out["algorithms"][alg] = {
            "rows": rows,
            "first_idle_win": _first_win(rows, "idle_speedup"),
            "stable_idle_win": _stable_win(rows, "idle_speedup"),
            "stable_idle_win_min": _stable_win(rows, "idle_min_speedup"),
            "first_b2b_win": _first_win(rows, "b2b_speedup"),
            "current_serial_below": _threads.SERIAL_BELOW.get(alg),
        }
    return out


def _first_win(rows: List[Dict[str, Any]], key: str, margin: float = 1.10) -> Optional[int]:
    return next((r["n"] for r in rows if r[key] > margin), None)


def _stable_win(rows: List[Dict[str, Any]], key: str, margin: float = 1.10) -> Optional[int]:
    """The smallest size from which ``key`` exceeds ``margin`` at that and every larger size."""
    for i in range(len(rows)):
        if all(r[key] > margin for r in rows[i:]):
            return int(rows[i]["n"])
    return None


# --------------------------------------------------------------------------------------------
# reporting


def _fmt_n(n: int) -> str:
    e = n.bit_length() - 1
    return f"2^{e}" if n == 1 << e else str(n)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header() -> Dict[str, Any]:
    """Machine and build facts recorded with every run."""
    cfg = show_config(print_=False)
    torch = _torch()
    info: Dict[str, Any] = {
        "fusedopt": cfg["version"],
        "active_isa": _core.active_isa(),
        "supported_isas": cfg["supported_isas"],
        "openmp": cfg["openmp"],
        "num_threads": _threads.get_num_threads(),
        "serial_below": cfg["serial_below"],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        info["loadavg"] = None
    return info


def print_header(h: Dict[str, Any], alloc: str) -> None:
    print(f"# fusedopt {h['fusedopt']} | active ISA {h['active_isa']} (supported: {', '.join(h['supported_isas'])})"
          f" | OpenMP {'on' if h['openmp'] else 'off'}, threads {h['num_threads']}"
          f" | serial_below {h['serial_below']}")  # fmt: skip
    print(f"# CPU: {h['cpu']} ({h['logical_cpus']} logical CPUs) | Python {h['python']} | NumPy {h['numpy']}"
          f" | torch {h['torch'] or 'not importable'}"
          f"{'' if h['torch'] is None else ' (' + str(h['torch_threads']) + ' threads)'}"
          f" | load average at start {h['loadavg']}")  # fmt: skip
    print(f"# arrays: {alloc}; timing: interleaved rounds, sample >= {SAMPLE_SECONDS * 1e3:g} ms of "
          f"back-to-back steps, median; '~' = spread (IQR/median) > {NOISY:.0%}")  # fmt: skip
    load = h.get("loadavg")
    cpus = h.get("logical_cpus") or 1
    if load and load[0] > 0.5 * cpus:
        print(f"# WARNING: load average {load[0]} on {cpus} CPUs: other processes are running; multi-threaded "
              "timings include scheduler time slices (milliseconds) and every number is noisy")  # fmt: skip


def print_table(results: List[Dict[str, Any]]) -> None:
    present = [c for c in CONTENDERS if any(c in r["contenders"] for r in results)]
    short = {"fusedopt": "fusedopt", "fusedopt-1t": "fusedopt 1t", "numpy-textbook": "np textbook",
             "numpy-inplace": "np inplace", "torch-fused": "torch fused", "torch-foreach": "torch foreach",
             "ceiling": "ceiling", "copy": "copy"}  # fmt: skip
    cell = 17
    print()
    print("per contender: µs/step and effective GB/s (bytes the step must move / time)")
    head = f"{'algorithm':<9} {'dtype':<7} {'size':>5} {'B/el':>4} |"
    head += "".join(f" {short[c]:^{cell}}|" for c in present)
    head += f" {'fo %ceil':>8} {'fo %copy':>8} {'x inplace':>9} {'x textbk':>8}"
    if "torch-fused" in present:
        head += f" {'x t.fused':>9}"
    print(head)
    print("-" * len(head))
    noisy = []
    for r in results:
        line = f"{r['algorithm']:<9} {r['dtype']:<7} {_fmt_n(r['n']):>5} {r['bytes_per_element']:>4} |"
        for c in present:
            info = r["contenders"].get(c)
            if info is None:
                txt = "-"
            elif "wrong" in info:
                txt = "WRONG"
            else:
                mark = "~" if info["spread"] > NOISY else " "
                if info["spread"] > NOISY:
                    noisy.append(f"{r['algorithm']} {r['dtype']} {_fmt_n(r['n'])} {c}: spread {info['spread']:.0%}")
                txt = f"{_fmt_us(info['us_per_step'])}{mark}{info['gbps']:6.1f}"
            line += f" {txt:>{cell}}|"
        for key in ("pct_ceiling", "pct_copy"):
            pct = r["contenders"].get("fusedopt", {}).get(key)
            line += f" {pct:7.0f}%" if pct is not None else f" {'-':>8}"
        for base, w in (("numpy-inplace", 9), ("numpy-textbook", 8)):
            sp = r.get(f"speedup_vs_{base}")
            line += f" {sp:{w - 1}.2f}x" if sp is not None else f" {'-':>{w}}"
        if "torch-fused" in present:
            sp = r.get("speedup_vs_torch-fused")
            line += f" {sp:8.2f}x" if sp is not None else f" {'-':>9}"
        print(line)
    notes = sorted({info["note"] for r in results for info in r["contenders"].values() if info.get("note")})
    for nt in notes:
        print(f"note: torch momentum runs as {nt} (same update for a constant lr; torch has no EMA momentum)")
    if noisy:
        print(f"noisy (spread > {NOISY:.0%}; the machine was busy or the step is short): " + "; ".join(noisy))
    wrong = [f"{r['algorithm']} {r['dtype']} {_fmt_n(r['n'])} {c}: {i['wrong']}"
             for r in results for c, i in r["contenders"].items() if "wrong" in i]  # fmt: skip
    if wrong:
        print("WRONG RESULTS (not timed): " + "; ".join(wrong))


def _fmt_us(us: float) -> str:
    if us >= 1e4:
        return f"{us:9.0f}"
    if us >= 100:
        return f"{us:9.1f}"
    return f"{us:9.2f}"


def print_crossover(res: Dict[str, Any]) -> None:
    t = res["threads"]
    print()
    print(f"threads crossover, {res['dtype']}, explicit threads=1 vs threads={t}; µs/step, median (and best = "
          f"minimum); 'after idle' = {res['idle_s'] * 1e3:g} ms sleep before each timed step")  # fmt: skip
    head = (f"{'algorithm':<9} {'size':>5} | {'b2b 1t':>8} {'b2b ' + str(t) + 't':>8} {'ratio':>6} |"
            f" {'idle 1t':>8} {'idle ' + str(t) + 't':>8} {'ratio':>7} | {'best 1t':>8} {'best ' + str(t) + 't':>8}"
            f" {'ratio':>6}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for alg, a in res["algorithms"].items():
        for r in a["rows"]:
            flag = "~" if max(r["idle_1_spread"], r["idle_t_spread"]) > NOISY else " "
            print(f"{alg:<9} {_fmt_n(r['n']):>5} | {r['b2b_1_us']:8.2f} {r['b2b_t_us']:8.2f} {r['b2b_speedup']:5.2f}x |"
                  f" {r['idle_1_us']:8.2f} {r['idle_t_us']:8.2f} {r['idle_speedup']:5.2f}x{flag} |"
                  f" {r['idle_1_min_us']:8.2f} {r['idle_t_min_us']:8.2f} {r['idle_min_speedup']:5.2f}x")  # fmt: skip
    print()
    print(f"ratio = time(1 thread) / time({t} threads); 'best' = fastest after-idle sample of each; "
          f"'~' = after-idle spread > {NOISY:.0%}")  # fmt: skip
    print(
        f"SERIAL_BELOW suggestion (fusedopt._threads): the smallest size from which {t} threads win by >10% "
        "after idle at that and every larger measured size (medians; in brackets: using the best samples):"
    )
    for alg, a in res["algorithms"].items():
        st, sm, fi, fb = a["stable_idle_win"], a["stable_idle_win_min"], a["first_idle_win"], a["first_b2b_win"]
        rec = _fmt_n(st) if st is not None else "none"
        print(f"  {alg:<9} {rec:>5} [{_fmt_n(sm) if sm else 'none'}]  (first after-idle win {_fmt_n(fi) if fi else '-'},"
              f" first back-to-back win {_fmt_n(fb) if fb else '-'}; current {a['current_serial_below']})")  # fmt: skip
    print(
        "  ('none': 2 threads never won reliably up to the largest size measured — keep those sizes serial, or"
        " the machine was busy)"
    )


# --------------------------------------------------------------------------------------------
# command line



# -- whole-model steps ---------------------------------------------------------------------------
Shape = Tuple[int, ...]


def digits_mlp_shapes(hidden: int = 128) -> List[Shape]:
    """The MLP of examples/train_digits.py (64-128-128-10): 6 tensors, 26 122 elements."""
    return [(hidden, 64), (hidden,), (hidden, hidden), (hidden,), (10, hidden), (10,)]


def resnet18_shapes(num_classes: int = 1000) -> List[Shape]:
    """torchvision's ResNet-18 parameter shapes, in ``model.parameters()`` order: 62 tensors, 11 689 512 elements."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            shapes += [(out_ch, in_ch if block == 0 else out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv1, bn1
            shapes += [(out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv2, bn2
            if block == 0 and (stride != 1 or in_ch != out_ch):
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]  # downsample conv, bn
        in_ch = out_ch
    shapes += [(num_classes, 512), (num_classes,)]  # fc
    return shapes


def transformer_shapes(d_model: int = 64, n_layers: int = 12, vocab: int = 8192, context: int = 512) -> List[Shape]:
    """A small pre-LN GPT-style decoder (separate q/k/v, tied output embedding): 196 tensors, 1 156 992 elements."""
    d = d_model
    shapes: List[Shape] = [(vocab, d), (context, d)]  # token and position embeddings
    for _ in range(n_layers):
        shapes += [(d,), (d,)]  # ln1
        shapes += [(d, d), (d,)] * 3  # q, k, v
        shapes += [(d, d), (d,)]  # attention output projection
        shapes += [(d,), (d,)]  # ln2
        shapes += [(4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # MLP
    shapes += [(d,), (d,)]  # final layer norm
    return shapes


MODEL_SHAPES: Dict[str, Callable[[], List[Shape]]] = {
    "digits-mlp": digits_mlp_shapes,
    "transformer": transformer_shapes,
    "resnet18": resnet18_shapes,
}


def _model_runners(values: List[np.ndarray], grads: List[np.ndarray], torch: Any) -> Dict[str, Callable[[], Any]]:
    """One Adam step per contender on one model's parameter list (fresh copies for each)."""
    runners: Dict[str, Callable[[], Any]] = {}
    opt_list = Adam([v.copy() for v in values], lr=1e-3)
    runners["fusedopt"] = lambda: opt_list.step(grads)
    arena = FlatParams(values)
    for view, g in zip(arena.grads, grads):
        view[...] = g
    runners["fusedopt-arena"] = Adam(arena, lr=1e-3).step
    flat = [np.concatenate([v.ravel() for v in values])]
    flat_g = [np.concatenate([g.ravel() for g in grads])]
    flat_m, flat_v = [np.zeros_like(flat[0])], [np.zeros_like(flat[0])]
    runners["fusedopt-flat"] = lambda: functional.adam(flat, flat_g, flat_m, flat_v, step=10, lr=1e-3)
    if torch is not None:
        import fusedopt.torch as ft

        def torch_params() -> List[Any]:
            ps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
            for p, g in zip(ps, grads):
                p.grad = torch.from_numpy(g.copy())
            return ps

        runners["fusedopt.torch"] = ft.Adam(torch_params(), lr=1e-3).step
        runners["torch-fused"] = torch.optim.Adam(torch_params(), lr=1e-3, fused=True).step
        runners["torch-foreach"] = torch.optim.Adam(torch_params(), lr=1e-3, foreach=True).step
    return runners


def models_benchmark(models: Sequence[str], rounds: int = 7, use_torch: bool = True) -> List[Dict[str, Any]]:
    """float32 Adam whole-model steps: fusedopt (list, arena, one flat buffer of the same total
    size), fusedopt.torch, torch.optim fused and foreach; interleaved rounds, medians (µs/step)."""
    torch = _torch() if use_torch else None
    out = []
    for name in models:
        shapes = MODEL_SHAPES[name]()
        rng = np.random.default_rng(0)
        values = [rng.standard_normal(s).astype(np.float32) * np.float32(0.1) for s in shapes]
        grads = [rng.standard_normal(s).astype(np.float32) * np.float32(0.01) for s in shapes]
        n = sum(int(v.size) for v in values)
        runners = _model_runners(values, grads, torch)
        _log(f"models: {name} ({len(shapes)} tensors, {n} elements): calibrating")
        for fn in runners.values():
            fn()  # state allocation, warm-up
        ks = {k: _calibrate(fn) for k, fn in runners.items()}
        samples = _interleaved(runners, ks, rounds)
        med = {k: _summary(v)["median_s"] * 1e6 for k, v in samples.items()}
        ratios = {"list/flat": _paired(samples["fusedopt"], samples["fusedopt-flat"])}  # medians of per-round ratios
        if "torch-fused" in samples:
            for k in ("fusedopt", "fusedopt-arena", "fusedopt.torch"):
                ratios[f"torch-fused/{k}"] = _paired(samples["torch-fused"], samples[k])
        out.append({"model": name, "tensors": len(shapes), "elements": n, "us_per_step": med, "ratios": ratios})
    return out


def print_models(results: List[Dict[str, Any]]) -> None:
    names = [k for k in ("fusedopt", "fusedopt-arena", "fusedopt-flat", "fusedopt.torch", "torch-fused", "torch-foreach")
             if any(k in r["us_per_step"] for r in results)]  # fmt: skip
    print("whole-model float32 Adam step, µs/step (median); ratios (medians of per-round ratios): "
          "list/flat = list time / flat-buffer time, then torch-fused time / fusedopt time")
    print(f"{'model':12s} {'tensors':>7s} {'elements':>9s} | " + " | ".join(f"{k:>14s}" for k in names)
          + " | list/flat | x t.fused (list, arena, fusedopt.torch)")  # fmt: skip
    for r in results:
        m = r["us_per_step"]
        cells = " | ".join(f"{m[k]:14.1f}" if k in m else f"{'-':>14s}" for k in names)
        q = r["ratios"]
        ratio = ""
        if "torch-fused/fusedopt" in q:
            ratio = ", ".join(f"{q['torch-fused/' + k]:.2f}x" for k in ("fusedopt", "fusedopt-arena", "fusedopt.torch"))
        print(f"{r['model']:12s} {r['tensors']:7d} {r['elements']:9d} | {cells} | "
              f"{q['list/flat']:9.2f} | {ratio}")  # fmt: skip


def plot(results: List[Dict[str, Any]], path: str) -> None:
    """GB/s against size, one panel per (algorithm, dtype), a line per contender; the same-run
    ceiling (the native probe moving the step's bytes) dashed. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise SystemExit("--plot needs matplotlib: pip install 'fusedopt[bench]'") from exc
    panels = sorted({(r["algorithm"], r["dtype"]) for r in results})
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (algo, dt) in zip(axes.ravel(), panels):
        rs = sorted((r for r in results if r["algorithm"] == algo and r["dtype"] == dt), key=lambda r: r["n"])
        for c in CONTENDERS:
            pts = [(r["n"], r["contenders"][c]["gbps"]) for r in rs if "gbps" in r["contenders"].get(c, {})]
            if not pts:
                continue
            styles: Dict[str, Dict[str, Any]] = {"ceiling": {"ls": "--", "color": "k", "lw": 1.5},
                                                 "copy": {"ls": ":", "color": "gray"}}  # fmt: skip
            style = styles.get(c, {})
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=c, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (bytes the step must move / time)")
        ax.set_title(f"{algo} {dt}, {rs[0]['bytes_per_element']} B/element")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("fusedopt step throughput vs contenders and the same-run ceiling")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _log(f"wrote {path}")


def _parse_sizes(text: str) -> List[int]:
    """'12,16,20' (exponents of 2, values <= 48), '2^12', or element counts (values > 48)."""
    sizes = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.startswith("2^"):
            sizes.append(1 << int(tok[2:]))
        else:
            v = int(tok)
            if v < 0:
                raise argparse.ArgumentTypeError(f"bad size {tok!r}")
            sizes.append(1 << v if v <= 48 else v)
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def _parse_list(allowed: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        items = [x.strip().lower() for x in text.split(",") if x.strip()]
        if items == ["all"]:
            return list(allowed)
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (got {text!r})")
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fusedopt.bench",
        description="Benchmark fusedopt's fused steps against NumPy (and torch when importable).",
        epilog="The table goes to stdout, progress to stderr. On a shared machine compare ratios within one run.",
    )
    ap.add_argument("--quick", action="store_true", help="float32 Adam at 2^12, 2^16, 2^20 vs NumPy only (seconds)")
    ap.add_argument("--threads-crossover", action="store_true", help="threads=1 vs 2 (back to back / after idle)")
    ap.add_argument(
        "--models",
        type=_parse_list(tuple(MODEL_SHAPES)),
        default=None,
        help=f"whole-model float32 Adam steps on parameter lists: comma list of {', '.join(MODEL_SHAPES)} or 'all'",
    )
    ap.add_argument(
        "--algorithms",
        type=_parse_list(ALGORITHMS),
        default=None,
        help=f"comma list of {', '.join(ALGORITHMS)} or 'all' (default {','.join(DEFAULT_ALGORITHMS)})",
    )
    ap.add_argument(
        "--dtypes",
        type=_parse_list(("float32", "float64")),
        default=None,
        help="comma list of float32, float64 (default both)",
    )
    ap.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=None,
        help="comma list: exponents of 2 (e.g. 12,16,20), 2^k, or element counts (> 48)",
    )
    ap.add_argument(
        "--contenders",
        type=_parse_list(CONTENDERS),
        default=None,
        help=f"comma list of {', '.join(CONTENDERS)} (default all that apply)",
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the torch contenders")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fusedopt.set_num_threads(N) (and torch.set_num_threads(N)); crossover compares 1 vs N",
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 5)")
    ap.add_argument("--plain-alloc", action="store_true", help="plain np.empty arrays (no alignment/stagger)")
    ap.add_argument("--json", action="store_true", help="print JSON results to stdout instead of tables")
    ap.add_argument("--plot", metavar="FILE.png", default=None, help="GB/s vs size per contender (needs matplotlib)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            _parser().error("--threads must be >= 1")
        _threads.set_num_threads(args.threads)
        torch = None if args.no_torch else _torch()
        if torch is not None:
            torch.set_num_threads(args.threads)
    if args.rounds is not None and args.rounds < 1:
        _parser().error("--rounds must be >= 1")
    h = header()
    alloc = "plain np.empty" if args.plain_alloc else "separate buffers, 64 B aligned, staggered by i*(4 KiB+64 B)"
    h["alloc"] = alloc
    doc: Dict[str, Any] = {"header": h}

    if args.threads_crossover:
        t = args.threads if args.threads is not None else 2
        if t < 2:
            t = 2
        res = threads_crossover(
            args.algorithms or DEFAULT_ALGORITHMS,
            args.sizes or CROSSOVER_SIZES,
            threads=t,
            rounds=args.rounds or 7,
            dtype=(args.dtypes or ["float32"])[0],
        )
        doc["threads_crossover"] = res
        if args.json:
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            print_header(h, alloc)
            if not _core.openmp_enabled or (os.cpu_count() or 1) < 2:
                print("# note: OpenMP disabled or a single CPU: threads > 1 cannot win here")
            print_crossover(res)
        return 0

    if args.models:
        res_models = models_benchmark(args.models, rounds=args.rounds or 7, use_torch=not args.no_torch)
        doc["models"] = res_models
        if args.json:
            json.dump(doc, sys.stdout, indent=1)
            print()
        else:
            print_header(h, alloc)
            print_models(res_models)
        return 0

    if args.quick:
        algorithms = args.algorithms or ["adam"]
        dtypes = args.dtypes or ["float32"]
        sizes = args.sizes or list(QUICK_SIZES)
        contenders = args.contenders or ["fusedopt", "fusedopt-1t", "numpy-textbook", "numpy-inplace", "ceiling", "copy"]
        rounds = args.rounds or 5
    else:
        algorithms = args.algorithms or list(DEFAULT_ALGORITHMS)
        dtypes = args.dtypes or ["float32", "float64"]
        sizes = args.sizes or list(DEFAULT_SIZES)
        contenders = args.contenders or list(CONTENDERS)
        rounds = args.rounds or 7
    if args.no_torch:
        contenders = [c for c in contenders if not c.startswith("torch")]
    t0 = time.perf_counter()
    results = run(algorithms, dtypes, sizes, contenders=contenders, rounds=rounds, plain_alloc=args.plain_alloc)
    doc["results"] = results
    doc["seconds"] = time.perf_counter() - t0
    if args.plot:
        plot(results, args.plot)
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print_header(h, alloc)
        print_table(results)
        print(f"# {time.perf_counter() - t0:.1f} s; load average at end "
              f"{[round(x, 2) for x in os.getloadavg()]}")  # fmt: skip
    return 1 if any("wrong" in i for r in results for i in r["contenders"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
