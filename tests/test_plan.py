"""fusedopt._core.Plan: validation of params and state done once, re-checked cheaply per step.

A plan may make a step faster, never different: with a plan that still matches, a step must give
bitwise the results of the same step without one; with a plan that no longer matches (a replaced
or changed array), it must behave exactly like a step without a plan, errors included, and leave
everything unmodified when it raises. The optimizer classes build plans on their own; the tests
at the end check that a hand edit of an optimizer's state is honoured on the planned path.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, _scalars, reference

ADAM = (*_scalars.adam_scalars(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                               decoupled_weight_decay=False), *_scalars.NO_GRAD_TRANSFORM)  # fmt: skip


def _arrays(k: int, n: int, dtype: Any = np.float32, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


def _adam(p: list, g: list, m: list, v: list, vmax: Optional[list] = None, plan: Any = None) -> None:
    _core.adam(p, g, m, v, vmax, *ADAM, False, False, 1, plan)


def _snapshot(*lists: List[np.ndarray]) -> List[np.ndarray]:
    return [a.copy() for lst in lists for a in lst]


def _same(a: List[np.ndarray], b: List[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@pytest.mark.parametrize("amsgrad", [False, True], ids=["plain", "amsgrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_planned_steps_equal_unplanned_steps(dtype: Any, amsgrad: bool) -> None:
    sizes = [1, 17, 1000, 0, 64]
    p = [a[:n].copy() for a, n in zip(_arrays(5, 1000, dtype), sizes)]
    g = [np.abs(a[:n]).copy() for a, n in zip(_arrays(5, 1000, dtype, seed=1), sizes)]
    m, v = [np.zeros_like(x) for x in p], [np.zeros_like(x) for x in p]
    vmax = [np.zeros_like(x) for x in p] if amsgrad else None
    q, m2, v2 = [x.copy() for x in p], [x.copy() for x in m], [x.copy() for x in v]
    vmax2 = [x.copy() for x in vmax] if vmax is not None else None
    plan = _core.Plan([p, m, v, vmax])
    assert (plan.count, plan.roles) == (5, 4)
    for _ in range(4):
        _adam(p, g, m, v, vmax, plan)
        _adam(q, g, m2, v2, vmax2)
    assert _same(p + m + v, q + m2 + v2)
    # and equal to the specification, tensor by tensor
    r = [x.copy() for x in p]
    for k in range(5):
        pk, mk, vk = (np.array(a[k]) for a in (p, m, v))
        reference.adam(pk, g[k], mk, vk, np.array(vmax[k]) if vmax else None, step=3, lr=1e-2, amsgrad=amsgrad)
        _adam([r[k]], [g[k]], [m[k].copy()], [v[k].copy()], [vmax[k].copy()] if vmax else None)
        assert np.array_equal(pk, r[k])


def test_every_algorithm_accepts_a_plan() -> None:
    p, g, s1, s2, s3 = _arrays(5, 100)
    g = np.abs(g)
    s1, s2, s3 = np.abs(s1), np.abs(s2), np.abs(s3)
    nt = _scalars.NO_GRAD_TRANSFORM
    cases: List[Callable[[Any, list], None]] = [
        lambda plan, a: _core.sgd(a[0], [g], a[1], *_scalars.sgd_scalars(lr=0.1, weight_decay=0.0, momentum=0.9,
                                  dampening=0.0), *nt, False, False, False, 1, plan),  # fmt: skip
        lambda plan, a: _core.momentum(a[0], [g], a[1], *_scalars.momentum_scalars(step=2, lr=0.1, beta=0.9,
                                       weight_decay=0.0, bias_correction=True), *nt, 1, plan),  # fmt: skip
        lambda plan, a: _core.rmsprop(a[0], [g], a[1], a[2], a[3], *_scalars.rmsprop_scalars(lr=0.1, alpha=0.9,
                                      eps=1e-8, weight_decay=0.0, momentum=0.5), *nt, False, 1, plan),  # fmt: skip
        lambda plan, a: _core.adagrad(a[0], [g], a[1], *_scalars.adagrad_scalars(step=2, lr=0.1, lr_decay=0.0,
                                      eps=1e-10, weight_decay=0.0), *nt, False, 1, plan),  # fmt: skip
    ]
    roles = [2, 2, 4, 2]
    for call, nroles in zip(cases, roles):
        a = [[x.copy()] for x in (p, s1, s2, s3)[:nroles]]
        b = [[x.copy()] for x in (p, s1, s2, s3)[:nroles]]
        plan = _core.Plan(a)
        for _ in range(3):
            call(plan, a)
            call(None, b)
        assert _same([x[0] for x in a], [x[0] for x in b])


def test_a_plan_that_no_longer_matches_falls_back_to_the_full_checks() -> None:
    p, m, v = _arrays(3, 64), [np.zeros(64, np.float32) for _ in range(3)], [np.zeros(64, np.float32) for _ in range(3)]
    g = _arrays(3, 64, seed=1)
    plan = _core.Plan([p, m, v, None])
    # other (valid) arrays than the planned ones: the step runs on the arrays given
    m_new = [np.zeros(64, np.float32) for _ in range(3)]
    q, v2 = [x.copy() for x in p], [x.copy() for x in v]
    _adam(p, g, m_new, v, None, plan)
    _adam(q, g, [np.zeros(64, np.float32) for _ in range(3)], v2)
    assert _same(p + v, q + v2)
    assert all(not x.any() for x in m)  # the planned arrays were not touched
    # a different role structure (amsgrad on) also just works
    vmax = [np.zeros(64, np.float32) for _ in range(3)]
    _adam(p, g, m, v, vmax, plan)
    assert all(x.any() for x in vmax)


def _expect_unchanged_error(exc: type, match: str, arrays: List[np.ndarray], call: Callable[[], None]) -> None:
    before = _snapshot(arrays)
    with pytest.raises(exc, match=match):
        call()
    assert _same(before, arrays)


def test_planned_arrays_changed_in_place_are_refused_like_without_a_plan() -> None:
    p, g = _arrays(2, 16), _arrays(2, 16, seed=1)
    m, v = [np.zeros(16, np.float32) for _ in range(2)], [np.zeros(16, np.float32) for _ in range(2)]
    plan = _core.Plan([p, m, v, None])
    everything = p + g + m + v
    p[1].flags.writeable = False
    _expect_unchanged_error(ValueError, r"params\[1\] is read-only", everything, lambda: _adam(p, g, m, v, None, plan))
    p[1].flags.writeable = True
    v[0].shape = (4, 4)  # same memory, other shape
    _expect_unchanged_error(ValueError, r"exp_avg_sqs\[0\] has shape \(4, 4\)", everything,
                            lambda: _adam(p, g, m, v, None, plan))  # fmt: skip
    v[0].shape = (16,)
    _adam(p, g, m, v, None, plan)  # matches again


@pytest.mark.parametrize(
    ("make_grad", "exc", "match"),
    [
        (lambda p, g: [g[0], p[0]], ValueError, r"shares memory with params\[0\]"),
        (lambda p, g: [g[0], p[0][3:9].copy()], ValueError, r"grads\[1\] has shape"),
        (lambda p, g: [g[0], g[1].astype(np.float64)], TypeError, r"grads\[1\] has dtype float64"),
        (lambda p, g: [g[0], np.repeat(g[1], 2)[::2]], ValueError, r"grads\[1\] is not C-contiguous"),
        (lambda p, g: [g[0], g[1].tolist()], TypeError, r"grads\[1\] must be a numpy.ndarray"),
        (lambda p, g: [g[0]], ValueError, r"grads has 1 arrays"),
        (lambda p, g: [g[0], g[1].astype(">f4")], TypeError, r"grads\[1\] has dtype >f4"),
    ],
    ids=["aliases-param", "shape", "dtype", "strided", "list", "count", "byteorder"],
)
def test_gradients_are_still_checked_every_planned_step(make_grad: Callable[..., Any], exc: type, match: str) -> None:
    p, g = _arrays(2, 16), _arrays(2, 16, seed=1)
    m, v = [np.zeros(16, np.float32) for _ in range(2)], [np.zeros(16, np.float32) for _ in range(2)]
    plan = _core.Plan([p, m, v, None])
    _expect_unchanged_error(exc, match, p + g + m + v, lambda: _adam(p, make_grad(p, g), m, v, None, plan))


def test_gradient_overlapping_a_state_array_is_refused() -> None:
    big = np.zeros(64, np.float32)
    p, g = [np.ones(16, np.float32)], [big[40:56]]
    m, v = [big[0:16]], [big[16:32]]
    plan = _core.Plan([p, m, v, None])
    with pytest.raises(ValueError, match="shares memory"):
        _adam(p, [big[8:24]], m, v, None, plan)  # straddles m and v
    _adam(p, g, m, v, None, plan)  # g next to them is fine
    _adam(p, [big[32:48]], m, v, None, plan)  # and the gap after v


def test_a_plan_is_validated_when_made() -> None:
    p = _arrays(2, 16)
    with pytest.raises(ValueError, match="shares memory"):
        _core.Plan([p, [p[0].copy(), p[1]]])
    with pytest.raises(TypeError, match="dtype"):
        _core.Plan([p, [x.astype(np.float64) for x in p]])
    ro = p[0].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.Plan([[ro]])
    with pytest.raises(TypeError, match="plan must be a fusedopt._core.Plan"):
        _adam(p, p, p, p, None, "plan")


# -- the optimizer classes ------------------------------------------------------------------------


def _reference_adam_step(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int) -> None:
    reference.adam(p, g, m, v, step=step, lr=1e-3)


def test_optimizer_honours_a_replaced_state_array() -> None:
    p0, g = _arrays(2, 32), _arrays(2, 32, seed=1)
    opt = fusedopt.Adam([x.copy() for x in p0], lr=1e-3)
    opt.step(g)
    opt.step(g)  # planned from here on
    replacement = np.full(32, 0.5, np.float32)
    opt.state[1]["exp_avg"] = replacement
    ref_p, ref_m = opt.params[1].copy(), replacement.copy()
    ref_v = opt.state[1]["exp_avg_sq"].copy()
    opt.step(g)
    _reference_adam_step(ref_p, g[1], ref_m, ref_v, 3)
    assert np.array_equal(opt.params[1], ref_p)
    assert opt.state[1]["exp_avg"] is replacement and np.array_equal(replacement, ref_m)


def test_optimizer_step_after_a_parameter_turned_read_only_changes_nothing() -> None:
    opt = fusedopt.Adam(_arrays(3, 32), lr=1e-3)
    g = _arrays(3, 32, seed=1)
    opt.step(g)
    opt.step(g)
    opt.params[2].flags.writeable = False
    everything = opt.params + [st[k] for st in opt.state for k in ("exp_avg", "exp_avg_sq")]
    before = _snapshot(everything)
    steps = [st["step"] for st in opt.state]
    with pytest.raises(ValueError, match=r"params\[2\] is read-only"):
        opt.step(g)
    assert _same(before, everything) and [st["step"] for st in opt.state] == steps
    opt.params[2].flags.writeable = True
    opt.step(g)
    assert [st["step"] for st in opt.state] == [3, 3, 3]


def test_optimizer_planned_steps_match_the_reference_over_many_steps() -> None:
    p0, g = _arrays(4, 50), _arrays(4, 50, seed=2)
    opt = fusedopt.Adam([x.copy() for x in p0], lr=1e-2, weight_decay=0.1)
    ref = [(x.copy(), np.zeros_like(x), np.zeros_like(x)) for x in p0]
    for t in range(1, 8):
        if t == 5:
            opt.param_groups[0]["lr"] = 3e-3  # a schedule's edit keeps the plan
        opt.step(g)
        for (p, m, v), gk in zip(ref, g):
            reference.adam(p, gk, m, v, step=t, lr=1e-2 if t < 5 else 3e-3, weight_decay=0.1)
    assert _same(opt.params, [r[0] for r in ref])
    assert math.isclose(opt.param_groups[0]["lr"], 3e-3)


def test_loading_a_state_dict_releases_the_old_state_arrays() -> None:
    import gc
    import weakref

    opt = fusedopt.Adam(_arrays(2, 32), lr=1e-3)
    g = _arrays(2, 32, seed=1)
    opt.step(g)
    opt.step(g)  # the plan now references the state arrays
    old = weakref.ref(opt.state[0]["exp_avg"])
    opt.load_state_dict(opt.state_dict())
    gc.collect()
    assert old() is None
    opt.step(g)
    assert [st["step"] for st in opt.state] == [3, 3]
