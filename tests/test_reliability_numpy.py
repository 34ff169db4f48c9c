"""Reliability of the NumPy optimizers, EMA and functional API (issue: reliability round 2).

* item 4: a step is never half applied: every group's hyperparameters and every bucket's step
  count are checked before the first write; ``load_state_dict`` refuses step counts a step could
  not use (``1e308``, ``10**400``, ``-5``, ``'2'``, ``2.5``) and loads nothing;
* item 5: a hyperparameter edited in place (``group["betas"][0] = 0.0``) takes effect, and is
  validated, at the next step;
* item 7: Ctrl-C during a long step is delivered after the step, step counts included (a real
  SIGINT, many times, in a subprocess);
* item 13: ``EMA.decay`` / ``bias_correction`` / ``step`` are validated when set and at load;
* item 14: a step skipped by ``found_inf`` or ``skip_if_nonfinite`` still checks its arguments;
* item 15: ``copy.deepcopy`` and ``pickle`` of optimizers (also with an arena, an EMA, a
  scheduler) give independent objects that step bitwise like the original.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import re
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fusedopt
import fusedopt.functional as F
from fusedopt import schedules

F32, F64 = np.float32, np.float64
MAX_STEP = 2**1023 - 2  # the largest step count a state may hold (fusedopt._validation.MAX_STEP)

CLASSES: Dict[str, Callable[..., fusedopt.Optimizer]] = {
    "SGD": lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.9),
    "Momentum": lambda ps: fusedopt.Momentum(ps, lr=0.1, bias_correction=True),
    "RMSprop": lambda ps: fusedopt.RMSprop(ps, lr=0.01, centered=True, momentum=0.5),
    "Adam": lambda ps: fusedopt.Adam(ps, lr=0.01, amsgrad=True),
    "AdamW": lambda ps: fusedopt.AdamW(ps, lr=0.01),
    "Adagrad": lambda ps: fusedopt.Adagrad(ps, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    "Adam-keras": lambda ps: fusedopt.Adam.keras(ps),
    "RMSprop-optax": lambda ps: fusedopt.RMSprop.optax(ps, 0.01, momentum=0.9),
}
STEPPED = [n for n in CLASSES if n != "SGD"]  # the classes with a step count


def _params(seed: int = 0, sizes: Tuple[int, ...] = (7, 300, 33), dtypes: Tuple[Any, ...] = (F32, F64, F32)) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dt) for n, dt in zip(sizes, dtypes)]


def _grads(ps: List[np.ndarray], seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in ps]


def _two_groups(name: str, seed: int = 0) -> fusedopt.Optimizer:
    """One optimizer, two param groups (so two native calls), stepped twice."""
    ps = _params(seed)
    opt = CLASSES[name]([{"params": ps[:2]}, {"params": ps[2:]}])
    for t in range(2):
        opt.step(_grads(ps, t))
    return opt


def _snap(opt: fusedopt.Optimizer) -> Any:
    """Everything a step may change, bitwise (arrays as bytes)."""
    def freeze(v: Any) -> Any:
        return (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else repr(v)
    return ([freeze(p) for p in opt.params], [{k: freeze(v) for k, v in st.items()} for st in opt.state],
            [{k: freeze(v) for k, v in g.items()} for g in opt.param_groups])  # fmt: skip


def _same_optimizers(a: fusedopt.Optimizer, b: fusedopt.Optimizer) -> None:
    assert _snap(a) == _snap(b)


def _same_arrays(a: fusedopt.Optimizer, b: fusedopt.Optimizer) -> None:
    """Parameters and state (not the param groups) bitwise equal."""
    assert _snap(a)[:2] == _snap(b)[:2]


# ================================================================================================
# item 4: step counts and hyperparameters checked before the first write
# ================================================================================================
BAD_LOADED_STEPS = {
    "1e308": 1e308,
    "10**400": 10**400,
    "2**1023": 2**1023,
    "MAX_STEP+1": MAX_STEP + 1,
    "negative": -5,
    "string": "2",
    "fraction": 2.5,
    "nan": math.nan,
    "inf": math.inf,
    "bool": True,
    "None": None,
    "array-fraction": np.array(2.5),
}


@pytest.mark.parametrize("case", list(BAD_LOADED_STEPS))
@pytest.mark.parametrize("name", STEPPED)
def test_load_state_dict_refuses_step_counts_a_step_cannot_use(name: str, case: str) -> None:
    opt = _two_groups(name)
    sd = opt.state_dict()
    sd["state"][2]["step"] = BAD_LOADED_STEPS[case]
    before = _snap(opt)
    with pytest.raises(ValueError, match=r"state of parameter 2: 'step'"):
        opt.load_state_dict(sd)
    assert _snap(opt) == before, "a refused state dict changed the optimizer"
    opt.step(_grads(opt.params, 5))  # and it still steps


def test_load_state_dict_step_count_limits() -> None:
    """The largest count loads (and is then refused by a step, naming it, with nothing written);
    integer-valued floats and one-element arrays (torch's float step tensors) still load."""
    opt = _two_groups("Adam")
    for ok in (MAX_STEP, 0, 3.0, np.float32(4.0), np.array([5.0]), np.int64(6)):
        sd = opt.state_dict()
        sd["state"][2]["step"] = ok
        opt.load_state_dict(sd)
        assert type(opt.state[2]["step"]) is int
    sd = opt.state_dict()
    sd["state"][2]["step"] = MAX_STEP
    opt.load_state_dict(sd)
    before = _snap(opt)
    with pytest.raises(ValueError, match=r"state\[2\]\['step'\].*no further step"):
        opt.step(_grads(opt.params, 9))
    assert _snap(opt) == before


EDITED_STEPS: Dict[str, Tuple[Any, Any]] = {
    "negative": (-5, ValueError),
    "huge-int": (10**400, ValueError),
    "2**1023": (2**1023, ValueError),
    "at-the-limit": (MAX_STEP, ValueError),
    "fraction": (2.5, ValueError),
    "string": ("2", TypeError),
    "None": (None, TypeError),
    "float-array": (np.array([2.5]), ValueError),
}


@pytest.mark.parametrize("case", list(EDITED_STEPS))
@pytest.mark.parametrize("name", STEPPED)
def test_edited_step_count_refused_before_any_write(name: str, case: str) -> None:
    """A step count edited by hand in the *second* group: the step raises naming it, and the first
    group (an earlier native call) is not updated either."""
    opt = _two_groups(name)
    value, exc = EDITED_STEPS[case]
    opt.state[2]["step"] = value
    before = _snap(opt)
    with pytest.raises(exc, match=r"state\[2\]\['step'\]"):
        opt.step(_grads(opt.params, 7))
    assert _snap(opt) == before, "a refused step wrote something"


@pytest.mark.parametrize("name", STEPPED)
def test_edited_step_counts_that_are_valid_are_normalized(name: str) -> None:
    """Equal counts of other numeric types step as the int (and are stored as ints after)."""
    opt = _two_groups(name)
    twin = _two_groups(name)
    opt.state[0]["step"] = np.int64(2)
    opt.state[2]["step"] = 2.0
    g = _grads(opt.params, 3)
    opt.step(g)
    twin.step(g)
    _same_optimizers(opt, twin)
    assert all(type(st["step"]) is int for st in opt.state)


@pytest.mark.parametrize("name", list(CLASSES))
def test_invalid_hyperparameter_of_a_later_group_refused_before_any_write(name: str) -> None:
    opt = _two_groups(name)
    opt.param_groups[1]["lr"] = -1.0
    before = _snap(opt)
    with pytest.raises(ValueError, match="lr"):
        opt.step(_grads(opt.params, 4))
    assert _snap(opt) == before


# ================================================================================================
# item 5: hyperparameters edited in place
# ================================================================================================
@pytest.mark.parametrize("container", [list, np.array], ids=["list", "ndarray"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_betas_edited_in_place_take_effect(name: str, container: Any) -> None:
    ps = _params(1)
    opt = CLASSES[name]([p.copy() for p in ps])
    twin = CLASSES[name]([p.copy() for p in ps])
    opt.param_groups[0]["betas"] = container([0.9, 0.99])
    twin.param_groups[0]["betas"] = (0.9, 0.99)
    for t in range(2):  # the second step runs on the cached plan
        opt.step(_grads(ps, t))
        twin.step(_grads(ps, t))
    _same_arrays(opt, twin)
    opt.param_groups[0]["betas"][0] = 0.0  # in place: the same object
    twin.param_groups[0]["betas"] = (0.0, 0.99)
    for t in range(2, 4):
        opt.step(_grads(ps, t))
        twin.step(_grads(ps, t))
        _same_arrays(opt, twin)  # (else: the in-place edit of betas was ignored)


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, "0.9"])
def test_betas_edited_in_place_are_validated(bad: Any) -> None:
    ps = _params(2)
    opt = fusedopt.Adam([{"params": ps[:2]}, {"params": ps[2:]}])
    opt.param_groups[1]["betas"] = [0.9, 0.99]
    for t in range(2):
        opt.step(_grads(ps, t))
    opt.param_groups[1]["betas"][1] = bad
    before = _snap(opt)
    with pytest.raises((ValueError, TypeError), match=re.escape("betas[1]")):
        opt.step(_grads(ps, 2))
    assert _snap(opt) == before, "a refused step wrote something (group 0 is an earlier native call)"
    opt.param_groups[1]["betas"][1] = 0.95  # fixed in place again: steps, with the new value
    twin = fusedopt.Adam([{"params": [p.copy() for p in ps[:2]]}, {"params": [ps[2].copy()], "betas": (0.9, 0.95)}])
    twin.load_state_dict(opt.state_dict())
    twin.param_groups[1]["betas"] = (0.9, 0.95)
    opt.step(_grads(ps, 3))
    twin.step(_grads(ps, 3))
    _same_arrays(opt, twin)


# ================================================================================================
# item 7: Ctrl-C during a step (a real SIGINT, many times, in a subprocess)
# ================================================================================================
_INTERRUPT_CHILD = r"""
import json, os, random, signal, sys, threading, time
import numpy as np
import fusedopt

n, rounds, seed, what = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fusedopt.set_num_threads(1)
rnd = random.Random(seed)

def build(size):
    ps = [np.full(size, 1.0, np.float32), np.full(size, -2.0, np.float32)]
    gs = [np.full(size, 0.5, np.float32), np.full(size, -0.25, np.float32)]
    if what == "opt1":  # one group: one native call, which advances the step counts itself
        opt = fusedopt.Adam(ps, lr=0.02, amsgrad=True)
    else:  # two groups: two native calls, then the counts
        opt = fusedopt.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.03}], lr=0.02, amsgrad=True)
    tracked = [np.full(size, 3.0, np.float32), np.full(size, -1.0, np.float64)]  # constant: a_k is known
    return opt, gs, fusedopt.EMA(tracked, decay=0.9)

opt, gs, ema = build(n)
# the same runs on one element per array: every element of the big runs must equal them bitwise
sopt, sgs, sema = build(1)

def opt_state(o):
    return [[float(p[0]) for p in o.params]] + [[float(st[k][0]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
                                               for st in o.state]
def ema_state(e):
    return [float(a[0]) for a in e.averages]

ref_opt, ref_ema = [None], [None]  # [t]: after t steps / updates (compared for t >= 3 only)
def reference(t, k):
    while len(ref_opt) <= t:
        sopt.step(sgs); ref_opt.append(opt_state(sopt))
    while len(ref_ema) <= k:
        sema.update(); ref_ema.append(ema_state(sema))
    return ref_opt[t], ref_ema[k]

def uniform(arrays):
    return all(bool((a == a.flat[0]).all()) for a in arrays)

def timed(f):
    f(); f()
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0

f = ema.update if what == "ema" else (lambda: opt.step(gs))
step_time = timed(f)
interrupts, bad = 0, []
for r in range(rounds):
    timer = threading.Timer(rnd.uniform(0.05, 2.5) * step_time, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()  # (on a busy machine the signal may come before start() returns)
        while True:
            f()
    except KeyboardInterrupt:
        interrupts += 1
    timer.join()
    if what != "ema":
        counts = [st["step"] for st in opt.state]
        want, got = reference(counts[0], 0)[0], opt_state(opt)
        arrays = list(opt.params) + [v for st in opt.state for v in st.values() if isinstance(v, np.ndarray)]
    else:
        counts = [ema.step]
        want, got, arrays = reference(0, ema.step)[1], ema_state(ema), ema.averages
    if len(set(counts)) != 1 or got != want or not uniform(arrays):
        bad.append(dict(round=r, counts=counts, got=got, want=want))
        break  # (the later rounds would start from the inconsistent state)
print(json.dumps(dict(interrupts=interrupts, bad=bad, step_time=step_time)))
"""


@pytest.mark.parametrize("what", ["opt1", "opt2", "ema"], ids=["Optimizer.step-1-call", "Optimizer.step-2-calls",
                                                              "EMA.update"])  # fmt: skip
def test_ctrl_c_during_steps_leaves_counts_consistent_with_buffers(what: str) -> None:
    """SIGINT sent at random times during long optimizer steps (one group: one native call; two
    groups: two native calls) or EMA updates (two dtypes: two native calls): after every
    KeyboardInterrupt each
    parameter's step count (or the EMA's) matches its buffers bitwise (the same run on one
    element per array gives the state after t steps), and every element had the same update."""
    r = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_CHILD, str(1 << 22), "10", "1234", what],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["bad"], f"an interrupt left counts and buffers apart: {out['bad']}"
    assert out["interrupts"] == 10


# ================================================================================================
# item 13: EMA hyperparameters and step validated
# ================================================================================================
@pytest.mark.parametrize(
    ("attr", "bad", "exc"),
    [("decay", 1.5, ValueError), ("decay", math.nan, ValueError), ("decay", -0.1, ValueError),
     ("decay", "0.9", TypeError), ("decay", 10**400, ValueError), ("bias_correction", "yes", TypeError),
     ("bias_correction", 1, TypeError), ("step", 10**400, ValueError), ("step", -1, ValueError),
     ("step", 2.0, TypeError), ("step", "3", TypeError)],
)  # fmt: skip
def test_ema_attributes_validated_when_set(attr: str, bad: Any, exc: type) -> None:
    ps = _params(3)
    ema = fusedopt.EMA(ps, decay=0.9)
    ema.update()
    twin = fusedopt.EMA([p.copy() for p in ps], decay=0.9)
    twin.update()
    with pytest.raises(exc, match=attr):
        setattr(ema, attr, bad)
    assert (ema.decay, ema.bias_correction, ema.step) == (0.9, True, 1)
    ema.update()
    twin.update()
    for a, b in zip(ema.averaged(), twin.averaged()):
        assert a.tobytes() == b.tobytes()


def test_ema_decay_changed_between_updates_is_used() -> None:
    ps = _params(4)
    ema = fusedopt.EMA(ps, decay=0.9)
    ema.update()
    ema.decay = 0.5
    ema.update()
    ref = [np.zeros_like(p) for p in ps]
    for d in (0.9, 0.5):
        for r, p in zip(ref, ps):
            fusedopt.reference.ema(r, p, decay=d)
    assert ema.step == 2 and ema.decay == 0.5
    assert all(a.tobytes() == r.tobytes() for a, r in zip(ema.averages, ref))


@pytest.mark.parametrize("bad", [10**400, 2**1023, MAX_STEP + 1, -1, 5.0, "5", None, True])
def test_ema_load_state_dict_refuses_step(bad: Any) -> None:
    ps = _params(5)
    ema = fusedopt.EMA(ps, decay=0.9)
    ema.update()
    sd = ema.state_dict()
    sd["step"] = bad
    with pytest.raises(ValueError, match="step"):
        ema.load_state_dict(sd)
    assert ema.step == 1
    ema.averaged()


def test_ema_update_at_the_step_limit_refused_with_nothing_written() -> None:
    ps = _params(6)
    ema = fusedopt.EMA(ps, decay=0.9)
    ema.update()
    sd = ema.state_dict()
    sd["step"] = MAX_STEP
    ema.load_state_dict(sd)
    assert all(np.isfinite(a).all() for a in ema.averaged())
    before = [a.copy() for a in ema.averages]
    with pytest.raises(ValueError, match="step"):
        ema.update()
    assert ema.step == MAX_STEP
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ema.averages, before))


# ================================================================================================
# item 14: a skipped step still checks its arguments
# ================================================================================================
def _functional_call(algo: str, p: List[np.ndarray], g: List[np.ndarray], s: List[List[np.ndarray]], **kw: Any) -> Any:
    if algo == "sgd":
        return F.sgd(p, g, s[0], lr=0.1, momentum=0.9, **kw)
    if algo == "trace":
        return F.trace(p, g, s[0], lr=0.1, **kw)
    if algo == "momentum":
        return F.momentum(p, g, s[0], step=2, lr=0.1, **kw)
    if algo == "rmsprop":
        return F.rmsprop(p, g, s[0], s[1], s[2], centered=True, momentum=0.5, **kw)
    if algo == "adam":
        return F.adam(p, g, s[0], s[1], s[2], step=2, amsgrad=True, **kw)
    if algo == "adagrad":
        return F.adagrad(p, g, s[0], step=2, **kw)
    raise AssertionError(algo)


N_STATE = {"sgd": 1, "trace": 1, "momentum": 1, "rmsprop": 3, "adam": 3, "adagrad": 1}


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


FAULTS: Dict[str, Callable[[List[np.ndarray], List[np.ndarray], List[List[np.ndarray]]], None]] = {
    "grad-wrong-dtype": lambda p, g, s: g.__setitem__(1, g[1].astype(F64)),
    "grad-wrong-shape": lambda p, g, s: g.__setitem__(1, g[1][:-1].copy()),
    "grad-not-array": lambda p, g, s: g.__setitem__(1, g[1].tolist()),
    "grad-missing": lambda p, g, s: g.pop(),
    "param-read-only": lambda p, g, s: _readonly(p[1]),
    "param-int-dtype": lambda p, g, s: p.__setitem__(1, p[1].astype(np.int32)),
    "param-not-contiguous": lambda p, g, s: p.__setitem__(1, np.zeros(2 * p[1].size, F32)[::2]),
    "state-read-only": lambda p, g, s: _readonly(s[0][1]),
    "state-wrong-shape": lambda p, g, s: s[0].__setitem__(1, np.zeros(3, F32)),
    "state-is-the-gradient": lambda p, g, s: s[0].__setitem__(1, g[1]),
}


@pytest.mark.parametrize("skip", ["found_inf", "skip_if_nonfinite"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("algo", list(N_STATE))
def test_skipped_functional_step_still_checks_its_arguments(algo: str, fault: str, skip: str) -> None:
    """The same exception (type and message) as the step that is not skipped, and nothing written."""
    def make() -> Tuple[List[np.ndarray], List[np.ndarray], List[List[np.ndarray]]]:
        rng = np.random.default_rng(11)
        p = [rng.standard_normal(n).astype(F32) for n in (5, 40)]
        g = [rng.standard_normal(n).astype(F32) for n in (5, 40)]
        g[0][0] = np.nan  # a non-finite norm: skip_if_nonfinite skips
        s = [[np.zeros(n, F32) for n in (5, 40)] for _ in range(N_STATE[algo])]
        FAULTS[fault](p, g, s)
        return p, g, s

    p, g, s = make()
    with pytest.raises((TypeError, ValueError)) as unskipped:
        _functional_call(algo, p, g, s)
    p, g, s = make()
    before = [a.copy() for a in p + [x for lst in s for x in lst]]
    kw = {"found_inf": 1.0} if skip == "found_inf" else {"skip_if_nonfinite": True}
    with pytest.raises(unskipped.type) as skipped:
        _functional_call(algo, p, g, s, **kw)
    expected = str(unskipped.value)
    if algo == "trace":  # the step runs on the SGD kernel, whose list is named momentum_buffers
        expected = expected.replace("momentum_buffers", "traces")
    assert str(skipped.value) == expected
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p + [x for lst in s for x in lst], before))


@pytest.mark.parametrize("algo", list(N_STATE))
def test_skipped_functional_step_still_checks_threads(algo: str) -> None:
    rng = np.random.default_rng(12)
    p, g = [rng.standard_normal(5).astype(F32)], [np.full(5, np.nan, F32)]
    s = [[np.zeros(5, F32)] for _ in range(N_STATE[algo])]
    for kw in ({"found_inf": True}, {"skip_if_nonfinite": True}):
        with pytest.raises(ValueError, match="threads"):
            _functional_call(algo, p, g, s, threads=0, **kw)


OPT_FAULTS: Dict[str, Tuple[Callable[[fusedopt.Optimizer, List[np.ndarray]], None], type, str]] = {
    "grad-wrong-dtype": (lambda o, g: g.__setitem__(2, g[2].astype(F64)), TypeError, r"grads\[2\]"),
    "grad-wrong-shape": (lambda o, g: g.__setitem__(2, g[2][:-1].copy()), ValueError, r"grads\[2\]"),
    "param-read-only": (lambda o, g: _readonly(o.params[2]), ValueError, r"params\[2\]"),
    "invalid-lr-in-group-1": (lambda o, g: o.param_groups[1].__setitem__("lr", -1.0), ValueError, "lr"),
    "state-replaced-by-a-wrong-shape": (
        lambda o, g: o.state[2].__setitem__(list(k for k in o.state[2] if k != "step")[0], np.zeros(3, F32)),
        ValueError, r"state\[2\]"),
    "state-is-the-gradient": (
        lambda o, g: o.state[2].__setitem__(list(k for k in o.state[2] if k != "step")[0], g[2]),
        ValueError, "shares memory"),
}  # fmt: skip


@pytest.mark.parametrize("skip", ["found_inf", "skip_if_nonfinite"])
@pytest.mark.parametrize("fault", list(OPT_FAULTS))
@pytest.mark.parametrize("name", list(CLASSES))
def test_skipped_optimizer_step_still_checks_its_arguments(name: str, fault: str, skip: str) -> None:
    opt = _two_groups(name)
    g = _grads(opt.params, 3)
    g[0][0] = np.nan
    edit, exc, match = OPT_FAULTS[fault]
    edit(opt, g)
    before = _snap(opt)
    kw = {"found_inf": np.array([1.0], F32)} if skip == "found_inf" else {"skip_if_nonfinite": True}
    with pytest.raises(exc, match=match):
        opt.step(g, **kw)
    assert _snap(opt) == before


@pytest.mark.parametrize("name", STEPPED)
def test_skipped_optimizer_step_still_checks_step_counts(name: str) -> None:
    opt = _two_groups(name)
    opt.state[2]["step"] = 10**400
    with pytest.raises(ValueError, match=r"state\[2\]\['step'\]"):
        opt.step(_grads(opt.params, 3), found_inf=True)


# ================================================================================================
# item 15: copy.deepcopy and pickle
# ================================================================================================
def _pickled(x: Any) -> Any:
    return pickle.loads(pickle.dumps(x))


COPIERS = {"deepcopy": copy.deepcopy, "pickle": _pickled}


@pytest.mark.parametrize("how", list(COPIERS))
@pytest.mark.parametrize("name", list(CLASSES))
def test_optimizer_copy_is_independent_and_steps_identically(name: str, how: str) -> None:
    opt = _two_groups(name)
    opt.param_groups[1]["lr"] = 0.005
    c = COPIERS[how](opt)
    assert type(c) is type(opt) and c.conventions == opt.conventions
    _same_optimizers(c, opt)
    for a, b in zip(c.params, opt.params):
        assert not np.shares_memory(a, b)
    for sa, sb in zip(c.state, opt.state):
        for k, v in sa.items():
            if isinstance(v, np.ndarray):
                assert not np.shares_memory(v, sb[k])
    before = _snap(opt)
    c.step(_grads(c.params, 10))  # the copy steps alone: the original does not move
    assert _snap(opt) == before
    opt.step(_grads(opt.params, 10))
    _same_optimizers(c, opt)
    for t in range(11, 14):
        c.step(_grads(c.params, t), max_grad_norm=1.0)
        opt.step(_grads(opt.params, t), max_grad_norm=1.0)
    _same_optimizers(c, opt)
    c2 = COPIERS[how](c)  # a copy of a copy; and the copies do not share a lock
    assert c2._lock is not c._lock and c._lock is not opt._lock


@pytest.mark.parametrize("how", list(COPIERS))
def test_arena_optimizer_and_ema_copied_together_stay_connected(how: str) -> None:
    """An optimizer and an EMA on a FlatParams arena, copied together: the copied arena's views
    are views into the copied flat buffers, which the copied optimizer and EMA use."""
    arena = fusedopt.FlatParams(_params(7, dtypes=(F32, F32, F32)))
    opt = fusedopt.Adam(arena, lr=0.01)
    ema = fusedopt.EMA(arena, decay=0.9)
    for t in range(2):
        for gv, x in zip(arena.grads, _grads(arena.params, t)):
            gv[...] = x
        opt.step()
        ema.update()
    a2, o2, e2 = COPIERS[how]((arena, opt, ema))
    assert o2._params[0] is a2.flat and e2.params[0] is a2.flat
    for v, gv in zip(a2.params, a2.grads):
        assert np.shares_memory(v, a2.flat) and np.shares_memory(gv, a2.flat_grad)
        assert not np.shares_memory(v, arena.flat)
    for t in range(2, 4):
        for ar in (arena, a2):
            for gv, x in zip(ar.grads, _grads(ar.params, t)):
                gv[...] = x  # through the per-tensor views
        opt.step()
        o2.step()
        ema.update()
        e2.update()
    assert a2.flat.tobytes() == arena.flat.tobytes()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(e2.averaged(), ema.averaged()))


@pytest.mark.parametrize("how", list(COPIERS))
def test_scheduler_and_optimizer_copied_together(how: str) -> None:
    ps = _params(8)
    opt = fusedopt.AdamW(ps, lr=0.1)
    sched = schedules.WarmupCosine(opt, warmup_steps=2, total_steps=10)
    for t in range(3):
        opt.step(_grads(ps, t))
        sched.step()
    o2, s2 = COPIERS[how]((opt, sched))
    assert s2.optimizer is o2
    for t in range(3, 6):
        for o, s in ((opt, sched), (o2, s2)):
            o.step(_grads(o.params, t))
            s.step()
    _same_optimizers(o2, opt)
    assert s2.get_last_lr() == sched.get_last_lr()


def _copy_by_state_dict(opt: fusedopt.Optimizer) -> fusedopt.Optimizer:
    sd = opt.state_dict()  # first: the parameters copied after it may be ahead of it, never behind
    ps = [p.copy() for p in opt.params]
    c = fusedopt.Adam([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.01)
    c.load_state_dict(sd)
    return c


@pytest.mark.parametrize("how", ["deepcopy", "state_dict"])
def test_copy_during_concurrent_steps_is_never_half_a_step(how: str) -> None:
    """deepcopy and state_dict hold the optimizer's lock: taken while another thread steps, the
    step counts match the state arrays (constant gradients: the state after t steps is known)."""
    n = 1 << 16
    ps = [np.ones(n, F32), np.ones(n, F32)]
    gs = [np.full(n, 0.5, F32), np.full(n, 0.25, F32)]
    opt = fusedopt.Adam([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.01)
    small = fusedopt.Adam([{"params": [np.ones(1, F32)]}, {"params": [np.ones(1, F32)]}], lr=0.01)
    sg = [np.full(1, 0.5, F32), np.full(1, 0.25, F32)]
    history: List[Any] = [None]
    stop = threading.Event()
    copier = copy.deepcopy if how == "deepcopy" else _copy_by_state_dict

    def stepper() -> None:
        while not stop.is_set():
            opt.step(gs)

    opt.step(gs)
    th = threading.Thread(target=stepper)
    th.start()
    try:
        copies = [copier(opt) for _ in range(40)]
    finally:
        stop.set()
        th.join(timeout=60)
    def moments(o: fusedopt.Optimizer) -> List[List[float]]:
        return [[float(st[k][0]) for k in ("exp_avg", "exp_avg_sq")] for st in o.state]

    for c in copies:
        t = c.state[0]["step"]
        assert c.state[1]["step"] == t
        while len(history) <= t:
            small.step(sg)
            history.append((moments(small), [float(p[0]) for p in small.params]))
        assert moments(c) == history[t][0]
        assert all(bool((st[k] == st[k][0]).all()) for st in c.state for k in ("exp_avg", "exp_avg_sq"))
        if how == "deepcopy":  # (state_dict copies the parameters after the state: they may be ahead)
            assert [float(p[0]) for p in c.params] == history[t][1]
            assert all(bool((p == p[0]).all()) for p in c.params)


NUMPY_FORK_CHILD = """
import os, threading
from collections.abc import Mapping
import numpy as np
import fusedopt

p = np.zeros(4, np.float32)
opt = fusedopt.Adam([p], lr=0.1)
opt.step([np.ones(4, np.float32)])
saved = opt.state_dict()
inside, release = threading.Event(), threading.Event()

class Blocking(Mapping):  # load_state_dict reads it under the optimizer's lock
    def __contains__(self, key):
        inside.set()
        release.wait(30)
        return False
    def __getitem__(self, key):
        raise KeyError(key)
    def __iter__(self):
        return iter(())
    def __len__(self):
        return 0

def load():
    try:
        opt.load_state_dict(Blocking())
    except ValueError:
        pass

t = threading.Thread(target=load)
t.start()
inside.wait(30)
pid = os.fork()  # another thread holds the optimizer's lock
if pid == 0:
    try:
        opt.step([np.ones(4, np.float32)])
        code = 3  # stepped past a call that never finishes in this process
    except RuntimeError as exc:
        code = 0 if "forked" in str(exc) else 4
    if code == 0:  # loading a state dict recovers
        opt.load_state_dict(saved)
        opt.step([np.ones(4, np.float32)])
        code = 0 if opt.state[0]["step"] == 2 else 5
    os._exit(code)
release.set()
t.join()
_, status = os.waitpid(pid, 0)
opt.step([np.ones(4, np.float32)])
print("child", os.waitstatus_to_exitcode(status), "parent", opt.state[0]["step"])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_holds_the_lock_raises_instead_of_hanging() -> None:
    """A child forked while another thread was inside load_state_dict (holding the optimizer's
    lock, which no thread of the child will release) raises at its next step instead of waiting
    forever; loading a state dict recovers. The parent is unaffected."""
    out = subprocess.run([sys.executable, "-c", NUMPY_FORK_CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0", "parent", "2"], out.stdout + out.stderr
