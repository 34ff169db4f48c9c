"""8-bit block-quantized states (issue 14) in the step bindings against :mod:`fusedopt.reference`,
bitwise, on every ISA and thread count; the format itself against its definition and the peers.

* the code books: the reference's embedded tables equal bitsandbytes' and torchao's (when
  installed), strictly ascending, with an exact 0; the thresholds are the exact midpoints;
* the reference quantizer is the exact nearest code (float64 brute force, ties to the lower code);
* the kernels' encoder on edge values (thresholds and their neighbours, bucket edges, subnormal,
  all-zero, NaN and inf blocks, -0.0) equals the reference on every ISA and thread count;
* every algorithm x parameter layout with 8-bit states, 12 steps, threads 1/2/3, tensor sizes at
  the block edges: kernel == reference bitwise;
* the quantization error is no worse than torchao's nearest rounding (when installed).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import zlib
from typing import List, Optional, Sequence

import numpy as np
import pytest

from fusedopt import _core, reference
from fusedopt.algorithms import ALGORITHMS


def _load_lowp_cases():  # the algorithm cases of test_lowp.py (pytest imports tests with importlib)
    spec = importlib.util.spec_from_file_location("_q8_lowp_cases", pathlib.Path(__file__).with_name("test_lowp.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_cases = _load_lowp_cases()
ALGOS, DT, INF, _bits = _cases.ALGOS, _cases.DT, _cases.INF, _cases._bits

BLOCK = reference.Q8_BLOCK
SIZES = [1, 255, 256, 257, 511, 512, 513, 1024 + 7, 4096, 0, 3 * 512 + 256]


def _nonneg(algo: str) -> List[bool]:
    name = {"sgd": "sgd", "momentum": "momentum", "rmsprop": "rmsprop", "adam": "adam", "adagrad": "adagrad",
            "lion": "lion"}[algo]  # fmt: skip
    return [bool(r.nonneg) for r in ALGORITHMS[name].states]


# ---------------------------------------------------------------------------------------------
# The code books and the reference quantizer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_book_shape(signed):
    m = reference.q8_map(signed)
    assert m.value.dtype == np.float32 and m.value.shape == (256,)
    assert np.all(np.diff(m.value.astype(np.float64)) > 0)
    assert m.value[m.zero] == 0.0 and m.value[-1] == 1.0
    if signed:
        assert m.value[0] < -0.99 and np.count_nonzero(m.value < 0) == 127
    else:
        assert m.zero == 0 and m.value[1] > 0
    # thresholds: the least float32 strictly above the exact midpoint
    mid = (m.value[:-1].astype(np.float64) + m.value[1:].astype(np.float64)) / 2
    t = m.threshold.astype(np.float64)
    assert np.all(t > mid)
    assert np.all(np.nextafter(m.threshold, np.float32(-np.inf)).astype(np.float64) <= mid)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_books_equal_torchao(signed):
    quant = pytest.importorskip("torchao.optim.subclass_8bit", reason="torchao is not installed")
    qmap = quant.get_qmap_signed() if signed else quant.get_qmap_unsigned()
    theirs = np.asarray(qmap.float().numpy() if hasattr(qmap, "float") else qmap, dtype=np.float32)
    assert np.array_equal(theirs.view(np.uint32), reference.q8_map(signed).value.view(np.uint32))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_books_equal_bitsandbytes(signed):
    F = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed")
    theirs = F.create_dynamic_map(signed=signed).float().numpy()
    assert np.array_equal(theirs.view(np.uint32), reference.q8_map(signed).value.view(np.uint32))


def _nearest(q: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Exact nearest code in float64, a tie to the lower code (argmin takes the first)."""
    d = np.abs(q.astype(np.float64)[:, None] - value.astype(np.float64)[None, :])
    return np.argmin(d, axis=1)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_reference_quantizer_is_nearest(signed):
    m = reference.q8_map(signed)
    rng = np.random.default_rng(3)
    mids = ((m.value[:-1].astype(np.float64) + m.value[1:]) / 2).astype(np.float32)
    q = np.concatenate([
        rng.uniform(-1 if signed else 0, 1, 20000).astype(np.float32),
        m.value, m.threshold, np.nextafter(m.threshold, np.float32(-np.inf)), mids,
        np.float32([0.0, -0.0, 1e-30, 1.0, 2.0, -2.0]),
    ])  # fmt: skip
    codes = np.searchsorted(m.threshold, q, side="right")
    assert np.array_equal(codes, _nearest(q, m.value))


def test_encode_rules():
    """absmax per block; zero block; NaN/inf poison the block; subnormal blocks scaled exactly."""
    x = np.zeros(4 * BLOCK + 3, np.float32)
    x[:BLOCK] = np.linspace(-3, 2, BLOCK, dtype=np.float32)
    x[BLOCK + 5] = np.nan
    x[2 * BLOCK + 9] = -np.inf
    x[3 * BLOCK : 4 * BLOCK] = np.float32(1e-42) * np.arange(BLOCK)
    x[-1] = 5.0
    codes, absmax = reference.q8_encode(x, True)
    m = reference.q8_map(True)
    assert absmax.shape == (5,) and absmax[0] == 3.0 and absmax[4] == 5.0
    assert np.isnan(absmax[1]) and np.isnan(absmax[2])
    assert np.all(codes[BLOCK : 3 * BLOCK] == m.zero)
    dec = reference.q8_decode(codes, absmax, True)
    assert np.all(np.isnan(dec[BLOCK : 3 * BLOCK]))
    assert dec[0] == -3.0 and dec[BLOCK - 1] == 2.0 or abs(dec[BLOCK - 1] - 2.0) < 0.03
    sub = dec[3 * BLOCK : 4 * BLOCK]
    assert sub[-1] == x[4 * BLOCK - 1] and np.all(sub >= 0)
    z_codes, z_absmax = reference.q8_encode(np.zeros(300, np.float32), False)
    assert np.all(z_codes == reference.q8_map(False).zero) and np.all(z_absmax == 0)


# ---------------------------------------------------------------------------------------------
# The kernels' encoder on edge values (SGD's first step stores the gradient in its buffer)
# ---------------------------------------------------------------------------------------------


def _edge_values(special_blocks: bool = True) -> np.ndarray:
    m = reference.q8_map(True)
    t = m.threshold[:-1]
    near = np.concatenate([t, np.nextafter(t, np.float32(-1)), np.nextafter(t, np.float32(2)), m.value])
    rng = np.random.default_rng(11)
    # bucket edges: every 2^16-th bit pattern of |q| in [2^-25, 2.1), both signs
    edges = np.arange(102 << 23, 0x40080000, 1 << 16, dtype=np.uint32).view(np.float32)
    blocks = [near, edges, -edges, rng.standard_normal(5000).astype(np.float32)]
    v = np.concatenate(blocks)
    v = v[np.abs(v) <= 1]
    v = np.concatenate([v, np.zeros((-v.size) % (BLOCK - 1), np.float32)]).reshape(-1, BLOCK - 1)
    # every block: 255 values and a 1.0, so absmax is 1 and q == x exactly (thresholds hit exactly)
    x = np.concatenate([v, np.ones((v.shape[0], 1), np.float32)], axis=1).ravel()
    if not special_blocks:
        return x
    special = np.zeros(6 * BLOCK + 77, np.float32)  # zero block, NaN block, inf block, subnormal, -0.0, partial
    special[BLOCK + 3] = np.nan
    special[2 * BLOCK + 4] = np.inf
    special[3 * BLOCK : 4 * BLOCK] = np.arange(BLOCK, dtype=np.uint32).view(np.float32)
    special[4 * BLOCK : 5 * BLOCK] = -0.0
    special[5 * BLOCK : 6 * BLOCK] = rng.standard_normal(BLOCK).astype(np.float32) * np.float32(1e38)
    special[6 * BLOCK :] = rng.standard_normal(77).astype(np.float32)
    return np.concatenate([x, special])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_encoder_edge_values(isa, threads):
    x = _edge_values()
    n = x.size
    codes, absmax = reference.q8_encode(np.zeros(n, np.float32), True)
    p = np.zeros(n, np.float32)
    _core.sgd([p], [x], [codes], 0.0, 0.0, 0.9, 1.0, 1.0, 1.0, INF, False, False, True, threads,
              absmax=[[absmax]])  # fmt: skip
    want_codes, want_absmax = reference.q8_encode(x, True)
    assert np.array_equal(codes, want_codes), np.flatnonzero(codes != want_codes)[:10]
    assert np.array_equal(absmax.view(np.uint32), want_absmax.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# Every algorithm x layout, 8-bit states, against reference.lowp_step
# ---------------------------------------------------------------------------------------------

#: (param dtype, grad dtype, write): float32; bfloat16 RNE / SR / fp32 master / split; float16 master
Q8_LAYOUTS = [("float32", "float32", "rne"), ("bfloat16", "bfloat16", "rne"), ("bfloat16", "bfloat16", "sr"),
              ("bfloat16", "float32", "master"), ("bfloat16", "bfloat16", "split"), ("float16", "float16", "master")]  # fmt: skip


class Q8Run:
    def __init__(self, rng, sizes: Sequence[int], lay, nonneg: Sequence[bool]) -> None:
        pdt = DT[lay[0]] if lay[0] != "float32" else np.dtype(np.float32)
        self.params = [rng.standard_normal(n).astype(np.float32).astype(pdt) for n in sizes]
        self.nonneg = list(nonneg)
        self.codes = [[reference.q8_encode(np.zeros(n, np.float32), not nn)[0] for n in sizes] for nn in nonneg]
        self.absmax = [[np.zeros(reference.q8_blocks(n), np.float32) for n in sizes] for _ in nonneg]
        self.masters: Optional[List[np.ndarray]] = None
        if lay[2] == "master":
            self.masters = [p.astype(np.float32) for p in self.params]
        elif lay[2] == "split":
            self.masters = [np.zeros(n, np.uint16) for n in sizes]

    def copy(self) -> "Q8Run":
        out = object.__new__(Q8Run)
        out.params = [a.copy() for a in self.params]
        out.nonneg = self.nonneg
        out.codes = [[a.copy() for a in r] for r in self.codes]
        out.absmax = [[a.copy() for a in r] for r in self.absmax]
        out.masters = None if self.masters is None else [a.copy() for a in self.masters]
        return out

    def buffers(self) -> List[np.ndarray]:
        return (self.params + [a for r in self.codes for a in r] + [a for r in self.absmax for a in r]
                + (self.masters or []))  # fmt: skip


def _same(a: np.ndarray, b: np.ndarray, skip: Optional[np.ndarray]) -> bool:
    """Bitwise equal, but any NaN equals any NaN: IEEE leaves a NaN's sign and payload to the
    operand order, which the compiler may swap (NaNs arise here from centered RMSprop, whose
    square_avg - grad_avg**2 goes negative once both are quantized, and poison whole blocks).
    uint16 trails: compared where the parameter (``skip``) is not NaN."""
    if a.dtype == np.uint8:
        return np.array_equal(a, b)
    if a.dtype == np.uint16:
        keep = ~skip if skip is not None else np.ones(a.shape, bool)
        return np.array_equal(a[keep], b[keep])
    na, nb = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    return np.array_equal(na, nb) and np.array_equal(_bits(a)[~na], _bits(b)[~nb])


def _q8_trajectory(algo: str, lay, sizes: Sequence[int], steps: int, threads=(1, 2, 3)) -> None:
    nonneg = _nonneg(algo)
    rng = np.random.default_rng(zlib.crc32(repr((algo, lay, tuple(sizes))).encode()))
    ref = Q8Run(rng, sizes, lay, nonneg)
    runs = [ref.copy() for _ in threads]
    sr = lay[2] == "sr"
    gdt = DT[lay[1]] if lay[1] != "float32" else np.dtype(np.float32)
    for t in range(1, steps + 1):
        grads = []
        for n in sizes:
            g = (rng.standard_normal(n) * (10.0 ** rng.integers(-3, 2))).astype(np.float32)
            if t % 4 == 0:
                g[::5] = 0.0
            grads.append(g.astype(gdt))
        fn, scal, flags, upd = ALGOS[algo][0](t)
        for k in range(len(sizes)):
            states = [reference.Q8State(ref.codes[j][k], ref.absmax[j][k], not nonneg[j]) for j in range(len(nonneg))]
            reference.lowp_step(upd, ref.params[k], grads[k], states, None if ref.masters is None else ref.masters[k],
                                stochastic_rounding=sr, seed=99, sr_step=t)  # fmt: skip
        for th, run in zip(threads, runs):
            fn(run.params, grads, *run.codes, *scal, 1.0, 1.0, INF, *flags, th, None, None, run.masters, sr, 99, t,
               absmax=run.absmax)  # fmt: skip
            nan_params = [np.isnan(a.astype(np.float32)) for a in ref.params]
            for i, (a, b) in enumerate(zip(run.buffers(), ref.buffers())):
                if not _same(a, b, nan_params[i - len(run.buffers()) + len(nan_params)] if a.dtype == np.uint16 else None):
                    raise AssertionError(f"{algo} {lay} threads={th} step {t} buffer {i} (size {a.size}) differs")


@pytest.mark.parametrize("lay", Q8_LAYOUTS, ids=lambda lay: "-".join(lay))
@pytest.mark.parametrize("algo", list(ALGOS))
def test_q8_layouts_vs_reference(isa, algo, lay):
    _q8_trajectory(algo, lay, SIZES, 6)


def test_q8_many_steps_adam():
    """30 Adam steps (the codes and absmax evolve through many re-quantizations)."""
    _q8_trajectory("adam", ("float32", "float32", "rne"), [5000, 300], 30)


def test_q8_bad_input_writes_nothing():
    n = 1000
    rng = np.random.default_rng(5)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    cm, am = reference.q8_encode(rng.standard_normal(n).astype(np.float32), True)
    cv, av = reference.q8_encode(rng.random(n).astype(np.float32), False)
    before = [a.copy() for a in (p, cm, cv, am, av)]
    fn, scal, flags, _ = ALGOS["adam"][0](1)
    bad_calls = [
        dict(absmax=[[am], [av[:-1]], None]),  # wrong absmax size
        dict(absmax=[[am], [av.astype(np.float64)], None]),  # wrong absmax dtype
        dict(absmax=[[am], None, None]),  # missing absmax for a state
        dict(absmax=[[am], [av]]),  # wrong length
        dict(absmax=[[am], [av], [av]]),  # absmax for an absent state
    ]
    for kw in bad_calls:
        with pytest.raises((TypeError, ValueError)):
            fn([p], [g], [cm], [cv], None, *scal, 1.0, 1.0, INF, *flags, 2, **kw)
    with pytest.raises(TypeError, match="uint8"):
        fn([p], [g], [cm], [cv], None, *scal, 1.0, 1.0, INF, *flags, 2)
    ro = av.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fn([p], [g], [cm], [cv], None, *scal, 1.0, 1.0, INF, *flags, 2, absmax=[[am], [ro], None])
    for a, b in zip((p, cm, cv, am, av), before):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ---------------------------------------------------------------------------------------------
# Quantization error against torchao's nearest rounding (same data)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_error_no_worse_than_torchao(signed):
    quant = pytest.importorskip("torchao.optim.subclass_8bit", reason="torchao is not installed")
    import torch

    rng = np.random.default_rng(21)
    x = rng.standard_normal(1 << 16).astype(np.float32)
    if not signed:
        x = x * x
    codes, absmax = reference.q8_encode(x, signed)
    ours = reference.q8_decode(codes, absmax, signed)
    qmap = torch.from_numpy(reference.q8_map(signed).value.copy())
    xt = torch.from_numpy(x).view(-1, BLOCK)
    scale = xt.abs().amax(-1).clip(1e-12)
    tcodes = quant.quantize_8bit_with_qmap(xt / scale.view(-1, 1), qmap)
    theirs = (qmap[tcodes.int()] * scale.view(-1, 1)).view(-1).numpy()
    err_ours = np.abs(ours.astype(np.float64) - x).mean()
    err_theirs = np.abs(theirs.astype(np.float64) - x).mean()
    assert err_ours <= err_theirs * (1 + 1e-6), (err_ours, err_theirs)
    assert math.isfinite(err_ours)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_encoder_ignores_flush_to_zero(isa, signed):
    """Flush-to-zero / denormals-are-zero set by the caller (torch.set_flush_denormal) change no
    code of a normal value: the quantizer's tables are moved as bit patterns, never computed with
    (some entries have the bit pattern of a float32 subnormal)."""
    torch = pytest.importorskip("torch")
    x = _edge_values(special_blocks=False)  # blocks of absmax 1: every q is x itself, 0 or normal
    if not signed:
        x = np.abs(x)
    n = x.size
    want_codes, want_absmax = reference.q8_encode(x, signed)
    m = reference.q8_map(signed)
    # Adagrad stores sum + g*g (unsigned); SGD's first step stores g (signed): feed values whose
    # stored state is exactly x
    torch.set_flush_denormal(True)
    try:
        codes = np.full(n, m.zero, np.uint8)
        absmax = np.zeros(reference.q8_blocks(n), np.float32)
        p = np.zeros(n, np.float32)
        if signed:
            _core.sgd([p], [x], [codes], 0.0, 0.0, 0.9, 1.0, 1.0, 1.0, INF, False, False, True, 2, absmax=[[absmax]])
        else:  # reference.adagrad: sum = sum + g*g; choose g = sqrt(x) and compare with the encode of g*g
            g = np.sqrt(x).astype(np.float32)
            x = g * g
            want_codes, want_absmax = reference.q8_encode(x, signed)
            _core.adagrad([p], [g], [codes], 0.0, 1.0, 0.0, 1.0, 1.0, INF, False, 2, absmax=[[absmax]])
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(codes, want_codes)
    assert np.array_equal(absmax.view(np.uint32), want_absmax.view(np.uint32))
