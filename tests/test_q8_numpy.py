"""8-bit optimizer states (issue 14) in the NumPy optimizer classes (``state_dtype="8bit"``).

* every class and parameter layout (float32; bfloat16/float16 with master None/"fp32"/"split";
  stochastic rounding) against :func:`fusedopt.reference.lowp_step` with
  :class:`fusedopt.reference.Q8State`, bitwise, over sizes around ``min_8bit_size`` and with partial
  last blocks, for thread counts 1/2/3;
* state dicts: exact round trip, the code book, refused values with nothing modified, float32 <-> 8-bit;
* ``min_8bit_size`` validation, ``state_bytes``, ``fp32_state_dict``;
* training: the digits MLP (8-bit Adam within 0.5 points of fp32 Adam) and the 256x256 regression
  (200 AdamW steps: distance to the fp32 run relative to the distance moved).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import _threads, reference
from fusedopt import optimizers as O
from fusedopt.algorithms import FIRST_STEP

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed: pip install 'fusedopt[bf16]'")
BF16 = np.dtype(ml_dtypes.bfloat16)

#: sizes around the default threshold 4096 (below, at, above) and partial last blocks
SIZES = (4095, 4096, 4097, 5000, 300, 64 * 70 + 3)

# class -> (constructor kwargs, use a nonzero init for Adagrad)
CASES: Dict[str, Tuple[Any, Dict[str, Any]]] = {
    "sgd": (O.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "sgd_nesterov": (O.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, dampening=0.0)),
    "momentum": (O.Momentum, dict(lr=0.05, beta=0.9, bias_correction=True)),
    "rmsprop": (O.RMSprop, dict(lr=1e-3, momentum=0.5, centered=False, weight_decay=1e-2)),
    "adam": (O.Adam, dict(lr=1e-3, weight_decay=1e-2)),
    "adam_amsgrad": (O.Adam, dict(lr=1e-3, amsgrad=True)),
    "adamw": (O.AdamW, dict(lr=1e-3)),
    "adagrad": (O.Adagrad, dict(lr=1e-2, initial_accumulator_value=0.1)),
    "lion": (O.Lion, dict(lr=1e-4, weight_decay=0.1)),
}
LAYOUTS = {
    "f32": (np.dtype(np.float32), {}),
    "bf16": (BF16, {}),
    "bf16_fp32": (BF16, dict(master_weights="fp32")),
    "bf16_split": (BF16, dict(master_weights="split")),
    "bf16_sr": (BF16, dict(stochastic_rounding=True, seed=77)),
    "f16_fp32": (np.dtype(np.float16), dict(master_weights="fp32")),
}


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _params(rng: np.random.Generator, dtype: np.dtype, sizes=SIZES) -> List[np.ndarray]:
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in sizes]


class _Ref:
    """The reference trajectory of one optimizer configuration (lowp_step per parameter)."""

    def __init__(self, opt: O.Optimizer, params: List[np.ndarray]) -> None:
        self.opt = opt
        self.params = [p.copy() for p in params]
        algo = opt._algo
        hyper = opt._group_view(opt.param_groups[0])
        self.hyper = hyper
        self.states: List[List[Any]] = []
        self.masters: List[Optional[np.ndarray]] = []
        for p in self.params:
            q8 = p.size >= opt.min_8bit_size
            row: List[Any] = []
            for r in algo.states:
                if not r.present(hyper):
                    row.append(None)
                    continue
                init = np.zeros(p.shape, np.float32)
                if r.init_hyper is not None:
                    init[...] = hyper[r.init_hyper]
                if q8:
                    c, a = reference.q8_encode(init, not r.nonneg)
                    row.append(reference.Q8State(c.reshape(p.shape), a, not r.nonneg))
                else:
                    row.append(init)
            self.states.append(row)
            mw = opt.master_weights if p.dtype.itemsize == 2 else None
            self.masters.append(p.astype(np.float32) if mw == "fp32" else
                                np.zeros(p.shape, np.uint16) if mw == "split" else None)  # fmt: skip

    def step(self, t: int, grads: List[np.ndarray]) -> None:
        algo = self.opt._algo
        kw = {h.name: self.hyper[h.name] for h in algo.arguments}
        if algo.step_arg:
            kw["step"] = t
        if any(r.init == FIRST_STEP and r.present(self.hyper) for r in algo.states):
            kw["first_step"] = t == 1
        fn = getattr(reference, algo.name)
        sr = self.opt.stochastic_rounding
        seed = self.opt.param_groups[0].get("seed", 0)
        for p, g, row, m in zip(self.params, grads, self.states, self.masters):
            reference.lowp_step(lambda *a: fn(*a, **kw), p, g, row, m, stochastic_rounding=sr and p.dtype == BF16,
                                seed=seed, sr_step=t)  # fmt: skip

    def check(self, opt: O.Optimizer, params: List[np.ndarray], where: str) -> None:
        for i, (p, rp) in enumerate(zip(params, self.params)):
            assert np.array_equal(_bits(p), _bits(rp)), f"{where}: params[{i}]"
            st = opt.state[i]
            for r, s in zip(opt._algo.states, self.states[i]):
                if s is None:
                    continue
                if isinstance(s, reference.Q8State):
                    assert st[r.key].dtype == np.uint8
                    assert np.array_equal(st[r.key], s.codes), f"{where}: state[{i}][{r.key!r}] codes"
                    assert np.array_equal(_bits(st[r.key + "_absmax"]), _bits(s.absmax)), f"{where}: absmax {i}"
                else:
                    assert st[r.key].dtype == np.float32, (i, r.key, st[r.key].dtype)
                    assert np.array_equal(_bits(st[r.key]), _bits(s)), f"{where}: state[{i}][{r.key!r}]"
            m = self.masters[i]
            if m is not None:
                key = "master_param" if m.dtype == np.float32 else "master_trail"
                assert np.array_equal(_bits(st[key]), _bits(m)), f"{where}: master {i}"


def _grads(rng: np.random.Generator, params: List[np.ndarray], t: int) -> List[np.ndarray]:
    out = []
    for p in params:
        g = (rng.standard_normal(p.size) * 10.0 ** rng.integers(-3, 1)).astype(np.float32)
        if t == 2:
            g[:300] = 0.0  # an all-zero first block (absmax 0 for momentum-free states)
        out.append(g.astype(p.dtype) if t % 2 else g)  # the parameter's dtype or float32
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_reference_bitwise(case, layout, monkeypatch):
    cls, kw = CASES[case]
    dtype, lkw = LAYOUTS[layout]
    if dtype == np.float16 and case.startswith("x"):
        pytest.skip()
    rng = np.random.default_rng(abs(hash((case, layout))) % 2**32)
    start = _params(rng, dtype)
    algo_name = cls._algo.name
    monkeypatch.setitem(_threads.SERIAL_BELOW, algo_name, 0)  # every call threaded as asked
    runs = []
    for th in (1, 2, 3):
        ps = [p.copy() for p in start]
        runs.append((th, ps, cls(ps, **kw, **lkw, state_dtype="8bit")))
    ref = _Ref(runs[0][2], start)
    old = fusedopt.get_num_threads()
    try:
        for t in range(1, 5):
            grads = _grads(rng, start, t)
            ref.step(t, grads)
            for th, ps, opt in runs:
                fusedopt.set_num_threads(th)
                opt.step(grads)
                ref.check(opt, ps, f"{case}/{layout} step {t} threads {th}")
    finally:
        fusedopt.set_num_threads(old)


def test_state_layout_and_threshold():
    rng = np.random.default_rng(1)
    ps = [rng.standard_normal(n).astype(np.float32) for n in (4095, 4096, 10)] + [np.zeros(5000)]
    opt = O.Adam(ps, state_dtype="8bit")
    opt.step([np.ones_like(p) for p in ps])
    st = opt.state
    assert st[0]["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in st[0]
    assert st[1]["exp_avg"].dtype == np.uint8 and st[1]["exp_avg_absmax"].shape == (16,)
    assert st[1]["exp_avg_sq"].dtype == np.uint8
    assert st[3]["exp_avg"].dtype == np.float64  # float64 parameters keep float64 states
    small = O.Adam([p.copy() for p in ps[:3]], state_dtype="8bit", min_8bit_size=0)
    small.step([np.ones_like(p) for p in ps[:3]])
    assert all(s["exp_avg"].dtype == np.uint8 for s in small.state)
    assert small.state[2]["exp_avg_absmax"].shape == (1,)


def test_new_states_are_zero_codes_and_adagrad_fill_is_quantized():
    p = np.zeros(5000, np.float32)
    opt = O.Adam([p], state_dtype="8bit")
    opt.step([np.zeros_like(p)])  # a zero gradient: the states stay the codes of zero
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        c, a = reference.q8_encode(np.zeros(5000, np.float32), signed)
        assert np.array_equal(opt.state[0][key], c) and np.array_equal(opt.state[0][key + "_absmax"], a)
    assert reference.q8_map(True).zero != 0 and reference.q8_map(False).zero == 0
    ada = O.Adagrad([np.zeros(5000, np.float32)], initial_accumulator_value=0.3, state_dtype="8bit")
    c, a = reference.q8_encode(np.full(5000, 0.3, np.float32), False)
    assert np.array_equal(ada.state[0]["sum"], c) and np.array_equal(ada.state[0]["sum_absmax"], a)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4096", None])
def test_min_8bit_size_validation(bad):
    with pytest.raises((TypeError, ValueError), match="min_8bit_size"):
        O.Adam([np.zeros(10, np.float32)], state_dtype="8bit", min_8bit_size=bad)


def test_min_8bit_size_fixed_and_refused_in_groups():
    opt = O.AdamW([np.zeros(10, np.float32)], state_dtype="8bit", min_8bit_size=0)
    assert opt.min_8bit_size == 0
    with pytest.raises(AttributeError, match="min_8bit_size"):
        opt.min_8bit_size = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="min_8bit_size"):
        O.AdamW([{"params": [np.zeros(10, np.float32)], "min_8bit_size": 0}], state_dtype="8bit")
    assert pickle.loads(pickle.dumps(opt)).min_8bit_size == 0
    assert copy.deepcopy(opt).min_8bit_size == 0


def _trained(cls=O.AdamW, sizes=(5000, 300), dtype=np.float32, steps=3, **kw) -> Tuple[O.Optimizer, List[np.ndarray]]:
    rng = np.random.default_rng(5)
    ps = [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in sizes]
    opt = cls(ps, state_dtype="8bit", **kw)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.size).astype(np.float32) for p in ps])
    return opt, ps


def _same_state(a: O.Optimizer, b: O.Optimizer) -> None:
    for sa, sb in zip(a.state, b.state):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], np.ndarray):
                assert sa[k].dtype == sb[k].dtype and np.array_equal(_bits(sa[k]), _bits(sb[k])), k
            else:
                assert sa[k] == sb[k], k


def test_state_dict_round_trip_exact_and_steps_alike():
    opt, ps = _trained(O.Adam, amsgrad=True)
    sd = opt.state_dict()
    s0 = sd["state"][0]
    assert s0["exp_avg"].dtype == np.uint8
    assert np.array_equal(_bits(s0["exp_avg_qmap"]), _bits(reference.q8_map(True).value))
    assert np.array_equal(_bits(s0["exp_avg_sq_qmap"]), _bits(reference.q8_map(False).value))
    assert np.array_equal(_bits(s0["max_exp_avg_sq_qmap"]), _bits(reference.q8_map(False).value))
    assert "exp_avg_qmap" not in sd["state"][1] and sd["state"][1]["exp_avg"].dtype == np.float32
    qs = [p.copy() for p in ps]
    other = O.Adam(qs, amsgrad=True, state_dtype="8bit")
    other.load_state_dict(sd)
    _same_state(opt, other)
    g = [np.linspace(-1, 1, p.size, dtype=np.float32) for p in ps]
    opt.step(g)
    other.step(g)
    _same_state(opt, other)
    assert all(np.array_equal(a, b) for a, b in zip(ps, qs))
    sd2 = opt.state_dict()
    sd2["state"][0]["exp_avg_absmax"][3] = np.nan  # a poisoned block loads
    other.load_state_dict(sd2)
    assert np.isnan(other.state[0]["exp_avg_absmax"][3])


def _bad_cases() -> List[Tuple[str, Any]]:
    def set_(key: str, value: Any):
        def f(st: Dict[str, Any]) -> None:
            st[key] = value
        return f

    def drop(key: str):
        return lambda st: st.pop(key)

    def poke_qmap(st):
        q = st["exp_avg_qmap"].copy()
        q[5] = np.nextafter(q[5], np.float32(1))
        st["exp_avg_qmap"] = q

    return [
        ("exp_avg_qmap", poke_qmap),
        ("exp_avg_qmap", set_("exp_avg_qmap", reference.q8_map(False).value.copy())),
        ("exp_avg_absmax", set_("exp_avg_absmax", np.zeros(19, np.float32))),
        ("exp_avg_absmax", set_("exp_avg_absmax", np.zeros(20, np.float64))),
        ("exp_avg_absmax", set_("exp_avg_absmax", np.full(20, -1.0, np.float32))),
        ("exp_avg_absmax", set_("exp_avg_absmax", np.full(20, np.inf, np.float32))),
        ("exp_avg", set_("exp_avg", np.zeros(4999, np.uint8))),
        ("exp_avg", set_("exp_avg", np.zeros(5000, np.int8))),
        ("exp_avg_absmax", drop("exp_avg_absmax")),
        ("exp_avg", drop("exp_avg")),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_loaded_values_refused_and_nothing_modified(i):
    key, spoil = _bad_cases()[i]
    opt, _ = _trained()
    sd = opt.state_dict()
    spoil(sd["state"][0])
    before = copy.deepcopy(opt.state)
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(sd)
    for sa, sb in zip(before, opt.state):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert np.array_equal(_bits(np.asarray(sa[k])), _bits(np.asarray(sb[k]))), k


def test_fp32_state_dict_loads_into_8bit_quantized_and_back_decoded():
    rng = np.random.default_rng(9)
    ps = [rng.standard_normal(n).astype(np.float32) for n in (5000, 300)]
    f32 = O.AdamW([p.copy() for p in ps])
    for _ in range(3):
        f32.step([rng.standard_normal(p.size).astype(np.float32) for p in ps])
    q8 = O.AdamW([p.copy() for p in ps], state_dtype="8bit")
    q8.load_state_dict(f32.state_dict())
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        c, a = reference.q8_encode(f32.state[0][key], signed)
        assert np.array_equal(q8.state[0][key], c) and np.array_equal(_bits(q8.state[0][key + "_absmax"]), _bits(a))
        assert np.array_equal(q8.state[1][key], f32.state[1][key])  # below min_8bit_size: float32 as is
    # 8-bit into a float32 optimizer: decoded; fp32_state_dict decodes the same way
    back = O.AdamW([p.copy() for p in ps])
    back.load_state_dict(q8.state_dict())
    exported = q8.fp32_state_dict()
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        want = reference.q8_decode(q8.state[0][key], q8.state[0][key + "_absmax"], signed)
        assert back.state[0][key].dtype == np.float32 and np.array_equal(back.state[0][key], want)
        assert np.array_equal(exported["state"][0][key], want)
        assert key + "_absmax" not in exported["state"][0] and key + "_qmap" not in exported["state"][0]
    # into a bfloat16-state optimizer: decoded, then rounded to nearest even
    # (float32 states, those of the small parameter, are refused there as before: only the 8-bit one here)
    one = O.AdamW([ps[0].copy()], state_dtype="8bit")
    sd = q8.state_dict()
    one.load_state_dict({"state": {0: sd["state"][0]}, "param_groups": [{**sd["param_groups"][0], "params": [0]}]})
    bf = O.AdamW([ps[0].copy()], state_dtype="bfloat16")
    bf.load_state_dict(one.state_dict())
    want = reference.q8_decode(q8.state[0]["exp_avg"], q8.state[0]["exp_avg_absmax"], True).astype(BF16)
    assert np.array_equal(_bits(bf.state[0]["exp_avg"]), _bits(want))


def test_8bit_with_masters_state_dict_and_copies():
    opt, ps = _trained(O.Adam, dtype=BF16, master_weights="fp32")
    sd = opt.state_dict()
    assert set(sd["state"][0]) >= {"master_param", "exp_avg", "exp_avg_absmax", "exp_avg_qmap"}
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        _same_state(opt, other)
        g = [np.ones(p.size, np.float32) for p in ps]
        a = [p.copy() for p in other.params]
        other.step(g)
        assert not all(np.array_equal(x, y) for x, y in zip(a, other.params))


def test_state_bytes():
    ps = [np.zeros(1 << 16, np.float32), np.zeros(100, np.float32)]
    f32 = O.Adam([p.copy() for p in ps])
    q8 = O.Adam([p.copy() for p in ps], state_dtype="8bit")
    for o in (f32, q8):
        o.step([np.ones_like(p) for p in ps])
    assert f32.state_bytes() == 8 * (65536 + 100)
    assert q8.state_bytes() == 2 * 65536 + 2 * 4 * 256 + 8 * 100  # codes, absmax, small float32 states


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def _digits() -> Tuple[np.ndarray, np.ndarray]:
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed: pip install 'fusedopt[test]'")
    d = datasets.load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _train_digits(state_dtype: Optional[str]) -> float:
    """A 64-128-10 tanh MLP (its 8192-element first layer gets 8-bit states) trained by Adam, minibatch
    64, 30 epochs; returns the test accuracy."""
    x, y = _digits()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:1400], perm[1400:]
    w1 = (rng.standard_normal((64, 128)) / 8.0).astype(np.float32)
    b1 = np.zeros(128, np.float32)
    w2 = (rng.standard_normal((128, 10)) / np.sqrt(128)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    params = [w1, b1, w2, b2]
    opt = O.Adam(params, lr=3e-3, state_dtype=state_dtype)
    order = np.random.default_rng(1)
    for _ in range(30):
        idx = order.permutation(tr)
        for s in range(0, len(idx), 64):
            b = idx[s : s + 64]
            xb, yb = x[b], y[b]
            h = np.tanh(xb @ w1 + b1)
            z = h @ w2 + b2
            z = z - z.max(axis=1, keepdims=True)
            pr = np.exp(z)
            pr /= pr.sum(axis=1, keepdims=True)
            pr[np.arange(len(b)), yb] -= 1.0
            dz = (pr / len(b)).astype(np.float32)
            dh = (dz @ w2.T) * (1.0 - h * h)
            opt.step([xb.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)])
    pred = (np.tanh(x[te] @ w1 + b1) @ w2 + b2).argmax(axis=1)
    return float(np.mean(pred == y[te]))


def test_digits_mlp_8bit_adam_reaches_fp32_accuracy():
    acc32 = _train_digits(None)
    acc8 = _train_digits("8bit")
    assert acc32 > 0.9, acc32
    assert acc8 >= acc32 - 0.005, (acc8, acc32)


def _regression_run(state_dtype: Optional[str], x: np.ndarray, y: np.ndarray, w0: np.ndarray) -> np.ndarray:
    w = w0.copy()
    opt = O.AdamW([w], lr=1e-3, state_dtype=state_dtype)
    for _ in range(200):
        opt.step([(2.0 / y.size) * (x.T @ (x @ w - y))])
    return w


def test_256x256_regression_8bit_adamw_close_to_fp32():
    """The issue's regression (200 full-batch AdamW steps, lr 1e-3, 256x256 weights, 65536 elements:
    8-bit states): the distance of the 8-bit run's weights from the fp32 run's, relative to the distance
    the fp32 run moved, is at most 5 % above what bitsandbytes 0.50.2's AdamW8bit (torch float32,
    min_8bit_size=4096) reaches on exactly this problem: 4.969 % (torchao 0.18 AdamW8bit: 4.968 %;
    measured once, 2026-12-07; ours
    4.967 %; torch.optim.AdamW's fp32 run is 6e-6 from ours)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    w0 = rng.standard_normal((256, 256)).astype(np.float32)
    y = x @ (w0 + 0.1 * rng.standard_normal((256, 256)).astype(np.float32))
    w32 = _regression_run(None, x, y, w0)
    w8 = _regression_run("8bit", x, y, w0)
    err = float(np.linalg.norm(w8 - w32) / np.linalg.norm(w32 - w0))
    assert 0.0 < err <= 0.04969 * 1.05, err


def test_centered_rmsprop_refused_with_8bit():
    """centered RMSprop's square_avg - grad_avg**2 goes negative once both are quantized (a NaN
    root): refused with 8-bit states, at construction and in an added group."""
    p = np.zeros(5000, np.float32)
    with pytest.raises(ValueError, match="centered"):
        O.RMSprop([p], centered=True, state_dtype="8bit")
    opt = O.RMSprop([p], state_dtype="8bit")
    with pytest.raises(ValueError, match="centered"):
        opt.add_param_group({"params": [np.zeros(10, np.float32)], "centered": True})
    O.RMSprop([p], centered=True)  # fine without 8-bit states
