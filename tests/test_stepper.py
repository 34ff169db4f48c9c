"""The optimizer classes' C++ fast path (fusedopt._core.Stepper, cpp/bindings/stepper.hpp).

A Stepper may make a class step faster, never different: its per-step scalars are bitwise those of
fusedopt._scalars, a trajectory through it is bitwise that of the general Python path, anything it
did not validate itself (an edited group value, a replaced state array or dict, an edited step
count, a None or bad gradient) makes it step nothing and hand over to the Python path, whose
results and errors are unchanged, and every change of layout drops it.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import struct
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fusedopt
import fusedopt.optimizers as O
from fusedopt import _core
from fusedopt.algorithms import ADAGRAD, ADAM, ADAMAX, ADAMW, LAMB, LARS, LION, MOMENTUM, RADAM, RMSPROP, SGD, Algorithm


def _bits(values: Tuple[Any, ...]) -> Tuple[Any, ...]:
    return tuple(struct.pack("<d", v) if type(v) is float else v for v in values)


def _view(algo: Algorithm, **over: Any) -> Dict[str, Any]:
    h = {x.name: x.default for x in algo.hypers}
    h.update(over)
    h.update(algo.fixed)
    return h


STEPS = [1, 2, 3, 10, 1000, 123456789, 2**31 - 1, 2**31, 2**52, 2**53 - 1, 2**53, 2**53 + 1, 2**62 + 12345,
         2**63 - 1]  # fmt: skip


def _random_views(algo: Algorithm, rng: random.Random) -> Dict[str, Any]:
    def unit() -> float:
        return rng.choice([0.0, -0.0, 0.5, 0.9, 0.99, 0.999, 0.9999999, 1 - 2**-53, 5e-324, rng.random()])

    def pos() -> float:
        return rng.choice([0.0, 1e-3, 1e-8, 1e-300, 3.0, 1e300, 5e-324, rng.random() * 10 ** rng.randint(-12, 3)])

    over: Dict[str, Any] = {}
    for h in algo.hypers:
        if (h.name, h.default) in algo.fixed:
            continue
        if h.rng is None:
            over[h.name] = rng.random() < 0.5
        elif h.rng.high == 1.0:
            over[h.name] = unit()
        else:
            over[h.name] = pos()
    return _view(algo, **over)


@pytest.mark.parametrize("algo", [SGD, MOMENTUM, RMSPROP, ADAM, ADAMW, ADAGRAD, LION, ADAMAX, LAMB, LARS, RADAM],
                         ids=lambda a: a.name)
def test_scalars_equal_the_python_derivation_bitwise(algo: Algorithm) -> None:
    rng = random.Random(algo.name)
    assert algo.kernel in _core._stepper_kernels
    for _ in range(300):
        h = _random_views(algo, rng)
        for t in STEPS + [rng.randrange(1, 2**63)]:
            want = tuple(algo.scalars(h, t)) + tuple(algo.flags(h))
            got = _core._stepper_scalars(algo.kernel, h, t)
            assert _bits(got) == _bits(want), (h, t)


def test_scalars_edge_values() -> None:
    for b1, b2, lr in [(0.0, 0.0, 0.0), (-0.0, -0.0, 1e-3), (1 - 2**-53, 1 - 2**-53, 1.0), (0.9, 0.999, 0.0)]:
        h = _view(ADAM, lr=lr, beta1=b1, beta2=b2, decoupled_weight_decay=True, weight_decay=0.1)
        for t in STEPS:
            want = tuple(ADAM.scalars(h, t)) + tuple(ADAM.flags(h))
            assert _bits(_core._stepper_scalars("adam", h, t)) == _bits(want)
    h = _view(MOMENTUM, lr=0.5, beta=0.0, bias_correction=True)
    assert _bits(_core._stepper_scalars("momentum", h, 1)) == _bits(tuple(MOMENTUM.scalars(h, 1)))
    with pytest.raises(TypeError):
        _core._stepper_scalars("adam", {**h}, 1)  # not an Adam view
    with pytest.raises(ValueError):
        _core._stepper_scalars("nope", h, 1)


# -- trajectories ------------------------------------------------------------------------------
CONFIGS: List[Tuple[str, Callable[..., fusedopt.Optimizer]]] = [
    ("adam", lambda ps: fusedopt.Adam(ps, lr=1e-2, weight_decay=0.01)),
    ("adam-amsgrad-max", lambda ps: fusedopt.Adam(ps, lr=1e-2, amsgrad=True, maximize=True)),
    ("adamw", lambda ps: fusedopt.AdamW(ps, lr=1e-2)),
    ("adam-keras", lambda ps: fusedopt.Adam.keras(ps, learning_rate=1e-2)),
    ("adamw-optax", lambda ps: fusedopt.AdamW.optax(ps, learning_rate=1e-2, eps_root=1e-8)),
    ("sgd", lambda ps: fusedopt.SGD(ps, lr=0.1, weight_decay=0.01)),
    ("sgd-momentum", lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1)),
    ("sgd-nesterov", lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("momentum", lambda ps: fusedopt.Momentum(ps, lr=0.1, bias_correction=True)),
    ("rmsprop", lambda ps: fusedopt.RMSprop(ps, lr=1e-2, centered=True, momentum=0.5)),
    ("rmsprop-keras", lambda ps: fusedopt.RMSprop.keras(ps, momentum=0.5)),
    ("adagrad", lambda ps: fusedopt.Adagrad(ps, lr=1e-2, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("lion", lambda ps: fusedopt.Lion(ps, lr=1e-3, weight_decay=0.1)),
    ("lamb", lambda ps: fusedopt.LAMB(ps, lr=1e-2, weight_decay=0.01, clamp_value=3.0)),
    ("lamb-debias", lambda ps: fusedopt.LAMB(ps, lr=1e-2, bias_correction=False, debias=True, maximize=True)),
    ("lars", lambda ps: fusedopt.LARS(ps, lr=0.1, weight_decay=1e-3, eta=0.01)),
    ("adamax", lambda ps: fusedopt.Adamax(ps, lr=1e-2, weight_decay=0.01, maximize=True)),
    ("radam", lambda ps: fusedopt.RAdam(ps, lr=1e-2, weight_decay=0.01, decoupled_weight_decay=True)),
]


def _params(dtype: Any, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in [(16,), (3, 5), (1,), (0,), (33,)]]


def _grads(params: List[np.ndarray], rng: np.random.Generator) -> List[np.ndarray]:
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _general_only(opt: fusedopt.Optimizer) -> fusedopt.Optimizer:
    """An optimizer that takes the general Python path at every step (the reference)."""
    opt._step_planned = lambda grads: False  # type: ignore[method-assign]
    opt._make_stepper = lambda plan: None  # type: ignore[method-assign]
    return opt


class _Counting:
    """Counts the steps that went past the Stepper into the Python path."""

    def __init__(self, opt: fusedopt.Optimizer) -> None:
        self.calls = 0
        inner = opt._step_planned

        def planned(grads: Any) -> bool:
            self.calls += 1
            return inner(grads)

        opt._step_planned = planned  # type: ignore[method-assign]


def _state_equal(a: fusedopt.Optimizer, b: fusedopt.Optimizer) -> None:
    for x, y in zip(a.params, b.params):
        assert x.tobytes() == y.tobytes()
    for sa, sb in zip(a.state, b.state):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], np.ndarray):
                assert sa[k].tobytes() == sb[k].tobytes(), k
            else:
                assert type(sa[k]) is type(sb[k]) and sa[k] == sb[k], k


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,make", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_trajectory_equals_the_general_path(name: str, make: Callable[..., Any], dtype: Any) -> None:
    fast, ref = make(_params(dtype)), _general_only(make(_params(dtype)))
    count = _Counting(fast)
    rng = np.random.default_rng(1)
    lrs = [None, None, 0.5, None, 0.25, 0.125, None, None]
    for k, lr in enumerate(lrs):
        g = _grads(fast.params, rng)
        if lr is not None:  # a schedule assigns new floats
            for o in (fast, ref):
                o.param_groups[0]["lr"] = o.param_groups[0]["lr"] * lr
        before = count.calls
        fast.step(g)
        ref.step([x.copy() for x in g])
        _state_equal(fast, ref)
        if k >= 2 and lr is None:
            assert count.calls == before, "a steady step went past the Stepper"
    assert fast._stepper is not None and ref._stepper is None
    assert all(type(st["step"]) is int for st in fast.state if "step" in st)


def test_group_value_edited_in_place_falls_back() -> None:
    fast, ref = fusedopt.Adam(_params(np.float32)), _general_only(fusedopt.Adam(_params(np.float32)))
    rng = np.random.default_rng(2)
    for o in (fast, ref):
        o.step(_grads(o.params, np.random.default_rng(0)))
        o.param_groups[0]["betas"] = [0.9, 0.999]  # a list: may change in place
    for k in range(4):
        g = _grads(fast.params, rng)
        if k == 2:
            for o in (fast, ref):
                o.param_groups[0]["betas"][0] = 0.5
        fast.step(g)
        ref.step(g)
        _state_equal(fast, ref)
        assert fast._stepper is None  # watched values: no fast path
    for o in (fast, ref):  # a tuple again: the fast path comes back
        o.param_groups[0]["betas"] = (0.8, 0.99)
    for _ in range(2):
        g = _grads(fast.params, rng)
        fast.step(g)
        ref.step(g)
        _state_equal(fast, ref)
    assert fast._stepper is not None


def _fresh_pair() -> Tuple[fusedopt.Optimizer, fusedopt.Optimizer]:
    out = []
    for use in (True, False):
        o = fusedopt.Adam(_params(np.float32), lr=1e-2)
        o.step(_grads(o.params, np.random.default_rng(0)))
        o.step(_grads(o.params, np.random.default_rng(1)))
        assert (o._stepper is not None) is True
        if not use:
            o._stepper = None  # taken again by the next planned step; checked before
            o._make_stepper = lambda plan: None  # type: ignore[method-assign]
        out.append(o)
    return out[0], out[1]


def _error_of(opt: fusedopt.Optimizer, grads: Any) -> Tuple[type, str]:
    before = copy.deepcopy((opt.params, opt.state))
    with pytest.raises((TypeError, ValueError)) as info:
        opt.step(grads)
    after = (opt.params, opt.state)
    for x, y in zip(before[0], after[0]):
        assert x.tobytes() == y.tobytes()
    for sa, sb in zip(before[1], after[1]):
        for k in sa:
            assert (sa[k].tobytes() == sb[k].tobytes()) if isinstance(sa[k], np.ndarray) else sa[k] == sb[k]
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", ["dtype", "shape", "overlap", "noncontig", "list", "count", "type"])
def test_bad_gradients_raise_as_before_and_modify_nothing(bad: str) -> None:
    fast, ref = _fresh_pair()
    errors = []
    for o in (fast, ref):
        g: Any = _grads(o.params, np.random.default_rng(3))
        if bad == "dtype":
            g[1] = g[1].astype(np.float64)
        elif bad == "shape":
            g[0] = g[0][:8]
        elif bad == "overlap":
            g[4] = o.params[4]
        elif bad == "noncontig":
            g[0] = np.zeros(32, np.float32)[::2]
        elif bad == "list":
            g[2] = [0.0]
        elif bad == "count":
            g = g[:-1]
        elif bad == "type":
            g = 3
        errors.append(_error_of(o, g))
    assert errors[0] == errors[1]


def test_none_gradient_and_state_edits_take_the_python_path() -> None:
    fast, ref = _fresh_pair()
    rng = np.random.default_rng(4)

    def both(edit: Callable[[fusedopt.Optimizer], None]) -> None:
        g = _grads(fast.params, rng)
        for o in (fast, ref):
            edit(o)
            o.step(list(g))
        _state_equal(fast, ref)

    both(lambda o: None)
    g = _grads(fast.params, rng)
    for o in (fast, ref):
        o.step([None, *g[1:]])  # a missing gradient: that parameter is skipped
    _state_equal(fast, ref)
    both(lambda o: None)
    both(lambda o: None)
    both(lambda o: o.state[0].__setitem__("exp_avg", o.state[0]["exp_avg"] * 0.5))  # a replaced state array
    both(lambda o: None)
    both(lambda o: o.state.__setitem__(1, dict(o.state[1])))  # a replaced state dict
    both(lambda o: None)
    both(lambda o: [st.__setitem__("step", 2**70) for st in o.state])  # beyond int64: the Python path
    both(lambda o: [st.__setitem__("step", 5) for st in o.state])
    both(lambda o: None)
    assert fast.state[0]["step"] == ref.state[0]["step"] == 7
    both(lambda o: o.param_groups.__setitem__(0, dict(o.param_groups[0])))  # a replaced group dict
    both(lambda o: None)
    for o in (fast, ref):  # an edited count refused exactly as before, nothing modified
        o.state[2]["step"] = 1.5
    assert _error_of(fast, _grads(fast.params, rng)) == _error_of(ref, _grads(ref.params, rng))


def test_layout_changes_drop_the_stepper() -> None:
    opt, _ = _fresh_pair()
    sd = opt.state_dict()
    opt.set_conventions(epsilon_hat=True)
    assert opt._stepper is None
    opt.step(_grads(opt.params, np.random.default_rng(5)))
    opt.step(_grads(opt.params, np.random.default_rng(5)))
    assert opt._stepper is not None
    opt.load_state_dict(sd)
    assert opt._stepper is None
    opt.step(_grads(opt.params, np.random.default_rng(5)))
    assert opt._stepper is not None
    for twin in (copy.copy(opt), copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert twin._stepper is None
        g = _grads(opt.params, np.random.default_rng(6))
        twin.step(g)
        twin.step(g)
        assert twin._stepper is not None
    opt.add_param_group({"params": [np.zeros(4, np.float32)]})
    assert opt._stepper is None
    opt.step(_grads(opt.params, np.random.default_rng(7)))
    assert opt._stepper is None  # two groups: the Python path


def test_large_bucket_uses_the_thread_setting() -> None:
    n = O._threads.SERIAL_BELOW["adam"] + 3
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(n).astype(np.float32)
    fast, ref = fusedopt.Adam([p0.copy()]), _general_only(fusedopt.Adam([p0.copy()]))
    old = fusedopt.set_num_threads(2)
    try:
        for _ in range(3):
            g = [rng.standard_normal(n).astype(np.float32)]
            fast.step(g)
            ref.step(g)
    finally:
        fusedopt.set_num_threads(old)
    assert fast._stepper is not None and not fast._stepper_serial
    _state_equal(fast, ref)


def test_stepper_refuses_a_bad_thread_count() -> None:
    opt, _ = _fresh_pair()
    st = opt._stepper
    assert st is not None and st.count == 5
    g = _grads(opt.params, np.random.default_rng(9))
    for t in (0, _core.max_threads + 1):
        with pytest.raises(ValueError, match="threads"):
            st.step(g, opt.param_groups, opt.state, t)
    assert opt.state[0]["step"] == 2
    assert st.step(g, opt.param_groups, opt.state, 1) is True
    assert opt.state[0]["step"] == 3 and all(s["step"] == 3 for s in opt.state)
    assert st.step(g, [opt.param_groups[0], opt.param_groups[0]], opt.state, 1) is False
    assert st.step(g, opt.param_groups, opt.state[:-1], 1) is False
    assert st.step(g[:-1], opt.param_groups, opt.state, 1) is False
    assert opt.state[0]["step"] == 3


def test_disabled_switch_means_no_stepper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(O, "_USE_STEPPER", False)
    opt = fusedopt.Lion(_params(np.float64))
    for _ in range(3):
        opt.step(_grads(opt.params, np.random.default_rng(10)))
    assert opt._stepper is None
    assert math.isfinite(float(opt.params[0][0]))


def test_torch_exact_trajectory() -> None:
    fast, ref = fusedopt.AdamW(_params(np.float32)), _general_only(fusedopt.AdamW(_params(np.float32)))
    for o in (fast, ref):
        o.set_conventions(torch_exact=True)
    count = _Counting(fast)
    rng = np.random.default_rng(11)
    for _ in range(5):
        g = _grads(fast.params, rng)
        fast.step(g)
        ref.step(g)
        _state_equal(fast, ref)
    assert fast._stepper is not None and count.calls == 1  # the first step made the plan


def test_gradient_options_never_take_the_fast_path() -> None:
    fast, ref = _fresh_pair()
    rng = np.random.default_rng(12)
    for k in range(4):
        g = _grads(fast.params, rng)
        for o in (fast, ref):
            if k % 2:
                o.param_groups[0]["lr"] = o.param_groups[0]["lr"] * 0.5  # revalidated inside the options path
            o.step(g, clip_value=0.05, grad_scale=2.0)
        _state_equal(fast, ref)
        g = _grads(fast.params, rng)
        fast.step(g)
        ref.step(g)
        _state_equal(fast, ref)


def test_an_optimizer_in_a_cycle_through_its_stepper_is_collected() -> None:
    """The Stepper holds the group dict; a group that refers back to its optimizer makes a cycle
    through the Stepper, which the garbage collector must see (the Stepper is GC-tracked)."""
    import gc
    import weakref

    p = np.zeros(8, np.float32)
    opt = fusedopt.Adam([p], lr=0.1)
    for _ in range(3):
        opt.step([np.ones(8, np.float32)])
    assert opt._stepper is not None  # the fast path was built
    assert gc.is_tracked(opt._stepper)
    opt.param_groups[0]["owner"] = opt  # the cycle: opt -> stepper -> group -> opt
    opt.step([np.ones(8, np.float32)])  # (an extra group key does not stop the fast path)
    assert opt.state[0]["step"] == 4
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None, "the optimizer was not collected: its Stepper hides references from the collector"
