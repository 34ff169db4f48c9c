"""The functionals' C++ fast path (cpp/bindings/functional.cpp) against their generated Python
functions (``fn.__wrapped__``, which the fast path calls for anything unusual).

* a seeded grid of calls per algorithm, good and bad (wrong types, ints and NumPy scalars for
  floats, float and bool subclasses, NaN/inf, out of range, missing/unknown/duplicate arguments,
  None for optional roles, relations, gradient options, thread counts, bad arrays): the fast
  object and the Python function give bitwise identical arrays and return values, or the same
  exception (type and message) with nothing modified; and the plain calls do take the fast path;
* the object looks like the function (signature, help, names, pickle, binding as a method);
* threads=None follows fusedopt._threads at every call; calls from several threads.
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import pydoc
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, _threads, functional
from fusedopt.algorithms import ALGORITHMS, REQUIRED, Algorithm, Hyper

NAMES = sorted(ALGORITHMS)


class FloatSub(float):
    pass


class IntSub(int):
    pass


class ArraySub(np.ndarray):
    pass


def _valid_real(h: Hyper, rng: np.random.Generator) -> float:
    r = h.rng
    assert r is not None
    high = min(r.high, r.low + 2.0)
    k = rng.integers(6)
    if k == 0 and not r.open_low:
        return float(r.low)
    if k == 1 and r.closed_high:
        return float(r.high)
    x = float(rng.uniform(r.low, high))
    if (r.open_low and x <= r.low) or (not r.closed_high and x >= r.high):
        x = (r.low + high) / 2
    return x


def _real_value(h: Hyper, rng: np.random.Generator, wild: bool) -> Any:
    """Mostly a valid exact float; sometimes something the fast path must leave to the Python function."""
    r = h.rng
    assert r is not None
    k = rng.integers(40)
    if k < 26 or not wild:
        return _valid_real(h, rng)
    odd: List[Any] = [
        float("nan"), math.inf, -math.inf, r.low - 0.5, r.high if not r.closed_high else r.high + 0.5, 0,
        1, np.float64(_valid_real(h, rng)), np.float32(0.5), FloatSub(_valid_real(h, rng)), True, "0.1", None,
        -0.0, 10**400,
    ]  # fmt: skip
    return odd[int(rng.integers(len(odd)))]


def _flag_value(rng: np.random.Generator, wild: bool) -> Any:
    k = int(rng.integers(20))
    if k < 16 or not wild:
        return bool(k % 2)
    return [np.bool_(True), 1, None, "yes"][k - 16]


def _step_value(rng: np.random.Generator, wild: bool) -> Any:
    k = int(rng.integers(30))
    if k < 20 or not wild:
        return int(rng.integers(1, 2000))
    odd: List[Any] = [2**40 + 1, 2**62, 2**63, 2**1023, 0, -1, True, 3.0, np.int64(3), IntSub(4)]
    return odd[k - 20]


def _arrays(rng: np.random.Generator, shapes: List[Tuple[int, ...]], dtype: Any) -> List[np.ndarray]:
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _make_call(algo: Algorithm, seed: int) -> Tuple[List[Any], Dict[str, Any], List[np.ndarray]]:
    """(positional args, keyword args, every array the call may write) for case ``seed``; the same
    seed makes the same call with fresh arrays of the same contents."""
    rng = np.random.default_rng(seed)
    wild = bool(rng.integers(2))  # else: only what the fast path takes (plus the relations)
    dtype = np.float32 if rng.integers(3) else np.float64
    ntensors = int(rng.integers(1, 4))
    shapes = [tuple(int(x) for x in rng.integers(0 if rng.integers(8) == 0 else 1, 9, size=int(rng.integers(1, 3))))
              for _ in range(ntensors)]  # fmt: skip
    params = _arrays(rng, shapes, dtype)
    grads = _arrays(rng, shapes, dtype)
    states = [[np.abs(a) for a in _arrays(rng, shapes, dtype)] for _ in algo.states]
    written = params + [a for s in states for a in s]

    kw: Dict[str, Any] = {}
    if algo.step_arg and (rng.integers(25) or not wild):
        kw["step"] = _step_value(rng, wild)
    for h in algo.arguments:
        if rng.integers(3) == 0 and h.default is not REQUIRED:
            continue  # the default
        if h.is_flag:
            # the conventions that exclude each other (Adam) and torch_exact: mostly off
            if h.convention and rng.integers(3):
                continue
            kw[h.name] = _flag_value(rng, wild)
        else:
            if h.convention and rng.integers(3):
                continue
            kw[h.name] = _real_value(h, rng, wild)

    def form(xs: List[np.ndarray]) -> Any:
        k = int(rng.integers(10))
        if len(xs) == 1 and k < 3:
            return xs[0]
        if k == 3:
            return tuple(xs)
        return list(xs)

    lists = [params, grads] + states
    # bad arrays, one at a time
    bad = int(rng.integers(30)) if wild else -1
    if bad == 0:
        grads[0] = grads[0].astype(np.float64 if dtype == np.float32 else np.float32)
    elif bad == 1:
        params[0].flags.writeable = False
    elif bad == 2 and params[0].size > 1:
        big = rng.standard_normal(params[0].size * 2).astype(dtype)
        lists[2][0] = big[::2].reshape(params[0].shape) if params[0].ndim == 1 else big[: params[0].size][::-1]
    elif bad == 3 and len(lists) > 2:
        lists[2][0] = params[0]  # overlap: a state that is the parameter
    elif bad == 4:
        grads[0] = np.zeros(tuple(s + 1 for s in params[0].shape), dtype)
    elif bad == 5:
        params[0] = params[0].view(ArraySub)  # exact-type rule: the fast path leaves it to Python
        written[0] = params[0]
    elif bad == 6:
        grads[0] = grads[0].tolist()  # type: ignore[call-overload]
    elif bad == 7:
        grads[0] = grads[0].astype(np.int32)

    args: List[Any] = [form(xs) for xs in lists]
    # optional roles: None, or the arrays even when absent (then ignored)
    for i, r in enumerate(algo.states):
        if r.when is not None and rng.integers(4) == 0 and wild:
            args[2 + i] = None
    # how the arrays are passed
    shape = int(rng.integers(12))
    if not wild and shape in (2, 3, 4):
        shape = 6
    names = ["params", "grads"] + [r.arg for r in algo.states]
    if shape == 0:  # every array by keyword
        kw.update(zip(names, args))
        args = []
    elif shape == 1:  # the state arrays by keyword
        kw.update(zip(names[2:], args[2:]))
        args = args[:2]
    elif shape == 2:
        kw["params"] = args[0]  # duplicate: positional and keyword
    elif shape == 3:
        args = args[:2]  # missing required state
        if all(r.when is not None for r in algo.states):
            args.append(None)
    elif shape == 4:
        kw["nonsense"] = 1.0  # unknown keyword
    elif shape == 5:
        # trailing optional roles left out
        while len(args) > 2 and algo.states[len(args) - 3].when is not None:
            args.pop()

    # gradient options, sometimes
    g = int(rng.integers(24)) if wild else 99
    opts: List[Tuple[str, Any]] = [("grad_scale", 2.0), ("found_inf", 0.0), ("found_inf", 1.0), ("clip_value", 0.5),
                                   ("max_grad_norm", 1.0), ("clip_coef", 0.5), ("skip_if_nonfinite", True),
                                   ("grad_scale", None), ("skip_if_nonfinite", False), ("skip_if_nonfinite", 0),
                                   ("clip_coef", None)]  # fmt: skip
    if g < len(opts):
        kw[opts[g][0]] = opts[g][1]
    t = int(rng.integers(20)) if wild else int(rng.integers(4))
    threads_values: List[Any] = [None, 1, 2, 0, 1025, True, 2.0, "2", -1, 2**70]
    if t < len(threads_values):
        kw["threads"] = threads_values[t]
    return args, kw, written


def _outcome(fn: Callable[..., Any], algo: Algorithm, seed: int) -> Tuple[Any, List[bytes], List[bytes]]:
    args, kw, written = _make_call(algo, seed)
    before = [a.tobytes() for a in written]
    try:
        result: Any = ("returned", fn(*args, **kw))
    except Exception as exc:
        result = ("raised", type(exc), str(exc))
    return result, before, [a.tobytes() for a in written]


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_equals_python_function_over_a_grid(name: str) -> None:
    fast = getattr(functional, name)
    algo = ALGORITHMS[name]
    assert isinstance(fast, _core.Functional)
    slow = fast.__wrapped__
    n_plain = n_raised = 0
    calls0 = fast._fast_calls
    for seed in range(400):
        case = 1000 * NAMES.index(name) + seed
        fast_calls = fast._fast_calls
        r_fast, before_fast, after_fast = _outcome(fast, algo, case)
        took_fast = fast._fast_calls != fast_calls
        r_slow, before_slow, after_slow = _outcome(slow, algo, case)
        assert before_fast == before_slow
        assert r_fast[0] == r_slow[0], (case, r_fast, r_slow)
        if r_fast[0] == "raised":
            assert r_fast[1:] == r_slow[1:], case
            assert after_fast == before_fast, f"case {case}: an array was modified by a call that raised"
            assert not took_fast
            n_raised += 1
        else:
            rf, rs = r_fast[1], r_slow[1]
            assert (rf is None and rs is None) or (rf == rs or (math.isnan(rf) and math.isnan(rs))), case
            assert after_fast == after_slow, f"case {case}: fast and Python results differ"
            n_plain += took_fast
    # the grid does exercise both sides
    assert fast._fast_calls - calls0 == n_plain
    assert n_plain >= 60, n_plain
    assert n_raised >= 60, n_raised


@pytest.mark.parametrize("name", NAMES)
def test_plain_call_takes_the_fast_path_and_equals_the_function(name: str) -> None:
    fast = getattr(functional, name)
    algo = ALGORITHMS[name]
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        arrays = [rng.standard_normal(33).astype(dtype) for _ in range(2 + len(algo.states))]
        arrays[2:] = [np.abs(a) for a in arrays[2:]]
        copies = [a.copy() for a in arrays]
        kw: Dict[str, Any] = {"step": 5} if algo.step_arg else {}
        for h in algo.arguments:
            if h.default is REQUIRED:
                kw[h.name] = 0.01
        n0 = fast._fast_calls
        assert fast(*arrays, **kw) is None
        assert fast._fast_calls == n0 + 1
        assert fast.__wrapped__(*copies, **kw) is None
        for a, b in zip(arrays, copies):
            assert a.tobytes() == b.tobytes()
        # an int or a numpy.float64 for a float: converted as float() does, in the fast path too
        for i, value in enumerate([0, 1, np.float64(0.25), 10**30]):
            fast(*arrays, **{**kw, "lr": value})
            fast.__wrapped__(*copies, **{**kw, "lr": value})
            assert fast._fast_calls == n0 + 2 + i
            for a, b in zip(arrays, copies):
                assert a.tobytes() == b.tobytes()
        # a float subclass (its float() may differ), an int beyond the float range, a NumPy
        # float32: the Python function decides
        for value in [FloatSub(0.5), 10**400, np.float32(0.5), IntSub(1)]:
            outcomes = []
            for fn, xs in ((fast, arrays), (fast.__wrapped__, copies)):
                try:
                    outcomes.append(fn(*xs, **{**kw, "lr": value}))
                except ValueError as exc:
                    outcomes.append(str(exc))
            assert outcomes[0] == outcomes[1]
            assert fast._fast_calls == n0 + 5
            for a, b in zip(arrays, copies):
                assert a.tobytes() == b.tobytes()


def test_errors_name_the_argument_and_are_the_functions() -> None:
    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    cases: List[Tuple[Dict[str, Any], type, str]] = [
        ({"step": 1, "lr": -1.0}, ValueError, "lr must be >= 0, got -1.0"),
        ({"step": 1, "beta1": 1.0}, ValueError, "beta1 must be in [0, 1), got 1.0"),
        ({"step": 1, "eps": float("nan")}, ValueError, "eps must be finite, got nan"),
        ({"step": 0}, ValueError, "step must be >= 1"),
        ({"step": 1, "amsgrad": 1}, TypeError, "amsgrad must be a bool, got int"),
        ({"step": 1, "amsgrad": True}, ValueError, "max_exp_avg_sqs is required when amsgrad=True"),
        ({"step": 1, "threads": 0}, ValueError, "threads must be between 1 and 1024, got 0"),
        ({"step": 1, "lr": "x"}, TypeError, "lr must be a real number, got str"),
        ({"step": 1, "bogus": 1.0}, TypeError, "unexpected keyword argument 'bogus'"),
        ({"lr": 1e-3}, TypeError, "missing 1 required keyword-only argument: 'step'"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=None) as info:
            functional.adam(p, g, m, v, **kw)
        assert msg in str(info.value)
        with pytest.raises(exc) as info2:
            functional.adam.__wrapped__(p, g, m, v, **kw)
        assert str(info.value) == str(info2.value)
    p[:] = 1.0
    with pytest.raises(ValueError, match=r"read-only"):
        ro = np.ones(4, np.float32)
        ro.flags.writeable = False
        functional.adam(ro, g, m, v, step=1)
    with pytest.raises(ValueError, match=r"shares memory"):
        functional.adam(p, g, p, v, step=1)
    assert (p == 1.0).all() and not m.any() and not v.any()


def test_looks_like_the_generated_function() -> None:
    for name in NAMES:
        fast = getattr(functional, name)
        slow = fast.__wrapped__
        assert inspect.isfunction(slow) and not inspect.isfunction(fast)
        assert inspect.signature(fast) == inspect.signature(slow)
        assert fast.__name__ == slow.__name__ == name
        assert fast.__qualname__ == name and fast.__module__ == "fusedopt.functional"
        assert fast.__doc__ == slow.__doc__ and fast.__doc__
        assert fast.__source__ == slow.__source__ and f"def {name}(" in fast.__source__
        assert pickle.loads(pickle.dumps(fast)) is fast
        assert copy.copy(fast) is fast and copy.deepcopy(fast) is fast
        assert repr(fast) == f"<function fusedopt.functional.{name}>"
        text = pydoc.render_doc(fast, renderer=pydoc.plaintext)
        assert f"{name}(params, grads" in text and fast.__doc__.splitlines()[0] in text


def test_binds_as_a_method_like_a_function() -> None:
    calls: List[Any] = []

    class Holder:
        step_fn = functional.sgd

        def go(self, *a: Any, **k: Any) -> None:
            calls.append(self.step_fn)

    h = Holder()
    bound = h.step_fn
    assert bound.__self__ is h and bound.__func__ is functional.sgd
    assert Holder.step_fn is functional.sgd
    with pytest.raises(TypeError):  # the holder is passed as params, as with a function
        bound([np.zeros(2)], lr=0.1)


def test_threads_none_follows_the_thread_policy_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    p, g, m, v = (np.zeros(8, np.float32) for _ in range(4))
    asked: List[int] = []
    real = _threads.get_num_threads

    def spy() -> int:
        asked.append(1)
        return real()

    monkeypatch.setattr(_threads, "get_num_threads", spy)
    n0 = functional.adam._fast_calls
    functional.adam(p, g, m, v, step=1)  # 8 elements, below the threshold: one thread, no question
    assert asked == [] and functional.adam._fast_calls == n0 + 1
    monkeypatch.setitem(_threads.SERIAL_BELOW, "adam", 8)  # now at the threshold: get_num_threads()
    functional.adam(p, g, m, v, step=1)
    assert asked == [1] and functional.adam._fast_calls == n0 + 2
    functional.adamw(p, g, m, v, step=1)  # adamw uses adam's threshold (Algorithm.threads)
    assert asked == [1, 1]
    old = fusedopt.set_num_threads(2)
    try:
        asked.clear()  # (set_num_threads asked too)
        functional.adam(p, g, m, v, step=1)
        assert asked == [1]
    finally:
        fusedopt.set_num_threads(old)
    # an unusual threshold (not an int): the Python function decides
    monkeypatch.setitem(_threads.SERIAL_BELOW, "adam", 8.5)
    functional.adam(p, g, m, v, step=1)
    assert functional.adam._fast_calls == n0 + 3  # (not an int: not the fast path)
    monkeypatch.setattr(_threads, "get_num_threads", lambda: 0)  # nonsense: the Python path raises
    monkeypatch.setitem(_threads.SERIAL_BELOW, "adam", 0)
    with pytest.raises(Exception) as info:
        functional.adam.__wrapped__(p, g, m, v, step=1)
    with pytest.raises(type(info.value), match=None) as info2:
        functional.adam(p, g, m, v, step=1)
    assert str(info.value) == str(info2.value)


def test_calls_from_several_threads() -> None:
    rng = np.random.default_rng(3)
    n_threads, n_steps = 4, 200
    sets = [[rng.standard_normal(64).astype(np.float32) for _ in range(4)] for _ in range(n_threads)]
    expected = [[a.copy() for a in s] for s in sets]
    for s in expected:
        for t in range(1, n_steps + 1):
            functional.adam.__wrapped__(*s, step=t, lr=1e-2, weight_decay=0.1)
    errors: List[BaseException] = []

    def work(s: List[np.ndarray]) -> None:
        try:
            for t in range(1, n_steps + 1):
                functional.adam(*s, step=t, lr=1e-2, weight_decay=0.1)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(s,)) for s in sets]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for s, e in zip(sets, expected):
        for a, b in zip(s, e):
            assert a.tobytes() == b.tobytes()


def test_every_description_has_a_fast_functional() -> None:
    assert set(_core._functional_traits) >= {a.kernel for a in ALGORITHMS.values()}
    for name in NAMES:
        assert isinstance(getattr(functional, name), _core.Functional)


def test_twins_must_cover_every_hyperparameter() -> None:
    fn: Optional[Any] = functional.adam.__wrapped__
    with pytest.raises(ValueError, match="read no float 'lr_typo'"):
        _core._functional("adam", "adam", fn, [("params", False), ("grads", False), ("exp_avgs", False),
                                               ("exp_avg_sqs", False), ("max_exp_avg_sqs", True)],
                          [("lr_typo", "real", 0.1, 0.0, math.inf, False, False)], [], _threads, "adam")  # fmt: skip
    with pytest.raises(ValueError, match="gives no value"):
        _core._functional("lion", "lion", fn, [("params", False), ("grads", False), ("exp_avgs", False)], [], [],
                          _threads, "lion")  # fmt: skip
    with pytest.raises(ValueError, match="steps with _core.sgd"):
        _core._functional("trace", "adam", fn, [], [], [], _threads, "sgd")


def test_keywords_matched_by_equality_too() -> None:
    """Keyword names that are not the interned strings (built at run time) are matched by equality."""
    p, g, m, v = (np.full(5, 0.5, np.float32) for _ in range(4))
    q, h, n, w = (a.copy() for a in (p, g, m, v))
    kw = {"".join(["s", "tep"]): 2, "".join(["l", "r"]): 0.1, "".join(["beta", "2"]): 0.9}
    n0 = functional.adam._fast_calls
    functional.adam(p, g, m, v, **kw)
    assert functional.adam._fast_calls == n0 + 1
    functional.adam.__wrapped__(q, h, n, w, step=2, lr=0.1, beta2=0.9)
    assert p.tobytes() == q.tobytes() and m.tobytes() == n.tobytes() and v.tobytes() == w.tobytes()


def test_torch_tensors_are_left_to_the_python_function() -> None:
    """Lists of torch tensors go to the Python function, which steps them (in place, zero-copy)
    bitwise like the same NumPy arrays."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch  # noqa: F401  (registers torch's types with the core)

    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(5).astype(np.float32) for _ in range(2)] + [np.zeros(5, np.float32)] * 2
    arrays = [a.copy() for a in arrays]
    ts = [[torch.from_numpy(a.copy())] for a in arrays]
    n0 = functional.adam._fast_calls
    for t in (1, 2):
        functional.adam(*ts, step=t, lr=0.1)
        functional.adam.__wrapped__(*[[a] for a in arrays], step=t, lr=0.1)
    for (t,), a in zip(ts, arrays):
        assert t.numpy().tobytes() == a.tobytes()
    assert functional.adam._fast_calls == n0  # (the tensor calls took the Python function)
