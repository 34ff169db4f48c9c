"""The bad-input contract of fusedopt.functional and of the optimizer classes.

Contract (CONTEXT / functional.py docstring): a wrong dtype or a non-ndarray raises TypeError; a
non-contiguous, unaligned, read-only written, shape-mismatched, overlapping array, a list length
mismatch or an invalid hyperparameter raises ValueError (wrong *types* of hyperparameters raise
TypeError). The message names the offending argument, and on any error no array is modified.
Nothing is ever copied silently: a successful call updates the caller's arrays in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import functional as F
from fusedopt import reference as R

SHAPE = (3, 4)


# ------------------------------------------------------------------------------------------------
# algorithm table: the functional, its reference, its state arguments and hyperparameters that
# switch every state array on (so that every role is really used by the call)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Algo:
    name: str
    fn: Callable[..., None]
    ref: Callable[..., None]
    states: Tuple[str, ...]
    hyper: Dict[str, Any]
    non_negative: Tuple[str, ...] = ()
    unit: Tuple[str, ...] = ()  # [0, 1)
    closed_unit: Tuple[str, ...] = ()  # [0, 1]
    has_step: bool = True
    flags: Tuple[str, ...] = ()
    # state role -> (hyper overrides that make it required, ...)
    required_by: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def roles(self) -> Tuple[str, ...]:
        return ("params", "grads") + self.states


ALGOS = {
    a.name: a
    for a in [
        Algo(
            "sgd", F.sgd, R.sgd, ("momentum_buffers",),
            dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
            non_negative=("lr", "momentum", "weight_decay"), closed_unit=("dampening",), has_step=False,
            flags=("nesterov", "maximize", "first_step"),
            required_by={"momentum_buffers": dict(momentum=0.9)},
        ),
        Algo(
            "momentum", F.momentum, R.momentum, ("velocities",),
            dict(step=3, lr=0.1, beta=0.8, weight_decay=0.01, bias_correction=True),
            non_negative=("lr", "weight_decay"), unit=("beta",), flags=("bias_correction",),
        ),
        Algo(
            "rmsprop", F.rmsprop, R.rmsprop, ("square_avgs", "grad_avgs", "momentum_buffers"),
            dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5, centered=True),
            non_negative=("lr", "eps", "weight_decay", "momentum"), unit=("alpha",), has_step=False,
            flags=("centered", "maximize"),
            required_by={"grad_avgs": dict(centered=True), "momentum_buffers": dict(momentum=0.5)},
        ),
        Algo(
            "adam", F.adam, R.adam, ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
            dict(step=3, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01, amsgrad=True),
            non_negative=("lr", "eps", "weight_decay"), unit=("beta1", "beta2"),
            flags=("amsgrad", "maximize", "decoupled_weight_decay"),
            required_by={"max_exp_avg_sqs": dict(amsgrad=True)},
        ),
        Algo(
            "adamw", F.adamw, R.adamw, ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
            dict(step=3, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, amsgrad=True),
            non_negative=("lr", "eps", "weight_decay"), unit=("beta1", "beta2"), flags=("amsgrad", "maximize"),
            required_by={"max_exp_avg_sqs": dict(amsgrad=True)},
        ),
        Algo(
            "adagrad", F.adagrad, R.adagrad, ("state_sums",),
            dict(step=3, lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-8),
            non_negative=("lr", "lr_decay", "weight_decay", "eps"), flags=("maximize",),
        ),
    ]
}  # fmt: skip
ALGO_NAMES = list(ALGOS)
# states whose values must be >= 0 (second moments / sums)
POSITIVE_STATES = {"square_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_sums"}


def _values(rng: np.random.Generator, role: str, shape: Tuple[int, ...], dt: Any) -> np.ndarray:
    if role in POSITIVE_STATES:
        a = rng.uniform(0.5, 1.5, size=shape)
    elif role == "grad_avgs":
        a = rng.uniform(-0.1, 0.1, size=shape)
    else:
        a = rng.standard_normal(size=shape)
    return np.array(a, dtype=dt, order="C", copy=True)  # (np.ascontiguousarray would make 0-d arrays 1-d)


def make_arrays(
    algo: Algo, dt: Any = np.float32, shapes: Tuple[Tuple[int, ...], ...] = (SHAPE, SHAPE), seed: int = 0
) -> Dict[str, List[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {r: [_values(rng, r, s, dt) for s in shapes] for r in algo.roles}


def call(algo: Algo, arrays: Dict[str, Any], **override: Any) -> None:
    algo.fn(*[arrays[r] for r in algo.roles], **{**algo.hyper, **override})


def reference_result(algo: Algo, arrays: Dict[str, List[np.ndarray]], **override: Any) -> Dict[str, List[np.ndarray]]:
    """Copies of ``arrays`` after the reference update, tensor by tensor."""
    out = {r: [a.copy() for a in arrays[r]] for r in algo.roles}
    hyper = {k: v for k, v in {**algo.hyper, **override}.items() if k != "threads"}
    for k in range(len(out["params"])):
        algo.ref(*[out[r][k] for r in algo.roles], **hyper)
    return out


def snapshot(*things: Any) -> List[Tuple[np.ndarray, bytes]]:
    """(array, bytes) of every ndarray found in the (nested) arguments."""
    found: List[Tuple[np.ndarray, bytes]] = []

    def walk(x: Any) -> None:
        if isinstance(x, np.ndarray):
            found.append((x, x.tobytes()))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for t in things:
        walk(t)
    return found


def assert_unchanged(snap: List[Tuple[np.ndarray, bytes]]) -> None:
    for i, (a, b) in enumerate(snap):
        assert a.tobytes() == b, f"array #{i} (shape {a.shape}, dtype {a.dtype}) was modified by a failed call"


def assert_raises_naming(exc: type, names: Tuple[str, ...], fn: Callable[[], Any]) -> str:
    with pytest.raises(exc) as info:
        fn()
    assert type(info.value) is exc, f"expected exactly {exc.__name__}, got {type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    for n in names:
        # a whole name: "exp_avg_sqs[0]" must not be satisfied by "max_exp_avg_sqs[0]", "lr" by "lr_decay"
        assert re.search(r"(?<![\w])" + re.escape(n) + r"(?![\w])", msg), f"message does not name {n!r}: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------
# bad arrays
# ------------------------------------------------------------------------------------------------
def _unaligned(a: np.ndarray) -> np.ndarray:
    buf = bytearray(a.nbytes + 1)
    u = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned and u.flags.writeable
    return u


def _strided(a: np.ndarray) -> np.ndarray:
    big = np.zeros((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
    v = big[::2]
    v[...] = a
    return v


def _fortran(a: np.ndarray) -> np.ndarray:
    f = np.asfortranarray(a)
    assert not f.flags.c_contiguous
    return f


def _negative_stride(a: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(a[::-1])[::-1]
    assert v.strides[0] < 0
    return v


def _readonly(a: np.ndarray) -> np.ndarray:
    c = a.copy()
    c.flags.writeable = False
    return c


def _other_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64 if a.dtype == np.float32 else np.float32)


def _astype(dt: Any) -> Callable[[np.ndarray], np.ndarray]:
    def f(a: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return a.astype(dt)

    return f


@dataclass(frozen=True)
class Fault:
    make: Callable[[np.ndarray], Any]
    exc: type
    written_only: bool = False  # only a fault for arrays the call writes


FAULTS = {
    "float64-for-float32": Fault(_other_float, TypeError),
    "int32": Fault(_astype(np.int32), TypeError),
    "float16": Fault(_astype(np.float16), TypeError),
    "complex64": Fault(_astype(np.complex64), TypeError),
    "object": Fault(_astype(object), TypeError),
    "bool": Fault(_astype(bool), TypeError),
    "big-endian": Fault(lambda a: a.astype(a.dtype.newbyteorder(">")), TypeError),
    "python-list": Fault(lambda a: a.tolist(), TypeError),
    "python-float": Fault(lambda a: 1.0, TypeError),
    "strided-view": Fault(_strided, ValueError),
    "fortran-order": Fault(_fortran, ValueError),
    "negative-stride": Fault(_negative_stride, ValueError),
    "unaligned": Fault(_unaligned, ValueError),
    "read-only": Fault(_readonly, ValueError, written_only=True),
    "shape-transposed": Fault(lambda a: a.reshape(a.shape[::-1]).copy(), ValueError),
    "shape-other-size": Fault(lambda a: np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype), ValueError),
    "shape-flattened": Fault(lambda a: a.ravel().copy(), ValueError),
}

ARRAY_FAULT_CASES = [
    pytest.param(algo, role, fault, id=f"{algo}-{role}-{fault}")
    for algo in ALGO_NAMES
    for role in ALGOS[algo].roles
    for fault, spec in FAULTS.items()
    if not (spec.written_only and role == "grads")
]


@pytest.mark.parametrize(("algo_name", "role", "fault"), ARRAY_FAULT_CASES)
def test_bad_array_raises_names_it_and_modifies_nothing(algo_name: str, role: str, fault: str) -> None:
    algo, spec = ALGOS[algo_name], FAULTS[fault]
    arrays = make_arrays(algo)
    arrays[role][1] = spec.make(arrays[role][1])
    snap = snapshot(arrays)
    assert_raises_naming(spec.exc, (f"{role}[1]",), lambda: call(algo, arrays))
    assert_unchanged(snap)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("algo_name", ALGO_NAMES)
@pytest.mark.parametrize("role", ["params", "grads", "state"])
def test_other_float_dtype_single_array_form(algo_name: str, role: str, dt: Any) -> None:
    """Single ndarrays (not lists): the mismatch is named with index 0, in both directions."""
    algo = ALGOS[algo_name]
    role = algo.states[0] if role == "state" else role
    arrays = make_arrays(algo, dt, shapes=(SHAPE,))
    single = {r: a[0] for r, a in arrays.items()}
    single[role] = _other_float(single[role])
    snap = snapshot(single)
    assert_raises_naming(TypeError, (f"{role}[0]",), lambda: call(algo, single))
    assert_unchanged(snap)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_params_of_different_dtypes_in_one_call(algo_name: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    for r in algo.roles:  # tensor 1 entirely float64: only the one-dtype-per-call rule is broken
        arrays[r][1] = arrays[r][1].astype(np.float64)
    snap = snapshot(arrays)
    assert_raises_naming(TypeError, ("params[1]",), lambda: call(algo, arrays))
    assert_unchanged(snap)


@pytest.mark.parametrize(
    ("algo_name", "role"), [pytest.param(a, r, id=f"{a}-{r}") for a in ALGO_NAMES for r in ALGOS[a].roles[1:]]
)
@pytest.mark.parametrize("length", [1, 3], ids=["shorter", "longer"])
def test_list_length_mismatch(algo_name: str, role: str, length: int) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    extra = make_arrays(algo, seed=1)
    arrays[role] = (arrays[role] + extra[role])[:length]
    snap = snapshot(arrays)
    assert_raises_naming(ValueError, (role,), lambda: call(algo, arrays))
    assert_unchanged(snap)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
@pytest.mark.parametrize("container", ["dict", "generator", "None", "float"])
def test_params_not_array_or_list(algo_name: str, container: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    snap = snapshot(arrays)
    bad = {"dict": {0: arrays["params"][0]}, "generator": (a for a in arrays["params"]), "None": None,
           "float": 1.0}[container]  # fmt: skip
    arrays["params"] = bad
    assert_raises_naming(TypeError, ("params",), lambda: call(algo, arrays))
    assert_unchanged(snap)


# ------------------------------------------------------------------------------------------------
# aliasing: a written array may not share memory with any other array of the call
# ------------------------------------------------------------------------------------------------
def _alias_grad_is_param(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    a["grads"][1] = a["params"][1]
    return ("grads[1]", "params[1]")


def _alias_state_is_param(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    s = algo.states[-1]
    a[s][1] = a["params"][1]
    return (f"{s}[1]", "params[1]")


def _alias_state_is_grad(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    s = algo.states[0]
    a[s][0] = a["grads"][0]
    return (f"{s}[0]", "grads[0]")


def _alias_state_is_other_state(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    s0, s1 = algo.states[0], algo.states[1]  # e.g. exp_avg is exp_avg_sq
    a[s1][1] = a[s0][1]
    return (f"{s1}[1]", f"{s0}[1]")


def _alias_params_overlapping_views(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    n = int(np.prod(SHAPE))
    buf = np.random.default_rng(5).standard_normal(n + n // 2).astype(a["params"][0].dtype)
    a["params"][0] = buf[:n].reshape(SHAPE)
    a["params"][1] = buf[n // 2 :].reshape(SHAPE)
    return ("params[1]", "params[0]")


def _alias_param_listed_twice(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    a["params"][1] = a["params"][0]
    return ("params[1]", "params[0]")


def _alias_state0_overlaps_param1(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    s = algo.states[0]
    n = int(np.prod(SHAPE))
    buf = np.abs(np.random.default_rng(6).standard_normal(n + n // 2)).astype(a["params"][0].dtype) + 0.5
    a["params"][1] = buf[:n].reshape(SHAPE)
    a[s][0] = buf[n // 2 :].reshape(SHAPE)
    return (f"{s}[0]", "params[1]")


def _alias_grad0_overlaps_state1(algo: Algo, a: Dict[str, List[np.ndarray]]) -> Tuple[str, ...]:
    s = algo.states[-1]
    n = int(np.prod(SHAPE))
    buf = np.abs(np.random.default_rng(7).standard_normal(n + 1)).astype(a["params"][0].dtype) + 0.5
    a[s][1] = buf[1:].reshape(SHAPE)
    a["grads"][0] = buf[:n].reshape(SHAPE)
    return (f"{s}[1]", "grads[0]")


ALIASES = {
    "grad-is-param": _alias_grad_is_param,
    "state-is-param": _alias_state_is_param,
    "state-is-grad": _alias_state_is_grad,
    "state-is-other-state": _alias_state_is_other_state,
    "params-overlapping-views": _alias_params_overlapping_views,
    "param-listed-twice": _alias_param_listed_twice,
    "state0-overlaps-param1": _alias_state0_overlaps_param1,
    "grad0-overlaps-state1": _alias_grad0_overlaps_state1,
}
ALIAS_CASES = [
    pytest.param(a, k, id=f"{a}-{k}")
    for a in ALGO_NAMES
    for k in ALIASES
    if not (k == "state-is-other-state" and len(ALGOS[a].states) < 2)
]


@pytest.mark.parametrize(("algo_name", "alias"), ALIAS_CASES)
def test_overlapping_memory_raises_and_modifies_nothing(algo_name: str, alias: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    names = ALIASES[alias](algo, arrays)
    snap = snapshot(arrays)
    assert_raises_naming(ValueError, names, lambda: call(algo, arrays))
    assert_unchanged(snap)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_gradients_may_share_memory(algo_name: str) -> None:
    """Gradients are only read: two tensors may use the same (or overlapping) gradient memory."""
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo, shapes=(SHAPE, SHAPE, SHAPE))
    n = int(np.prod(SHAPE))
    gbuf = np.random.default_rng(3).standard_normal(n + 2).astype(np.float32)
    g0 = gbuf[:n].reshape(SHAPE)
    arrays["grads"] = [g0, g0, gbuf[2:].reshape(SHAPE)]  # the same array twice, and an overlapping view
    expected = reference_result(algo, arrays)
    gsnap = snapshot(gbuf)
    call(algo, arrays)
    assert_unchanged(gsnap)
    for r in algo.roles:
        for k, (got, want) in enumerate(zip(arrays[r], expected[r])):
            np.testing.assert_array_equal(got, want, err_msg=f"{r}[{k}]", strict=True)


# ------------------------------------------------------------------------------------------------
# missing state, hyperparameters
# ------------------------------------------------------------------------------------------------
MISSING_STATE_CASES = [
    pytest.param(a, s, id=f"{a}-{s}") for a in ALGO_NAMES for s in ALGOS[a].required_by
]


@pytest.mark.parametrize(("algo_name", "state"), MISSING_STATE_CASES)
def test_missing_optional_state_when_a_flag_needs_it(algo_name: str, state: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    snap = snapshot(arrays)
    arrays[state] = None
    assert_raises_naming(ValueError, (state,), lambda: call(algo, arrays, **algo.required_by[state]))
    assert_unchanged(snap)


REQUIRED_STATE_CASES = [
    pytest.param(a, s, id=f"{a}-{s}")
    for a in ALGO_NAMES
    for s in ALGOS[a].states
    if s not in ALGOS[a].required_by
]


@pytest.mark.parametrize(("algo_name", "state"), REQUIRED_STATE_CASES)
def test_required_state_none(algo_name: str, state: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    snap = snapshot(arrays)
    arrays[state] = None
    assert_raises_naming(TypeError, (state,), lambda: call(algo, arrays))
    assert_unchanged(snap)


NAN, INF = float("nan"), float("inf")


def _hyper_cases() -> List[Any]:
    cases = []

    def add(algo: str, name: str, value: Any, exc: type, label: str) -> None:
        cases.append(pytest.param(algo, name, value, exc, id=f"{algo}-{name}={label}"))

    for a in ALGO_NAMES:
        algo = ALGOS[a]
        numeric = algo.non_negative + algo.unit + algo.closed_unit
        for n in numeric:
            add(a, n, NAN, ValueError, "nan")
            add(a, n, INF, ValueError, "inf")
            add(a, n, -INF, ValueError, "-inf")
            add(a, n, True, TypeError, "True")
            add(a, n, "0.1", TypeError, "str")
            add(a, n, None, TypeError, "None")
            add(a, n, 0.1 + 0j, TypeError, "complex")
        for n in algo.non_negative:
            add(a, n, -0.1, ValueError, "negative")
            add(a, n, -1e-300, ValueError, "tiny-negative")
        for n in algo.unit:
            add(a, n, 1.0, ValueError, "1.0")
            add(a, n, -0.1, ValueError, "negative")
            add(a, n, 1.5, ValueError, "1.5")
        for n in algo.closed_unit:
            add(a, n, 1.0 + 1e-12, ValueError, "above-1")
            add(a, n, -0.1, ValueError, "negative")
        if algo.has_step:
            add(a, "step", 0, ValueError, "0")
            add(a, "step", -1, ValueError, "-1")
            add(a, "step", 1.5, TypeError, "1.5")
            add(a, "step", True, TypeError, "True")
            add(a, "step", "2", TypeError, "str")
            add(a, "step", None, TypeError, "None")
        for n in algo.flags:
            add(a, n, "yes", TypeError, "str")
            add(a, n, None, TypeError, "None")
        add(a, "threads", 0, ValueError, "0")
        add(a, "threads", -2, ValueError, "-2")
        add(a, "threads", 1.5, TypeError, "1.5")
        add(a, "threads", True, TypeError, "True")
    return cases


@pytest.mark.parametrize(("algo_name", "name", "value", "exc"), _hyper_cases())
def test_invalid_hyperparameter(algo_name: str, name: str, value: Any, exc: type) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    snap = snapshot(arrays)
    assert_raises_naming(exc, (name,), lambda: call(algo, arrays, **{name: value}))
    assert_unchanged(snap)


@pytest.mark.parametrize(
    "override",
    [
        pytest.param(dict(nesterov=True, momentum=0.9, dampening=0.1), id="nesterov-with-dampening"),
        pytest.param(dict(nesterov=True, momentum=0.0, dampening=0.0), id="nesterov-without-momentum"),
    ],
)
def test_sgd_nesterov_rules(override: Dict[str, Any]) -> None:
    algo = ALGOS["sgd"]
    arrays = make_arrays(algo)
    snap = snapshot(arrays)
    assert_raises_naming(ValueError, ("nesterov",), lambda: call(algo, arrays, **override))
    assert_unchanged(snap)


@pytest.mark.parametrize(
    ("algo_name", "override"),
    [
        pytest.param("sgd", dict(dampening=1.0, momentum=0.0, lr=0.0, weight_decay=0.0), id="sgd-dampening-1-lr-0"),
        pytest.param("momentum", dict(step=1, beta=0.0, lr=0.0), id="momentum-beta-0"),
        pytest.param("rmsprop", dict(alpha=0.0, eps=0.0, momentum=0.0, centered=False), id="rmsprop-alpha-0-eps-0"),
        pytest.param("adam", dict(step=10**6, beta1=0.0, beta2=0.0, eps=0.0), id="adam-betas-0-large-step"),
        pytest.param("adagrad", dict(step=1, lr=0.0, eps=0.0), id="adagrad-lr-0"),
    ],
)
def test_boundary_hyperparameters_are_accepted(algo_name: str, override: Dict[str, Any]) -> None:
    """The closed ends of the valid ranges work (and numpy scalars are numbers)."""
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    expected = reference_result(algo, arrays, **override)
    call(algo, arrays, **{k: (np.float64(v) if isinstance(v, float) else v) for k, v in override.items()})
    for r in algo.roles:
        for k in range(2):
            assert arrays[r][k].tobytes() == expected[r][k].tobytes(), f"{r}[{k}]"


# ------------------------------------------------------------------------------------------------
# things that must work, and must land in the caller's arrays
# ------------------------------------------------------------------------------------------------
def assert_matches(algo: Algo, arrays: Dict[str, Any], expected: Dict[str, List[np.ndarray]]) -> None:
    for r in algo.roles:
        got = arrays[r] if isinstance(arrays[r], (list, tuple)) else [arrays[r]]
        for k, (g, w) in enumerate(zip(got, expected[r])):
            assert g.shape == w.shape and g.dtype == w.dtype, f"{r}[{k}]"
            assert g.tobytes() == w.tobytes(), f"{r}[{k}] differs from the reference (or was not updated in place)"


@pytest.mark.parametrize("threads", [None, 1, 2], ids=["threads-auto", "threads-1", "threads-2"])
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_updates_land_in_callers_arrays(algo_name: str, dt: Any, threads: Optional[int]) -> None:
    """Mixed sizes incl. a zero-size and a 0-d tensor in one list call; every output is in place."""
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo, dt, shapes=(SHAPE, (37,), (0,), (), (2, 0, 3), (1,)))
    ids = {r: [id(a) for a in arrays[r]] for r in algo.roles}
    grads_before = snapshot(arrays["grads"])
    expected = reference_result(algo, arrays, threads=threads)
    call(algo, arrays, threads=threads)
    assert {r: [id(a) for a in arrays[r]] for r in algo.roles} == ids
    assert_unchanged(grads_before)
    assert_matches(algo, arrays, expected)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_call_changes_params(algo_name: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    before = [p.copy() for p in arrays["params"]]
    call(algo, arrays)
    for k, (p, b) in enumerate(zip(arrays["params"], before)):
        assert not np.array_equal(p, b), f"params[{k}] was not updated"


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
@pytest.mark.parametrize("form", ["ndarray", "tuple", "list"])
def test_single_array_and_tuple_forms(algo_name: str, form: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo, shapes=(SHAPE,))
    expected = reference_result(algo, arrays)
    conv: Callable[[List[np.ndarray]], Any] = {"ndarray": lambda x: x[0], "tuple": tuple, "list": list}[form]
    wrapped = {r: conv(arrays[r]) for r in algo.roles}
    call(algo, wrapped)
    assert_matches(algo, arrays, expected)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_zero_size_arrays_are_a_no_op(algo_name: str) -> None:
    algo = ALGOS[algo_name]
    for shapes in [((0,),), ((0,), (3, 0)), ()]:
        arrays = make_arrays(algo, shapes=shapes)
        call(algo, arrays)
        call(algo, arrays, threads=2)
        assert all(a.size == 0 for r in algo.roles for a in arrays[r])


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_zero_dim_arrays(algo_name: str, dt: Any) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo, dt, shapes=((),))
    single = {r: a[0] for r, a in arrays.items()}
    assert single["params"].ndim == 0
    before = single["params"].copy()
    expected = reference_result(algo, arrays)
    call(algo, single)
    assert_matches(algo, single, expected)
    assert single["params"].tobytes() != before.tobytes(), "the 0-d parameter was not updated"
    # 0-d shape must still be matched exactly
    bad = dict(single)
    bad["grads"] = single["grads"].reshape(1)
    snap = snapshot(bad)
    assert_raises_naming(ValueError, ("grads[0]",), lambda: call(algo, bad))
    assert_unchanged(snap)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_read_only_grad_is_fine(algo_name: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    for g in arrays["grads"]:
        g.flags.writeable = False
    gsnap = snapshot(arrays["grads"])
    expected = reference_result(algo, arrays)
    call(algo, arrays)
    assert_unchanged(gsnap)
    assert_matches(algo, arrays, expected)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_read_only_grad_view_of_a_buffer(algo_name: str) -> None:
    """A read-only gradient that is a view of read-only bytes (e.g. np.frombuffer on bytes)."""
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    arrays["grads"] = [np.frombuffer(g.tobytes(), dtype=g.dtype).reshape(g.shape) for g in arrays["grads"]]
    assert not arrays["grads"][0].flags.writeable
    expected = reference_result(algo, arrays)
    call(algo, arrays)
    assert_matches(algo, arrays, expected)


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_memmap_arrays_are_updated_in_place(algo_name: str, tmp_path: Any) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    expected = reference_result(algo, arrays)
    maps: Dict[str, List[np.memmap]] = {}
    for r in algo.roles:
        maps[r] = []
        for k, a in enumerate(arrays[r]):
            path = tmp_path / f"{r}{k}.bin"
            a.tofile(path)
            maps[r].append(np.memmap(path, dtype=a.dtype, mode="r+", shape=a.shape))
    call(algo, maps)
    for r in algo.roles:
        for m in maps[r]:
            m.flush()
    for r in algo.roles:
        for k in range(2):
            on_disk = np.fromfile(tmp_path / f"{r}{k}.bin", dtype=arrays[r][k].dtype).reshape(SHAPE)
            assert on_disk.tobytes() == expected[r][k].tobytes(), f"{r}[{k}] on disk"
    assert maps["params"][0].tobytes() != arrays["params"][0].tobytes()
    del maps


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_read_only_memmap_param_is_refused(algo_name: str, tmp_path: Any) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    path = tmp_path / "p.bin"
    arrays["params"][1].tofile(path)
    arrays["params"][1] = np.memmap(path, dtype=np.float32, mode="r", shape=SHAPE)
    snap = snapshot(arrays)
    assert_raises_naming(ValueError, ("params[1]",), lambda: call(algo, arrays))
    assert_unchanged(snap)
    arrays.clear()  # release the memmap before tmp_path is cleaned up


class _Tagged(np.ndarray):
    """An ndarray subclass (like a user's tagged parameter type)."""


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_ndarray_subclass_works(algo_name: str) -> None:
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo)
    expected = reference_result(algo, arrays)
    sub = {r: [a.view(_Tagged) for a in arrays[r]] for r in algo.roles}
    call(algo, sub)
    assert type(sub["params"][0]) is _Tagged
    assert_matches(algo, arrays, expected)  # views share memory with the originals


@pytest.mark.parametrize("algo_name", ALGO_NAMES)
def test_disjoint_views_of_one_buffer_are_updated_in_place(algo_name: str) -> None:
    """Params (and states) as adjacent, non-overlapping views of one flat buffer: the results land
    in the buffers (the common 'flat parameter vector' layout)."""
    algo = ALGOS[algo_name]
    arrays = make_arrays(algo, shapes=(SHAPE, (5,), SHAPE))
    expected = reference_result(algo, arrays)
    flat: Dict[str, np.ndarray] = {}
    views: Dict[str, List[np.ndarray]] = {}
    for r in algo.roles:
        flat[r] = np.concatenate([a.ravel() for a in arrays[r]])
        views[r], off = [], 0
        for a in arrays[r]:
            views[r].append(flat[r][off : off + a.size].reshape(a.shape))
            off += a.size
    call(algo, views)
    for r in algo.roles:
        want = np.concatenate([a.ravel() for a in expected[r]])
        assert flat[r].tobytes() == want.tobytes(), r


def test_first_step_sgd_ignores_buffer_contents() -> None:
    """first_step=True: the buffer is overwritten with g (NaN garbage in it must not leak)."""
    algo = ALGOS["sgd"]
    arrays = make_arrays(algo)
    for b in arrays["momentum_buffers"]:
        b[...] = np.nan
    expected = reference_result(algo, arrays, first_step=True)
    call(algo, arrays, first_step=True)
    assert_matches(algo, arrays, expected)
    assert np.all(np.isfinite(arrays["params"][0]))


# ------------------------------------------------------------------------------------------------
# optimizer classes
# ------------------------------------------------------------------------------------------------
CLASSES = {
    "SGD": (fusedopt.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "Momentum": (fusedopt.Momentum, dict(lr=0.1, beta=0.8, bias_correction=True)),
    "RMSprop": (fusedopt.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    "Adam": (fusedopt.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    "AdamW": (fusedopt.AdamW, dict(lr=0.01, amsgrad=True)),
    "Adagrad": (fusedopt.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
}
CLASS_NAMES = list(CLASSES)


def build(name: str, params: Any, **kw: Any) -> fusedopt.Optimizer:
    cls, hyper = CLASSES[name]
    return cls(params, **{**hyper, **kw})


def rand_params(dtypes: Tuple[Any, ...] = (np.float32,) * 3, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [SHAPE, (7,), (2, 2, 2), (5,), (3,)]
    return [rng.standard_normal(shapes[i % len(shapes)]).astype(dt) for i, dt in enumerate(dtypes)]


def rand_grads(params: List[np.ndarray], seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def opt_snapshot(opt: fusedopt.Optimizer) -> Any:
    def freeze(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return ("ndarray", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, dict):
            return {k: freeze(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(freeze(x) for x in v)
        return v

    return (
        [freeze(p) for p in opt.params],
        freeze(opt.state),
        freeze(opt.param_groups),
    )


BAD_PARAM_CASES = {
    "int32": (lambda ps: ps.__setitem__(1, ps[1].astype(np.int32)), TypeError, "params[1]"),
    # (float16 and ml_dtypes.bfloat16 parameters are steppable since issue 13: tests/test_lowp_api.py)
    "uint16-as-bf16": (lambda ps: ps.__setitem__(1, ps[1].astype(np.uint16)), TypeError, "params[1]"),
    "big-endian": (lambda ps: ps.__setitem__(1, ps[1].astype(">f4")), TypeError, "params[1]"),
    "python-list": (lambda ps: ps.__setitem__(1, ps[1].tolist()), TypeError, "params[1]"),
    "non-contiguous": (lambda ps: ps.__setitem__(1, _strided(ps[1])), ValueError, "params[1]"),
    "fortran-order": (lambda ps: ps.__setitem__(0, _fortran(ps[0])), ValueError, "params[0]"),
    "read-only": (lambda ps: ps.__setitem__(2, _readonly(ps[2])), ValueError, "params[2]"),
    "unaligned": (lambda ps: ps.__setitem__(2, _unaligned(ps[2])), ValueError, "params[2]"),
    "listed-twice": (lambda ps: ps.__setitem__(2, ps[0]), ValueError, "params[2]"),
    "overlapping-views": (lambda ps: ps.__setitem__(slice(0, 2), _overlapping_pair()), ValueError, "params[1]"),
}  # fmt: skip


def _overlapping_pair() -> List[np.ndarray]:
    buf = np.zeros(20, np.float32)
    return [buf[:12], buf[8:]]


@pytest.mark.parametrize("case", list(BAD_PARAM_CASES))
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_optimizer_rejects_bad_param(name: str, case: str) -> None:
    ps = rand_params()
    mutate, exc, label = BAD_PARAM_CASES[case]
    mutate(ps)
    snap = snapshot(ps)
    assert_raises_naming(exc, (label,), lambda: build(name, ps))
    assert_unchanged(snap)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_optimizer_rejects_empty_and_mixed_params(name: str) -> None:
    assert_raises_naming(ValueError, ("params",), lambda: build(name, []))
    assert_raises_naming(ValueError, ("params",), lambda: build(name, iter([])))
    ps = rand_params()
    assert_raises_naming(TypeError, ("params",), lambda: build(name, [{"params": [ps[0]]}, ps[1]]))
    assert_raises_naming(TypeError, ("params",), lambda: build(name, [ps[0], {"params": [ps[1]]}]))
    # the same parameter in two groups, and a group overlapping another group's parameter
    assert_raises_naming(ValueError, ("params[1]", "params[0]"),
                         lambda: build(name, [{"params": [ps[0]]}, {"params": [ps[0]]}]))  # fmt: skip
    a, b = _overlapping_pair()
    assert_raises_naming(ValueError, ("params[1]", "params[0]"),
                         lambda: build(name, [{"params": [a]}, {"params": [b]}]))  # fmt: skip
    assert_raises_naming(ValueError, ("nonsense",), lambda: build(name, [{"params": [ps[0]], "nonsense": 1}]))


@pytest.mark.parametrize(
    ("name", "kw", "exc", "label"),
    [
        pytest.param("SGD", dict(lr=-1.0), ValueError, "lr", id="SGD-lr-negative"),
        pytest.param("SGD", dict(lr=NAN), ValueError, "lr", id="SGD-lr-nan"),
        pytest.param("SGD", dict(momentum=-0.5), ValueError, "momentum", id="SGD-momentum-negative"),
        pytest.param("SGD", dict(nesterov=True, dampening=0.1), ValueError, "nesterov", id="SGD-nesterov-dampening"),
        pytest.param("SGD", dict(nesterov=True, momentum=0.0, dampening=0.0), ValueError, "nesterov",
                     id="SGD-nesterov-no-momentum"),
        pytest.param("Momentum", dict(beta=1.0), ValueError, "beta", id="Momentum-beta-1"),
        pytest.param("RMSprop", dict(alpha=1.0), ValueError, "alpha", id="RMSprop-alpha-1"),
        pytest.param("RMSprop", dict(eps=-1e-8), ValueError, "eps", id="RMSprop-eps-negative"),
        pytest.param("Adam", dict(betas=(1.0, 0.999)), ValueError, "betas[0]", id="Adam-beta1-1"),
        pytest.param("Adam", dict(betas=(0.9, 1.0)), ValueError, "betas[1]", id="Adam-beta2-1"),
        pytest.param("Adam", dict(betas=(0.9, -0.1)), ValueError, "betas[1]", id="Adam-beta2-negative"),
        pytest.param("Adam", dict(betas=(NAN, 0.9)), ValueError, "betas[0]", id="Adam-beta1-nan"),
        pytest.param("Adam", dict(betas=(0.9,)), TypeError, "betas", id="Adam-betas-one-value"),
        pytest.param("Adam", dict(betas=0.9), TypeError, "betas", id="Adam-betas-scalar"),
        pytest.param("Adam", dict(weight_decay=INF), ValueError, "weight_decay", id="Adam-wd-inf"),
        pytest.param("Adam", dict(amsgrad="yes"), TypeError, "amsgrad", id="Adam-amsgrad-str"),
        pytest.param("AdamW", dict(lr="0.1"), TypeError, "lr", id="AdamW-lr-str"),
        pytest.param("AdamW", dict(eps=True), TypeError, "eps", id="AdamW-eps-bool"),
        pytest.param("Adagrad", dict(lr_decay=-0.1), ValueError, "lr_decay", id="Adagrad-lr_decay-negative"),
        pytest.param("Adagrad", dict(initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value",
                     id="Adagrad-init-negative"),
    ],
)  # fmt: skip
def test_optimizer_rejects_bad_hyperparameters(name: str, kw: Dict[str, Any], exc: type, label: str) -> None:
    assert_raises_naming(exc, (label,), lambda: build(name, rand_params(), **kw))


def _prepared(name: str, dtypes: Tuple[Any, ...], presteps: int) -> Tuple[fusedopt.Optimizer, List[np.ndarray]]:
    ps = rand_params(dtypes)
    opt = build(name, ps)
    for s in range(presteps):
        opt.step(rand_grads(ps, s))
    return opt, ps


MIXED = (np.float32, np.float64, np.float32, np.float64)
SAME = (np.float32,) * 4


def _view_of(src: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A view of ``src``'s memory with the shape of ``like`` (a gradient aliasing ``src``)."""
    assert src.dtype == like.dtype and src.size >= like.size
    return src.reshape(-1)[: like.size].reshape(like.shape)


def _bad_grads(case: str, ps: List[np.ndarray]) -> Tuple[List[Any], type, Tuple[str, ...]]:
    """Gradients where only the LAST entry is bad (or the list length is wrong)."""
    g: List[Any] = rand_grads(ps, 99)
    last = len(ps) - 1
    if case == "too-few":
        return g[:-1], ValueError, ("grads",)
    if case == "too-many":
        return g + [g[0]], ValueError, ("grads",)
    if case == "wrong-dtype":
        g[last] = _other_float(g[last])
        return g, TypeError, (f"grads[{last}]",)
    if case == "int-dtype":
        g[last] = g[last].astype(np.int64)
        return g, TypeError, (f"grads[{last}]",)
    if case == "python-list":
        g[last] = g[last].tolist()
        return g, TypeError, (f"grads[{last}]",)
    if case == "wrong-shape":
        g[last] = np.zeros(g[last].size + 1, g[last].dtype)
        return g, ValueError, (f"grads[{last}]",)
    if case == "non-contiguous":
        g[last] = _strided(g[last])
        return g, ValueError, (f"grads[{last}]",)
    if case == "unaligned":
        g[last] = _unaligned(g[last])
        return g, ValueError, (f"grads[{last}]",)
    if case == "aliases-other-param":
        g[last] = _view_of(ps[last - 2], ps[last])  # params[last-2] has the last param's dtype
        return g, ValueError, (f"grads[{last}]", f"params[{last - 2}]")
    if case == "is-own-param":
        g[last] = ps[last]
        return g, ValueError, (f"grads[{last}]", f"params[{last}]")
    raise AssertionError(case)


STEP_ERROR_CASES = [
    "too-few", "too-many", "wrong-dtype", "int-dtype", "python-list", "wrong-shape", "non-contiguous",
    "unaligned", "aliases-other-param", "is-own-param",
]  # fmt: skip


@pytest.mark.parametrize("case", STEP_ERROR_CASES)
@pytest.mark.parametrize("dtypes", [SAME, MIXED], ids=["same-dtype", "mixed-dtypes"])
@pytest.mark.parametrize("presteps", [0, 2], ids=["fresh", "after-2-steps"])
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_with_bad_grads_changes_nothing(name: str, presteps: int, dtypes: Tuple[Any, ...], case: str) -> None:
    opt, ps = _prepared(name, dtypes, presteps)
    before = opt_snapshot(opt)
    grads, exc, labels = _bad_grads(case, ps)
    gsnap = snapshot(grads)
    assert_raises_naming(exc, labels, lambda: opt.step(grads))
    assert opt_snapshot(opt) == before, "a failed step modified a parameter, a state array or a step count"
    assert_unchanged(gsnap)
    # the optimizer is still usable and continues exactly as one that never saw the bad call
    twin, tps = _prepared(name, dtypes, presteps)
    good = rand_grads(ps, 7)
    opt.step(good)
    twin.step(good)
    assert opt_snapshot(opt) == opt_snapshot(twin)


@pytest.mark.parametrize("dtypes", [SAME, MIXED], ids=["same-dtype", "mixed-dtypes"])
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_error_names_global_index_after_skipped_params(name: str, dtypes: Tuple[Any, ...]) -> None:
    """With None gradients in front, the bad gradient is still named by its index in opt.params."""
    opt, ps = _prepared(name, dtypes, 1)
    before = opt_snapshot(opt)
    grads: List[Any] = rand_grads(ps, 5)
    grads[0] = None
    grads[3] = _other_float(grads[3])
    assert_raises_naming(TypeError, ("grads[3]",), lambda: opt.step(grads))
    grads = rand_grads(ps, 5)
    grads[0] = None
    grads[3] = _view_of(ps[1], ps[3])  # params[1] has params[3]'s dtype in both layouts
    assert_raises_naming(ValueError, ("grads[3]", "params[1]"), lambda: opt.step(grads))
    assert opt_snapshot(opt) == before


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_with_invalid_group_hyperparameter_changes_nothing(name: str) -> None:
    ps = rand_params(SAME)
    cls, hyper = CLASSES[name]
    opt = cls([{"params": ps[:2]}, {"params": ps[2:]}], **hyper)
    opt.step(rand_grads(ps, 0))
    before = opt_snapshot(opt)
    opt.param_groups[1]["lr"] = -1.0  # only the LAST group is bad
    snap_lr = opt_snapshot(opt)
    assert_raises_naming(ValueError, ("lr",), lambda: opt.step(rand_grads(ps, 1)))
    assert opt_snapshot(opt) == snap_lr
    assert opt_snapshot(opt)[:2] == before[:2]
    opt.param_groups[1]["lr"] = "0.1"
    assert_raises_naming(TypeError, ("lr",), lambda: opt.step(rand_grads(ps, 1)))
    assert opt_snapshot(opt)[:2] == before[:2]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_read_only_grads_work(name: str) -> None:
    ps = rand_params(MIXED)
    opt = build(name, ps)
    twin = build(name, [p.copy() for p in ps])
    for s in range(3):
        g = rand_grads(ps, s)
        twin.step([x.copy() for x in g])
        for x in g:
            x.flags.writeable = False
        opt.step(g)
    for a, b in zip(opt.params, twin.params):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("layout", ["one-group", "two-groups", "different-step-counts"])
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_grad_aliasing_a_state_array_of_another_param(name: str, layout: str) -> None:
    """A gradient that is another parameter's state array (written by the step) must be refused,
    whether or not that parameter happens to be updated by the same native call (one group and
    equal step counts: one call; two groups or different step counts: several calls)."""
    ps = rand_params(SAME)
    cls, hyper = CLASSES[name]
    groups = [{"params": ps}] if layout == "one-group" else [{"params": ps[:2]}, {"params": ps[2:]}]
    if layout == "different-step-counts":
        groups = [{"params": ps}]
    opt = cls(groups, **hyper)
    g0: List[Any] = rand_grads(ps, 0)
    if layout == "different-step-counts":
        g0[3] = None  # params[3] is one step behind params[0]
    opt.step(g0)
    opt.step(rand_grads(ps, 1))
    key = sorted(k for k, v in opt.state[0].items() if isinstance(v, np.ndarray))[0]
    grads: List[Any] = rand_grads(ps, 2)
    grads[3] = _view_of(opt.state[0][key], ps[3])
    before = opt_snapshot(opt)
    assert_raises_naming(ValueError, ("grads[3]",), lambda: opt.step(grads))
    assert opt_snapshot(opt) == before


@pytest.mark.parametrize("dtypes", [SAME, MIXED], ids=["same-dtype", "mixed-dtypes"])
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_step_param_made_read_only_after_construction(name: str, dtypes: Tuple[Any, ...]) -> None:
    """The LAST parameter is frozen (made read-only) after the optimizer was built: the step is
    refused and modifies nothing, also when it needs several native calls (mixed dtypes)."""
    opt, ps = _prepared(name, dtypes, 2)
    ps[-1].flags.writeable = False
    before = opt_snapshot(opt)
    with pytest.raises(ValueError) as info:
        opt.step(rand_grads(ps, 3))
    assert opt_snapshot(opt) == before, "a refused step updated some parameters (and not their step counts)"
    assert re.search(rf"(?<!\w)params\[{len(ps) - 1}\]", str(info.value)), str(info.value)
