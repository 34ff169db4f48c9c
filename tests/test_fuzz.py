"""Property-based fuzzing of the public API (hypothesis): functional layer and optimizer classes.

Every generated call either

* raises ``TypeError``/``ValueError`` whose message names (one of) the faulty argument(s), with
  every array and every buffer behind a view bitwise unchanged (optimizer state too), or
* performs exactly the reference update (:mod:`fusedopt.reference`, run on copies) in place, in
  the caller's arrays (memory-mapped files included), touching nothing else.

The generator mixes valid calls with 1-2 injected faults: dtypes (ints, uint16, complex, object,
bool, big-endian, the other float), 0-d and zero-size shapes, strided / negative-stride /
Fortran-order views, unaligned and read-only arrays, memory-mapped arrays (read-write, read-only,
copy-on-write), overlapping views, an array listed twice, lists of mismatched lengths, non-array
items and containers, and NaN/inf/negative/huge/wrongly typed hyperparameters and thread counts.
Whether a case is valid is decided by a model of the documented contract (``_expect_*`` below),
not by the implementation.

Budget and seed: ``FUSEDOPT_FUZZ_EXAMPLES`` (default 3000 functional + 1000 optimizer cases) and
``FUSEDOPT_FUZZ_SEED`` (default: hypothesis' ``derandomize``, i.e. a fixed sequence). The last
test prints "cases tried, crashes, arrays modified on error".
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

import fusedopt
from fusedopt import functional as F
from fusedopt import reference as R

# ------------------------------------------------------------------------------------------------
# budget, seed, counters
# ------------------------------------------------------------------------------------------------
_EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_EXAMPLES", "3000"))
_SEED = os.environ.get("FUSEDOPT_FUZZ_SEED")


def _fuzz_settings(n: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = settings(
            max_examples=n,
            deadline=None,
            derandomize=_SEED is None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )(fn)
        if _SEED is not None:
            fn = hyp_seed(int(_SEED))(fn)
        return fn

    return deco


COUNTS: Dict[str, int] = {
    "cases": 0,  # calls made (functional calls, constructions, steps, hyperparameter edits)
    "ok": 0,  # calls that updated in place and matched the reference
    "errors": 0,  # calls refused with TypeError/ValueError naming the argument
    "unexpected": 0,  # any other exception (counted per hypothesis replay; a crash would end the run)
    "modified_on_error": 0,  # refused calls after which some array differed
}

_WORD = r"(?<![A-Za-z0-9_]){}(?![A-Za-z0-9_])"


def _names_in(msg: str, names: Sequence[str]) -> bool:
    return any(re.search(_WORD.format(re.escape(n)), msg) for n in names)


# ------------------------------------------------------------------------------------------------
# hyperparameter kinds: the validity model of fusedopt._validation, written from the contract
# ------------------------------------------------------------------------------------------------
class Bad:
    """The expected exception type of a faulty value."""

    def __init__(self, exc: type) -> None:
        self.exc = exc


def _real_fault(v: Any) -> Optional[type]:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, Fraction, np.integer, np.floating)):
        return TypeError
    if not math.isfinite(float(v)):
        return ValueError
    return None


def hyper_fault(kind: str, v: Any) -> Optional[type]:
    """The exception a hyperparameter value must raise (None: valid)."""
    if kind == "flag":
        return None if isinstance(v, (bool, np.bool_)) else TypeError
    if kind == "step":
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            return TypeError
        return None if int(v) >= 1 else ValueError
    if kind == "threads":
        if v is None:
            return None
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, int):
            return TypeError
        return None if v >= 1 else ValueError
    fault = _real_fault(v)
    if fault is not None:
        return fault
    x = float(v)
    if kind == "nonneg":
        return None if x >= 0.0 else ValueError
    if kind == "unit":
        return None if 0.0 <= x < 1.0 else ValueError
    if kind == "closed":
        return None if 0.0 <= x <= 1.0 else ValueError
    raise AssertionError(kind)


BAD_REALS = [math.nan, math.inf, -math.inf, -1.0, -1e-300, -1e308, np.float32("nan"), "0.1", None, 1j, True,
             [0.1], Decimal("0.1"), np.float64(-2.0)]  # fmt: skip
BAD_FLAGS = [0, 1, None, "True", 1.0, np.int64(1)]
BAD_STEPS = [0, -1, -(2**70), 1.0, 2.5, "3", None, True, np.float64(3.0)]
BAD_THREADS = [0, -1, True, 1.5, "2", np.float64(2)]


def _valid_value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "nonneg":
        return st.one_of(
            st.floats(0.0, 2.0),
            st.sampled_from([0.0, -0.0, 0, 1, 5e-324, 1e-30, 1e30, 1e308, np.float32(0.25), np.float64(0.5),
                             np.int64(2), Fraction(1, 3)]),
        )  # fmt: skip
    if kind == "unit":
        return st.one_of(
            st.floats(0.0, 1.0, exclude_max=True),
            st.sampled_from([0.0, 0, 0.5, 1.0 - 2.0**-53, np.float32(0.9), Fraction(9, 10)]),
        )
    if kind == "closed":
        return st.one_of(st.floats(0.0, 1.0), st.sampled_from([0, 1, 1.0, np.float64(0.5)]))
    if kind == "flag":
        return st.sampled_from([True, False, np.bool_(True), np.bool_(False)])
    if kind == "step":
        # 10**300: still a float; see test_step_beyond_float_range for larger ints.
        return st.one_of(st.integers(1, 50), st.sampled_from([1, 2, 10**6, 2**63, 2**64 + 1, 10**300, np.int64(7)]))
    if kind == "threads":
        return st.sampled_from([None, None, 1, 2, 3])
    raise AssertionError(kind)


def _bad_value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "flag":
        return st.sampled_from(BAD_FLAGS)
    if kind == "step":
        return st.sampled_from(BAD_STEPS)
    if kind == "threads":
        return st.sampled_from(BAD_THREADS)
    extra = {"unit": [1.0, 1.5, 1e308], "closed": [1.0000001, 2.0], "nonneg": []}[kind]
    return st.sampled_from(BAD_REALS + extra)


# ------------------------------------------------------------------------------------------------
# algorithms of the functional layer
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Algo:
    name: str
    fn: Callable[..., None]
    ref: Callable[..., None]
    states: Tuple[str, ...]
    hypers: Dict[str, str]  # name -> kind
    required: Dict[str, str]  # optional state role -> why it is needed (for the model)

    def used_states(self, h: Dict[str, Any]) -> List[str]:
        used = []
        for role in self.states:
            if role not in self.required:
                used.append(role)
            elif self.required[role] == "momentum!=0" and float(h.get("momentum", 0.0)) != 0.0:
                used.append(role)
            elif self.required[role] == "momentum>0" and float(h.get("momentum", 0.0)) > 0.0:
                used.append(role)
            elif self.required[role] in ("centered", "amsgrad") and bool(h.get(self.required[role], False)):
                used.append(role)
        return used


ALGOS = [
    Algo("sgd", F.sgd, R.sgd, ("momentum_buffers",),
         dict(lr="nonneg", momentum="nonneg", dampening="closed", nesterov="flag", weight_decay="nonneg",
              maximize="flag", first_step="flag", threads="threads"),
         {"momentum_buffers": "momentum!=0"}),
    Algo("momentum", F.momentum, R.momentum, ("velocities",),
         dict(step="step", lr="nonneg", beta="unit", weight_decay="nonneg", bias_correction="flag", threads="threads"),
         {}),
    Algo("rmsprop", F.rmsprop, R.rmsprop, ("square_avgs", "grad_avgs", "momentum_buffers"),
         dict(lr="nonneg", alpha="unit", eps="nonneg", weight_decay="nonneg", momentum="nonneg", centered="flag",
              maximize="flag", threads="threads"),
         {"grad_avgs": "centered", "momentum_buffers": "momentum>0"}),
    Algo("adam", F.adam, R.adam, ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
         dict(step="step", lr="nonneg", beta1="unit", beta2="unit", eps="nonneg", weight_decay="nonneg",
              amsgrad="flag", maximize="flag", decoupled_weight_decay="flag", threads="threads"),
         {"max_exp_avg_sqs": "amsgrad"}),
    Algo("adamw", F.adamw, R.adamw, ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
         dict(step="step", lr="nonneg", beta1="unit", beta2="unit", eps="nonneg", weight_decay="nonneg",
              amsgrad="flag", maximize="flag", threads="threads"),
         {"max_exp_avg_sqs": "amsgrad"}),
    Algo("adagrad", F.adagrad, R.adagrad, ("state_sums",),
         dict(step="step", lr="nonneg", lr_decay="nonneg", weight_decay="nonneg", eps="nonneg", maximize="flag",
              threads="threads"),
         {}),
    Algo("lion", F.lion, R.lion, ("exp_avgs",),
         dict(lr="nonneg", beta1="unit", beta2="unit", weight_decay="nonneg", maximize="flag", threads="threads"),
         {}),
]  # fmt: skip

# every state array is written; grads are only read
WRITTEN_ROLES = {"params"} | {r for a in ALGOS for r in a.states}

SHAPES = [(), (0,), (1,), (2,), (7,), (16,), (33,), (3, 5), (2, 0, 4), (4, 1, 3), (1, 1), (65,)]
FAULT_KINDS = [
    "dtype", "noncontig", "negstride", "fortran", "unaligned", "readonly", "memmap_rw", "memmap_ro",
    "memmap_c", "shape", "same_array", "overlap", "nonarray", "list_len", "container", "broadcast",
]  # fmt: skip
# (float16 is a steppable parameter dtype since issue 13, with float32 gradients and states too: its
# place is taken by uint16, what a bfloat16 array that is not ml_dtypes' looks like)
OTHER_DTYPES = [np.int32, np.int64, np.uint8, np.uint16, np.complex64, np.complex128, object, np.bool_,
                np.dtype(">f4"), np.dtype(">f8"), np.longdouble]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# array factory: every array records the buffers behind it, so that writes outside a view show
# ------------------------------------------------------------------------------------------------
class Arrays:
    def __init__(self, rng: np.random.Generator, tmpdir: str) -> None:
        self.rng = rng
        self.tmpdir = tmpdir
        self.backing: List[np.ndarray] = []  # raw buffers (snapshotted)
        self.memmaps: List[Tuple[np.ndarray, str, bool]] = []  # (memmap, path, writes reach the file)
        self._n = 0

    def values(self, shape: Tuple[int, ...], dtype: Any, special: bool) -> np.ndarray:
        x = np.asarray(self.rng.standard_normal(shape) * self.rng.choice([1e-3, 1.0, 10.0]))
        if special and x.size:
            flat = x.reshape(-1)
            k = self.rng.integers(0, flat.size)
            flat[k] = self.rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, 5e-324])
        return np.array(x, dtype=dtype)  # a real ndarray, also for shape ()

    def plain(self, shape: Tuple[int, ...], dtype: Any, *, nonneg: bool = False, special: bool = False) -> np.ndarray:
        a = self.values(shape, dtype, special)
        if nonneg and np.dtype(dtype).kind == "f":
            a = np.abs(a)
        self.backing.append(a)
        return a

    def faulty(self, kind: str, shape: Tuple[int, ...], dtype: Any, nonneg: bool) -> Any:
        rng = self.rng
        if kind == "dtype":
            other = OTHER_DTYPES[rng.integers(len(OTHER_DTYPES))]
            if rng.random() < 0.3:  # the other float dtype: mixed-dtype call
                other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
            return self.plain(shape, other, nonneg=nonneg)
        if kind in ("noncontig", "negstride", "fortran"):
            n = int(np.prod(shape)) if shape else 1
            if kind == "fortran" and len(shape) >= 2:
                return self.plain(shape[::-1], dtype, nonneg=nonneg).T
            if kind == "negstride":
                return _neg_view(self.plain((n,), dtype, nonneg=nonneg), shape)
            return _strided_view(self.plain((2 * n + 1,), dtype, nonneg=nonneg), shape)
        if kind == "unaligned":
            itemsize = np.dtype(dtype).itemsize
            n = int(np.prod(shape)) if shape else 1
            raw = np.zeros(n * itemsize + itemsize, dtype=np.uint8)
            self.backing.append(raw)
            off = int(rng.integers(1, itemsize))
            a = raw[off : off + n * itemsize].view(dtype).reshape(shape)
            a[...] = self.values(shape, dtype, False)
            return a
        if kind == "readonly":
            a = self.plain(shape, dtype, nonneg=nonneg)
            a.setflags(write=False)
            return a
        if kind == "broadcast":
            row = self.plain(shape[-1:] if shape else (), dtype, nonneg=nonneg)
            return np.broadcast_to(row, shape)
        if kind.startswith("memmap"):
            mode = {"memmap_rw": "w+", "memmap_ro": "r", "memmap_c": "c"}[kind]
            self._n += 1
            path = os.path.join(self.tmpdir, f"m{self._n}.bin")
            vals = self.values(shape, dtype, False)
            if nonneg:
                vals = np.abs(vals)
            if vals.size == 0:  # np.memmap cannot map an empty file: a zero-size case is a plain array
                self.backing.append(vals)
                return vals
            mm = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
            mm[...] = vals
            mm.flush()
            if mode != "w+":
                del mm
                mm = np.memmap(path, dtype=dtype, mode=mode, shape=shape)
            self.memmaps.append((mm, path, mode == "w+"))
            return mm
        if kind == "shape":
            choices = [s for s in SHAPES if s != shape]
            return self.plain(choices[rng.integers(len(choices))], dtype, nonneg=nonneg)
        if kind == "nonarray":
            n = int(np.prod(shape)) if shape else 1
            return [1.0] * n if rng.random() < 0.5 else rng.choice(np.array([1.5, None, "x", b"ab"], dtype=object))
        raise AssertionError(kind)


def _neg_view(base: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """A view with a negative stride on the last axis (contiguous only when that axis has <= 1 element)."""
    if len(shape) <= 1:
        return base[::-1].reshape(shape)
    return base.reshape(shape)[..., ::-1]


def _strided_view(base: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    return base[1::2][:n].reshape(shape)


def _snapshot(objs: Sequence[Any]) -> List[Optional[bytes]]:
    return [o.tobytes() if isinstance(o, np.ndarray) else None for o in objs]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that NaNs only need to be NaN at the same places (payload and sign of
    a NaN produced by arithmetic are not specified across SIMD and NumPy)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    if not np.array_equal(na, nb):
        return False
    ia = np.ascontiguousarray(a).view(np.uint32 if a.dtype.itemsize == 4 else np.uint64)
    ib = np.ascontiguousarray(b).view(ia.dtype)
    return bool(np.array_equal(ia[~na], ib[~nb]))


# ------------------------------------------------------------------------------------------------
# the functional-layer fuzz case
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    algo: Algo
    hyper: Dict[str, Any]
    args: Dict[str, Any]  # role -> ndarray | list | tuple | other | None (optional role absent)
    single: bool


@st.composite
def functional_cases(draw: st.DrawFn, tmpdir: str) -> Tuple[Case, Arrays, List[str]]:
    algo = draw(st.sampled_from(ALGOS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = Arrays(rng, tmpdir)
    n_faults = draw(st.sampled_from([0, 0, 1, 1, 1, 2]))
    hyper_faults = draw(st.integers(0, n_faults))
    faulty_hypers = set(draw(st.lists(st.sampled_from(sorted(algo.hypers)), min_size=hyper_faults,
                                      max_size=hyper_faults, unique=True)))  # fmt: skip
    hyper: Dict[str, Any] = {}
    for name, kind in algo.hypers.items():
        if name in faulty_hypers:
            hyper[name] = draw(_bad_value(kind))
        elif kind in ("flag", "threads", "step") or draw(st.booleans()):
            hyper[name] = draw(_valid_value(kind))
        elif name == "lr" and algo.name == "sgd":
            hyper[name] = draw(_valid_value(kind))  # required keyword
        elif draw(st.booleans()):
            hyper[name] = draw(_valid_value(kind))
    if algo.name == "sgd" and "lr" not in hyper:
        hyper["lr"] = 0.1
    if algo.name == "momentum" and "lr" not in hyper:
        hyper["lr"] = 0.1
    # Momentum/nesterov combination: make the valid combination likely when momentum is on.
    if algo.name == "sgd" and hyper.get("nesterov") and "dampening" not in faulty_hypers and draw(st.booleans()):
        hyper["dampening"] = 0.0
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    single = draw(st.booleans())
    k = 1 if single else draw(st.integers(0, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(k)]
    special = draw(st.integers(0, 9)) == 0
    roles = ("params", "grads") + algo.states
    args: Dict[str, Any] = {}
    for role in roles:
        nonneg = role in ("exp_avg_sqs", "max_exp_avg_sqs", "square_avgs", "state_sums")
        args[role] = [arrays.plain(s, dtype, nonneg=nonneg, special=special) for s in shapes]
    # optional state roles may be absent (None) or present while unused
    for role in algo.required:
        if draw(st.integers(0, 3)) == 0:
            args[role] = None
    array_faults = n_faults - hyper_faults
    fault_desc: List[str] = [f"hyper:{n}" for n in sorted(faulty_hypers)]
    for _ in range(array_faults):
        candidates = [r for r in roles if isinstance(args[r], list)]
        if not candidates:
            break
        role = draw(st.sampled_from(candidates))
        kind = draw(st.sampled_from(FAULT_KINDS))
        nonneg = role in ("exp_avg_sqs", "max_exp_avg_sqs", "square_avgs", "state_sums")
        lst = args[role]
        if kind == "list_len":
            if lst and draw(st.booleans()):
                lst.pop(draw(st.integers(0, len(lst) - 1)))
            else:
                lst.append(arrays.plain(shapes[0] if shapes else (3,), dtype))
            fault_desc.append(f"{role}:list_len")
            continue
        if kind == "container":
            args[role] = draw(st.sampled_from(["dict", "gen", "str", "int", "set"]))
            fault_desc.append(f"{role}:container")
            continue
        if not lst:
            continue
        i = draw(st.integers(0, len(lst) - 1))
        shape = np.shape(lst[i]) if isinstance(lst[i], np.ndarray) else (shapes[i] if i < len(shapes) else (3,))
        if kind in ("same_array", "overlap"):
            others = [
                (r, j)
                for r in roles
                if args[r] is not None and isinstance(args[r], list)
                for j in range(len(args[r]))
                if (r, j) != (role, i) and isinstance(args[r][j], np.ndarray)
            ]
            if not others:
                continue
            r2, j2 = others[draw(st.integers(0, len(others) - 1))]
            target = args[r2][j2]
            if kind == "same_array":
                lst[i] = target
            else:
                n = int(target.size)
                if n == 0 or target.dtype.kind != "f" or not target.flags.c_contiguous:
                    continue
                buf = arrays.plain((n + 1,), target.dtype)
                shift = int(draw(st.integers(0, 1)))
                args[r2][j2] = buf[shift : shift + n].reshape(target.shape)
                lst[i] = buf[1 - shift : 1 - shift + n].reshape(target.shape)
            fault_desc.append(f"{role}[{i}]:{kind}:{r2}[{j2}]")
            continue
        lst[i] = arrays.faulty(kind, tuple(shape), dtype, nonneg)
        fault_desc.append(f"{role}[{i}]:{kind}")
    # turn the containers into what is passed
    for role in roles:
        v = args[role]
        if isinstance(v, str) and v in ("dict", "gen", "str", "int", "set"):
            args[role] = {"dict": {0: 1}, "gen": (x for x in []), "str": "abc", "int": 3, "set": set()}[v]
        elif isinstance(v, list):
            if single and len(v) == 1 and draw(st.booleans()):
                args[role] = v[0]
            elif draw(st.integers(0, 4)) == 0:
                args[role] = tuple(v)
    return Case(algo, hyper, args, single), arrays, fault_desc


def _as_items(v: Any) -> Optional[List[Any]]:
    if isinstance(v, np.ndarray):
        return [v]
    if isinstance(v, (list, tuple)):
        return list(v)
    return None


def _expect_functional(case: Case) -> List[Tuple[str, type]]:
    """(argument name, exception type) of every fault of the call; [] for a valid call."""
    algo, h, args = case.algo, case.hyper, case.args
    faults: List[Tuple[str, type]] = []
    for name, kind in algo.hypers.items():
        if name not in h:
            continue
        exc = hyper_fault(kind, h[name])
        if exc is not None:
            faults.append((name, exc))
    bad = {n for n, _ in faults}
    if algo.name == "sgd" and not {"momentum", "dampening", "nesterov"} & {n for n, _ in faults}:
        if h.get("nesterov") and (float(h.get("momentum", 0)) <= 0 or float(h.get("dampening", 0)) != 0):
            faults.append(("nesterov", ValueError))
    # Arrays are checked too when the hyperparameters that decide which state arrays are used
    # are valid: the implementation may report either kind of fault first.
    if bad & {"momentum", "centered", "amsgrad"}:
        return faults
    roles = ["params", "grads"] + algo.used_states(h)
    n_before = len(faults)
    for role in roles:
        if args.get(role) is None:
            faults.append((role, ValueError if role in algo.required else TypeError))
        elif _as_items(args[role]) is None:
            faults.append((role, TypeError))
    if len(faults) > n_before:
        return faults
    items = {r: _as_items(args[r]) for r in roles}
    params = items["params"]
    assert params is not None
    for r in roles[1:]:
        if len(items[r]) != len(params):  # type: ignore[arg-type]
            faults.append((r, ValueError))
            faults.append(("params", ValueError))
    if len(faults) > n_before:
        return faults
    ref_dtype = params[0].dtype if params and isinstance(params[0], np.ndarray) else None
    good: List[Tuple[str, np.ndarray, bool]] = []
    for r in roles:
        for i, a in enumerate(items[r]):  # type: ignore[arg-type]
            name = f"{r}[{i}]"
            if not isinstance(a, np.ndarray):
                faults.append((name, TypeError))
                continue
            if a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or not a.dtype.isnative:
                faults.append((name, TypeError))
                continue
            if ref_dtype is not None and a.dtype != ref_dtype:
                faults += [(name, TypeError), ("params[0]", TypeError)]
                continue
            p = params[i]
            if r != "params" and isinstance(p, np.ndarray) and a.shape != p.shape:
                faults += [(name, ValueError), (f"params[{i}]", ValueError)]
                continue
            if not a.flags.c_contiguous:
                faults.append((name, ValueError))
                continue
            if not a.flags.aligned:
                faults.append((name, ValueError))
                continue
            written = r in WRITTEN_ROLES
            if written and not a.flags.writeable:
                faults.append((name, ValueError))
                continue
            good.append((name, a, written))
    for x in range(len(good)):
        for y in range(x + 1, len(good)):
            (n1, a1, w1), (n2, a2, w2) = good[x], good[y]
            if (w1 or w2) and a1.size and a2.size and np.shares_memory(a1, a2):
                faults += [(n1, ValueError), (n2, ValueError)]
    return faults


def _ref_kwargs(algo: Algo, h: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in h.items() if k != "threads"}


def _run_reference(case: Case) -> Dict[Tuple[str, int], np.ndarray]:
    """Expected contents of every used array after the call (computed on copies)."""
    algo, h = case.algo, case.hyper
    roles = ["params", "grads"] + algo.used_states(h)
    items = {r: _as_items(case.args[r]) for r in roles}
    out: Dict[Tuple[str, int], np.ndarray] = {}
    for i in range(len(items["params"])):  # type: ignore[arg-type]
        copies = {r: np.array(items[r][i], copy=True) for r in roles}  # type: ignore[index]
        state_args = [copies[r] if r in copies else None for r in algo.states]
        with np.errstate(all="ignore"):
            algo.ref(copies["params"], copies["grads"], *state_args, **_ref_kwargs(algo, h))
        for r in roles:
            out[(r, i)] = copies[r]
    return out


def _call(case: Case) -> None:
    algo = case.algo
    state_args = [case.args.get(r) for r in algo.states]
    algo.fn(case.args["params"], case.args["grads"], *state_args, **case.hyper)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("fuzz_memmaps"))


def _all_array_objects(case: Case, arrays: Arrays) -> List[np.ndarray]:
    objs: List[np.ndarray] = list(arrays.backing) + [m for m, _, _ in arrays.memmaps]
    for v in case.args.values():
        for a in _as_items(v) or []:
            if isinstance(a, np.ndarray):
                objs.append(a)
    return objs


def check_functional_case(case: Case, arrays: Arrays, desc: List[str]) -> None:
    objs = _all_array_objects(case, arrays)
    before = _snapshot(objs)
    faults = _expect_functional(case)
    expected = None if faults else _run_reference(case)
    COUNTS["cases"] += 1
    try:
        _call(case)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        changed = _snapshot(objs) != before
        if changed:
            COUNTS["modified_on_error"] += 1
        assert not changed, f"{case.algo.name}: an array changed although the call raised {exc!r} ({desc})"
        assert faults, f"{case.algo.name}: a valid call raised {type(exc).__name__}: {msg} ({desc}, {case.hyper})"
        names = [n for n, _ in faults]
        assert _names_in(msg, names) or _names_in(msg, [n.split("[")[0] for n in names]), (
            f"{case.algo.name}: message {msg!r} names none of {names} ({desc})"
        )
        assert any(isinstance(exc, t) for _, t in faults), (
            f"{case.algo.name}: {type(exc).__name__}({msg!r}) but the faults are {faults} ({desc})"
        )
        COUNTS["errors"] += 1
        return
    except Exception as exc:
        COUNTS["unexpected"] += 1
        raise AssertionError(
            f"{case.algo.name}: unexpected {type(exc).__name__}: {exc} ({desc}, {case.hyper})"
        ) from exc
    assert not faults, (
        f"{case.algo.name}: an invalid call was accepted; expected one of {faults} ({desc}, {case.hyper})"
    )
    assert expected is not None
    algo = case.algo
    used = ["params", "grads"] + algo.used_states(case.hyper)
    touched = set()
    for (r, i), want in expected.items():
        got = _as_items(case.args[r])[i]  # type: ignore[index]
        assert _same_bits(np.asarray(got), want), (
            f"{algo.name}: {r}[{i}] differs from the reference ({desc}, {case.hyper})"
        )
        touched.add(id(got))
    # arrays the call must not touch: grads (read only) were compared above; unused roles:
    for r in algo.states:
        if r in used:
            continue
        for a in _as_items(case.args.get(r)) or []:
            if isinstance(a, np.ndarray) and id(a) not in touched:
                written = [o for (r2, i2), o in ((k, _as_items(case.args[k[0]])[k[1]]) for k in expected)  # type: ignore[index]
                           if r2 in WRITTEN_ROLES]  # fmt: skip
                if any(a.size and w.size and np.shares_memory(a, w) for w in written):
                    continue  # an ignored array that aliases a written one sees that write
                idx = next(k for k, o in enumerate(objs) if o is a)
                assert a.tobytes() == before[idx], f"{algo.name}: unused {r} was modified ({desc})"
    # the update landed in the mapped file itself (not in a copy)
    for mm, path, shared in arrays.memmaps:
        if shared and id(mm) in touched:
            mm.flush()
            on_disk = np.fromfile(path, dtype=mm.dtype).reshape(mm.shape)
            assert on_disk.tobytes() == np.asarray(mm).tobytes(), f"{algo.name}: memmap update did not reach {path}"
    COUNTS["ok"] += 1


@_fuzz_settings(_EXAMPLES)
@given(data=st.data())
def test_fuzz_functional(data: st.DataObject, fuzz_dir: str) -> None:
    case, arrays, desc = data.draw(functional_cases(fuzz_dir))
    try:
        check_functional_case(case, arrays, desc)
    finally:
        arrays.memmaps.clear()  # drop the maps before their files are removed
        for f in os.listdir(fuzz_dir):
            try:
                os.unlink(os.path.join(fuzz_dir, f))
            except OSError:
                pass


def test_step_beyond_float_range() -> None:
    """A step count too large for a float (e.g. 10**400, a corrupted counter) is refused with
    ValueError naming ``step``, not an OverflowError from the scalar arithmetic."""
    for name, call in [
        ("adam", lambda p, g, s1, s2: F.adam(p, g, s1, s2, step=10**400)),
        ("momentum", lambda p, g, s1, s2: F.momentum(p, g, s1, step=10**400, lr=0.1, bias_correction=True)),
        ("adagrad", lambda p, g, s1, s2: F.adagrad(p, g, s1, step=10**400, lr_decay=0.1)),
    ]:
        p, g, s1, s2 = (np.ones(5, np.float32) for _ in range(4))
        before = [x.tobytes() for x in (p, g, s1, s2)]
        with pytest.raises(ValueError, match=r"\bstep\b"):
            call(p, g, s1, s2)
        assert [x.tobytes() for x in (p, g, s1, s2)] == before, name


@pytest.mark.parametrize(
    "cls, key, good, bad",
    [
        (fusedopt.Momentum, "bias_correction", True, 1),
        (fusedopt.Adam, "amsgrad", False, 0),
        (fusedopt.SGD, "lr", 0.0, False),
    ],
    ids=["Momentum-bias_correction-1", "Adam-amsgrad-0", "SGD-lr-False"],
)
def test_edited_hyperparameter_checked_like_at_construction(cls: type, key: str, good: Any, bad: Any) -> None:
    """A value put into ``param_groups`` between steps is validated exactly as the constructor
    validates it, even when it compares equal to the previous (valid) value: ``1 == True`` and
    ``False == 0.0``, but an int is not a flag and a bool is not a learning rate."""
    p = np.ones(4, np.float32)
    kwargs = {"lr": 0.1, key: good} if key != "lr" else {key: good}
    with pytest.raises(TypeError, match=_WORD.format(re.escape(key))):
        cls([np.ones(4, np.float32)], **{**kwargs, key: bad})
    opt = cls([p], **kwargs)
    opt.step([np.ones(4, np.float32)])  # builds the cached plan
    opt.param_groups[0][key] = bad
    before = p.tobytes()
    with pytest.raises(TypeError, match=_WORD.format(re.escape(key))):
        opt.step([np.ones(4, np.float32)])
    assert p.tobytes() == before


def test_initial_accumulator_value_beyond_float32() -> None:
    """Adagrad(initial_accumulator_value=1e308) on float32 parameters: a finite, valid-looking
    value that float32 cannot hold. It must either be refused with ValueError naming the argument
    or accepted quietly; today NumPy's "overflow encountered in cast" RuntimeWarning escapes from
    the constructor (an exception under -W error, as in this test suite)."""
    p = np.ones(4, np.float32)
    try:
        opt = fusedopt.Adagrad([p], initial_accumulator_value=1e308)
    except ValueError as exc:
        assert "initial_accumulator_value" in str(exc)
        return
    opt.step([np.ones(4, np.float32)])


# ------------------------------------------------------------------------------------------------
# optimizer classes: construction, steps (valid and faulty), hyperparameter edits
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptSpec:
    name: str
    cls: type
    hypers: Dict[str, str]
    required_kw: Tuple[str, ...] = ()


OPTS = [
    OptSpec("SGD", fusedopt.SGD, dict(lr="nonneg", momentum="nonneg", dampening="closed", weight_decay="nonneg",
                                      nesterov="flag", maximize="flag")),
    OptSpec("Momentum", fusedopt.Momentum, dict(lr="nonneg", beta="unit", weight_decay="nonneg",
                                                bias_correction="flag"), ("lr",)),
    OptSpec("RMSprop", fusedopt.RMSprop, dict(lr="nonneg", alpha="unit", eps="nonneg", weight_decay="nonneg",
                                              momentum="nonneg", centered="flag", maximize="flag")),
    OptSpec("Adam", fusedopt.Adam, dict(lr="nonneg", betas="betas", eps="nonneg", weight_decay="nonneg",
                                        amsgrad="flag", maximize="flag", decoupled_weight_decay="flag")),
    OptSpec("AdamW", fusedopt.AdamW, dict(lr="nonneg", betas="betas", eps="nonneg", weight_decay="nonneg",
                                          amsgrad="flag", maximize="flag")),
    OptSpec("Adagrad", fusedopt.Adagrad, dict(lr="nonneg", lr_decay="nonneg", weight_decay="nonneg",
                                              initial_accumulator_value="nonneg", eps="nonneg", maximize="flag")),
]  # fmt: skip


def _opt_hyper_faults(spec: OptSpec, h: Dict[str, Any], params: Sequence[Any] = ()) -> List[Tuple[str, type]]:
    faults: List[Tuple[str, type]] = []
    for name, kind in spec.hypers.items():
        if name not in h:
            continue
        v = h[name]
        if kind == "betas":
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                faults.append(("betas", TypeError))
                continue
            for j in range(2):
                exc = hyper_fault("unit", v[j])
                if exc is not None:
                    faults.append((f"betas[{j}]", exc))
            continue
        exc = hyper_fault(kind, v)
        if exc is not None:
            faults.append((name, exc))
    if spec.name == "SGD" and not {"momentum", "dampening", "nesterov"} & {n for n, _ in faults}:
        if h.get("nesterov") and (float(h.get("momentum", 0)) <= 0 or float(h.get("dampening", 0)) != 0):
            faults.append(("nesterov", ValueError))
    if spec.name == "Adagrad" and "initial_accumulator_value" in h and not faults:
        # a finite value that does not fit the parameters' dtype (e.g. 1e308 for float32)
        with np.errstate(over="ignore"):
            for p in params:
                if isinstance(p, np.ndarray) and p.dtype.kind == "f" and \
                        not np.isfinite(p.dtype.type(float(h["initial_accumulator_value"]))):  # fmt: skip
                    faults.append(("initial_accumulator_value", ValueError))
                    break
    return faults


def _param_faults(params: List[Any]) -> List[Tuple[str, type]]:
    faults: List[Tuple[str, type]] = []
    good = []
    for i, a in enumerate(params):
        n = f"params[{i}]"
        if not isinstance(a, np.ndarray):
            faults.append((n, TypeError))
        elif a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or not a.dtype.isnative:
            faults.append((n, TypeError))
        elif not a.flags.c_contiguous or not a.flags.aligned or not a.flags.writeable:
            faults.append((n, ValueError))
        else:
            good.append((n, a))
    for x in range(len(good)):
        for y in range(x + 1, len(good)):
            if good[x][1].size and good[y][1].size and np.shares_memory(good[x][1], good[y][1]):
                faults += [(good[x][0], ValueError), (good[y][0], ValueError)]
    return faults


class RefOpt:
    """The optimizer classes' documented semantics, written with fusedopt.reference on copies."""

    def __init__(self, spec: OptSpec, params: List[np.ndarray], h: Dict[str, Any]) -> None:
        self.spec = spec
        self.params = [np.array(p, copy=True) for p in params]
        full = dict(
            SGD=dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
            Momentum=dict(beta=0.9, weight_decay=0.0, bias_correction=False),
            RMSprop=dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False),
            Adam=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                      decoupled_weight_decay=False),
            AdamW=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
            Adagrad=dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                         maximize=False),
        )[spec.name]  # fmt: skip
        full.update(h)
        self.h = full
        self.state: List[Dict[str, Any]] = [{} for _ in params]
        if spec.name == "Adagrad":
            for s, p in zip(self.state, self.params):
                s["sum"] = np.full_like(p, float(full["initial_accumulator_value"]))
                s["step"] = 0

    def step(self, grads: List[Optional[np.ndarray]]) -> None:
        h = self.h
        for p, g, s in zip(self.params, grads, self.state):
            if g is None:
                continue
            g = np.array(g, copy=True)
            z = functools.partial(np.zeros_like, p)
            t = s.get("step", 0) + 1
            with np.errstate(all="ignore"):
                if self.spec.name == "SGD":
                    buf = None
                    first = False
                    if float(h["momentum"]) != 0:
                        first = "momentum_buffer" not in s
                        buf = s.setdefault("momentum_buffer", z())
                    R.sgd(p, g, buf, lr=h["lr"], momentum=h["momentum"], dampening=h["dampening"],
                          nesterov=h["nesterov"], weight_decay=h["weight_decay"], maximize=h["maximize"],
                          first_step=first)  # fmt: skip
                    continue
                if self.spec.name == "Momentum":
                    R.momentum(p, g, s.setdefault("velocity", z()), step=t, lr=h["lr"], beta=h["beta"],
                               weight_decay=h["weight_decay"], bias_correction=h["bias_correction"])  # fmt: skip
                elif self.spec.name == "RMSprop":
                    sq = s.setdefault("square_avg", z())
                    ga = s.setdefault("grad_avg", z()) if h["centered"] else None
                    mb = s.setdefault("momentum_buffer", z()) if float(h["momentum"]) > 0 else None
                    R.rmsprop(p, g, sq, ga, mb, lr=h["lr"], alpha=h["alpha"], eps=h["eps"],
                              weight_decay=h["weight_decay"], momentum=h["momentum"], centered=h["centered"],
                              maximize=h["maximize"])  # fmt: skip
                elif self.spec.name in ("Adam", "AdamW"):
                    m, v = s.setdefault("exp_avg", z()), s.setdefault("exp_avg_sq", z())
                    vm = s.setdefault("max_exp_avg_sq", z()) if h["amsgrad"] else None
                    R.adam(p, g, m, v, vm, step=t, lr=h["lr"], beta1=h["betas"][0], beta2=h["betas"][1],
                           eps=h["eps"], weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
                           maximize=h["maximize"],
                           decoupled_weight_decay=h.get("decoupled_weight_decay", self.spec.name == "AdamW"))  # fmt: skip
                else:
                    R.adagrad(p, g, s["sum"], step=t, lr=h["lr"], lr_decay=h["lr_decay"],
                              weight_decay=h["weight_decay"], eps=h["eps"], maximize=h["maximize"])  # fmt: skip
            s["step"] = t


def _opt_snapshot(opt: Any) -> Tuple[Any, ...]:
    state = []
    for s in opt.state:
        state.append(tuple(sorted((k, v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items())))
    groups = [tuple(sorted((k, repr(v)) for k, v in g.items())) for g in opt.param_groups]
    return tuple(state), tuple(groups)


@st.composite
def opt_cases(draw: st.DrawFn, tmpdir: str) -> Dict[str, Any]:
    spec = draw(st.sampled_from(OPTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = Arrays(rng, tmpdir)
    h: Dict[str, Any] = {}
    bad_hyper = draw(st.integers(0, 5)) == 0
    bad_name = draw(st.sampled_from(sorted(spec.hypers))) if bad_hyper else None
    for name, kind in spec.hypers.items():
        if kind == "betas":
            if name == bad_name:
                h[name] = draw(st.sampled_from([(0.9,), (0.9, 0.99, 0.999), 0.9, None, "ab", (1.0, 0.9),
                                                (0.9, math.nan), (-0.1, 0.9), (0.9, "x")]))  # fmt: skip
            elif draw(st.booleans()):
                h[name] = (draw(_valid_value("unit")), draw(_valid_value("unit")))
            continue
        if name == bad_name:
            h[name] = draw(_bad_value(kind))
        elif name in spec.required_kw or draw(st.booleans()):
            h[name] = draw(_valid_value(kind))
    if spec.name == "SGD" and h.get("nesterov") and name != "dampening" and draw(st.booleans()):
        h["dampening"] = 0.0
        if not float(h.get("momentum", 0) if hyper_fault("nonneg", h.get("momentum", 0)) is None else 1) > 0:
            h["momentum"] = 0.5
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    use_arena = draw(st.integers(0, 4)) == 0
    k = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(k)]
    params: List[Any] = [arrays.plain(s, dtype) for s in shapes]
    param_fault = None if use_arena else draw(st.sampled_from([None] * 6 + ["dtype", "noncontig", "negstride",
        "fortran", "unaligned", "readonly", "memmap_rw", "memmap_ro", "memmap_c", "twice", "overlap", "nonarray",
        "broadcast"]))  # fmt: skip
    if param_fault is not None:
        i = draw(st.integers(0, k - 1))
        if param_fault == "twice":
            params.append(params[i])
            shapes.append(shapes[i])
        elif param_fault == "overlap":
            n = int(np.prod(shapes[i])) if shapes[i] else 1
            buf = arrays.plain((n + 1,), dtype)
            params[i] = buf[:n].reshape(shapes[i])
            params.append(buf[1 : n + 1].reshape(shapes[i]))
            shapes.append(shapes[i])
        else:
            params[i] = arrays.faulty(param_fault, shapes[i], dtype, False)
    n_steps = draw(st.integers(1, 4))
    steps = []
    for _ in range(n_steps):
        fault = draw(st.sampled_from([None] * 5 + ["none_entry", "list_len", "dtype", "shape", "noncontig",
            "unaligned", "grad_is_param", "overlap_param", "nonarray", "hyper_edit", "readonly_ok", "memmap_ok"]))  # fmt: skip
        steps.append((fault, draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(sorted(spec.hypers))),
                      draw(st.integers(0, 100))))  # fmt: skip
    return dict(spec=spec, h=h, params=params, shapes=shapes, dtype=dtype, arena=use_arena, arrays=arrays,
                steps=steps, desc=f"{spec.name} h={h} param_fault={param_fault} arena={use_arena}")  # fmt: skip


def _make_grads(arrays: Arrays, fault: Optional[str], params: List[np.ndarray], salt: int) -> List[Any]:
    grads: List[Any] = [arrays.plain(p.shape, p.dtype) for p in params]
    if fault is None or not grads:
        return grads
    i = salt % len(grads)
    p = params[i]
    if fault == "none_entry":
        grads[i] = None
    elif fault == "list_len":
        if salt % 2 and len(grads) > 1:
            grads.pop()
        else:
            grads.append(arrays.plain(p.shape, p.dtype))
    elif fault == "grad_is_param":
        grads[i] = p
    elif fault == "overlap_param":
        # another parameter's memory (or this one's) passed as a gradient
        j = (i + 1) % len(params)
        q = params[j]
        grads[i] = q if q.shape == p.shape and q.dtype == p.dtype else p
    elif fault == "readonly_ok":
        grads[i] = arrays.faulty("readonly", p.shape, p.dtype, False)
    elif fault == "memmap_ok":
        grads[i] = arrays.faulty("memmap_ro", p.shape, p.dtype, False)
    elif fault in ("dtype", "shape", "noncontig", "unaligned", "nonarray"):
        grads[i] = arrays.faulty(fault, p.shape, p.dtype, False)
    return grads


def _grad_faults(params: List[np.ndarray], grads: List[Any]) -> List[Tuple[str, type]]:
    if len(grads) != len(params):
        return [("grads", ValueError)]
    faults: List[Tuple[str, type]] = []
    for i, (p, g) in enumerate(zip(params, grads)):
        n = f"grads[{i}]"
        if g is None:
            continue
        if not isinstance(g, np.ndarray) or g.dtype != p.dtype or not g.dtype.isnative:
            faults.append((n, TypeError))
        elif g.shape != p.shape or not g.flags.c_contiguous or not g.flags.aligned:
            faults.append((n, ValueError))
        else:
            for j, q in enumerate(params):
                if g.size and q.size and np.shares_memory(g, q):
                    faults += [(n, ValueError), (f"params[{j}]", ValueError)]
    return faults


def check_opt_case(c: Dict[str, Any]) -> None:
    spec, h, params, arrays, desc = c["spec"], c["h"], c["params"], c["arrays"], c["desc"]
    arena = None
    if c["arena"]:
        arena = fusedopt.FlatParams(params)
        params = [arena.flat]
    objs = list(arrays.backing) + [m for m, _, _ in arrays.memmaps] + [p for p in params if isinstance(p, np.ndarray)]
    faults = _opt_hyper_faults(spec, h, params) + (_param_faults(params) if arena is None else [])
    before = _snapshot(objs)
    COUNTS["cases"] += 1
    try:
        opt = spec.cls(arena if arena is not None else params, **h)
    except (TypeError, ValueError) as exc:
        changed = _snapshot(objs) != before
        COUNTS["modified_on_error"] += int(changed)
        assert not changed, f"construction raised {exc!r} and changed an array ({desc})"
        assert faults, f"valid construction raised {exc!r} ({desc})"
        names = [n for n, _ in faults]
        assert _names_in(str(exc), names), f"message {str(exc)!r} names none of {names} ({desc})"
        assert any(isinstance(exc, t) for _, t in faults), f"{exc!r} but faults {faults} ({desc})"
        COUNTS["errors"] += 1
        return
    except Exception as exc:
        COUNTS["unexpected"] += 1
        raise AssertionError(f"construction: unexpected {type(exc).__name__}: {exc} ({desc})") from exc
    assert not faults, f"invalid construction accepted; expected {faults} ({desc})"
    COUNTS["ok"] += 1  # a valid construction, accepted
    assert len(opt.params) == len(params) and all(a is b for a, b in zip(opt.params, params))
    ref = RefOpt(spec, params, h)
    for fault, salt, hname, salt2 in c["steps"]:
        grads = _make_grads(arrays, fault if fault != "hyper_edit" else None, params, salt)
        if arena is not None and fault is None and salt % 2:
            arena.flat_grad[...] = grads[0]
            grads_arg: Any = None  # the arena's default gradient
        else:
            grads_arg = grads
        objs = list(arrays.backing) + [m for m, _, _ in arrays.memmaps] + list(params)
        objs += [g for g in grads if isinstance(g, np.ndarray)]
        expect = _grad_faults(params, grads)
        saved_hyper: Any = None
        if fault == "hyper_edit":
            # an invalid value put into param_groups between steps: the step refuses it
            kind = spec.hypers[hname]
            saved_hyper = opt.param_groups[0][hname]
            bad: Any
            if kind == "betas":
                bad, name, exc_type = [((0.9, math.inf), "betas[1]", ValueError), ((0.5,), "betas", TypeError),
                                       ("x", "betas", TypeError)][salt2 % 3]  # fmt: skip
            else:
                bad = {"flag": [None, "yes", 2, 0.5], "unit": [math.nan, 1.0, 1.5, -0.5, "0.1", None],
                       "closed": [math.nan, 1.5, -0.5, None], "nonneg": [math.nan, -1.0, "0.1", None, math.inf, [0.1]],
                       }[kind]  # fmt: skip
                bad = bad[salt2 % len(bad)]
                name, exc_type = hname, hyper_fault(kind, bad)
                assert exc_type is not None
            opt.param_groups[0][hname] = bad
            expect.append((name, exc_type))
        before = _snapshot(objs)
        state_before = _opt_snapshot(opt)
        COUNTS["cases"] += 1
        try:
            opt.step(grads_arg)
        except (TypeError, ValueError) as exc:
            changed = _snapshot(objs) != before or _opt_snapshot(opt) != state_before
            COUNTS["modified_on_error"] += int(changed)
            assert not changed, f"step raised {exc!r} and changed an array or the state ({desc}, step fault {fault})"
            assert expect, f"valid step raised {exc!r} ({desc}, step fault {fault})"
            names = [n for n, _ in expect]
            assert _names_in(str(exc), names), f"message {str(exc)!r} names none of {names} ({desc}, {fault})"
            COUNTS["errors"] += 1
        except Exception as exc:
            COUNTS["unexpected"] += 1
            raise AssertionError(f"step: unexpected {type(exc).__name__}: {exc} ({desc}, {fault})") from exc
        else:
            assert not expect, f"invalid step accepted; expected {expect} ({desc}, step fault {fault})"
            ref.step(grads)
            for i, (p, want) in enumerate(zip(params, ref.params)):
                assert _same_bits(p, want), f"params[{i}] differs from the reference ({desc}, step fault {fault})"
            for i, (s_got, s_want) in enumerate(zip(opt.state, ref.state)):
                for k, v in s_want.items():
                    if isinstance(v, np.ndarray):
                        assert _same_bits(s_got[k], v), f"state[{i}][{k!r}] differs ({desc})"
                    else:
                        assert s_got.get(k) == v, f"state[{i}][{k!r}] = {s_got.get(k)} != {v} ({desc})"
            COUNTS["ok"] += 1
        finally:
            if fault == "hyper_edit":
                opt.param_groups[0][hname] = saved_hyper


@_fuzz_settings(max(1, _EXAMPLES // 3))
@given(data=st.data())
def test_fuzz_optimizers(data: st.DataObject, fuzz_dir: str) -> None:
    c = data.draw(opt_cases(fuzz_dir))
    try:
        check_opt_case(c)
    finally:
        c["arrays"].memmaps.clear()
        for f in os.listdir(fuzz_dir):
            try:
                os.unlink(os.path.join(fuzz_dir, f))
            except OSError:
                pass


def test_fuzz_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Report the figures of this run (runs last in the module)."""
    line = (
        f"fuzz summary: cases tried {COUNTS['cases']}, updated as the reference {COUNTS['ok']}, "
        f"refused {COUNTS['errors']}, crashes 0 (the process survived), unexpected exceptions "
        f"{COUNTS['unexpected']}, arrays modified on error "
        f"{COUNTS['modified_on_error']} (seed {_SEED or 'derandomized'}, budget {_EXAMPLES})"
    )
    with capsys.disabled():
        print("\n" + line)
    out = os.environ.get("FUSEDOPT_FUZZ_REPORT")
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
    assert COUNTS["unexpected"] == 0
    assert COUNTS["modified_on_error"] == 0
