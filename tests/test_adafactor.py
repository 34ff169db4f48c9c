"""Adafactor (torch.optim.Adafactor, loop form): the one-call kernel (``_core.adafactor``,
cpp/kernels/adafactor.inl) against its specification :func:`fusedopt.reference.adafactor` bitwise
(every ISA, float32/float64, threads 1/2/3, flags, shapes: 0-d, 1-D, 2-D, 3-D, one row, one
column, sizes straddling the 1024-element segments, the 64-row tiles and the 65536-element items);
the reference with torch's reductions injected equals torch bitwise (float32); the classes against
torch.optim.Adafactor over 20 steps for every flag combination (tolerance: below), state dicts
both ways, the first step by hand, the zero-gradient rule and bad input (raises, nothing modified).

Tolerance vs torch: torch's norms and means accumulate in float32 in an ISA-dependent order,
fusedopt's in float64 in a fixed one (SEMANTICS-ALGORITHMS.md §9); the element-wise arithmetic
is the same (test_reference_with_torch_reductions_is_torch_bitwise). A difference of one ulp in a
norm moves every element of the tensor by about an ulp, so differences grow at most about
linearly with the steps: |fusedopt - torch| <= 1e-6 * steps for O(1) parameters (measured max
1.4e-6 after 20 steps at lr=0.5, 2.4e-7..4.8e-7 at the default lr), float64 1e-14 * steps.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import _adafactor, _core, _scalars, reference
from fusedopt import functional as F

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

THREADS = [1, 2, 3]
SEG = reference.ADAFACTOR_SEG
# 0-d, 1-D around the segment and item sizes, 2-D/3-D around segments (1024 columns) and row tiles
# (64 rows of >= 1024 columns; 65536 rows of one column), one row, one column, empty
SHAPES: List[Tuple[int, ...]] = [
    (), (1,), (9,), (SEG - 1,), (SEG + 1,), (65 * SEG + 3,), (5, 7), (2, 3, 4), (1, 2 * SEG + 1), (9, 1),
    (65536 + 7, 1), (130, SEG + 9), (3, 70, 1030), (2, 2, 1, 5), (0,), (0, 4),
]  # fmt: skip
CONFIGS: List[Dict[str, Any]] = [
    {},
    {"weight_decay": 0.1, "maximize": True, "lr": 0.05},
    {"d": 2.0, "eps1": 1e-20, "eps2": 1e-2, "lr": 0.5, "beta2_decay": -0.5},
    {"weight_decay": 0.01, "d": 1.5, "eps1": 1e-4},
]
N_STEPS = 3


def _id(c: Dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items()) or "defaults"


def _states(ps: List[np.ndarray]) -> Tuple[List[Optional[np.ndarray]], ...]:
    rows: List[Optional[np.ndarray]] = []
    cols: List[Optional[np.ndarray]] = []
    var: List[Optional[np.ndarray]] = []
    for p in ps:
        sh = _adafactor.state_shapes(p.shape)
        rows.append(np.zeros(sh["row_var"], p.dtype) if "row_var" in sh else None)
        cols.append(np.zeros(sh["col_var"], p.dtype) if "col_var" in sh else None)
        var.append(np.zeros(sh["variance"], p.dtype) if "variance" in sh else None)
    return rows, cols, var


def _grads(seed: int, dtype: Any, t: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed * 1000 + t)
    scale = 0.1 if t % 2 else 3.0
    return [np.asarray(rng.standard_normal(s) * scale, dtype) for s in SHAPES]


def _params(seed: int, dtype: Any) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Bitwise equal, except that any NaN equals any NaN."""
    a, e = actual.reshape(-1), expected.reshape(-1)
    same = (_bits(a) == _bits(e)) | (np.isnan(a) & np.isnan(e))
    if not np.all(same):
        bad = np.flatnonzero(~same)
        sample = ", ".join(f"[{i}] got {a[i]!r} want {e[i]!r}" for i in bad[:5])
        pytest.fail(f"{what}: {bad.size} of {a.size} elements differ: {sample}")


_EXPECTED: Dict[Tuple[str, int], List[List[np.ndarray]]] = {}


def _expected(dtype: Any, ci: int) -> List[List[np.ndarray]]:
    """Reference results (params, then every state) after each step, computed once per dtype/config."""
    key = (np.dtype(dtype).name, ci)
    if key not in _EXPECTED:
        cfg = CONFIGS[ci]
        ps = _params(ci, dtype)
        rows, cols, var = _states(ps)
        out = []
        for t in range(1, N_STEPS + 1):
            for i, g in enumerate(_grads(ci, dtype, t)):
                reference.adafactor(ps[i], g, rows[i], cols[i], var[i], step=t, **cfg)
            out.append([a.copy() for a in ps + [x for x in rows + cols + var if x is not None]])
        _EXPECTED[key] = out
    return _EXPECTED[key]


@pytest.mark.parametrize("ci", range(len(CONFIGS)), ids=[_id(c) for c in CONFIGS])
@pytest.mark.parametrize("threads", THREADS)
def test_kernel_matches_reference_bitwise(isa: str, dtype: Any, threads: int, ci: int) -> None:
    cfg = CONFIGS[ci]
    want = _expected(dtype, ci)
    ps = _params(ci, dtype)
    rows, cols, var = _states(ps)
    for t in range(1, N_STEPS + 1):
        F.adafactor(ps, _grads(ci, dtype, t), rows, cols, var, step=t, threads=threads, **cfg)
        got = ps + [x for x in rows + cols + var if x is not None]
        for j, (a, e) in enumerate(zip(got, want[t - 1])):
            assert_same(a, e, f"step {t}, array {j} (shape {a.shape})")


def test_empty_tensors_are_untouched_and_scratch_is_reused() -> None:
    p = [np.zeros((0, 4), np.float32), np.ones(3, np.float32), np.zeros(0, np.float32)]
    rows, cols, var = _states(p)
    F.adafactor(p, [np.zeros_like(x) for x in p], rows, cols, var, step=1)
    assert p[1].tolist() == [1.0, 1.0, 1.0]  # zero gradient, no decay: unchanged


# -- torch: the element-wise arithmetic, and whole steps -----------------------------------------
def _torch_reductions() -> reference.AdafactorReductions:
    def norm(x: np.ndarray) -> float:
        return float(torch.from_numpy(np.ascontiguousarray(x)).norm(2).item())

    return reference.AdafactorReductions(
        norm=norm,
        row_norms=lambda g: torch.norm(torch.from_numpy(g), dim=-1).numpy(),
        col_norms=lambda g: torch.norm(torch.from_numpy(g), dim=-2).numpy(),
        row_mean=lambda r: torch.from_numpy(r).unsqueeze(-1).mean(dim=-2).squeeze(-1).numpy(),
    )


TORCH_SHAPES = [(37, 129), (1000,), (), (3, 40, 61), (1, 50), (50, 1), (100003,)]
FLAGS = [dict(maximize=m, weight_decay=wd) for m, wd in itertools.product([False, True], [0.0, 0.1])]


@pytest.mark.parametrize("flags", FLAGS, ids=_id)
@pytest.mark.parametrize("extra", [{}, {"d": 2.0, "eps": (1e-20, 1e-2), "lr": 0.05}], ids=_id)
def test_reference_with_torch_reductions_is_torch_bitwise(flags: Dict[str, Any], extra: Dict[str, Any]) -> None:
    """float32, 15 steps: given torch's norms and means, every element and state equals torch's."""
    torch.manual_seed(1)
    hook = _torch_reductions()
    for shape in TORCH_SHAPES:
        p = torch.randn(shape)
        tp = p.clone().requires_grad_()
        kw = {**flags, **extra}
        opt = torch.optim.Adafactor([tp], **kw)
        mine = p.numpy().copy()
        (r,), (c,), (v,) = _states([mine])
        eps1, eps2 = kw.get("eps", (None, 1e-3))
        for t in range(1, 16):
            g = torch.randn(shape) * (0.1 if t % 2 else 3.0)
            tp.grad = g.clone()
            opt.step()
            reference.adafactor(mine, g.numpy(), r, c, v, step=t, eps1=eps1, eps2=eps2, reductions=hook,
                                **{k: x for k, x in kw.items() if k != "eps"})  # fmt: skip
            assert_same(mine, tp.detach().numpy(), f"param {shape} step {t}")
            st = opt.state[tp]
            for key, mine_state in (("row_var", r), ("col_var", c), ("variance", v)):
                if mine_state is not None:
                    assert_same(mine_state, st[key].numpy(), f"{key} {shape} step {t}")


def _tol(dtype: Any, steps: int) -> float:
    return (1e-6 if dtype == torch.float32 else 1e-14) * steps


def _assert_close_to_torch(mine: List[Any], theirs: List[Any], dtype: Any, steps: int) -> float:
    worst = 0.0
    for a, b in zip(mine, theirs):
        a = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(a)
        err = float((a.double() - b.detach().double()).abs().max()) if a.numel() else 0.0
        assert err <= _tol(dtype, steps), f"{tuple(a.shape)}: max |fusedopt - torch| = {err}"
        worst = max(worst, err)
    return worst


def _states_close(mine: Dict[str, Any], theirs: Dict[str, Any], dtype: Any) -> None:
    assert set(mine) == set(theirs)
    assert float(mine["step"]) == float(theirs["step"])
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for k in set(mine) - {"step"}:
        a = mine[k] if isinstance(mine[k], torch.Tensor) else torch.from_numpy(mine[k])
        assert tuple(a.shape) == tuple(theirs[k].shape)
        torch.testing.assert_close(a, theirs[k], rtol=rtol, atol=0.0)


COMBOS = [
    dict(maximize=m, weight_decay=wd, **x)
    for m, wd, x in itertools.product(
        [False, True], [0.0, 0.1], [{}, {"d": 2.0, "eps": (1e-20, 1e-2)}, {"lr": 0.5, "beta2_decay": -0.5}]
    )
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kw", COMBOS, ids=_id)
def test_parity_with_torch_20_steps(kw: Dict[str, Any], dtype: Any) -> None:
    torch.manual_seed(2)
    shapes = [(37, 129), (1000,), (), (3, 40, 61), (1, 50), (50, 1)]
    ps = [torch.randn(s, dtype=dtype) for s in shapes]
    a = [p.clone().requires_grad_() for p in ps]
    b = [p.clone().requires_grad_() for p in ps]
    arrays = [p.numpy().copy() for p in ps]
    oa, ob = torch.optim.Adafactor(a, **kw), ft.Adafactor(b, **kw)
    on = fusedopt.Adafactor(arrays, **kw)
    for t in range(20):
        gs = [torch.randn(s, dtype=dtype) * (0.1 if t % 2 else 3.0) for s in shapes]
        for x, y, g in zip(a, b, gs):
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
        on.step([g.numpy() for g in gs])
        assert ob.last_native_calls == 1 and on.last_native_calls == 1
    _assert_close_to_torch(b, a, dtype, 20)
    for y, z in zip(b, arrays):  # the NumPy class and the torch drop-in: the same kernel
        assert_same(y.detach().numpy(), z, "numpy vs torch front end")
    for x, y in zip(a, b):
        _states_close(ob.state[y], oa.state[x], dtype)


def test_state_dicts_both_ways() -> None:
    torch.manual_seed(3)
    shapes = [(20, 30), (7,), (2, 5, 6)]
    ps = [torch.randn(s) for s in shapes]
    kw: Dict[str, Any] = {"weight_decay": 0.05, "lr": 0.1}

    def run(opt: Any, params: List[Any], steps: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for t in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * (0.1 if t % 2 else 3.0)
            opt.step()

    # torch -> fusedopt.torch, and fusedopt.torch -> torch: both continue as torch would
    for first, second in ((torch.optim.Adafactor, ft.Adafactor), (ft.Adafactor, torch.optim.Adafactor)):
        a = [p.clone().requires_grad_() for p in ps]
        oa = first(a, **kw)
        run(oa, a, 5, 0)
        sd = copy.deepcopy(oa.state_dict())
        assert sorted(sd["state"][0]) == ["col_var", "row_var", "step"]
        assert sorted(sd["state"][1]) == ["step", "variance"]
        assert sd["state"][0]["row_var"].shape == (20, 1) and sd["state"][2]["col_var"].shape == (2, 1, 6)
        b = [x.detach().clone().requires_grad_() for x in a]
        c = [x.detach().clone().requires_grad_() for x in a]
        ob, oc = second(b, **kw), first(c, **kw)
        ob.load_state_dict(copy.deepcopy(sd))
        oc.load_state_dict(copy.deepcopy(sd))
        run(ob, b, 10, 1)
        run(oc, c, 10, 1)
        _assert_close_to_torch(b, c, torch.float32, 15)
        for x, y in zip(b, c):
            _states_close(ob.state[x], oc.state[y], torch.float32)

    # NumPy class <-> torch (tensors made from its arrays)
    a = [p.clone().requires_grad_() for p in ps]
    oa = torch.optim.Adafactor(a, **kw)
    run(oa, a, 4, 2)
    arrays = [x.detach().numpy().copy() for x in a]
    on = fusedopt.Adafactor(arrays, **kw)
    on.load_state_dict(oa.state_dict())
    assert on.state[0]["step"] == 4 and on.state[1]["variance"].dtype == np.float32
    back = torch.optim.Adafactor([torch.from_numpy(x.copy()).requires_grad_() for x in arrays], **kw)
    sd = on.state_dict()
    back.load_state_dict({"state": {i: {k: torch.tensor(float(v)) if k == "step" else torch.from_numpy(v)
                                        for k, v in st.items()} for i, st in sd["state"].items()},
                          "param_groups": sd["param_groups"]})  # fmt: skip
    assert float(back.state[back.param_groups[0]["params"][0]]["step"]) == 4.0


def test_mixed_step_counts_and_eps1_from_first_param() -> None:
    """A parameter without a gradient in some steps keeps its own count (one call per distinct
    count); eps1=None is the first stepped parameter's dtype eps for the whole group (torch)."""
    torch.manual_seed(4)
    ps = [torch.randn(8, 9, dtype=torch.float64), torch.randn(6), torch.randn(4, 5)]
    a = [p.clone().requires_grad_() for p in ps]
    b = [p.clone().requires_grad_() for p in ps]
    oa, ob = torch.optim.Adafactor(a, lr=0.1), ft.Adafactor(b, lr=0.1)
    for t in range(6):
        for i, (x, y) in enumerate(zip(a, b)):
            g = torch.randn(x.shape, dtype=x.dtype) if (i != 2 or t % 2) else None
            x.grad, y.grad = g, (None if g is None else g.clone())
        oa.step()
        ob.step()
    assert ob.last_native_calls == 3  # (float64, 6), (float32, 6), (float32, 3): one call per (dtype, count)
    for x, y in zip(a, b):
        _assert_close_to_torch([y], [x], x.dtype, 6)
        assert float(ob.state[y]["step"]) == float(oa.state[x]["step"])


# -- by hand ------------------------------------------------------------------------------------
def test_first_step_by_hand() -> None:
    """t = 1: w = 1, so the factors are the first statistics exactly; rho = min(lr, 1)."""
    p = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], np.float64)
    g = np.array([[0.3, -0.1, 0.2], [1.5, 0.4, -0.6]], np.float64)
    lr, wd = 0.05, 0.1
    row = (g**2).mean(axis=1, keepdims=True)
    col = (g**2).mean(axis=0, keepdims=True)
    v = row @ col / row.mean()
    u = g / np.sqrt(v)
    den = max(1.0, np.sqrt((u**2).mean()))  # ||u||/sqrt(n)/d, d = 1
    alpha = max(1e-3, np.sqrt((p**2).mean())) * min(lr, 1.0)
    want = p * (1 - lr * wd) - alpha / den * u
    for dtype in (np.float32, np.float64):
        mine = p.astype(dtype)
        (r,), (c,), _ = _states([mine])
        F.adafactor([mine], [g.astype(dtype)], [r], [c], [None], step=1, lr=lr, weight_decay=wd)
        np.testing.assert_allclose(mine, want, rtol=2e-6 if dtype == np.float32 else 1e-14)
        np.testing.assert_allclose(r, row, rtol=2e-7 if dtype == np.float32 else 1e-15)
        np.testing.assert_allclose(c, col, rtol=2e-7 if dtype == np.float32 else 1e-15)
    # 1-D: V = g^2, u = sign(g), ||u||/sqrt(n) = 1 -> den = 1: p -= alpha*sign(g)
    q = np.array([0.5, -1.0, 2.0, 0.0], np.float64)
    gq = np.array([2.0, -0.5, 0.25, 1.0])
    (mine1,) = [q.copy()]
    var = np.zeros(4)
    F.adafactor([mine1], [gq], [None], [None], [var], step=1, lr=lr)
    alpha = max(1e-3, np.sqrt((q**2).mean())) * lr
    np.testing.assert_allclose(mine1, q - alpha * np.sign(gq), rtol=1e-15)
    np.testing.assert_array_equal(var, gq**2)
    # step 4: rho = min(lr, 1/2), w = 4**-0.8 (lerp from the old statistics)
    s = _scalars.adafactor_scalars(step=4, lr=1.0, beta2_decay=-0.8, eps1=0.0, eps2=0.0, d=1.0, weight_decay=0.0)
    assert s.rho == 0.5 and s.w == 4**-0.8


def test_zero_gradient_only_decays() -> None:
    """g = 0: V clamps to eps1^2, u = 0, the parameter only decays: fl(p*fl(1 - lr*wd))."""
    for dtype in (np.float32, np.float64):
        ps = [np.asarray(np.random.default_rng(5).standard_normal(s), dtype) for s in [(4, 1100), (70,), ()]]
        before = [x.copy() for x in ps]
        rows, cols, var = _states(ps)
        F.adafactor(ps, [np.zeros_like(x) for x in ps], rows, cols, var, step=3, lr=0.1, weight_decay=0.2)
        for x, b0 in zip(ps, before):
            assert_same(x, b0 * dtype(1 - 0.1 * 0.2), "decay only")
        for s in rows + cols + var:
            if s is not None:
                assert not s.any()


# -- bad input -----------------------------------------------------------------------------------
def _snapshot(arrays: List[Any]) -> List[np.ndarray]:
    return [np.array(a, copy=True) for a in arrays if a is not None]


@pytest.mark.parametrize(
    "case",
    ["row_shape", "col_dtype", "var_missing", "factored_given_variance", "grad_shape", "overlap", "lengths",
     "step", "beta2_decay", "d", "eps1", "lr", "threads", "not_array", "float16"],
)  # fmt: skip
def test_functional_bad_input_raises_and_writes_nothing(case: str) -> None:
    p = [np.ones((4, 5), np.float32), np.ones(3, np.float32)]
    g = [np.full((4, 5), 0.5, np.float32), np.full(3, 0.5, np.float32)]
    rows, cols, var = _states(p)
    kw: Dict[str, Any] = {"step": 1, "weight_decay": 0.1}
    err: Any = ValueError
    if case == "row_shape":
        rows[0] = np.zeros((5, 1), np.float32)
    elif case == "col_dtype":
        cols[0], err = np.zeros((1, 5), np.float64), TypeError
    elif case == "var_missing":
        var[1] = None
    elif case == "factored_given_variance":
        var[0] = np.zeros((4, 5), np.float32)
    elif case == "grad_shape":
        g[1] = np.zeros(4, np.float32)
    elif case == "overlap":
        var[1] = p[1]
    elif case == "lengths":
        rows = rows[:1]
    elif case == "step":
        kw["step"] = 0
    elif case == "beta2_decay":
        kw["beta2_decay"] = 0.5
    elif case == "d":
        kw["d"] = 0.5
    elif case == "eps1":
        kw["eps1"] = -1.0
    elif case == "lr":
        kw["lr"] = -1.0
    elif case == "threads":
        kw["threads"] = 0
    elif case == "not_array":
        rows[0], err = [[0.0]] * 4, TypeError
    elif case == "float16":  # low precision is refused (float32/float64 only)
        p[1], g[1], var[1], err = np.ones(3, np.float16), np.ones(3, np.float16), np.zeros(3, np.float16), TypeError
    before = _snapshot(p + rows + cols + var)
    with pytest.raises(err):
        F.adafactor(p, g, rows, cols, var, **kw)
    for a, b in zip(_snapshot(p + rows + cols + var), before):
        np.testing.assert_array_equal(a, b)


def test_torch_messages_and_low_precision_refused() -> None:
    w = torch.zeros(3, 4, requires_grad=True)
    for kw, msg in [({"beta2_decay": 0.1}, "beta2_decay should be <= 0 but is: 0.1"),
                    ({"d": 0.5}, "Clipping threshold d should be >= 1 but is: 0.5"),
                    ({"lr": -1.0}, "Learning rate should be >= 0 but is: -1.0"),
                    ({"eps": (-1.0, 1e-3)}, "epsilon1 should be >= 0 but is: -1.0"),
                    ({"eps": (None, -1.0)}, "epsilon2 should be >= 0 but is: -1.0"),
                    ({"weight_decay": -1.0}, "weight_decay should be >= 0 but is: -1.0")]:  # fmt: skip
        for cls in (torch.optim.Adafactor, ft.Adafactor, fusedopt.Adafactor):
            with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
                cls([w] if cls is not fusedopt.Adafactor else [np.zeros((3, 4), np.float32)], **kw)
    defaults = ft.Adafactor([w]).defaults
    assert {k: defaults[k] for k in _adafactor.DEFAULTS} == _adafactor.DEFAULTS
    assert {k: v for k, v in torch.optim.Adafactor([w]).defaults.items() if k in _adafactor.DEFAULTS} == \
        _adafactor.DEFAULTS  # fmt: skip
    # bfloat16: refused, nothing (state included) written
    good = torch.ones(3, 4, requires_grad=True)
    bad = torch.ones(5, dtype=torch.bfloat16, requires_grad=True)
    opt = ft.Adafactor([good, bad], weight_decay=0.1)
    good.grad, bad.grad = torch.ones(3, 4), torch.ones(5, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="float32 or float64"):
        opt.step()
    assert torch.equal(good, torch.ones(3, 4)) and len(opt.state) == 0


def test_classes_check_everything_before_writing() -> None:
    """A bad gradient in the second param group: the first group is not stepped, no state made."""
    p0, p1 = np.ones((3, 4), np.float32), np.ones(6, np.float32)
    opt = fusedopt.Adafactor([{"params": [p0]}, {"params": [p1], "lr": 0.1}], weight_decay=0.1)
    opt.step([np.ones((3, 4), np.float32), np.ones(6, np.float32)])
    before = opt.state_dict()
    with pytest.raises(ValueError):
        opt.step([np.ones((3, 4), np.float32), np.ones(7, np.float32)])
    after = opt.state_dict()
    assert after["state"][0]["step"] == 1 == before["state"][0]["step"]
    for i in (0, 1):
        for k, v in before["state"][i].items():
            np.testing.assert_array_equal(after["state"][i][k], v)

    t0, t1 = torch.ones(3, 4, requires_grad=True), torch.ones(6, requires_grad=True)
    topt = ft.Adafactor([{"params": [t0]}, {"params": [t1]}])
    t0.grad, t1.grad = torch.ones(3, 4), torch.ones(12)[::2]  # a non-contiguous gradient: refused
    with pytest.raises((ValueError, TypeError)):
        topt.step()
    assert len(topt.state) == 0 and torch.equal(t0, torch.ones(3, 4))
    # one group, one native call: the binding checks everything before writing anything
    topt = ft.Adafactor([t0, t1], weight_decay=0.1)
    with pytest.raises((ValueError, TypeError)):
        topt.step()
    assert len(topt.state) == 0 and torch.equal(t0, torch.ones(3, 4))
    t1.grad = torch.ones(6)
    topt.step()
    assert float(topt.state[t0]["step"]) == 1.0 and not torch.equal(t0, torch.ones(3, 4))


def test_one_native_call_per_bucket_and_functional_is_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []
    real = _core.adafactor

    def counting(*args: Any, **kw: Any) -> None:
        if not kw.get("check_only", False) and not (len(args) > 16 and args[16]):
            calls.append(1)
        real(*args, **kw)

    monkeypatch.setattr(_core, "adafactor", counting)
    ps = [np.ones((40, 30), np.float32), np.ones(7, np.float32), np.ones((2, 3, 4), np.float32)]
    rows, cols, var = _states(ps)
    F.adafactor(ps, [np.ones_like(x) for x in ps], rows, cols, var, step=1)
    assert len(calls) == 1
