"""Learning-rate schedules (fusedopt.schedules).

* every schedule against its closed form for t = 0..N (hand-written tables and formulas written
  independently here);
* the same sequences as torch.optim.lr_scheduler where torch has the schedule (ExponentialLR,
  StepLR, MultiStepLR, ReduceLROnPlateau, SequentialLR, ChainedScheduler, LinearLR+CosineAnnealingLR);
  torch is only needed by those tests;
* state_dict round trips mid-schedule (continuing identically), malformed state dicts refused with
  nothing changed;
* fusedopt optimizers: per-group base lrs, the step uses the scheduled lr (bitwise equal to
  fusedopt.reference with that lr), every optimizer class;
* invalid arguments.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

import fusedopt
from fusedopt import reference
from fusedopt import schedules as S

BASES = [0.1, 0.03]  # two param groups with different base lrs


def _torch():
    return pytest.importorskip("torch", reason="torch parity tests need torch (CI installs it)")


def _sgd(lrs):
    """A fusedopt optimizer with one param group per lr."""
    return fusedopt.SGD([{"params": [np.zeros(4)], "lr": lr} for lr in lrs])


def _group_lrs(opt):
    return [g["lr"] for g in opt.param_groups]


# -- closed forms ---------------------------------------------------------------------------------------
def _warmup_cosine(b, t, W, T, m=0.0, s=0.0):
    """Written independently of the module: interpolation for the warm-up, clipped progress after."""
    if W > 0 and t <= W:
        return float(np.interp(t, [0, W], [s * b, b]))
    p = min(max((t - W) / (T - W), 0.0), 1.0)
    return m + 0.5 * (b - m) * (1.0 + math.cos(math.pi * p))


CLOSED_FORMS = [
    ("exponential", lambda o, **kw: S.ExponentialLR(o, 0.9, **kw), lambda b, t: b * 0.9**t),
    ("exponential-gamma=1.05", lambda o, **kw: S.ExponentialLR(o, 1.05, **kw), lambda b, t: b * 1.05**t),
    ("exponential-decay_steps=4", lambda o, **kw: S.ExponentialLR(o, 0.5, decay_steps=4, **kw),
     lambda b, t: b * 0.5 ** (t / 4)),
    ("exponential-decay_steps=2.5", lambda o, **kw: S.ExponentialLR(o, 0.5, decay_steps=2.5, **kw),
     lambda b, t: b * 0.5 ** (t / 2.5)),
    ("exponential-staircase", lambda o, **kw: S.ExponentialLR(o, 0.5, decay_steps=4, staircase=True, **kw),
     lambda b, t: b * 0.5 ** (t // 4)),
    ("step", lambda o, **kw: S.StepLR(o, 3, 0.5, **kw), lambda b, t: b * 0.5 ** (t // 3)),
    ("step-size=1", lambda o, **kw: S.StepLR(o, 1, 0.7, **kw), lambda b, t: b * 0.7**t),
    ("multistep", lambda o, **kw: S.MultiStepLR(o, [2, 5, 9], 0.1, **kw),
     lambda b, t: b * 0.1 ** sum(t >= m for m in (2, 5, 9))),
    ("linear", lambda o, **kw: S.LinearLR(o, **kw), lambda b, t: b * (1 / 3 + (2 / 3) * min(t, 5) / 5)),
    ("linear-down", lambda o, **kw: S.LinearLR(o, 1.0, 0.0, 10, **kw), lambda b, t: b * max(1 - t / 10, 0.0)),
    ("warmup_cosine", lambda o, **kw: S.WarmupCosine(o, 5, 20, **kw), lambda b, t: _warmup_cosine(b, t, 5, 20)),
    ("warmup_cosine-min_lr-start_factor",
     lambda o, **kw: S.WarmupCosine(o, 4, 17, min_lr=1e-3, warmup_start_factor=0.1, **kw),
     lambda b, t: _warmup_cosine(b, t, 4, 17, 1e-3, 0.1)),
    ("warmup_cosine-no_warmup", lambda o, **kw: S.WarmupCosine(o, 0, 12, min_lr=0.01, **kw),
     lambda b, t: _warmup_cosine(b, t, 0, 12, 0.01)),
    ("inverse_time", lambda o, **kw: S.InverseTimeLR(o, 0.5, **kw), lambda b, t: b / (1 + 0.5 * t)),
    ("inverse_time-decay_steps=3", lambda o, **kw: S.InverseTimeLR(o, 2.0, decay_steps=3, **kw),
     lambda b, t: b / (1 + 2.0 * t / 3)),
    ("inverse_time-staircase", lambda o, **kw: S.InverseTimeLR(o, 2.0, decay_steps=3, staircase=True, **kw),
     lambda b, t: b / (1 + 2.0 * (t // 3))),
    ("sequential-exp-then-step",
     lambda o, **kw: S.SequentialLR(o, [S.ExponentialLR(o, 2.0, **kw), S.StepLR(o, 2, 0.5, **kw)], [3]),
     lambda b, t: b * 2.0**t if t < 3 else b * 0.5 ** ((t - 3) // 2)),
    ("sequential-three",
     lambda o, **kw: S.SequentialLR(
         o, [S.StepLR(o, 1, 1.0, **kw), S.WarmupCosine(o, 2, 6, **kw), S.InverseTimeLR(o, 1.0, **kw)], [4, 12]),
     lambda b, t: b if t < 4 else (_warmup_cosine(b, t - 4, 2, 6) if t < 12 else b / (1 + (t - 12)))),
    ("chained-exp-multistep",
     lambda o, **kw: S.ChainedScheduler([S.ExponentialLR(o, 0.9, **kw), S.MultiStepLR(o, [3, 6], 0.5, **kw)]),
     lambda b, t: b * 0.9**t * 0.5 ** ((t >= 3) + (t >= 6))),
    ("chained-cosine-min_lr-then-step",
     lambda o, **kw: S.ChainedScheduler([S.WarmupCosine(o, 0, 8, min_lr=0.01, **kw), S.StepLR(o, 5, 0.1, **kw)]),
     lambda b, t: _warmup_cosine(b, t, 0, 8, 0.01) * 0.1 ** (t // 5)),
]
N_STEPS = 25


@pytest.mark.parametrize("make, expected", [c[1:] for c in CLOSED_FORMS], ids=[c[0] for c in CLOSED_FORMS])
@pytest.mark.parametrize("mode", ["standalone", "optimizer"])
def test_closed_form(make, expected, mode):
    if mode == "standalone":
        opt, sched = None, make(None, base_lr=list(BASES))
    else:
        opt = _sgd(BASES)
        sched = make(opt)
    for t in range(N_STEPS + 1):
        if t:
            sched.step()
        want = [expected(b, t) for b in BASES]
        assert sched.last_epoch == t
        assert sched.get_last_lr() == pytest.approx(want, rel=1e-13, abs=1e-300)
        assert sched.get_lr() == sched.get_last_lr()
        assert sched.lr_at(t) == sched.get_last_lr()
        if opt is not None:
            assert _group_lrs(opt) == sched.get_last_lr()
            assert [g["initial_lr"] for g in opt.param_groups] == BASES
    # lr_at is pure math: any step, no side effect
    assert sched.lr_at(3) == pytest.approx([expected(b, 3) for b in BASES], rel=1e-13, abs=1e-300)
    assert sched.last_epoch == N_STEPS


@pytest.mark.parametrize(
    "make, table",
    [
        (lambda: S.ExponentialLR(None, 0.5, base_lr=1.0), [1.0, 0.5, 0.25, 0.125, 0.0625]),
        (lambda: S.StepLR(None, 3, 0.5, base_lr=1.0), [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]),
        (lambda: S.LinearLR(None, 0.0, 1.0, 4, base_lr=2.0), [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]),
        (lambda: S.MultiStepLR(None, [2, 4], 0.5, base_lr=1.0), [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]),
        (lambda: S.InverseTimeLR(None, 1.0, base_lr=1.0), [1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5]),
        (lambda: S.InverseTimeLR(None, 1.0, decay_steps=2, staircase=True, base_lr=1.0), [1.0, 1.0, 0.5, 0.5, 1 / 3]),
        (lambda: S.WarmupCosine(None, 2, 6, base_lr=1.0),
         [0.0, 0.5, 1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 0.0, 0.0, 0.0]),
        (lambda: S.WarmupCosine(None, 4, 5, min_lr=0.2, warmup_start_factor=0.5, base_lr=2.0),
         [1.0, 1.25, 1.5, 1.75, 2.0, 0.2, 0.2]),
    ],
    ids=["exponential", "step", "linear", "multistep", "inverse_time", "inverse_time-staircase", "warmup_cosine",
         "warmup_cosine-min_lr"],
)
def test_hand_computed_tables(make, table):
    sched = make()
    got = [sched.get_last_lr()[0]]
    for _ in table[1:]:
        sched.step()
        got.append(sched.get_last_lr()[0])
    assert got == pytest.approx(table, rel=1e-15, abs=1e-16)


def test_plateau_hand_computed():
    # patience=2: the lr drops on the 3rd consecutive non-improving metric; cooldown=1 then ignores one.
    sched = S.ReduceLROnPlateau(None, factor=0.5, patience=2, cooldown=1, base_lr=[1.0, 0.1], min_lr=[0.3, 0.0])
    metrics = [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    lrs = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3]
    bad = [0, 0, 1, 2, 0, 0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0]
    for t, (m, lr, b) in enumerate(zip(metrics, lrs, bad), start=1):
        sched.step(m)
        assert sched.last_epoch == t
        assert sched.get_last_lr()[0] == lr, t
        assert sched.num_bad_epochs == b, t
    # group 1 has no min_lr above it: 0.1 halved three times (at t = 4, 11, 16)
    assert sched.get_last_lr()[1] == 0.1 * 0.5 * 0.5 * 0.5
    assert sched.best == 3.0


@pytest.mark.parametrize("mode, threshold_mode, metrics, reduced_at", [
    ("min", "rel", [1.0, 0.99995, 0.99991, 0.9998], 3),   # 1e-4 relative: 0.99991 < 1·(1 − 1e-4)? no
    ("min", "abs", [1.0, 0.95, 0.85, 0.86], None),        # 0.1 absolute: .95 bad, .85 better, .86 bad
    ("max", "rel", [1.0, 1.00005, 1.00009, 1.0002], 3),
    ("max", "abs", [-1.0, -0.5, -0.45, float("nan")], 4),  # -0.45 > -0.5 + 0.1? no; NaN never improves
], ids=["min-rel", "min-abs", "max-rel", "max-abs-nan"])
def test_plateau_thresholds(mode, threshold_mode, metrics, reduced_at):
    threshold = 1e-4 if threshold_mode == "rel" else 0.1
    patience = 1 if reduced_at is not None else 3
    sched = S.ReduceLROnPlateau(None, mode=mode, threshold=threshold, threshold_mode=threshold_mode,
                                patience=patience, base_lr=1.0)  # fmt: skip
    for t, m in enumerate(metrics, start=1):
        sched.step(m)
        want = 0.1 if reduced_at is not None and t >= reduced_at else 1.0
        assert sched.get_last_lr() == [want], t


# -- torch parity ---------------------------------------------------------------------------------------
def _torch_run(make_torch, lrs, n, metrics=None):
    """Group lrs of a torch.optim.SGD driven by a torch scheduler, steps 0..n (and the scheduler)."""
    torch = _torch()
    params = [torch.zeros(1, requires_grad=True) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    sched = make_torch(torch.optim.lr_scheduler, opt)
    out = [[float(g["lr"]) for g in opt.param_groups]]
    for t in range(n):
        opt.step()  # no gradients: a no-op, but torch wants optimizer.step() before scheduler.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[t])
        out.append([float(g["lr"]) for g in opt.param_groups])
    return out


def _fused_run(make, lrs, n, metrics=None):
    opt = _sgd(lrs)
    sched = make(opt)
    out = [_group_lrs(opt)]
    for t in range(n):
        opt.step([np.zeros(4)] * len(lrs))
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[t])
        assert sched.get_last_lr() == _group_lrs(opt)
        out.append(_group_lrs(opt))
    return out


TORCH_CASES = [
    ("exponential", lambda o: S.ExponentialLR(o, 0.93), lambda L, o: L.ExponentialLR(o, 0.93), 80),
    ("exponential-growth", lambda o: S.ExponentialLR(o, 1.1), lambda L, o: L.ExponentialLR(o, 1.1), 40),
    ("step", lambda o: S.StepLR(o, 7, 0.3), lambda L, o: L.StepLR(o, 7, 0.3), 60),
    ("multistep", lambda o: S.MultiStepLR(o, [3, 10, 11, 30], 0.5),
     lambda L, o: L.MultiStepLR(o, [3, 10, 11, 30], 0.5), 40),
    ("linear", lambda o: S.LinearLR(o), lambda L, o: L.LinearLR(o), 12),
    ("linear-0.25-0.75", lambda o: S.LinearLR(o, 0.25, 0.75, 8), lambda L, o: L.LinearLR(o, 0.25, 0.75, 8), 15),
    ("sequential-linear-step", lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, 6), S.StepLR(o, 4, 0.5)], [6]),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 6), L.StepLR(o, 4, 0.5)], [6]), 30),
    # warm-up + cosine = torch's LinearLR then CosineAnnealingLR (torch's cosine rises again after T)
    ("warmup_cosine", lambda o: S.WarmupCosine(o, 10, 50, min_lr=1e-4, warmup_start_factor=0.1),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 10), L.CosineAnnealingLR(o, 40, eta_min=1e-4)], [10]),
     50),
    ("sequential-exp-step", lambda o: S.SequentialLR(o, [S.ExponentialLR(o, 0.8), S.StepLR(o, 3, 0.5)], [5]),
     lambda L, o: L.SequentialLR(o, [L.ExponentialLR(o, 0.8), L.StepLR(o, 3, 0.5)], [5]), 30),
    ("sequential-step-cosine",
     lambda o: S.SequentialLR(o, [S.StepLR(o, 2, 0.5), S.WarmupCosine(o, 0, 20, min_lr=1e-3)], [6]),
     lambda L, o: L.SequentialLR(o, [L.StepLR(o, 2, 0.5), L.CosineAnnealingLR(o, 20, eta_min=1e-3)], [6]), 26),
    ("sequential-three", lambda o: S.SequentialLR(
        o, [S.MultiStepLR(o, [2], 0.5), S.ExponentialLR(o, 0.9), S.StepLR(o, 4, 0.1)], [5, 12]),
     lambda L, o: L.SequentialLR(
         o, [L.MultiStepLR(o, [2], 0.5), L.ExponentialLR(o, 0.9), L.StepLR(o, 4, 0.1)], [5, 12]), 30),
    ("chained-exp-multistep", lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.9), S.MultiStepLR(o, [4, 9], 0.5)]),
     lambda L, o: L.ChainedScheduler([L.ExponentialLR(o, 0.9), L.MultiStepLR(o, [4, 9], 0.5)]), 25),
    ("chained-step-exp", lambda o: S.ChainedScheduler([S.StepLR(o, 3, 0.2), S.ExponentialLR(o, 0.95)]),
     lambda L, o: L.ChainedScheduler([L.StepLR(o, 3, 0.2), L.ExponentialLR(o, 0.95)]), 25),
]


@pytest.mark.parametrize("make, make_torch, n", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_matches_torch(make, make_torch, n):
    want = _torch_run(make_torch, BASES, n)
    got = _fused_run(make, BASES, n)
    # torch's recursive ("chainable") forms accumulate rounding; ours are closed forms
    for t, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-12, abs=1e-17), f"step {t}"


def _metrics(seed, n):
    """A noisy decreasing loss with plateaus, a bump, a NaN and a negative stretch."""
    rng = np.random.default_rng(seed)
    out, x = [], 3.0
    for t in range(max(n, 50)):
        if t % 17 < 9:
            x *= 0.97
        out.append(float(x + 0.02 * rng.standard_normal()))
    out[20] = float("nan")
    out[40:46] = [-0.5, -0.6, -0.59, -0.6, -0.7, -0.69]
    return out[:n]


PLATEAU_CASES = [
    ("min-rel", dict(mode="min", factor=0.5, patience=2, threshold=1e-2)),
    ("min-abs-cooldown", dict(mode="min", factor=0.3, patience=1, threshold=0.01, threshold_mode="abs", cooldown=3)),
    ("max-rel-min_lr", dict(mode="max", factor=0.5, patience=0, threshold=1e-3, min_lr=[0.01, 0.002])),
    ("max-abs-cooldown-eps", dict(mode="max", factor=0.1, patience=3, threshold=0.05, threshold_mode="abs",
                                  cooldown=2, min_lr=1e-4, eps=1e-3)),
    ("defaults", dict()),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in PLATEAU_CASES], ids=[c[0] for c in PLATEAU_CASES])
@pytest.mark.parametrize("negate", [False, True], ids=["loss", "negated"])
def test_plateau_matches_torch(kwargs, negate):
    torch = _torch()
    metrics = _metrics(1, 90)
    if negate:
        metrics = [-m for m in metrics]
    params = [torch.zeros(1, requires_grad=True) for _ in BASES]
    topt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, BASES)])
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    opt = _sgd(BASES)
    sched = S.ReduceLROnPlateau(opt, **kwargs)
    alone = S.ReduceLROnPlateau(None, base_lr=list(BASES), **kwargs)
    reductions = 0
    for t, m in enumerate(metrics):
        before = _group_lrs(opt)
        tsched.step(m)
        sched.step(m)
        alone.step(m)
        want = [g["lr"] for g in topt.param_groups]
        assert _group_lrs(opt) == want, f"step {t}"  # same operations: bitwise
        assert sched.get_last_lr() == want and alone.get_last_lr() == want
        for s in (sched, alone):
            assert (s.best, s.num_bad_epochs, s.cooldown_counter, s.last_epoch) == (
                tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter, tsched.last_epoch), f"step {t}"
        reductions += _group_lrs(opt) != before
    if kwargs:
        assert reductions >= 2  # the metric sequence exercises the schedule


# -- state dicts ------------------------------------------------------------------------------------------
ALL_SCHEDULES = [
    ("exponential", lambda o, **kw: S.ExponentialLR(o, 0.9, decay_steps=3, **kw)),
    ("step", lambda o, **kw: S.StepLR(o, 4, 0.5, **kw)),
    ("multistep", lambda o, **kw: S.MultiStepLR(o, [3, 8, 15], 0.3, **kw)),
    ("linear", lambda o, **kw: S.LinearLR(o, 0.2, 0.9, 20, **kw)),
    ("warmup_cosine", lambda o, **kw: S.WarmupCosine(o, 5, 30, min_lr=[1e-3, 1e-4], warmup_start_factor=0.2, **kw)),
    ("inverse_time", lambda o, **kw: S.InverseTimeLR(o, 0.3, decay_steps=2, staircase=True, **kw)),
    ("sequential", lambda o, **kw: S.SequentialLR(o, [S.ExponentialLR(o, 1.5, **kw), S.WarmupCosine(o, 0, 20, **kw)],
                                                  [4])),
    ("chained", lambda o, **kw: S.ChainedScheduler([S.InverseTimeLR(o, 0.1, **kw), S.StepLR(o, 5, 0.5, **kw)])),
    ("plateau", lambda o, **kw: S.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=2, threshold=1e-2, **kw)),
]


def _advance(sched, t, metrics):
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(metrics[t])
    else:
        sched.step()


def _plain(x):
    """Only Python numbers, strings, bools, lists and dicts."""
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return type(x) in (int, float, str, bool)


@pytest.mark.parametrize("make", [c[1] for c in ALL_SCHEDULES], ids=[c[0] for c in ALL_SCHEDULES])
def test_state_dict_round_trip(make):
    metrics = _metrics(2, 40)
    opt_a = _sgd(BASES)
    a = make(opt_a)
    for t in range(13):
        opt_a.step([np.zeros(4)] * 2)
        _advance(a, t, metrics)
    sd = a.state_dict()
    assert _plain(sd)
    sd_json = json.loads(json.dumps(sd))  # survives serialization (best may be inf: JSON Infinity)
    assert sd_json == sd
    # a fresh scheduler on an optimizer with other lrs: the state dict brings base lrs and counters
    opt_b = _sgd([1.0, 1.0])
    b = make(opt_b)
    b.load_state_dict(sd_json)
    assert b.state_dict() == sd
    assert b.get_last_lr() == a.get_last_lr() == _group_lrs(opt_b) == _group_lrs(opt_a)
    for t in range(13, 40):
        _advance(a, t, metrics)
        _advance(b, t, metrics)
        assert b.get_last_lr() == a.get_last_lr() == _group_lrs(opt_b), f"step {t}"
        assert b.state_dict() == a.state_dict()
    # the state dict is a copy
    sd2 = a.state_dict()
    sd2["last_epoch"] = 999
    next(v for k, v in sd2.items() if isinstance(v, list)).append(1.0)
    assert a.state_dict() != sd2


@pytest.mark.parametrize("make", [c[1] for c in ALL_SCHEDULES], ids=[c[0] for c in ALL_SCHEDULES])
def test_state_dict_standalone(make):
    """Without an optimizer the state dict carries everything too; it also moves between a
    standalone scheduler and one on an optimizer (which then gets the lrs written into its groups)."""
    metrics = _metrics(3, 30)
    a = make(None, base_lr=list(BASES))
    for t in range(10):
        _advance(a, t, metrics)
    sd = a.state_dict()
    b = make(None, base_lr=[1.0, 2.0])
    b.load_state_dict(sd)
    opt = _sgd([1.0, 2.0])
    c = make(opt)
    c.load_state_dict(sd)
    assert b.get_last_lr() == c.get_last_lr() == _group_lrs(opt) == a.get_last_lr()
    for t in range(10, 30):
        for s in (a, b, c):
            _advance(s, t, metrics)
        assert b.get_last_lr() == c.get_last_lr() == _group_lrs(opt) == a.get_last_lr(), f"step {t}"
    assert b.state_dict() == c.state_dict() == a.state_dict()


def _bad_state_dicts():
    def edit(fn):
        def apply(sd):
            sd = copy.deepcopy(sd)
            fn(sd)
            return sd
        return apply

    def put(key, value):
        return edit(lambda sd: sd.__setitem__(key, value))

    def drop(key):
        return edit(lambda sd: sd.pop(key))

    common = [
        ("not-a-dict", lambda sd: [sd]),
        ("missing-last_epoch", drop("last_epoch")),
        ("unknown-key", put("momentum", 0.9)),
        ("wrong-type", put("type", "CosineAnnealingLR")),
        ("last_epoch=-1", put("last_epoch", -1)),
        ("last_epoch-float", put("last_epoch", 2.5)),
        ("last_epoch-bool", put("last_epoch", True)),
    ]
    closed = [
        ("base_lrs-length", put("base_lrs", [0.1])),
        ("base_lrs-negative", put("base_lrs", [0.1, -0.1])),
        ("base_lrs-string", put("base_lrs", ["0.1", 0.1])),
        ("base_lrs-nan", put("base_lrs", [float("nan"), 0.1])),
    ]
    cases = []
    step = lambda o: S.StepLR(o, 4, 0.5)  # noqa: E731
    for name, f in common + closed + [("gamma-negative", put("gamma", -0.5)), ("step_size-0", put("step_size", 0)),
                                      ("step_size-missing", drop("step_size"))]:
        cases.append((f"step-{name}", step, f))
    wc = lambda o: S.WarmupCosine(o, 5, 30, min_lr=[1e-3, 1e-4])  # noqa: E731
    for name, f in [("total<=warmup", put("total_steps", 5)), ("min_lr-length", put("min_lr", [0.1, 0.1, 0.1])),
                    ("start_factor>1", put("warmup_start_factor", 1.5))]:
        cases.append((f"warmup_cosine-{name}", wc, f))
    seq = lambda o: S.SequentialLR(o, [S.ExponentialLR(o, 0.9), S.StepLR(o, 3, 0.5)], [4])  # noqa: E731
    for name, f in common + closed + [
        ("milestones-zero", put("milestones", [0])),
        ("milestones-length", put("milestones", [4, 8])),
        ("schedulers-missing", drop("schedulers")),
        ("schedulers-length", edit(lambda sd: sd["schedulers"].pop())),
        ("child1-gamma", edit(lambda sd: sd["schedulers"][1].__setitem__("gamma", -1.0))),
        ("child1-type", edit(lambda sd: sd["schedulers"][1].__setitem__("type", "ExponentialLR"))),
        ("child0-last_epoch", edit(lambda sd: sd["schedulers"][0].__setitem__("last_epoch", "x"))),
    ]:
        cases.append((f"sequential-{name}", seq, f))
    plateau = lambda o: S.ReduceLROnPlateau(o, patience=1, cooldown=2)  # noqa: E731
    for name, f in common + [
        ("mode", put("mode", "avg")), ("threshold_mode", put("threshold_mode", "pct")),
        ("factor=1", put("factor", 1.0)), ("num_bad_epochs=-1", put("num_bad_epochs", -1)),
        ("cooldown_counter-float", put("cooldown_counter", 1.5)), ("best-nan", put("best", float("nan"))),
        ("best-string", put("best", "inf")), ("lrs-length", put("lrs", [0.1])), ("lrs-negative", put("lrs", [0.1, -1.0])),
        ("min_lr-length", put("min_lr", [0.0])), ("patience-missing", drop("patience")),
    ]:
        cases.append((f"plateau-{name}", plateau, f))
    return cases


BAD_STATE_DICTS = _bad_state_dicts()


@pytest.mark.parametrize("make, corrupt", [c[1:] for c in BAD_STATE_DICTS], ids=[c[0] for c in BAD_STATE_DICTS])
def test_load_state_dict_refuses_malformed(make, corrupt):
    metrics = _metrics(4, 10)
    donor_opt = _sgd(BASES)
    donor = make(donor_opt)
    for t in range(6):
        _advance(donor, t, metrics)
    bad = corrupt(donor.state_dict())
    opt = _sgd([0.5, 0.25])
    sched = make(opt)
    for t in range(3):
        _advance(sched, t, metrics)
    before = copy.deepcopy(sched.state_dict())
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    last_before = sched.get_last_lr()
    children_before = [c.state_dict() for c in getattr(sched, "schedulers", [])]
    with pytest.raises(ValueError):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    assert sched.get_last_lr() == last_before
    assert [c.state_dict() for c in getattr(sched, "schedulers", [])] == children_before
    # and it still works
    _advance(sched, 3, metrics)


def test_load_state_dict_for_other_group_count():
    a = S.StepLR(_sgd([0.1, 0.2, 0.3]), 2)
    b = S.StepLR(_sgd(BASES), 2)
    before = b.state_dict()
    with pytest.raises(ValueError, match="base_lrs"):
        b.load_state_dict(a.state_dict())
    assert b.state_dict() == before


# -- with fusedopt optimizers ----------------------------------------------------------------------------
def test_adam_param_groups_use_the_scheduled_lr():
    """Two groups with different base lrs (float64 and float32): each step equals fusedopt.reference.adam
    with the lr the schedule gave that group, bitwise."""
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(37)
    p1 = rng.standard_normal((3, 5)).astype(np.float32)
    opt = fusedopt.Adam([{"params": [p0], "lr": 0.1}, {"params": [p1], "lr": 0.01, "weight_decay": 0.1}],
                        betas=(0.8, 0.99))  # fmt: skip
    sched = S.WarmupCosine(opt, 3, 10, min_lr=1e-4, warmup_start_factor=0.1)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.01]
    refs = [(p0.copy(), np.zeros_like(p0), np.zeros_like(p0), {}), (p1.copy(), np.zeros_like(p1), np.zeros_like(p1),
                                                                     {"weight_decay": 0.1})]  # fmt: skip
    seen = set()
    for t in range(1, 14):
        lrs = sched.get_last_lr()
        assert lrs == pytest.approx([_warmup_cosine(b, t - 1, 3, 10, 1e-4, 0.1) for b in (0.1, 0.01)], rel=1e-13)
        grads = [rng.standard_normal(p0.shape), rng.standard_normal(p1.shape).astype(np.float32)]
        opt.step(grads)
        for (rp, m, v, extra), g, lr in zip(refs, grads, lrs):
            reference.adam(rp, g, m, v, step=t, lr=lr, beta1=0.8, beta2=0.99, **extra)
        for i, (rp, m, v, _) in enumerate(refs):
            assert np.array_equal(opt.params[i], rp), f"step {t}, group {i}"
            assert np.array_equal(opt.state[i]["exp_avg"], m) and np.array_equal(opt.state[i]["exp_avg_sq"], v)
        seen.add(tuple(lrs))
        sched.step()
    assert len(seen) > 5  # the lr really changed from step to step


OPTIMIZERS = [
    ("SGD-momentum", lambda ps, lr: fusedopt.SGD(ps, lr=lr, momentum=0.9, weight_decay=0.01)),
    ("Momentum", lambda ps, lr: fusedopt.Momentum(ps, lr=lr, beta=0.9, bias_correction=True)),
    ("RMSprop", lambda ps, lr: fusedopt.RMSprop(ps, lr=lr, momentum=0.5, centered=True)),
    ("Adam", lambda ps, lr: fusedopt.Adam(ps, lr=lr, amsgrad=True)),
    ("AdamW", lambda ps, lr: fusedopt.AdamW(ps, lr=lr)),
    ("Adagrad", lambda ps, lr: fusedopt.Adagrad(ps, lr=lr, lr_decay=0.01)),
]


@pytest.mark.parametrize("make_opt", [c[1] for c in OPTIMIZERS], ids=[c[0] for c in OPTIMIZERS])
def test_every_optimizer_follows_the_schedule(make_opt):
    """A scheduled optimizer equals a twin whose lr is set by hand to the closed form, bitwise, and
    differs from a constant-lr run."""
    rng = np.random.default_rng(6)
    init = rng.standard_normal(64).astype(np.float32)
    a, b, c = init.copy(), init.copy(), init.copy()
    opt_a, opt_b, opt_c = make_opt([a], 0.05), make_opt([b], 0.05), make_opt([c], 0.05)
    sched = S.ExponentialLR(opt_a, 0.7)
    for t in range(8):
        opt_b.param_groups[0]["lr"] = 0.05 * 0.7**t
        g = rng.standard_normal(64).astype(np.float32)
        for o in (opt_a, opt_b, opt_c):
            o.step([g])
        sched.step()
        assert np.array_equal(a, b), f"step {t}"
    assert not np.array_equal(a, c)


def test_optimizer_state_dict_still_works():
    p = np.ones(5)
    opt = fusedopt.Adam([p], lr=0.1)
    sched = S.StepLR(opt, 2, 0.5)
    for _ in range(5):
        opt.step([np.full(5, 0.5)])
        sched.step()
    osd, ssd = opt.state_dict(), sched.state_dict()
    assert "initial_lr" not in osd["param_groups"][0]  # fusedopt's optimizer state holds its own keys only
    q = np.ones(5)
    opt2 = fusedopt.Adam([q], lr=0.1)
    sched2 = S.StepLR(opt2, 2, 0.5)
    opt2.load_state_dict(osd)   # drops 'initial_lr' from the group ...
    sched2.load_state_dict(ssd)  # ... which the scheduler's state restores
    assert opt2.param_groups[0]["initial_lr"] == 0.1
    q[...] = p
    for _ in range(5):
        opt.step([np.full(5, 0.5)])
        opt2.step([np.full(5, 0.5)])
        sched.step()
        sched2.step()
        assert np.array_equal(p, q) and opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_existing_initial_lr_is_the_base():
    opt = _sgd(BASES)
    S.StepLR(opt, 1, 0.5)  # writes 0.1 and 0.03 as initial_lr, then lr = initial at step 0
    opt.param_groups[0]["lr"] = 7.0
    sched = S.ExponentialLR(opt, 0.5)
    assert sched.base_lrs == BASES and _group_lrs(opt) == BASES


def test_lr_edited_by_hand_is_overwritten_at_next_step():
    opt = _sgd(BASES)
    sched = S.ExponentialLR(opt, 0.5)
    opt.param_groups[0]["lr"] = 1.0
    sched.step()
    assert _group_lrs(opt) == [0.05, 0.015]


def test_plateau_reads_the_groups_lr():
    opt = _sgd(BASES)
    sched = S.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    sched.step(1.0)
    opt.param_groups[0]["lr"] = 1.0  # by hand: plateau reduces from there, like torch
    sched.step(2.0)
    assert _group_lrs(opt) == [0.5, 0.015]
    assert "initial_lr" not in opt.param_groups[0]


def test_resume_with_last_epoch():
    opt = _sgd(BASES)
    fresh = S.StepLR(opt, 3, 0.5)
    resumed = S.StepLR(opt, 3, 0.5, last_epoch=7)
    assert resumed.last_epoch == 8 and resumed.get_last_lr() == fresh.lr_at(8) == [0.025, 0.0075]
    opt2 = _sgd(BASES)
    with pytest.raises(ValueError, match=r"param_groups\[0\].*initial_lr"):
        S.StepLR(opt2, 3, 0.5, last_epoch=7)
    assert "initial_lr" not in opt2.param_groups[0] and _group_lrs(opt2) == BASES
    standalone = S.ExponentialLR(None, 0.5, base_lr=1.0, last_epoch=2)
    assert standalone.get_last_lr() == [0.125]


def test_added_param_group_is_refused():
    opt = _sgd(BASES)
    sched = S.ExponentialLR(opt, 0.5)
    plateau = S.ReduceLROnPlateau(opt)
    opt.add_param_group({"params": [np.zeros(2)], "lr": 1.0})
    for s, call in ((sched, sched.step), (plateau, lambda: plateau.step(1.0))):
        before = s.state_dict()
        with pytest.raises(ValueError, match="param groups"):
            call()
        assert s.state_dict() == before
    assert _group_lrs(opt) == BASES + [1.0]


def test_standalone_api():
    sched = S.InverseTimeLR(None, 1.0, base_lr=2.0)
    assert sched.optimizer is None and sched.get_last_lr() == [2.0] and sched.lr_at(3) == [0.5]
    sched.step()
    assert sched.get_lr() == [1.0] and sched.last_epoch == 1
    plateau = S.ReduceLROnPlateau(base_lr=(1.0, 2.0), patience=0)
    plateau.step(np.float64(1.0))
    plateau.step(np.array(2.0))
    assert plateau.get_last_lr() == [0.1, 0.2]
    assert "StepLR(last_epoch=0" in repr(S.StepLR(None, 2, base_lr=1.0))


# -- invalid arguments ------------------------------------------------------------------------------------
class _NoGroups:
    pass


INVALID = [
    ("exp-gamma-negative", lambda: S.ExponentialLR(None, -0.5, base_lr=1.0), ValueError, "gamma"),
    ("exp-gamma-zero", lambda: S.ExponentialLR(None, 0.0, base_lr=1.0), ValueError, "gamma"),
    ("exp-gamma-inf", lambda: S.ExponentialLR(None, math.inf, base_lr=1.0), ValueError, "gamma"),
    ("exp-gamma-string", lambda: S.ExponentialLR(None, "0.5", base_lr=1.0), TypeError, "gamma"),
    ("exp-decay_steps-zero", lambda: S.ExponentialLR(None, 0.5, decay_steps=0, base_lr=1.0), ValueError, "decay_steps"),
    ("exp-decay_steps-negative-float", lambda: S.ExponentialLR(None, 0.5, decay_steps=-1.5, base_lr=1.0), ValueError,
     "decay_steps"),
    ("exp-staircase-int", lambda: S.ExponentialLR(None, 0.5, staircase=1, base_lr=1.0), TypeError, "staircase"),
    ("step-size-zero", lambda: S.StepLR(None, 0, base_lr=1.0), ValueError, "step_size"),
    ("step-size-negative", lambda: S.StepLR(None, -2, base_lr=1.0), ValueError, "step_size"),
    ("step-size-float", lambda: S.StepLR(None, 2.0, base_lr=1.0), TypeError, "step_size"),
    ("step-gamma-negative", lambda: S.StepLR(None, 2, -0.1, base_lr=1.0), ValueError, "gamma"),
    ("multistep-unsorted", lambda: S.MultiStepLR(None, [5, 3], base_lr=1.0), ValueError, "milestones"),
    ("multistep-repeated", lambda: S.MultiStepLR(None, [3, 3], base_lr=1.0), ValueError, "milestones"),
    ("multistep-zero", lambda: S.MultiStepLR(None, [0, 3], base_lr=1.0), ValueError, r"milestones\[0\]"),
    ("multistep-float", lambda: S.MultiStepLR(None, [2.5], base_lr=1.0), TypeError, r"milestones\[0\]"),
    ("multistep-not-a-list", lambda: S.MultiStepLR(None, 3, base_lr=1.0), TypeError, "milestones"),
    ("linear-start_factor", lambda: S.LinearLR(None, 1.5, base_lr=1.0), ValueError, "start_factor"),
    ("linear-end_factor", lambda: S.LinearLR(None, 0.5, -0.1, base_lr=1.0), ValueError, "end_factor"),
    ("linear-total_iters", lambda: S.LinearLR(None, 0.5, 1.0, 0, base_lr=1.0), ValueError, "total_iters"),
    ("cosine-total<=warmup", lambda: S.WarmupCosine(None, 10, 10, base_lr=1.0), ValueError, "total_steps"),
    ("cosine-warmup-negative", lambda: S.WarmupCosine(None, -1, 10, base_lr=1.0), ValueError, "warmup_steps"),
    ("cosine-min_lr-negative", lambda: S.WarmupCosine(None, 1, 10, min_lr=-1e-3, base_lr=1.0), ValueError, "min_lr"),
    ("cosine-min_lr-length", lambda: S.WarmupCosine(None, 1, 10, min_lr=[0.0, 0.0], base_lr=1.0), ValueError,
     "min_lr"),
    ("cosine-start_factor", lambda: S.WarmupCosine(None, 1, 10, warmup_start_factor=1.5, base_lr=1.0), ValueError,
     "warmup_start_factor"),
    ("inverse-rate-negative", lambda: S.InverseTimeLR(None, -0.1, base_lr=1.0), ValueError, "decay_rate"),
    ("inverse-decay_steps-zero", lambda: S.InverseTimeLR(None, 0.1, decay_steps=0, base_lr=1.0), ValueError,
     "decay_steps"),
    ("plateau-mode", lambda: S.ReduceLROnPlateau(None, mode="avg", base_lr=1.0), ValueError, "mode"),
    ("plateau-threshold_mode", lambda: S.ReduceLROnPlateau(None, threshold_mode="pct", base_lr=1.0), ValueError,
     "threshold_mode"),
    ("plateau-factor=1", lambda: S.ReduceLROnPlateau(None, factor=1.0, base_lr=1.0), ValueError, "factor"),
    ("plateau-factor-negative", lambda: S.ReduceLROnPlateau(None, factor=-0.5, base_lr=1.0), ValueError, "factor"),
    ("plateau-patience-negative", lambda: S.ReduceLROnPlateau(None, patience=-1, base_lr=1.0), ValueError,
     "patience"),
    ("plateau-cooldown-float", lambda: S.ReduceLROnPlateau(None, cooldown=1.5, base_lr=1.0), TypeError, "cooldown"),
    ("plateau-threshold-negative", lambda: S.ReduceLROnPlateau(None, threshold=-1e-4, base_lr=1.0), ValueError,
     "threshold"),
    ("plateau-eps-nan", lambda: S.ReduceLROnPlateau(None, eps=math.nan, base_lr=1.0), ValueError, "eps"),
    ("plateau-min_lr-length", lambda: S.ReduceLROnPlateau(None, min_lr=[0.1, 0.2], base_lr=1.0), ValueError,
     "min_lr"),
    ("no-optimizer-no-base_lr", lambda: S.StepLR(None, 2), TypeError, "base_lr"),
    ("base_lr-negative", lambda: S.StepLR(None, 2, base_lr=-1.0), ValueError, "base_lr"),
    ("base_lr-list-nan", lambda: S.StepLR(None, 2, base_lr=[0.1, math.nan]), ValueError, r"base_lr\[1\]"),
    ("base_lr-empty", lambda: S.StepLR(None, 2, base_lr=[]), ValueError, "base_lr"),
    ("optimizer-and-base_lr", lambda: S.StepLR(_sgd(BASES), 2, base_lr=1.0), ValueError, "base_lr"),
    ("optimizer-without-groups", lambda: S.StepLR(_NoGroups(), 2), TypeError, "param_groups"),
    ("optimizer-group-without-lr", lambda: S.StepLR(type("O", (), {"param_groups": [{}]})(), 2), ValueError,
     r"param_groups\[0\]"),
    ("last_epoch=-2", lambda: S.StepLR(None, 2, base_lr=1.0, last_epoch=-2), ValueError, "last_epoch"),
    ("lr_at-negative", lambda: S.StepLR(None, 2, base_lr=1.0).lr_at(-1), ValueError, "step"),
    ("plateau-metric-string", lambda: S.ReduceLROnPlateau(base_lr=1.0).step("low"), TypeError, "metrics"),
    ("sequential-empty", lambda: S.SequentialLR(None, [], []), ValueError, "schedulers"),
    ("sequential-milestones-count",
     lambda: S.SequentialLR(None, [S.StepLR(None, 2, base_lr=1.0)] * 2, [2, 4]), ValueError, "milestones"),
    ("sequential-milestones-unsorted",
     lambda: S.SequentialLR(None, [S.StepLR(None, 2, base_lr=1.0)] * 3, [4, 2]), ValueError, "milestones"),
    ("sequential-plateau",
     lambda: S.SequentialLR(None, [S.StepLR(None, 2, base_lr=1.0), S.ReduceLROnPlateau(base_lr=1.0)], [2]),
     ValueError, r"schedulers\[1\].*ReduceLROnPlateau"),
    ("sequential-not-a-scheduler", lambda: S.SequentialLR(None, [lambda t: 1.0], []), TypeError, r"schedulers\[0\]"),
    ("sequential-base-lrs-differ",
     lambda: S.SequentialLR(None, [S.StepLR(None, 2, base_lr=1.0), S.StepLR(None, 2, base_lr=2.0)], [2]), ValueError,
     r"schedulers\[1\]"),
    ("sequential-other-optimizer",
     lambda: S.SequentialLR(_sgd(BASES), [S.StepLR(_sgd(BASES), 2)], []), ValueError, r"schedulers\[0\]"),
    ("chained-empty", lambda: S.ChainedScheduler([]), ValueError, "schedulers"),
    ("chained-other-optimizers",
     lambda: S.ChainedScheduler([S.StepLR(_sgd(BASES), 2), S.StepLR(_sgd(BASES), 2)]), ValueError, r"schedulers\[1\]"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_invalid_arguments_leave_the_optimizer_untouched():
    opt = _sgd(BASES)
    for bad in (lambda: S.StepLR(opt, 0), lambda: S.WarmupCosine(opt, 5, 3), lambda: S.ExponentialLR(opt, -1.0),
                lambda: S.ReduceLROnPlateau(opt, mode="avg")):
        with pytest.raises(ValueError):
            bad()
    assert opt.param_groups[0].keys() == opt.defaults.keys() | {"params"}
    assert _group_lrs(opt) == BASES


def test_step_overflow_changes_nothing():
    sched = S.ExponentialLR(_sgd([1.0]), 10.0)
    sched.last_epoch = 400  # 10.0**401 overflows a double
    with pytest.raises((OverflowError, ValueError)):
        sched.step()
    assert sched.last_epoch == 400 and sched.optimizer.param_groups[0]["lr"] == 1.0


def test_load_state_dict_rolls_back_when_the_lrs_cannot_be_applied():
    """Checks that need the loaded values (the lrs they give, the optimizer's groups) come after the
    state is parsed: a failure there restores the previous state, inner schedulers included."""
    donor = S.SequentialLR(None, [S.ExponentialLR(None, 10.0, base_lr=BASES), S.StepLR(None, 2, base_lr=BASES)], [5])
    opt = _sgd(BASES)
    sched = S.SequentialLR(opt, [S.ExponentialLR(opt, 10.0), S.StepLR(opt, 2)], [5])
    sched.step()
    before, lrs_before = sched.state_dict(), _group_lrs(opt)
    children_before = [c.__dict__.copy() for c in sched.schedulers]
    bad = donor.state_dict()
    bad["milestones"] = [10**6]
    bad["last_epoch"] = 10**5  # 10.0 ** 100000 overflows
    with pytest.raises((OverflowError, ValueError)):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before and _group_lrs(opt) == lrs_before
    assert [c.__dict__ for c in sched.schedulers] == children_before
    opt.add_param_group({"params": [np.zeros(1)], "lr": 1.0})
    with pytest.raises(ValueError, match="param groups"):
        sched.load_state_dict(donor.state_dict())
    assert sched.state_dict() == before and _group_lrs(opt) == lrs_before + [1.0]
