"""Low-precision options of the NumPy optimizer classes and the functional API (issue 13).

* ``master_weights="fp32"`` on every class is bitwise the float32 class stepping the master,
  followed by round-to-nearest-even into the parameter (bfloat16 and float16), threads 1/2/3,
  22 steps; ``"split"`` is bitwise ``"fp32"`` wherever the documented tie rule did not apply;
* stochastic rounding: bitwise equal for threads 1/2/3, reproducible from ``np.random.seed``,
  seeds saved in ``state_dict()``; every parameter moves (at some step) in the 256x256 linear
  regression where round-to-nearest in place leaves most never moved;
* the functional keywords, through the C++ fast path (which hands these calls to the Python
  function) and against :func:`fusedopt.reference.lowp_step`;
* bad input raises naming the argument and modifies nothing; found_inf skips leave everything.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import _threads, reference
from fusedopt import functional as F
from fusedopt import optimizers as O

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes (pip install fusedopt[bf16])")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)

#: every class with hyperparameters that exercise its options
CLASSES: Dict[str, Tuple[Any, Dict[str, Any]]] = {
    "SGD": (O.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "Momentum": (O.Momentum, dict(lr=0.02, beta=0.9, weight_decay=0.01, bias_correction=True)),
    "RMSprop": (O.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5, centered=True)),
    "Adam": (O.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    "AdamW": (O.AdamW, dict(lr=0.01, weight_decay=0.1)),
    "Adagrad": (O.Adagrad, dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
    "Lion": (O.Lion, dict(lr=0.01, weight_decay=0.1)),
}
SIZES = (3000, 17, 1)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"threads={n}")
def threads(request, monkeypatch):
    """Every call runs on this many threads (the small-call serial policy switched off)."""
    for k in list(_threads.SERIAL_BELOW):
        monkeypatch.setitem(_threads.SERIAL_BELOW, k, 0)
    old = fusedopt.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        fusedopt.set_num_threads(old)


def _params(dtype: np.dtype, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in SIZES]


def _grads(rng: np.random.Generator, t: int, dtype: np.dtype) -> List[np.ndarray]:
    out = []
    for n in SIZES:
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 1)).astype(np.float32)
        if t % 5 == 0:
            g[::7] = 0.0
        out.append(g.astype(dtype))
    return out


# ---------------------------------------------------------------------------------------------
# master_weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pdtype", [BF16, F16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_fp32_master_is_the_fp32_step_then_rne(name, pdtype, threads):
    cls, kw = CLASSES[name]
    params = _params(pdtype)
    ref = [p.astype(np.float32) for p in params]
    opt = cls(params, **kw, master_weights="fp32")
    opt32 = cls(ref, **kw)
    rng = np.random.default_rng(1)
    for t in range(1, 23):
        gdt = pdtype if (t // 3) % 2 else F32  # gradients in the parameter's dtype, or float32 (runs of 3 steps)
        grads = _grads(rng, t, gdt)
        opt.step(grads)
        opt32.step([g.astype(np.float32) for g in grads])
        for i, (p, r) in enumerate(zip(params, ref)):
            st, st32 = opt.state[i], opt32.state[i]
            assert st["master_param"].dtype == F32
            assert np.array_equal(_bits(st["master_param"]), _bits(r)), (name, t, i)
            assert np.array_equal(_bits(p), _bits(r.astype(pdtype))), (name, t, i)  # RNE (ml_dtypes / NumPy)
            for k in O.Optimizer.__dict__.get("_STATE_ARRAYS", ()) or cls._STATE_ARRAYS:
                if k in st32:
                    assert st[k].dtype == F32  # states float32 with a master (state_dtype=None)
                    assert np.array_equal(_bits(st[k]), _bits(st32[k])), (name, t, i, k)
            if "step" in st32:
                assert st["step"] == st32["step"] == t


@pytest.mark.parametrize("name", list(CLASSES))
def test_split_equals_fp32_master_except_the_tie_rule(name, threads):
    """'split' gives the parameters and (decoded) masters of 'fp32' bit for bit, element by element,
    until the element's fp32 master hits the documented tie (odd high half, low half 0x8000):
    from there that element's run may differ (split stores the master one float32 ulp away)."""
    cls, kw = CLASSES[name]
    pa, pb = _params(BF16), _params(BF16)
    a = cls(pa, **kw, master_weights="fp32")
    b = cls(pb, **kw, master_weights="split")
    rng = np.random.default_rng(2)
    tainted = [np.zeros(n, bool) for n in SIZES]
    for t in range(1, 23):
        grads = _grads(rng, t, F32)
        a.step(grads)
        b.step(grads)
        for i in range(len(SIZES)):
            u = _bits(a.state[i]["master_param"])
            tainted[i] |= (u & 0x1FFFF) == 0x18000
            ok = ~tainted[i]
            trail = b.state[i]["master_trail"]
            assert trail.dtype == np.uint16 and "master_param" not in b.state[i]
            dec = reference.split_decode(_bits(pb[i]), trail).view(np.uint32)
            assert np.array_equal(dec[ok], u[ok]), (name, t, i)
            assert np.array_equal(_bits(pb[i])[ok], _bits(pa[i])[ok]), (name, t, i)
    assert sum(int(x.sum()) for x in tainted) <= 8  # the rule is rare (about 2^-16 per element-step)


def test_master_created_from_the_parameter_and_f32_params_have_none():
    p16 = np.array([1.0, -2.5, 3e-3], BF16)
    p32 = np.array([0.5, 0.25], np.float32)
    opt = O.Adam([p16, p32], lr=0.0, master_weights="fp32")
    assert "master_param" not in opt.state[0]  # made at the first step
    opt.step([np.zeros(3, BF16), np.zeros(2, np.float32)])
    assert np.array_equal(opt.state[0]["master_param"], p16.astype(np.float32))
    assert "master_param" not in opt.state[1] and opt.state[1]["exp_avg"].dtype == F32
    split = O.Adam([p16.copy()], lr=0.0, master_weights="split")
    split.step([np.zeros(3, BF16)])
    assert not split.state[0]["master_trail"].any()


def test_state_dtype_options():
    p = np.ones(8, BF16)
    assert _state_dtypes(O.AdamW([p.copy()]), [np.ones(8, BF16)]) == {BF16}  # torch.optim: the param's dtype
    assert _state_dtypes(O.AdamW([p.copy()], state_dtype="float32"), [np.ones(8, BF16)]) == {F32}
    both = O.AdamW([p.copy()], master_weights="fp32", state_dtype="bfloat16")
    assert _state_dtypes(both, [np.ones(8, BF16)]) == {BF16}
    assert _state_dtypes(O.AdamW([np.ones(8, np.float32)], state_dtype="bfloat16"), [np.ones(8, np.float32)]) == {BF16}
    assert _state_dtypes(O.AdamW([np.ones(8)], state_dtype="bfloat16"), [np.ones(8)]) == {np.dtype(np.float64)}


def _state_dtypes(opt: O.Optimizer, grads: List[np.ndarray]) -> set:
    opt.step(grads)
    return {v.dtype for k, v in opt.state[0].items() if k in ("exp_avg", "exp_avg_sq")}


def test_float32_params_with_bf16_states_match_the_functional_call():
    rng = np.random.default_rng(4)
    p = rng.standard_normal(5000).astype(np.float32)
    q = p.copy()
    opt = O.AdamW([p], lr=0.01, state_dtype="bfloat16")
    m, v = np.zeros(5000, BF16), np.zeros(5000, BF16)
    for t in range(1, 6):
        g = rng.standard_normal(5000).astype(np.float32)
        opt.step([g])
        F.adamw(q, g, m, v, step=t, lr=0.01, weight_decay=0.01)
        assert np.array_equal(_bits(p), _bits(q))
        assert np.array_equal(_bits(opt.state[0]["exp_avg_sq"]), _bits(v))


# ---------------------------------------------------------------------------------------------
# stochastic rounding
# ---------------------------------------------------------------------------------------------


def _sr_run(name: str, seed: Any, steps: int = 6) -> Tuple[List[np.ndarray], O.Optimizer]:
    cls, kw = CLASSES[name]
    params = _params(BF16, 3)
    opt = cls(params, **kw, stochastic_rounding=True, seed=seed)
    rng = np.random.default_rng(5)
    for t in range(1, steps + 1):
        opt.step(_grads(rng, t, BF16 if (t // 3) % 2 else F32))
    return params, opt


@pytest.mark.parametrize("name", list(CLASSES))
def test_sr_same_bits_for_every_thread_count(name, monkeypatch):
    for k in list(_threads.SERIAL_BELOW):
        monkeypatch.setitem(_threads.SERIAL_BELOW, k, 0)
    runs = []
    old = fusedopt.set_num_threads(1)
    try:
        for n in (1, 2, 3):
            fusedopt.set_num_threads(n)
            runs.append(_sr_run(name, 1234)[0])
    finally:
        fusedopt.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(_bits(a), _bits(b))


def test_sr_is_the_functional_step_with_the_step_count_as_counter():
    """SGD keeps a step count under stochastic rounding; step t uses (seed, sr_step=t)."""
    params, opt = _sr_run("SGD", 99, steps=3)
    assert opt.state[0]["step"] == 3
    p = _params(BF16, 3)
    buf = [None] * len(p)
    rng = np.random.default_rng(5)
    for t in range(1, 4):
        grads = _grads(rng, t, BF16 if (t // 3) % 2 else F32)
        if t == 1:
            buf = [np.zeros(n, BF16) for n in SIZES]
        F.sgd(p, grads, buf, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, first_step=t == 1,
              stochastic_rounding=True, seed=99, sr_step=t)  # fmt: skip
    for a, b in zip(params, p):
        assert np.array_equal(_bits(a), _bits(b))


def test_sr_seed_none_reproduced_by_np_random_seed():  # (NumPy's legacy global generator, on purpose)
    np.random.seed(7)  # noqa: NPY002
    a, oa = _sr_run("AdamW", None)
    np.random.seed(7)  # noqa: NPY002
    b, ob = _sr_run("AdamW", None)
    np.random.seed(8)  # noqa: NPY002
    c, oc = _sr_run("AdamW", None)
    assert oa.seed == ob.seed != oc.seed
    assert all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(a, c))
    # no stochastic rounding: no seed drawn, the global generator is not advanced
    np.random.seed(7)  # noqa: NPY002
    O.AdamW([np.ones(3, BF16)])
    first = np.random.randint(0, 2**31)  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    assert first == np.random.randint(0, 2**31)  # noqa: NPY002


def test_sr_seed_and_step_saved_in_state_dict():
    params, opt = _sr_run("Adam", 2024, steps=3)
    sd = opt.state_dict()
    assert [g["seed"] for g in sd["param_groups"]] == [2024]
    assert sd["state"][0]["step"] == 3
    copies = [p.copy() for p in params]
    other = O.Adam(copies, **CLASSES["Adam"][1], stochastic_rounding=True, seed=1)
    other.load_state_dict(sd)
    assert other.param_groups[0]["seed"] == 2024
    rng = np.random.default_rng(6)
    g = _grads(rng, 4, BF16)
    opt.step(g)
    other.step(g)
    for a, b in zip(params, copies):
        assert np.array_equal(_bits(a), _bits(b))


def _regression(rng: np.random.Generator, n: int = 256, batch: int = 64) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, initial weights) of a linear regression with n x n weights (a batch of 64
    rows keeps the test fast)."""
    x = rng.standard_normal((batch, n)).astype(np.float32)
    w_true = rng.standard_normal((n, n)).astype(np.float32) * 0.5
    return x, x @ w_true, (rng.standard_normal((n, n)) * 0.5).astype(np.float32)


def test_sr_moves_every_parameter_where_rne_in_place_moves_few():
    """200 AdamW steps on a 256x256 linear regression from bfloat16 weights: in place with
    round-to-nearest (torch.optim's behaviour) most updates are below half an ulp and most weights
    never move; with stochastic rounding every weight moves."""
    x, y, w0 = _regression(np.random.default_rng(0))
    start = w0.astype(BF16)
    w_rne, w_sr = start.copy(), start.copy()
    rne = O.AdamW([w_rne], lr=1e-3)
    sr = O.AdamW([w_sr], lr=1e-3, stochastic_rounding=True, seed=3)
    moved = {"rne": np.zeros(w0.shape, bool), "sr": np.zeros(w0.shape, bool)}
    for _ in range(200):
        for key, w, opt in (("rne", w_rne, rne), ("sr", w_sr, sr)):
            before = _bits(w).copy()
            wf = w.astype(np.float32)
            g = x.T @ (x @ wf - y) / x.shape[0]
            opt.step([g])
            moved[key] |= _bits(w) != before
    never_rne = 1.0 - float(np.mean(moved["rne"]))
    assert never_rne > 0.3, never_rne  # (about 2/3 here: torch.optim's in-place bf16 step does the same)
    assert moved["sr"].all(), float(np.mean(moved["sr"]))


# ---------------------------------------------------------------------------------------------
# the functional keywords
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", ["rne", "master", "split", "sr"])
def test_functional_fast_path_and_python_function_agree_with_reference(write):
    rng = np.random.default_rng(8)
    n = 777
    p0 = rng.standard_normal(n).astype(np.float32).astype(BF16)
    runs = []
    for fn in (F.adam, F.adam.__wrapped__, None):
        p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        master = None
        if write in ("master", "split"):
            master = p0.astype(np.float32) if write == "master" else np.zeros(n, np.uint16)
        r = np.random.default_rng(9)
        for t in range(1, 6):
            g = r.standard_normal(n).astype(np.float32)
            kw: Dict[str, Any] = {}
            if master is not None:
                kw["masters"] = master
            if write == "sr":
                kw.update(stochastic_rounding=True, seed=11)
            if fn is None:
                upd = lambda a, b, c, d, t=t: reference.adam(a, b, c, d, step=t, lr=0.01, beta1=0.9, beta2=0.999,  # noqa: E731
                                                             eps=1e-8, weight_decay=0.0)  # fmt: skip
                reference.lowp_step(upd, p, g, [m, v], master, stochastic_rounding=write == "sr", seed=11, sr_step=t)
            else:
                fn(p, g, m, v, step=t, lr=0.01, **kw)
        runs.append((p, m, v, master))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            if a is not None:
                assert np.array_equal(_bits(a), _bits(b))


def test_functional_bf16_plain_call_through_the_fast_path():
    """A plain call (no keywords) with bfloat16 arrays: the fast path refuses them and hands the
    call over; the result is the reference's."""
    rng = np.random.default_rng(10)
    p = rng.standard_normal(100).astype(np.float32).astype(BF16)
    q = p.copy()
    g = rng.standard_normal(100).astype(np.float32).astype(BF16)
    b1, b2 = np.zeros(100, BF16), np.zeros(100, BF16)
    F.momentum(p, g, b1, step=1, lr=0.1)
    reference.lowp_step(lambda a, b, c: reference.momentum(a, b, c, step=1, lr=0.1, beta=0.9, weight_decay=0.0,
                                                           bias_correction=False), q, g, [b2])  # fmt: skip
    assert np.array_equal(_bits(p), _bits(q)) and np.array_equal(_bits(b1), _bits(b2))


def test_functional_sr_step_defaults_to_step():
    rng = np.random.default_rng(12)
    p0 = rng.standard_normal(300).astype(np.float32).astype(BF16)
    g = rng.standard_normal(300).astype(np.float32)
    a, b = p0.copy(), p0.copy()
    F.adamw(a, g, np.zeros(300, np.float32), np.zeros(300, np.float32), step=4, stochastic_rounding=True, seed=5)
    F.adamw(b, g, np.zeros(300, np.float32), np.zeros(300, np.float32), step=4, stochastic_rounding=True, seed=5,
            sr_step=4)  # fmt: skip
    assert np.array_equal(_bits(a), _bits(b))


FUNCTIONAL_BAD = [
    ("sr_step missing for sgd", lambda p, g: F.sgd(p, g, lr=0.1, stochastic_rounding=True), ValueError, "sr_step"),
    ("negative seed", lambda p, g: F.sgd(p, g, lr=0.1, stochastic_rounding=True, seed=-1, sr_step=1), ValueError, "seed"),
    ("bool seed", lambda p, g: F.sgd(p, g, lr=0.1, stochastic_rounding=True, seed=True, sr_step=1), TypeError, "seed"),
    ("sr not a bool", lambda p, g: F.sgd(p, g, lr=0.1, stochastic_rounding=1, sr_step=1), TypeError,
     "stochastic_rounding"),
    ("float64 master", lambda p, g: F.sgd(p, g, lr=0.1, masters=np.zeros(p.shape)), TypeError, "masters[0]"),
    ("master and sr", lambda p, g: F.sgd(p, g, lr=0.1, masters=p.astype(np.float32), stochastic_rounding=True,
                                         sr_step=1), ValueError, "stochastic_rounding"),
    ("float16 grads", lambda p, g: F.sgd(p, g.astype(F16), lr=0.1), TypeError, "grads[0]"),
    ("float16 grads, found_inf", lambda p, g: F.sgd(p, g.astype(F16), lr=0.1, found_inf=1.0), TypeError, "grads[0]"),
    ("uint16 params", lambda p, g: F.sgd(p.view(np.uint16), g, lr=0.1), TypeError, "params[0]"),
]  # fmt: skip


@pytest.mark.parametrize("case", FUNCTIONAL_BAD, ids=[c[0] for c in FUNCTIONAL_BAD])
def test_functional_bad_input_raises_and_writes_nothing(case):
    _, call, exc, frag = case
    p = np.linspace(-1, 1, 40).astype(np.float32).astype(BF16)
    g = np.ones(40, np.float32)
    before = p.copy()
    with pytest.raises(exc) as info:
        call(p, g)
    assert frag in str(info.value)
    assert np.array_equal(_bits(p), _bits(before))


def test_functional_norm_of_bf16_gradients_is_the_norm_of_their_values():
    rng = np.random.default_rng(13)
    g = rng.standard_normal(1000).astype(np.float32).astype(BF16)
    p = np.zeros(1000, BF16)
    norm = F.sgd(p, g, lr=0.0, max_grad_norm=math.inf)
    assert norm == F.global_norm(g.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# float16 with loss scaling
# ---------------------------------------------------------------------------------------------


def test_fp16_grad_scale_and_found_inf():
    rng = np.random.default_rng(14)
    p0 = rng.standard_normal(2000).astype(np.float16)
    a, b = p0.copy(), p0.copy()
    oa = O.Adam([a], lr=1e-3, master_weights="fp32")
    ob = O.Adam([b], lr=1e-3, master_weights="fp32")
    for _ in range(3):
        g = (rng.standard_normal(2000) * 1e-2).astype(np.float16)
        oa.step([g])
        ob.step([(g.astype(np.float32) * 1024).astype(np.float16)], grad_scale=1024.0)  # a power of two: exact
    assert np.array_equal(_bits(a), _bits(b))
    assert np.array_equal(_bits(oa.state[0]["master_param"]), _bits(ob.state[0]["master_param"]))
    snap = [b.copy(), *(v.copy() for v in ob.state[0].values() if isinstance(v, np.ndarray))]
    with np.errstate(over="ignore"):
        inf = np.full(2000, 70000.0, np.float32).astype(np.float16)  # overflows to inf, as IEEE says
    assert np.isinf(inf).all()
    ob.step([inf], grad_scale=1024.0, found_inf=1.0)
    after = [b, *(v for v in ob.state[0].values() if isinstance(v, np.ndarray))]
    assert all(np.array_equal(_bits(x), _bits(y)) for x, y in zip(snap, after))
    assert ob.state[0]["step"] == 3


# ---------------------------------------------------------------------------------------------
# contract: bad options and input raise naming the argument, nothing is modified
# ---------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(master_weights="fp16"), ValueError, "master_weights"),
    (dict(master_weights=32), TypeError, "master_weights"),
    (dict(master_weights="fp32", stochastic_rounding=True), ValueError, "stochastic_rounding=True and master_weights"),
    (dict(stochastic_rounding="yes"), TypeError, "stochastic_rounding"),
    (dict(stochastic_rounding=True, seed=2**64), ValueError, "seed"),
    (dict(stochastic_rounding=True, seed=1.5), TypeError, "seed"),
    (dict(state_dtype="float16"), ValueError, "state_dtype"),
    (dict(state_dtype=np.float32), TypeError, "state_dtype"),
]


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[str(c[0]) for c in BAD_OPTIONS])
@pytest.mark.parametrize("name", list(CLASSES))
def test_bad_options_raise(name, case):
    cls, kw = CLASSES[name]
    opts, exc, frag = case
    with pytest.raises(exc, match=frag.replace("[", r"\[")):
        cls([np.ones(4, BF16)], **kw, **opts)


@pytest.mark.parametrize(
    "make, opts, exc, frag",
    [
        (lambda: np.ones(4, F16), dict(master_weights="split"), ValueError, "master_weights='split'"),
        (lambda: np.ones(4, F16), dict(stochastic_rounding=True), ValueError, "stochastic_rounding"),
        (lambda: np.ones(4, F16), dict(state_dtype="bfloat16"), ValueError, "state_dtype"),
        (lambda: np.ones(4, np.uint16), {}, TypeError, "params[1]"),
        (lambda: np.ones(4, np.int16), dict(master_weights="fp32"), TypeError, "params[1]"),
    ],
    ids=["split-on-fp16", "sr-on-fp16", "bf16-states-fp16", "uint16-not-ml_dtypes", "int16"],
)
def test_bad_params_refused_at_construction(make, opts, exc, frag):
    with pytest.raises(exc) as info:
        O.AdamW([np.ones(4, BF16), make()], **opts)
    assert frag in str(info.value)


def _snapshot(opt: O.Optimizer) -> List[Any]:
    out: List[Any] = [p.copy() for p in opt.params]
    for st in opt.state:
        out += [(k, v.copy() if isinstance(v, np.ndarray) else v) for k, v in sorted(st.items())]
    return out


def _same(a: List[Any], b: List[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            if x[0] != y[0] or not _same([x[1]], [y[1]]):
                return False
        elif isinstance(x, np.ndarray):
            if x.dtype != y.dtype or not np.array_equal(_bits(x), _bits(y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("mw", [None, "fp32", "split"])
def test_bad_gradient_raises_naming_it_and_modifies_nothing(mw):
    params = [np.ones(5, BF16), np.ones(3, BF16)]
    opt = O.AdamW(params, master_weights=mw)
    opt.step([np.ones(5, np.float32), np.ones(3, np.float32)])
    snap = _snapshot(opt)
    for bad, exc in ((np.ones(3, F16), TypeError), (np.ones(3, np.float64), TypeError), (np.ones(4, BF16), ValueError)):
        with pytest.raises(exc, match=r"grads\[1\]"):
            opt.step([np.ones(5, BF16), bad])
        assert _same(snap, _snapshot(opt))


@pytest.mark.parametrize(
    "key, value, frag",
    [
        ("exp_avg", np.zeros(5, np.float64), "'exp_avg' has dtype float64"),
        ("exp_avg", np.zeros(5, BF16), "'exp_avg' has dtype bfloat16"),  # the master's states are float32
        ("master_param", np.zeros(5, BF16), "'master_param' has dtype bfloat16"),
        ("master_trail", np.zeros(5, np.uint16), "unknown key"),
        ("master_param", np.zeros(4, np.float32), "'master_param' has shape"),
    ],
)
def test_loaded_state_with_wrong_dtypes_raises_and_modifies_nothing(key, value, frag):
    p = np.ones(5, BF16)
    opt = O.AdamW([p], master_weights="fp32")
    opt.step([np.ones(5, np.float32)])
    sd = opt.state_dict()
    sd["state"][0][key] = value
    snap = _snapshot(opt)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(sd)
    assert frag in str(info.value)
    assert _same(snap, _snapshot(opt))


def test_state_dict_round_trip_with_masters():
    rng = np.random.default_rng(15)
    for mw in ("fp32", "split"):
        p = rng.standard_normal(50).astype(np.float32).astype(BF16)
        opt = O.Lion([p], lr=0.01, master_weights=mw)
        opt.step([rng.standard_normal(50).astype(np.float32)])
        sd = opt.state_dict()
        q = p.copy()
        other = O.Lion([q], lr=0.01, master_weights=mw)
        other.load_state_dict(sd)
        g = rng.standard_normal(50).astype(np.float32)
        opt.step([g])
        other.step([g])
        assert np.array_equal(_bits(p), _bits(q))
        assert _same(_snapshot(opt), _snapshot(other))


def test_bf16_state_dtype_needs_ml_dtypes_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ml_dtypes(name, *args, **kwargs):
        if name == "ml_dtypes":
            raise ImportError("No module named 'ml_dtypes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)
    with pytest.raises(ImportError, match="ml_dtypes"):
        O.AdamW([np.ones(4, np.float32)], state_dtype="bfloat16")


@pytest.mark.parametrize("mw", ["fp32", "split"])
def test_fp32_export_continues_as_the_master(mw):
    """master_params() + fp32_state_dict() give a float32 optimizer whose next step is the
    master's (bitwise for "fp32"; for "split" too, away from the tie rule)."""
    rng = np.random.default_rng(16)
    p = rng.standard_normal(400).astype(np.float32).astype(BF16)
    opt = O.AdamW([p], lr=0.01, master_weights=mw)
    for _ in range(4):
        opt.step([rng.standard_normal(400).astype(np.float32)])
    masters = opt.master_params()
    assert masters[0].dtype == F32 and np.array_equal(_bits(masters[0].astype(BF16)), _bits(p))
    exported = opt.fp32_state_dict()
    assert set(exported["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    f32 = O.AdamW(masters, lr=0.01)
    f32.load_state_dict(exported)
    g = rng.standard_normal(400).astype(np.float32)
    opt.step([g])
    f32.step([g])
    assert np.array_equal(_bits(opt.master_params()[0]), _bits(masters[0]))


def test_low_precision_optimizers_take_the_planned_path_without_native_plans():
    """No native Plan and no C++ Stepper is made for bfloat16 storage (they step float32/float64
    only): the planned Python path runs; a float32 optimizer still gets its Stepper."""
    lowp = O.Adam([np.ones(3000, BF16)], lr=0.01)
    plain = O.Adam([np.ones(3000, np.float32)], lr=0.01)
    for _ in range(3):
        lowp.step([np.ones(3000, BF16)])
        plain.step([np.ones(3000, np.float32)])
    assert lowp._plan is not None and lowp._stepper is None
    assert all(b[3] is None for b in lowp._plan.buckets)
    assert plain._stepper is not None
    f32_sr = O.Adam([np.ones(10, np.float32)], stochastic_rounding=True, seed=1)  # options alone: general path
    f32_sr.step([np.ones(10, np.float32)])
    f32_sr.step([np.ones(10, np.float32)])
    assert f32_sr._stepper is None and f32_sr.state[0]["step"] == 2


def test_mixed_dtypes_in_one_optimizer_equal_separate_optimizers():
    """bfloat16, float16 and float32 parameters in one optimizer (several native calls per step,
    planned after the first) step as three optimizers of one dtype each."""
    rng = np.random.default_rng(17)
    mk = [rng.standard_normal(n).astype(np.float32) for n in (300, 40, 50)]
    dts = [BF16, F16, F32]
    together = [x.astype(d) for x, d in zip(mk, dts)]
    apart = [x.astype(d) for x, d in zip(mk, dts)]
    one = O.Adam(together, lr=0.01, master_weights="fp32")
    three = [O.Adam([a], lr=0.01, master_weights="fp32") for a in apart]
    for t in range(1, 8):
        gs = [rng.standard_normal(x.size).astype(np.float32) for x in mk]
        gs[0] = gs[0].astype(BF16) if t > 4 else gs[0]
        one.step(gs)
        for o, g in zip(three, gs):
            o.step([g])
        for a, b in zip(together, apart):
            assert np.array_equal(_bits(a), _bits(b)), t
    assert "master_param" not in one.state[2] and one.state[2]["exp_avg"].dtype == F32


@pytest.mark.parametrize("mw", ["fp32", "split"])
def test_sync_masters_restarts_masters_from_changed_parameters(mw):
    """Parameters rolled back outside the optimizer: without sync_masters() the old master would
    overwrite them at the next step; with it the step starts from the rolled-back weights, as a
    fresh optimizer with the same moments does."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(64).astype(np.float32).astype(BF16)
    best = p.copy()
    opt = fusedopt.AdamW([p], lr=0.1, master_weights=mw)
    for _ in range(4):
        opt.step([rng.standard_normal(64).astype(np.float32).astype(BF16)])
    p[...] = best
    opt.sync_masters()
    q = best.copy()
    ref = fusedopt.AdamW([q], lr=0.1, master_weights=mw)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st.pop("master_param", None), st.pop("master_trail", None)
    ref.load_state_dict(sd)
    g = rng.standard_normal(64).astype(np.float32).astype(BF16)
    opt.step([g])
    ref.step([g.copy()])
    assert np.array_equal(_bits(p), _bits(q))


@pytest.mark.parametrize("key, value", [("master_weights", "split"), ("stochastic_rounding", True),
                                        ("state_dtype", "bfloat16")])  # fmt: skip
def test_options_are_fixed_after_construction(key, value):
    import copy
    import pickle

    opt = fusedopt.AdamW([np.ones(4, BF16)], master_weights="fp32")
    before = getattr(opt, key)
    with pytest.raises(AttributeError, match=f"{key} is fixed"):
        setattr(opt, key, value)
    assert getattr(opt, key) == before and getattr(copy.deepcopy(opt), key) == before
    assert getattr(pickle.loads(pickle.dumps(opt)), key) == before and getattr(copy.copy(opt), key) == before
