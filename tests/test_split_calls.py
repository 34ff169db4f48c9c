"""Native steps over pieces of parameters (what fusedopt.distributed's shards hold).

* ``trust=(1, sums)`` then ``trust=(2, totals)``: a trust-ratio step (LAMB, LARS) run one phase
  at a time over pieces that start on 2048-element block edges of their tensors, with the
  tensors' block sums added by the single call's pairwise tree in between, is bitwise the single
  call over the whole tensors, on every ISA and thread count;
* ``sr_offsets``: stochastic rounding of a piece keyed by the piece's position in its parameter
  draws the bits the whole parameter would.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from fusedopt import _core, _engine, reference
from fusedopt.algorithms import ALGORITHMS

BLOCK = reference.NORM_BLOCK
#: (tensor sizes, cut points): pieces start on block edges of their tensor
SIZES = [5000, 2048, 100, 4097, 0, 9000]
CUTS = {0: [2048], 3: [4096], 5: [2048, 6144]}


def _hypers(name: str) -> Dict[str, Any]:
    algo = ALGORITHMS[name]
    h = {x.name: x.default for x in algo.arguments}
    h.update(lr=0.05, weight_decay=0.01)
    if name == "lamb":
        h.update(clamp_value=3.0)
    else:
        h.update(momentum=0.9, eta=0.02)
    return algo.check(h)


def _problem(name: str, dtype: Any, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray], List[List[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    algo = ALGORITHMS[name]
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    states = [[rng.random(n).astype(dtype) for n in SIZES] for _ in algo.states]
    return params, grads, states


def _pieces() -> List[Tuple[int, int, int]]:
    out = []
    for k, n in enumerate(SIZES):
        edges = [0, *CUTS.get(k, []), n]
        out += [(k, a, e) for a, e in zip(edges, edges[1:]) if e > a]
    return out


def _split_step(name: str, h: Dict[str, Any], t: int, params: List[np.ndarray], grads: List[np.ndarray],
                states: List[List[np.ndarray]], threads: int) -> None:  # fmt: skip
    algo = ALGORITHMS[name]
    pieces = _pieces()
    p = [params[k][a:e] for k, a, e in pieces]
    g = [grads[k][a:e] for k, a, e in pieces]
    s = [[x[k][a:e] for k, a, e in pieces] for x in states]
    nblocks = [-(-(e - a) // BLOCK) for _, a, e in pieces]
    part = np.full(2 * sum(nblocks), np.nan)
    _engine.native_call(algo, h, t, p, g, s, threads, trust=(1, part))
    blocks: Dict[int, List[Tuple[float, float]]] = {k: [] for k in range(len(SIZES))}
    j = 0
    for (k, _, _), m in zip(pieces, nblocks):
        blocks[k] += [(part[2 * i], part[2 * i + 1]) for i in range(j, j + m)]
        j += m
    totals = np.empty(2 * len(pieces))
    for i, (k, _, _) in enumerate(pieces):
        for r in range(2):
            totals[2 * i + r] = reference._tree_sum([b[r] for b in blocks[k]], 0, len(blocks[k]))
    _engine.native_call(algo, h, t, p, g, s, threads, trust=(2, totals))


@pytest.mark.parametrize("name", ["lamb", "lars"])
@pytest.mark.parametrize("threads", [1, 3])
def test_trust_phases_over_pieces_are_the_single_call(isa: str, dtype: np.dtype, name: str, threads: int) -> None:
    h = _hypers(name)
    algo = ALGORITHMS[name]
    params, grads, states = _problem(name, dtype)
    p1, s1 = [x.copy() for x in params], [[x.copy() for x in st] for st in states]
    p2, s2 = [x.copy() for x in params], [[x.copy() for x in st] for st in states]
    for t in (1, 2, 3):
        _engine.native_call(algo, h, t, p1, grads, s1, threads)
        _split_step(name, h, t, p2, grads, s2, threads)
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))
    assert all(np.array_equal(a, b) for x, y in zip(s1, s2) for a, b in zip(x, y))
    assert not all(np.array_equal(a, b) for a, b in zip(p1, params))  # (the step moved them)


def test_trust_phase_1_writes_no_parameter() -> None:
    h = _hypers("lamb")
    params, grads, states = _problem("lamb", np.float32)
    before = [x.copy() for x in params]
    part = np.zeros(2 * sum(-(-n // BLOCK) for n in SIZES))
    _engine.native_call(ALGORITHMS["lamb"], h, 1, params, grads, states, 2, trust=(1, part))
    assert all(np.array_equal(a, b) for a, b in zip(params, before))
    want = [reference._tensor_sumsq(x) for x in before]  # (the block sums add up to the spec's norm)
    j = 0
    for k, n in enumerate(SIZES):
        m = -(-n // BLOCK)
        assert reference._tree_sum(part[2 * j : 2 * (j + m) : 2].tolist(), 0, m) == want[k]
        j += m


@pytest.mark.parametrize(
    "trust, exc, match",
    [
        ((3, None), ValueError, "phase"),
        ((1, np.zeros(3)), ValueError, "must hold"),
        ((2, np.zeros(2 * len(SIZES), dtype=np.float32)), TypeError, "float64"),
        ((2, [0.0] * (2 * len(SIZES))), TypeError, "NumPy array"),
        ([1, np.zeros(4)], TypeError, "tuple"),
    ],
)
def test_bad_trust_argument_raises_and_writes_nothing(trust: Any, exc: Any, match: str) -> None:
    h = _hypers("lamb")
    params, grads, states = _problem("lamb", np.float64)
    before = [x.copy() for x in params] + [x.copy() for st in states for x in st]
    with pytest.raises(exc, match=match):
        _engine.native_call(ALGORITHMS["lamb"], h, 1, params, grads, states, 1, trust=trust)
    assert all(np.array_equal(a, b) for a, b in zip(params + [x for st in states for x in st], before))


def test_trust_argument_of_an_element_wise_step_is_refused() -> None:
    p, g = [np.zeros(4)], [np.ones(4)]
    with pytest.raises(TypeError, match="trust-ratio"):
        _core.sgd(p, g, None, 0.1, 0.0, 0.0, 1.0, 1.0, 1.0, float("inf"), False, False, False, 1, trust=(1, np.zeros(2)))


# -- stochastic rounding of pieces -------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_sr_offsets_make_pieces_round_as_the_whole_parameter(isa: str, threads: int) -> None:
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(3)
    n, cuts = 5000, [0, 7, 1000, 4093, 5000]  # (pieces starting anywhere, not only on block edges)
    p0 = rng.standard_normal(n).astype(np.float32).astype(bf16)
    g = rng.standard_normal(n).astype(np.float32).astype(bf16)
    whole = p0.copy()
    _core.sgd([whole], [g], None, 0.01, 0.0, 0.0, 1.0, 1.0, 1.0, float("inf"), False, False, False, threads,
              stochastic_rounding=True, seed=99, sr_step=4)  # fmt: skip
    pieces = p0.copy()
    _core.sgd([pieces[a:e] for a, e in zip(cuts, cuts[1:])], [g[a:e] for a, e in zip(cuts, cuts[1:])], None, 0.01,
              0.0, 0.0, 1.0, 1.0, 1.0, float("inf"), False, False, False, threads, stochastic_rounding=True, seed=99,
              sr_step=4, sr_offsets=cuts[:-1])  # fmt: skip
    assert np.array_equal(whole.view(np.uint16), pieces.view(np.uint16))
    unkeyed = p0.copy()  # without the offsets every piece draws the bits of a parameter's start
    _core.sgd([unkeyed[a:e] for a, e in zip(cuts, cuts[1:])], [g[a:e] for a, e in zip(cuts, cuts[1:])], None, 0.01,
              0.0, 0.0, 1.0, 1.0, 1.0, float("inf"), False, False, False, threads, stochastic_rounding=True, seed=99,
              sr_step=4)  # fmt: skip
    assert not np.array_equal(whole.view(np.uint16), unkeyed.view(np.uint16))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(sr_offsets=[0]), ValueError, "sr_offsets is given but stochastic_rounding is False"),
        (dict(stochastic_rounding=True, sr_offsets=[0, 1]), ValueError, "2 items"),
        (dict(stochastic_rounding=True, sr_offsets=[-1]), ValueError, r"sr_offsets\[0\]"),
        (dict(stochastic_rounding=True, sr_offsets=[True]), ValueError, r"sr_offsets\[0\]"),
        (dict(stochastic_rounding=True, sr_offsets="0"), TypeError, "sequence of ints"),
    ],
)
def test_bad_sr_offsets_raise_and_write_nothing(kwargs: Dict[str, Any], exc: Any, match: str) -> None:
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    p = np.ones(8, dtype=bf16)
    g = np.ones(8, dtype=bf16)
    with pytest.raises(exc, match=match):
        _core.sgd([p], [g], None, 0.1, 0.0, 0.0, 1.0, 1.0, 1.0, float("inf"), False, False, False, 1, **kwargs)
    assert np.array_equal(p, np.ones(8, dtype=bf16))
