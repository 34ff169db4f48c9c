"""fusedopt.EMA: exponential moving average of weights.

* the fused update equals :func:`fusedopt.reference.ema` bitwise (every ISA, dtype, thread count);
* the read-out follows the textbook recursion ``v = b*v + (1-b)*theta`` from zero with Ng's bias
  correction ``v / (1 - b^t)``, or, without bias correction, from a copy of the parameters;
* ``average_parameters()`` swaps the averages in and restores the parameters bitwise (also on an
  exception); ``copy_to``; ``state_dict``/``load_state_dict`` round trip and refuse bad input
  without changing anything.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import pytest

import fusedopt
from fusedopt import reference

SIZES = [1, 9, 1000, 40003]


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def assert_bitwise(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert np.array_equal(bits(got), bits(want)), what


def _params(dtype, seed=0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in SIZES]


def _drift(ps: List[np.ndarray], rng: np.random.Generator) -> None:
    for p in ps:
        p += (rng.standard_normal(p.size) * 0.1).astype(p.dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bias_correction", [True, False], ids=["bias-corrected", "from-copy"])
def test_update_matches_reference_bitwise(isa: str, dtype: np.dtype, threads: int, bias_correction: bool) -> None:
    ps = _params(dtype)
    ema = fusedopt.EMA(ps, decay=0.99, bias_correction=bias_correction, threads=threads)
    refs = [np.zeros_like(p) if bias_correction else p.copy() for p in ps]
    rng = np.random.default_rng(1)
    for _ in range(5):
        _drift(ps, rng)
        before = [p.copy() for p in ps]
        ema.update()
        for a, p in zip(refs, ps):
            reference.ema(a, p, decay=0.99)
        for i, (got, want) in enumerate(zip(ema.averages, refs)):
            assert_bitwise(got, want, f"averages[{i}]")
        for p, b in zip(ps, before):
            assert_bitwise(p, b, "params are only read by update()")
    assert ema.step == 5


def test_bias_corrected_readout_matches_textbook_recursion() -> None:
    rng = np.random.default_rng(2)
    thetas = [rng.standard_normal(50) for _ in range(30)]
    p = thetas[0].copy()
    beta = 0.9
    ema = fusedopt.EMA([p], decay=beta)
    v = np.zeros(50)
    for t, th in enumerate(thetas, start=1):
        p[...] = th
        ema.update()
        v = beta * v + (1 - beta) * th  # Ng: v_t = beta v_{t-1} + (1 - beta) theta_t, v_0 = 0
        np.testing.assert_allclose(ema.averaged()[0], v / (1 - beta**t), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(ema.averages[0], v, rtol=1e-13, atol=1e-15)


def test_bias_correction_makes_a_constant_exact_from_the_first_step() -> None:
    p = np.full(10, 3.0)
    ema = fusedopt.EMA(p, decay=0.999)
    ema.update()
    np.testing.assert_allclose(ema.averaged()[0], 3.0, rtol=1e-12)  # uncorrected would be 0.003
    assert abs(ema.averages[0][0] - 0.003) < 1e-12


def test_without_bias_correction_starts_from_a_copy() -> None:
    rng = np.random.default_rng(3)
    p = rng.standard_normal(20)
    p0 = p.copy()
    ema = fusedopt.EMA(p, decay=0.5, bias_correction=False)
    assert_bitwise(ema.averaged()[0], p0, "before any update: the parameters")
    p += 1.0
    ema.update()
    np.testing.assert_allclose(ema.averaged()[0], 0.5 * p0 + 0.5 * p, rtol=1e-15)


def test_readout_before_first_update_is_the_parameters() -> None:
    p = np.arange(5.0)
    ema = fusedopt.EMA(p)
    assert_bitwise(ema.averaged()[0], p, "t=0 read-out")


def test_average_parameters_swaps_in_and_restores_bitwise(dtype: np.dtype) -> None:
    ps = _params(dtype, seed=4)
    ema = fusedopt.EMA(ps, decay=0.9)
    rng = np.random.default_rng(5)
    for _ in range(3):
        _drift(ps, rng)
        ema.update()
    own = [p.copy() for p in ps]
    avg = ema.averaged()
    with ema.average_parameters():
        for p, a in zip(ps, avg):
            assert_bitwise(p, a, "inside: averaged weights")
    for p, o in zip(ps, own):
        assert_bitwise(p, o, "after: own weights")
    with pytest.raises(RuntimeError, match="boom"):
        with ema.average_parameters():
            raise RuntimeError("boom")
    for p, o in zip(ps, own):
        assert_bitwise(p, o, "after an exception: own weights")


def test_copy_to_other_arrays_and_checks() -> None:
    ps = _params(np.float32, seed=6)
    ema = fusedopt.EMA(ps)
    ema.update()
    out = [np.empty_like(p) for p in ps]
    ema.copy_to(out)
    for o, a in zip(out, ema.averaged()):
        assert_bitwise(o, a, "copy_to")
    with pytest.raises(ValueError, match="params"):
        ema.copy_to(out[:-1])
    with pytest.raises(ValueError, match=r"params\[1\]"):
        ema.copy_to([out[0], np.empty(3, np.float32), out[2], out[3]])


def test_state_dict_round_trip_and_bad_input() -> None:
    rng = np.random.default_rng(7)
    ps = _params(np.float64, seed=8)
    ema = fusedopt.EMA(ps, decay=0.95)
    for _ in range(4):
        _drift(ps, rng)
        ema.update()
    sd = ema.state_dict()
    assert sd["step"] == 4 and sd["decay"] == 0.95 and sd["bias_correction"] is True
    assert not any(np.shares_memory(a, b) for a, b in zip(sd["averages"], ema.averages))
    other = fusedopt.EMA([p.copy() for p in ps], decay=0.5, bias_correction=False)
    other.load_state_dict(sd)
    assert other.step == 4 and other.decay == 0.95 and other.bias_correction
    for a, b in zip(other.averaged(), ema.averaged()):
        assert_bitwise(a, b, "loaded read-out")
    keep = other.state_dict()
    bad = [
        {**sd, "step": -1},
        {**sd, "decay": 1.0},
        {**sd, "averages": sd["averages"][:-1]},
        {**sd, "averages": [a.astype(np.float32) for a in sd["averages"]]},
        {k: v for k, v in sd.items() if k != "step"},
    ]
    for b in bad:
        with pytest.raises((ValueError, TypeError)):
            other.load_state_dict(b)
        now = other.state_dict()
        assert now["step"] == keep["step"] and now["decay"] == keep["decay"]
        for x, y in zip(now["averages"], keep["averages"]):
            assert_bitwise(x, y, "unchanged after a refused load")


def test_mixed_dtypes_flatparams_and_validation() -> None:
    a, b = np.ones(10, np.float32), np.ones(7)
    ema = fusedopt.EMA([a, b], decay=0.5)
    a += 1
    b += 3
    ema.update()
    np.testing.assert_allclose(ema.averaged()[0], 2.0)
    np.testing.assert_allclose(ema.averaged()[1], 4.0)
    arena = fusedopt.FlatParams([np.ones(4), np.zeros(3)])
    ema2 = fusedopt.EMA(arena, decay=0.9)
    ema2.update()
    np.testing.assert_allclose(ema2.averaged()[0], arena.flat)
    with pytest.raises(ValueError, match="decay"):
        fusedopt.EMA([np.ones(3)], decay=1.0)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        fusedopt.EMA([np.ones(3, np.int32)])
    with pytest.raises(ValueError, match="params"):
        x = np.ones(4)
        fusedopt.EMA([x, x])


def test_training_loop_with_an_optimizer() -> None:
    """EMA of Adam's iterates on a quadratic: the averaged weights are closer to the optimum than
    the noisy last iterate."""
    rng = np.random.default_rng(9)
    target = rng.standard_normal(100)
    w = np.zeros(100)
    opt = fusedopt.Adam([w], lr=0.05)
    ema = fusedopt.EMA(opt.params, decay=0.95)
    for _ in range(400):
        g = (w - target) + rng.standard_normal(100) * 2.0
        opt.step([g])
        ema.update()
    err_last = np.linalg.norm(w - target)
    err_avg = np.linalg.norm(ema.averaged()[0] - target)
    assert err_avg < err_last
    assert math.isfinite(err_avg)
