"""The optimizer classes: trajectories equal the reference step by step (bitwise), torch defaults,
param groups, learning-rate changes, skipped parameters, state dicts (layout, copies, round trips,
refusals), add_param_group, repr, and a convergence sanity check."""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import reference as R

CLASSES = {
    "SGD": fusedopt.SGD,
    "Momentum": fusedopt.Momentum,
    "RMSprop": fusedopt.RMSprop,
    "Adam": fusedopt.Adam,
    "AdamW": fusedopt.AdamW,
    "Adagrad": fusedopt.Adagrad,
}

# torch.optim 2.13 defaults (Momentum has no torch twin; its lr is required)
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "SGD": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False),
    "Momentum": dict(beta=0.9, weight_decay=0, bias_correction=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, maximize=False,
                 decoupled_weight_decay=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, maximize=False),
}  # fmt: skip

# (class, constructor kwargs): every flag that changes the state or the math appears somewhere
CONFIGS: List[Tuple[str, Dict[str, Any]]] = [
    ("SGD", dict()),
    ("SGD", dict(lr=0.1, weight_decay=0.01, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Momentum", dict(lr=0.1)),
    ("Momentum", dict(lr=0.1, beta=0.8, weight_decay=0.01, bias_correction=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(centered=True)),
    ("RMSprop", dict(momentum=0.5, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.003, centered=True, momentum=0.5, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, maximize=True, eps=1e-6)),
]


def _cfg_id(cfg: Tuple[str, Dict[str, Any]]) -> str:
    name, kw = cfg
    return name + "".join(f"-{k}={v}" for k, v in kw.items()) if kw else name + "-defaults"


CONFIG_PARAMS = [pytest.param(c, id=_cfg_id(c)) for c in CONFIGS]

F32, F64 = np.float32, np.float64
DTYPE_SETS = {
    "float32": (F32, F32, F32),
    "float64": (F64, F64, F64),
    "mixed": (F32, F64, F32, F64),
}
SHAPES = [(3, 4), (17,), (2, 3, 2), (1,), (5,)]


def make_params(dtypes: Tuple[Any, ...], seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPES[i % len(SHAPES)]).astype(dt) for i, dt in enumerate(dtypes)]


def make_grads(params: List[np.ndarray], seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(10_000 + seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def full_hyper(name: str, kw: Dict[str, Any]) -> Dict[str, Any]:
    h = {**DEFAULTS[name], **kw}
    if name == "AdamW":
        h["decoupled_weight_decay"] = True
    return h


# ------------------------------------------------------------------------------------------------
# the reference optimizer: torch.optim's per-parameter state handling written out by hand, each
# update one call of fusedopt.reference (the specification)
# ------------------------------------------------------------------------------------------------
def manual_init(name: str, p: np.ndarray, h: Dict[str, Any]) -> Dict[str, Any]:
    if name == "SGD":
        return {}
    if name == "Adagrad":
        return {"step": 0, "sum": np.full(p.shape, h["initial_accumulator_value"], dtype=p.dtype)}
    return {"step": 0}


def manual_step(name: str, h: Dict[str, Any], p: np.ndarray, g: np.ndarray, st: Dict[str, Any]) -> None:
    z = lambda: np.zeros_like(p)  # noqa: E731
    if name == "SGD":
        buf, first = None, False
        if h["momentum"] != 0:
            first = "momentum_buffer" not in st
            if first:
                st["momentum_buffer"] = np.empty_like(p)
            buf = st["momentum_buffer"]
        R.sgd(p, g, buf, lr=h["lr"], momentum=h["momentum"], dampening=h["dampening"], nesterov=h["nesterov"],
              weight_decay=h["weight_decay"], maximize=h["maximize"], first_step=first)  # fmt: skip
        return
    st["step"] += 1
    t = st["step"]
    if name == "Momentum":
        v = st.setdefault("velocity", z())
        R.momentum(p, g, v, step=t, lr=h["lr"], beta=h["beta"], weight_decay=h["weight_decay"],
                   bias_correction=h["bias_correction"])  # fmt: skip
    elif name == "RMSprop":
        sq = st.setdefault("square_avg", z())
        ga = st.setdefault("grad_avg", z()) if h["centered"] else None
        mb = st.setdefault("momentum_buffer", z()) if h["momentum"] > 0 else None
        R.rmsprop(p, g, sq, ga, mb, lr=h["lr"], alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"],
                  momentum=h["momentum"], centered=h["centered"], maximize=h["maximize"])  # fmt: skip
    elif name in ("Adam", "AdamW"):
        m = st.setdefault("exp_avg", z())
        v = st.setdefault("exp_avg_sq", z())
        vmax = st.setdefault("max_exp_avg_sq", z()) if h["amsgrad"] else None
        b1, b2 = h["betas"]
        R.adam(p, g, m, v, vmax, step=t, lr=h["lr"], beta1=b1, beta2=b2, eps=h["eps"],
               weight_decay=h["weight_decay"], amsgrad=h["amsgrad"], maximize=h["maximize"],
               decoupled_weight_decay=h["decoupled_weight_decay"])  # fmt: skip
    elif name == "Adagrad":
        R.adagrad(p, g, st["sum"], step=t, lr=h["lr"], lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                  eps=h["eps"], maximize=h["maximize"])  # fmt: skip
    else:  # pragma: no cover
        raise AssertionError(name)


class Manual:
    """Reference optimizer with groups: ``groups`` is a list of (hyper, [param indices])."""

    def __init__(self, name: str, params: List[np.ndarray], groups: List[Tuple[Dict[str, Any], List[int]]]):
        self.name, self.params, self.groups = name, params, groups
        self.state = [None] * len(params)  # type: List[Any]
        for h, idx in groups:
            for i in idx:
                self.state[i] = manual_init(name, params[i], h)

    def step(self, grads: List[Optional[np.ndarray]]) -> None:
        for h, idx in self.groups:
            for i in idx:
                if grads[i] is not None:
                    manual_step(self.name, h, self.params[i], grads[i], self.state[i])


def assert_same(opt: fusedopt.Optimizer, man: Manual, where: str = "") -> None:
    assert len(opt.params) == len(man.params)
    for i, (p, q) in enumerate(zip(opt.params, man.params)):
        assert p.dtype == q.dtype and p.shape == q.shape
        assert p.tobytes() == q.tobytes(), f"{where}: params[{i}] differs from the reference"
        got, want = opt.state[i], man.state[i]
        assert set(got) == set(want), f"{where}: state[{i}] keys {sorted(got)} != {sorted(want)}"
        for k, w in want.items():
            if isinstance(w, np.ndarray):
                g = got[k]
                assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape, f"{where}: {k}"
                assert g.tobytes() == w.tobytes(), f"{where}: state[{i}][{k!r}] differs from the reference"
            else:
                assert got[k] == w and type(got[k]) is int, f"{where}: state[{i}][{k!r}] = {got[k]!r}, want {w!r}"


def build_pair(name: str, kw: Dict[str, Any], dtypes: Tuple[Any, ...]) -> Tuple[fusedopt.Optimizer, Manual]:
    ps = make_params(dtypes)
    opt = CLASSES[name]([p.copy() for p in ps], **kw)
    man = Manual(name, [p.copy() for p in ps], [(full_hyper(name, kw), list(range(len(ps))))])
    return opt, man


# ------------------------------------------------------------------------------------------------
# trajectories
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes", list(DTYPE_SETS), ids=list(DTYPE_SETS))
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_trajectory_equals_reference(cfg: Tuple[str, Dict[str, Any]], dtypes: str) -> None:
    name, kw = cfg
    opt, man = build_pair(name, kw, DTYPE_SETS[dtypes])
    start = [p.copy() for p in opt.params]
    for t in range(10):
        g = make_grads(opt.params, t)
        opt.step(g)
        man.step([x.copy() for x in g])
        assert_same(opt, man, f"after step {t + 1}")
    assert all(not np.array_equal(p, s) for p, s in zip(opt.params, start)), "some parameter never moved"


@pytest.mark.parametrize("name", list(CLASSES))
def test_step_updates_the_callers_arrays(name: str) -> None:
    ps = make_params(DTYPE_SETS["mixed"])
    opt = CLASSES[name](ps, lr=0.1)
    assert all(a is b for a, b in zip(opt.params, ps)), "the optimizer must hold the caller's arrays, not copies"
    before = [p.copy() for p in ps]
    opt.step(make_grads(ps, 0))
    assert all(not np.array_equal(p, b) for p, b in zip(ps, before))


@pytest.mark.parametrize("name", list(CLASSES))
def test_step_accepts_a_tuple_and_a_single_array(name: str) -> None:
    ps = make_params((F32, F32))
    opt = CLASSES[name](ps, lr=0.1)
    man = Manual(name, [p.copy() for p in ps], [(full_hyper(name, dict(lr=0.1)), [0, 1])])
    g = make_grads(ps, 0)
    opt.step(tuple(g))
    man.step(g)
    assert_same(opt, man)
    p = make_params((F64,))[0]
    single = CLASSES[name](p, lr=0.1)
    man1 = Manual(name, [p.copy()], [(full_hyper(name, dict(lr=0.1)), [0])])
    g1 = make_grads([p], 1)[0]
    single.step(g1)
    man1.step([g1])
    assert_same(single, man1)


# ------------------------------------------------------------------------------------------------
# defaults
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CLASSES))
def test_defaults_equal_torch(name: str) -> None:
    sig = inspect.signature(CLASSES[name])
    got = {k: p.default for k, p in sig.parameters.items() if k != "params"}
    # the low-precision keywords (issue 13; not torch.optim's), keyword-only, defaulting to torch's behaviour
    lowp = {k: got.pop(k) for k in ("master_weights", "stochastic_rounding", "seed", "state_dtype", "min_8bit_size")}
    assert lowp == {"master_weights": None, "stochastic_rounding": False, "seed": None, "state_dtype": None,
                    "min_8bit_size": 4096}  # fmt: skip
    expected = dict(DEFAULTS[name])
    if name == "Momentum":
        assert got.pop("lr") is inspect.Parameter.empty, "Momentum's lr is required (no torch default to copy)"
    assert got == expected
    for k, v in expected.items():  # flags are bools, numbers are numbers (no 0 vs False confusion)
        if isinstance(v, bool):
            assert type(got[k]) is bool, k
        elif isinstance(v, tuple):
            assert isinstance(got[k], tuple), k
        else:
            assert type(got[k]) in (int, float), k
    # the constructed optimizer holds them
    kw = {"lr": 0.1} if name == "Momentum" else {}
    opt = CLASSES[name](make_params((F32,)), **kw)
    for k, v in expected.items():
        assert opt.param_groups[0][k] == v, k


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad"])
def test_defaults_match_installed_torch_signature(name: str) -> None:
    torch = pytest.importorskip("torch", reason="torch is needed to compare signatures")
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    ours = inspect.signature(CLASSES[name]).parameters
    for k in DEFAULTS[name]:
        if k == "decoupled_weight_decay" and k not in theirs:  # pragma: no cover - older torch
            continue
        assert ours[k].default == theirs[k].default, k


# ------------------------------------------------------------------------------------------------
# param groups, lr changes, None grads, mixed dtypes, add_param_group
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_param_groups_with_their_own_lr(cfg: Tuple[str, Dict[str, Any]]) -> None:
    name, kw = cfg
    ps = make_params(DTYPE_SETS["mixed"])
    base = full_hyper(name, kw)
    g0_lr, g1_lr = 0.5 * base.get("lr", 0.01), 3.0 * base.get("lr", 0.01)
    opt = CLASSES[name](
        [{"params": [p.copy() for p in ps[:2]], "lr": g0_lr}, {"params": [p.copy() for p in ps[2:]], "lr": g1_lr}],
        **kw,
    )
    assert [g["params"] for g in opt.param_groups] == [[0, 1], [2, 3]]
    assert [g["lr"] for g in opt.param_groups] == [g0_lr, g1_lr]
    man = Manual(name, [p.copy() for p in ps], [({**base, "lr": g0_lr}, [0, 1]), ({**base, "lr": g1_lr}, [2, 3])])
    for t in range(5):
        g = make_grads(ps, t)
        opt.step(g)
        man.step(g)
        assert_same(opt, man, f"step {t + 1}")


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_changing_hyperparameters_between_steps(cfg: Tuple[str, Dict[str, Any]]) -> None:
    name, kw = cfg
    dtypes = DTYPE_SETS["float32"]
    opt, man = build_pair(name, kw, dtypes)
    const, _ = build_pair(name, kw, dtypes)
    lr0 = opt.param_groups[0]["lr"]
    h = man.groups[0][0]
    for t in range(6):
        lr = lr0 * (0.5 ** t)
        opt.param_groups[0]["lr"] = lr
        h["lr"] = lr
        if t == 3 and "weight_decay" in h:  # any hyperparameter may change, not only lr
            opt.param_groups[0]["weight_decay"] = 0.02
            h["weight_decay"] = 0.02
        g = make_grads(opt.params, t)
        opt.step(g)
        man.step(g)
        const.step(g)
        assert_same(opt, man, f"step {t + 1}")
    assert any(a.tobytes() != b.tobytes() for a, b in zip(opt.params, const.params)), "the lr change had no effect"


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_none_grads_skip_a_param(cfg: Tuple[str, Dict[str, Any]]) -> None:
    name, kw = cfg
    opt, man = build_pair(name, kw, DTYPE_SETS["mixed"])
    n = len(opt.params)
    pattern = [[0, 1, 2, 3], [1, 3], [], [0, 2], [0, 1, 2, 3], [2], [0, 1, 2, 3]]  # present indices per step
    counts = [0] * n
    for t, present in enumerate(pattern):
        g: List[Optional[np.ndarray]] = [x if i in present else None for i, x in enumerate(make_grads(opt.params, t))]
        before = [p.copy() for p in opt.params]
        state_before = copy.deepcopy(opt.state)
        opt.step(g)
        man.step(g)
        assert_same(opt, man, f"step {t + 1}")
        for i in range(n):
            if i in present:
                counts[i] += 1
            else:
                assert opt.params[i].tobytes() == before[i].tobytes(), f"skipped params[{i}] changed"
                assert set(opt.state[i]) == set(state_before[i])
                for k, v in state_before[i].items():
                    got = opt.state[i][k]
                    assert (got.tobytes() == v.tobytes()) if isinstance(v, np.ndarray) else got == v, k
            if name != "SGD":
                assert opt.state[i]["step"] == counts[i]


@pytest.mark.parametrize("name", list(CLASSES))
def test_all_none_grads_is_a_no_op(name: str) -> None:
    opt, _ = build_pair(name, {"lr": 0.1}, DTYPE_SETS["mixed"])
    before = [p.copy() for p in opt.params]
    sd = opt.state_dict()
    opt.step([None] * len(opt.params))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(opt.params, before))
    assert _sd_equal(opt.state_dict(), sd)


@pytest.mark.parametrize("name", list(CLASSES))
def test_add_param_group(name: str) -> None:
    ps = make_params((F32, F64, F32))
    kw = {"lr": 0.01}
    opt = CLASSES[name]([p.copy() for p in ps[:2]], **kw)
    man = Manual(name, [p.copy() for p in ps], [(full_hyper(name, kw), [0, 1])])
    g = make_grads(ps[:2], 0)
    opt.step(g)
    man.step(g + [None])
    new = ps[2].copy()
    opt.add_param_group({"params": [new], "lr": 0.1})
    assert opt.params[2] is new
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"] == [2]
    assert opt.param_groups[1]["lr"] == 0.1
    for k, v in full_hyper(name, kw).items():
        if k != "lr":
            assert opt.param_groups[1][k] == v, f"group 1 did not take the default {k}"
    man.groups.append(({**full_hyper(name, kw), "lr": 0.1}, [2]))
    man.state[2] = manual_init(name, man.params[2], man.groups[1][0])
    for t in range(1, 4):
        g = make_grads(ps, t)
        opt.step(g)
        man.step(g)
        assert_same(opt, man, f"step {t + 1}")


@pytest.mark.parametrize("name", list(CLASSES))
def test_add_param_group_rejects_and_leaves_optimizer_unchanged(name: str) -> None:
    ps = make_params((F32, F64, F32))
    opt = CLASSES[name](ps[:2], lr=0.01)
    opt.step(make_grads(ps[:2], 0))
    bad_groups = [
        ({"params": [ps[0]]}, ValueError, "params[2]"),  # already present
        ({"params": [ps[2], ps[1]]}, ValueError, "params[3]"),  # the second one is already present
        ({"params": [ps[1].reshape(-1)[2:5]]}, ValueError, "params[2]"),  # overlaps params[1]
        ({"params": [ps[2]], "lr": -1.0}, ValueError, "lr"),
        ({"params": [ps[2]], "nonsense": 1}, ValueError, "nonsense"),
        ({"params": [ps[2].astype(np.int32)]}, TypeError, "params[2]"),
        ({"lr": 0.1}, ValueError, "params"),
        ([ps[2]], TypeError, "param_group"),
    ]
    for group, exc, label in bad_groups:
        before = (copy.deepcopy(opt.param_groups), len(opt.params), copy.deepcopy(opt.state))
        with pytest.raises(exc, match=r"(?<!\w)" + re.escape(label) + r"(?!\w)"):
            opt.add_param_group(group)  # type: ignore[arg-type]
        after = (opt.param_groups, len(opt.params), opt.state)
        assert after[0] == before[0] and after[1] == before[1], f"{label}: optimizer changed"
        assert _states_equal(after[2], before[2])
    opt.step(make_grads(ps[:2], 1))  # still usable


@pytest.mark.parametrize("initial", [0.0, 0.25, 3.0])
@pytest.mark.parametrize("dt", [F32, F64], ids=["float32", "float64"])
def test_adagrad_sum_starts_at_initial_accumulator_value(initial: float, dt: Any) -> None:
    ps = make_params((dt, dt))
    opt = fusedopt.Adagrad([{"params": [ps[0]]}, {"params": [ps[1]], "initial_accumulator_value": 1.5}],
                           initial_accumulator_value=initial)  # fmt: skip
    for i, want in enumerate([initial, 1.5]):
        s = opt.state[i]["sum"]
        assert s.dtype == dt and s.shape == ps[i].shape
        assert s.tobytes() == np.full(ps[i].shape, want, dtype=dt).tobytes()
        assert opt.state[i]["step"] == 0
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1} and sd["state"][0]["step"] == 0
    np.testing.assert_array_equal(sd["state"][1]["sum"], np.full(ps[1].shape, 1.5, dtype=dt))


def test_repr() -> None:
    ps = make_params((F32, F64))
    for name, cls in CLASSES.items():
        opt = cls([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.5}], lr=0.01)
        r = repr(opt)
        assert r.startswith(name) and "Parameter Group 0" in r and "Parameter Group 1" in r, r
        assert "lr: 0.01" in r and "lr: 0.5" in r, r


# ------------------------------------------------------------------------------------------------
# state dicts
# ------------------------------------------------------------------------------------------------
def _states_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
            and a.shape == b.shape and a.tobytes() == b.tobytes()
        )  # fmt: skip
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b))
    return bool(a == b) and type(a) is type(b)


def _sd_equal(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return _states_equal(a, b)


def expected_state_keys(name: str, h: Dict[str, Any]) -> set:
    if name == "SGD":
        return {"momentum_buffer"} if h["momentum"] != 0 else set()
    if name == "Momentum":
        return {"step", "velocity"}
    if name == "RMSprop":
        return ({"step", "square_avg"} | ({"grad_avg"} if h["centered"] else set())
                | ({"momentum_buffer"} if h["momentum"] > 0 else set()))  # fmt: skip
    if name in ("Adam", "AdamW"):
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if h["amsgrad"] else set())
    return {"step", "sum"}


@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_state_dict_layout_and_copies(cfg: Tuple[str, Dict[str, Any]]) -> None:
    name, kw = cfg
    opt, _ = build_pair(name, kw, DTYPE_SETS["mixed"])
    for t in range(3):
        opt.step(make_grads(opt.params, t))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    n = len(opt.params)
    want_keys = expected_state_keys(name, full_hyper(name, kw))
    if want_keys:
        assert list(sd["state"]) == list(range(n)) and all(type(k) is int for k in sd["state"])
    else:
        assert sd["state"] == {}
    for i, st in sd["state"].items():
        assert set(st) == want_keys
        for k, v in st.items():
            if k == "step":
                assert type(v) is int and v == 3
            else:
                p = opt.params[i]
                assert isinstance(v, np.ndarray) and v.dtype == p.dtype and v.shape == p.shape
                assert not np.shares_memory(v, opt.state[i][k]), f"state_dict()[{i}][{k!r}] is not a copy"
                assert not np.shares_memory(v, p)
    assert isinstance(sd["param_groups"], list) and len(sd["param_groups"]) == 1
    grp = sd["param_groups"][0]
    assert set(grp) == set(full_hyper(name, kw)) | {"params"}
    assert grp["params"] == list(range(n))
    for k, v in full_hyper(name, kw).items():
        assert grp[k] == v, k
    # later steps (and edits of the live groups) do not change the saved dict
    saved = copy.deepcopy(sd)
    for t in range(3, 5):
        opt.step(make_grads(opt.params, t))
    opt.param_groups[0]["lr"] = 123.0
    assert _sd_equal(sd, saved)
    # and editing the saved dict does not change the optimizer
    live = copy.deepcopy(opt.state)
    for st in sd["state"].values():
        for v in st.values():
            if isinstance(v, np.ndarray):
                v[...] = 42
    sd["param_groups"][0]["params"].append(99)
    assert _states_equal(opt.state, live) and opt.param_groups[0]["params"] == list(range(n))


def test_state_dict_before_any_step() -> None:
    ps = make_params((F32,))
    for name, cls in CLASSES.items():
        sd = cls(ps, lr=0.1).state_dict()
        if name == "Adagrad":
            assert set(sd["state"]) == {0}
        else:
            assert sd["state"] == {}, name
        assert sd["param_groups"][0]["params"] == [0]


def _via_npz(sd: Dict[str, Any], tmp_path: Any) -> Dict[str, Any]:
    arrays: Dict[str, np.ndarray] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            arrays[f"state.{i}.{k}"] = np.asarray(v)
    arrays["param_groups"] = np.array(json.dumps(sd["param_groups"]))
    path = tmp_path / "sd.npz"
    np.savez(path, **arrays)
    state: Dict[int, Dict[str, Any]] = {}
    with np.load(path) as z:  # allow_pickle=False: plain arrays only
        for key in z.files:
            if key.startswith("state."):
                _, i, k = key.split(".", 2)
                state.setdefault(int(i), {})[k] = z[key]
        groups = json.loads(str(z["param_groups"]))
    return {"state": state, "param_groups": groups}


TRANSPORTS: Dict[str, Callable[[Dict[str, Any], Any], Dict[str, Any]]] = {
    "direct": lambda sd, tmp: sd,
    "deepcopy": lambda sd, tmp: copy.deepcopy(sd),
    "pickle": lambda sd, tmp: pickle.loads(pickle.dumps(sd, protocol=pickle.HIGHEST_PROTOCOL)),
    "npz": _via_npz,
}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("dtypes", ["float32", "mixed"])
@pytest.mark.parametrize("cfg", CONFIG_PARAMS)
def test_state_dict_round_trip_continues_bitwise(
    cfg: Tuple[str, Dict[str, Any]], dtypes: str, transport: str, tmp_path: Any
) -> None:
    name, kw = cfg
    ps = make_params(DTYPE_SETS[dtypes])
    groups = lambda arrs: [{"params": arrs[:2]}, {"params": arrs[2:], "lr": 0.02}]  # noqa: E731
    whole = CLASSES[name](groups([p.copy() for p in ps]), **kw)
    first = CLASSES[name](groups([p.copy() for p in ps]), **kw)
    grads = [make_grads(ps, t) for t in range(10)]
    for t in range(10):
        whole.step(grads[t])
    for t in range(5):
        first.step(grads[t])
    sd = TRANSPORTS[transport](first.state_dict(), tmp_path)
    # a fresh optimizer on copies of the params, built with other hyperparameters: load restores them
    other_kw = {**kw, "lr": 0.7}
    resumed = CLASSES[name](groups([p.copy() for p in first.params]), **other_kw)
    resumed.load_state_dict(sd)
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in first.param_groups]
    for t in range(5, 10):
        resumed.step(grads[t])
    for i, (a, b) in enumerate(zip(resumed.params, whole.params)):
        assert a.tobytes() == b.tobytes(), f"params[{i}] after resuming differs from an uninterrupted run"
    assert _states_equal(resumed.state, whole.state)
    assert _sd_equal(resumed.state_dict(), whole.state_dict())


@pytest.mark.parametrize("name", list(CLASSES))
def test_load_state_dict_copies_arrays_in(name: str) -> None:
    opt, _ = build_pair(name, {"lr": 0.1, **({"momentum": 0.9} if name in ("SGD", "RMSprop") else {})},
                        DTYPE_SETS["float32"])  # fmt: skip
    for t in range(2):
        opt.step(make_grads(opt.params, t))
    sd = opt.state_dict()
    other = CLASSES[name]([p.copy() for p in opt.params], lr=0.1)
    other.load_state_dict(sd)
    for i, st in enumerate(other.state):
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert not np.shares_memory(v, sd["state"][i][k]), f"loaded {k} aliases the state dict"
    saved = copy.deepcopy(sd)
    other.step(make_grads(opt.params, 5))
    assert _sd_equal(sd, saved), "stepping the loaded optimizer changed the source state dict"


def test_load_torch_style_step_values() -> None:
    """torch keeps 'step' as a 0-d float tensor; a 0-d float/int array holding an integer loads as int."""
    ps = make_params((F32, F32))
    a = fusedopt.Adam([p.copy() for p in ps], lr=0.01)
    for t in range(3):
        a.step(make_grads(ps, t))
    for step in (np.array(3.0, dtype=np.float32), np.array(3), np.int64(3), 3.0):
        sd = a.state_dict()
        for st in sd["state"].values():
            st["step"] = step
        b = fusedopt.Adam([p.copy() for p in a.params], lr=0.01)
        b.load_state_dict(sd)
        assert all(type(st["step"]) is int and st["step"] == 3 for st in b.state)


# -- refusals ----------------------------------------------------------------------------------
def _two_group_adam() -> Tuple[fusedopt.Optimizer, Dict[str, Any]]:
    ps = make_params(DTYPE_SETS["mixed"])
    mk = lambda arrs: fusedopt.Adam([{"params": arrs[:2]}, {"params": arrs[2:], "lr": 0.02}], lr=0.01,  # noqa: E731
                                    amsgrad=True)  # fmt: skip
    opt = mk([p.copy() for p in ps])
    opt.step(make_grads(ps, 0))
    donor = mk([p.copy() for p in ps])
    for t in range(1, 4):
        donor.step(make_grads(ps, t))
    return opt, donor.state_dict()


def _del(d: Dict[str, Any], k: str) -> None:
    del d[k]


LAST = 3
BAD_ADAM_SDS: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "one-group-missing": lambda sd: sd["param_groups"].pop(),
    "extra-group": lambda sd: sd["param_groups"].append(copy.deepcopy(sd["param_groups"][1])),
    "too-few-params-in-group": lambda sd: sd["param_groups"][1]["params"].pop(),
    "too-many-params-in-group": lambda sd: sd["param_groups"][1]["params"].append(7),
    "wrong-shape": lambda sd: sd["state"][LAST].__setitem__("exp_avg", np.zeros(99, np.float64)),
    "wrong-shape-transposed": lambda sd: sd["state"][0].__setitem__("exp_avg", np.zeros((4, 3), np.float32)),
    "wrong-dtype": lambda sd: sd["state"][LAST].__setitem__("exp_avg_sq", sd["state"][LAST]["exp_avg_sq"].astype(F32)),
    "int-dtype": lambda sd: sd["state"][LAST].__setitem__("exp_avg_sq", sd["state"][LAST]["exp_avg_sq"].astype(int)),
    "not-an-array": lambda sd: sd["state"][LAST].__setitem__("exp_avg", sd["state"][LAST]["exp_avg"].tolist()),
    "missing-exp_avg_sq": lambda sd: _del(sd["state"][LAST], "exp_avg_sq"),
    "missing-step": lambda sd: _del(sd["state"][LAST], "step"),
    "unknown-state-key": lambda sd: sd["state"][LAST].__setitem__("momentum_buffer", sd["state"][LAST]["exp_avg"]),
    "negative-step": lambda sd: sd["state"][LAST].__setitem__("step", -1),
    "fractional-step": lambda sd: sd["state"][LAST].__setitem__("step", 1.5),
    "bool-step": lambda sd: sd["state"][LAST].__setitem__("step", True),
    "state-for-unknown-param": lambda sd: sd["state"].__setitem__(17, copy.deepcopy(sd["state"][0])),
    "state-not-a-dict": lambda sd: sd["state"].__setitem__(LAST, [1, 2]),
    "invalid-lr": lambda sd: sd["param_groups"][1].__setitem__("lr", -1.0),
    "invalid-beta": lambda sd: sd["param_groups"][1].__setitem__("betas", (0.9, 1.0)),
    "missing-hyperparameter": lambda sd: _del(sd["param_groups"][1], "eps"),
    "no-state-key": lambda sd: _del(sd, "state"),
    "no-param_groups-key": lambda sd: _del(sd, "param_groups"),
}  # fmt: skip
NON_DICTS = {"list": [], "None": None, "int": 5, "string": "state"}


def _opt_snapshot(opt: fusedopt.Optimizer) -> Any:
    return (copy.deepcopy(opt.param_groups), copy.deepcopy(opt.state), [p.copy() for p in opt.params])


def _assert_opt_unchanged(opt: fusedopt.Optimizer, snap: Any) -> None:
    groups, state, params = snap
    assert opt.param_groups == groups, "param_groups changed by a refused load"
    assert _states_equal(opt.state, state), "state changed by a refused load"
    assert all(a.tobytes() == b.tobytes() for a, b in zip(opt.params, params))


@pytest.mark.parametrize("case", list(BAD_ADAM_SDS) + [f"non-dict-{k}" for k in NON_DICTS])
def test_load_state_dict_refuses_and_changes_nothing(case: str) -> None:
    opt, sd = _two_group_adam()
    if case.startswith("non-dict-"):
        bad: Any = NON_DICTS[case[len("non-dict-") :]]
    else:
        bad = copy.deepcopy(sd)
        BAD_ADAM_SDS[case](bad)
    snap = _opt_snapshot(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    _assert_opt_unchanged(opt, snap)
    # the optimizer still steps exactly like one that never saw the bad dict
    twin, _ = _two_group_adam()
    g = make_grads(opt.params, 9)
    opt.step(g)
    twin.step(g)
    assert _states_equal(opt.state, twin.state)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(opt.params, twin.params))
    # and the good dict still loads
    opt.load_state_dict(sd)
    assert opt.state[LAST]["step"] == 3


PRIMARY_STATE = {"SGD": "momentum_buffer", "Momentum": "velocity", "RMSprop": "square_avg", "Adam": "exp_avg",
                 "AdamW": "exp_avg_sq", "Adagrad": "sum"}  # fmt: skip
GENERIC_BAD = ["wrong-shape", "wrong-dtype", "unknown-key", "negative-step", "missing-required", "invalid-lr"]
# SGD has no step counter and no required state (a missing buffer restarts momentum, as in torch)
GENERIC_BAD_CASES = [
    pytest.param(n, c, id=f"{n}-{c}")
    for n in CLASSES
    for c in GENERIC_BAD
    if not (n == "SGD" and c in ("negative-step", "missing-required"))
]


@pytest.mark.parametrize(("name", "case"), GENERIC_BAD_CASES)
def test_load_state_dict_refusals_every_class(name: str, case: str) -> None:
    kw = {"lr": 0.1, **({"momentum": 0.9} if name == "SGD" else {})}
    ps = make_params(DTYPE_SETS["mixed"])
    opt = CLASSES[name]([p.copy() for p in ps], **kw)
    opt.step(make_grads(ps, 0))
    donor = CLASSES[name]([p.copy() for p in ps], **kw)
    for t in range(3):
        donor.step(make_grads(ps, t))
    sd = donor.state_dict()
    key, last = PRIMARY_STATE[name], len(ps) - 1
    st = sd["state"][last]
    if case == "wrong-shape":
        st[key] = np.zeros(st[key].size + 1, st[key].dtype)
    elif case == "wrong-dtype":
        st[key] = st[key].astype(F32 if st[key].dtype == F64 else F64)
    elif case == "unknown-key":
        st["bogus"] = st[key].copy()
    elif case == "negative-step":
        st["step"] = -2
    elif case == "missing-required":
        del st[key]
    elif case == "invalid-lr":
        sd["param_groups"][0]["lr"] = -1.0
    snap = _opt_snapshot(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_opt_unchanged(opt, snap)


def test_sgd_state_dict_without_buffer_restarts_momentum() -> None:
    """torch semantics: an SGD state without 'momentum_buffer' starts the buffer at g again."""
    ps = make_params((F32, F32))
    opt = fusedopt.SGD([p.copy() for p in ps], lr=0.1, momentum=0.9)
    opt.step(make_grads(ps, 0))
    sd = opt.state_dict()
    del sd["state"][1]
    opt.load_state_dict(sd)
    assert "momentum_buffer" not in opt.state[1]
    man = Manual("SGD", [p.copy() for p in opt.params], [(full_hyper("SGD", dict(lr=0.1, momentum=0.9)), [0, 1])])
    man.state[0] = {"momentum_buffer": opt.state[0]["momentum_buffer"].copy()}
    g = make_grads(ps, 1)
    opt.step(g)
    man.step(g)
    assert_same(opt, man)


# ------------------------------------------------------------------------------------------------
# convergence sanity
# ------------------------------------------------------------------------------------------------
CONVERGENCE = [
    ("SGD", dict(lr=0.2)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Momentum", dict(lr=0.2, beta=0.9)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.005, centered=True, momentum=0.5)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.5)),
]


@pytest.mark.parametrize("dt", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("cfg", [pytest.param(c, id=_cfg_id(c)) for c in CONVERGENCE])
def test_convergence_on_a_convex_quadratic(cfg: Tuple[str, Dict[str, Any]], dt: Any) -> None:
    name, kw = cfg
    rng = np.random.default_rng(42)
    a = [rng.uniform(0.5, 2.0, size=s).astype(dt) for s in [(40,), (4, 5)]]
    x = [rng.uniform(-2.0, 2.0, size=ai.shape).astype(dt) for ai in a]
    f = lambda: float(sum(0.5 * np.sum(ai.astype(F64) * xi.astype(F64) ** 2) for ai, xi in zip(a, x)))  # noqa: E731
    f0 = f()
    opt = CLASSES[name](x, **kw)
    for _ in range(200):
        opt.step([ai * xi for ai, xi in zip(a, x)])
    assert all(np.all(np.isfinite(xi)) for xi in x)
    assert f() < 1e-2 * f0, f"{name}{kw}: f went from {f0} to {f()} in 200 steps"


@pytest.mark.parametrize("cls", [fusedopt.Adam, fusedopt.RMSprop, fusedopt.Adagrad, fusedopt.Momentum],
                         ids=lambda c: c.__name__)  # fmt: skip
def test_state_arrays_share_the_parameters_address_modulo_64(cls: type) -> None:
    """State arrays start at the parameter's phase within a cache line, so the kernels' aligned
    vector loop (cpp/kernels/parallel.inl) has every updated stream on cache-line boundaries."""
    raw = np.zeros(4096, np.float32)
    base = (-raw.ctypes.data) % 64 // 4
    params = [raw[base + 64 * k + k : base + 64 * k + k + 40] for k in range(16)]  # phases 0..15 elements
    kwargs = {"lr": 0.1} if cls is fusedopt.Momentum else {}
    opt = cls(params, **kwargs)
    opt.step([np.ones(40, np.float32)] * 16)
    for p, st in zip(opt.params, opt.state):
        arrays = [v for v in st.values() if isinstance(v, np.ndarray)]
        assert arrays and all(a.ctypes.data % 64 == p.ctypes.data % 64 for a in arrays)
        assert all(a.shape == p.shape and a.flags.c_contiguous and a.flags.writeable for a in arrays)
