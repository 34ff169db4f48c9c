"""Low-precision storage (issue 13) in the step bindings against :mod:`fusedopt.reference`, bitwise.

The bindings take, after ``counters``: ``masters`` (None; float32 arrays: fp32 masters; uint16
arrays: the trails of "split" masters), ``stochastic_rounding``, ``seed`` and ``sr_step``; the
dtype of each role is that of its arrays (bfloat16 = ``ml_dtypes.bfloat16`` or ``torch.bfloat16``).

* every algorithm x every supported storage layout x every ISA, threads 1/2/3 in lockstep, over
  20 steps (one call over tensors of edge sizes), against :func:`reference.lowp_step`;
* the conversions over every bfloat16/float16 value and a large set of float32 values, against
  the reference, ml_dtypes, NumPy and torch;
* Philox4x32-10 known-answer vectors; stochastic rounding unbiased (a test RNE fails); split ==
  fp32 master wherever the tie rule did not apply; bad input raises naming the argument and
  writes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from fusedopt import _core, _scalars, reference

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
U16 = np.dtype(np.uint16)
INF = math.inf

# ---------------------------------------------------------------------------------------------
# The algorithms: the positional binding call and the fp32 reference step of step t.
# ---------------------------------------------------------------------------------------------


def _sgd(t: int) -> Tuple[Callable[..., None], Tuple[Any, ...], Tuple[Any, ...], Callable[..., None]]:
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1, nesterov=True, weight_decay=0.01)
    s = _scalars.sgd_scalars(lr=kw["lr"], weight_decay=kw["weight_decay"], momentum=kw["momentum"], dampening=kw["dampening"])
    return _core.sgd, tuple(s), (True, False, t == 1), lambda p, g, *st, **x: reference.sgd(p, g, *st, first_step=t == 1, **kw, **x)


def _momentum(t: int):
    kw = dict(lr=0.02, beta=0.9, weight_decay=0.01, bias_correction=True)
    s = _scalars.momentum_scalars(step=t, **kw)
    return _core.momentum, tuple(s), (), lambda p, g, *st, **x: reference.momentum(p, g, *st, step=t, **kw, **x)


def _rmsprop(t: int):
    kw = dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.5)
    s = _scalars.rmsprop_scalars(**kw)
    return _core.rmsprop, tuple(s), (False,), lambda p, g, *st, **x: reference.rmsprop(p, g, *st, centered=True, **kw, **x)


def _adam(t: int):
    kw = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    s = _scalars.adam_scalars(step=t, decoupled_weight_decay=True, **kw)
    ref = lambda p, g, *st, **x: reference.adam(p, g, *st, step=t, amsgrad=True, decoupled_weight_decay=True, **kw, **x)  # noqa: E731
    return _core.adam, tuple(s), (False, False), ref


def _adagrad(t: int):
    kw = dict(lr=0.05, lr_decay=0.01, eps=1e-10, weight_decay=0.01)
    s = _scalars.adagrad_scalars(step=t, **kw)
    return _core.adagrad, tuple(s), (False,), lambda p, g, *st, **x: reference.adagrad(p, g, *st, step=t, **kw, **x)


def _lion(t: int):
    kw = dict(lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1)
    s = _scalars.lion_scalars(**kw)
    return _core.lion, tuple(s), (False,), lambda p, g, *st, **x: reference.lion(p, g, *st, **kw, **x)


#: name -> (step maker, number of state roles)
ALGOS: Dict[str, Tuple[Callable[[int], Any], int]] = {
    "sgd": (_sgd, 1), "momentum": (_momentum, 1), "rmsprop": (_rmsprop, 3), "adam": (_adam, 3),
    "adagrad": (_adagrad, 1), "lion": (_lion, 1),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# The layouts: (param dtype, grad dtype, state dtype, write) that the kernels have.
# ---------------------------------------------------------------------------------------------

LAYOUTS = (
    [("bfloat16", g, s, w) for g in ("param", "float32") for s in ("float32", "param")
     for w in ("rne", "sr", "master", "split")]
    + [("float16", g, s, w) for g in ("param", "float32") for s in ("float32", "param") for w in ("rne", "master")]
    + [("float32", "float32", "bfloat16", "rne")]
)  # fmt: skip
DT = {"bfloat16": BF16, "float16": F16, "float32": F32}


def _layout_id(lay: Tuple[str, str, str, str]) -> str:
    return "p={}-g={}-s={}-{}".format(*lay)


def _dtypes(lay: Tuple[str, str, str, str]) -> Tuple[np.dtype, np.dtype, np.dtype]:
    p = DT[lay[0]]
    g = p if lay[1] == "param" else DT[lay[1]]
    s = p if lay[2] == "param" else DT[lay[2]]
    return p, g, s


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


class Run:
    """One copy of the storage of a list of tensors."""

    def __init__(self, rng: np.random.Generator, sizes: Sequence[int], lay, n_states: int) -> None:
        p_dt, _, s_dt = _dtypes(lay)
        self.params = [rng.standard_normal(n).astype(np.float32).astype(p_dt) for n in sizes]
        self.states = [[np.zeros(n, s_dt) for n in sizes] for _ in range(n_states)]
        write = lay[3]
        self.masters: Optional[List[np.ndarray]] = None
        if write == "master":
            self.masters = [p.astype(np.float32) for p in self.params]
        elif write == "split":
            self.masters = [np.zeros(n, np.uint16) for n in sizes]

    def copy(self) -> "Run":
        out = object.__new__(Run)
        out.params = [a.copy() for a in self.params]
        out.states = [[a.copy() for a in role] for role in self.states]
        out.masters = None if self.masters is None else [a.copy() for a in self.masters]
        return out

    def buffers(self) -> List[np.ndarray]:
        return self.params + [a for role in self.states for a in role] + (self.masters or [])


def _grads(rng: np.random.Generator, sizes: Sequence[int], g_dt: np.dtype, t: int) -> List[np.ndarray]:
    out = []
    for n in sizes:
        g = (rng.standard_normal(n) * (10.0 ** rng.integers(-3, 2))).astype(np.float32)
        if t % 5 == 0:
            g[::7] = 0.0
        out.append(g.astype(g_dt))
    return out


def _kernel_step(algo: str, t: int, run: Run, grads, threads: int, sr: bool, seed: int, grad_scale: float) -> None:
    fn, scal, flags, _ = ALGOS[algo][0](t)
    fn(run.params, grads, *run.states, *scal, grad_scale, 1.0, INF, *flags, threads, None, None, run.masters, sr, seed, t)


def _reference_step(algo: str, t: int, run: Run, grads, sr: bool, seed: int, grad_scale: float) -> None:
    _, _, _, ref = ALGOS[algo][0](t)
    for k in range(len(run.params)):
        update = (lambda p, g, *st: ref(p, g, *st, grad_scale=grad_scale)) if grad_scale != 1.0 else ref
        reference.lowp_step(
            update, run.params[k], grads[k], [role[k] for role in run.states],
            None if run.masters is None else run.masters[k], stochastic_rounding=sr, seed=seed, sr_step=t,
        )  # fmt: skip


def _trajectory(algo: str, lay, sizes: Sequence[int], steps: int, threads=(1, 2, 3), seed: int = 1234) -> None:
    n_states = ALGOS[algo][1]
    rng = np.random.default_rng(abs(hash((algo, lay, tuple(sizes)))) % 2**32)
    ref = Run(rng, sizes, lay, n_states)
    runs = [ref.copy() for _ in threads]
    sr = lay[3] == "sr"
    for t in range(1, steps + 1):
        grads = _grads(rng, sizes, _dtypes(lay)[1], t)
        gsave = [g.copy() for g in grads]
        grad_scale = 4.0 if t % 3 == 0 else 1.0
        _reference_step(algo, t, ref, grads, sr, seed, grad_scale)
        for th, run in zip(threads, runs):
            _kernel_step(algo, t, run, grads, th, sr, seed, grad_scale)
            for i, (a, b) in enumerate(zip(run.buffers(), ref.buffers())):
                if not np.array_equal(_bits(a), _bits(b)):
                    bad = np.flatnonzero(_bits(a).ravel() != _bits(b).ravel())
                    raise AssertionError(
                        f"{algo} {_layout_id(lay)} threads={th} step {t} buffer {i} (size {a.size}): "
                        f"{bad.size} elements differ, first at {bad[0]}: {_bits(a).ravel()[bad[0]]:#x} "
                        f"vs reference {_bits(b).ravel()[bad[0]]:#x}"
                    )
        for g, s in zip(grads, gsave):
            assert np.array_equal(_bits(g), _bits(s)), "a gradient was written"


@pytest.mark.parametrize("lay", LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("algo", list(ALGOS))
def test_layouts_vs_reference(isa, algo, lay):
    """Every algorithm x layout on this ISA: one call over tensors of edge sizes, threads 1/2/3,
    20 steps (8 for master-less round-to-nearest layouts), bitwise equal to the reference."""
    steps = 20 if lay[3] in ("master", "split", "sr") else 8
    _trajectory(algo, lay, [1000, 1, 37, 2053, 0, 64], steps)


@pytest.mark.parametrize("lay", [lay for lay in LAYOUTS if lay[1] == "param" and lay[2] == "float32"], ids=_layout_id)
def test_size_sweep(isa, lay):
    """Adam over every size around the SIMD widths and the 64-byte split boundaries."""
    for n in list(range(0, 70)) + [127, 128, 129, 255, 257, 1023, 1025]:
        _trajectory("adam", lay, [n], 3)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def _f32_sample() -> np.ndarray:
    """Every high half with low halves at and around the rounding points (ties, +-1), the float16
    boundaries (overflow, subnormals) densely, and random bit patterns."""
    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    lows = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF], np.uint32)
    grid = (hi[:, None] | lows[None, :]).ravel()
    # float16-relevant magnitudes: every float32 from 2^-26 to 2^-13 and around 65504..65536 in steps
    sub = np.arange(0x32800000, 0x39000000, 7, dtype=np.uint32)
    top = np.arange(0x477FC000, 0x47801000, 1, dtype=np.uint32)
    rnd = np.random.default_rng(7).integers(0, 1 << 32, size=1 << 21, dtype=np.uint64).astype(np.uint32)
    u = np.concatenate([grid, sub, top, rnd])
    u = np.concatenate([u, u ^ np.uint32(0x80000000)])
    return u.view(np.float32)


def _via_state(values: np.ndarray, state_dtype: np.dtype, param_dtype: np.dtype, threads: int = 2) -> np.ndarray:
    """The bits the kernels store for float32 `values` in a state of `state_dtype`: SGD with
    momentum on its first step stores the (pre-processed: exact identities) gradient in the buffer."""
    n = values.size
    p = np.zeros(n, param_dtype)
    buf = np.zeros(n, state_dtype)
    _core.sgd([p], [values], [buf], 0.0, 0.0, 0.9, 1.0, 1.0, 1.0, INF, False, False, True, threads)
    return buf.view(np.uint16)


def test_bf16_rne_all_sampled_f32(isa):
    x = _f32_sample()
    got = _via_state(x, BF16, F32)
    want = reference.bf16_rne(x)
    assert np.array_equal(got, want)
    fin = ~np.isnan(x)
    assert np.array_equal(want[fin], x[fin].astype(BF16).view(np.uint16))  # ml_dtypes
    nan = np.isnan(x)
    assert np.array_equal(want[nan], np.where(np.signbit(x[nan]), 0xFFC0, 0x7FC0).astype(np.uint16))
    torch = pytest.importorskip("torch")
    tb = torch.from_numpy(x[fin]).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(want[fin], tb)


def test_f16_rne_all_sampled_f32(isa):
    x = _f32_sample()
    got = _via_state(x, F16, F16)  # float16 params, float32 grads, float16 states
    want = reference.f16_rne(x)
    assert np.array_equal(got, want)
    fin = ~np.isnan(x)
    with np.errstate(over="ignore"):
        assert np.array_equal(want[fin], x[fin].astype(np.float16).view(np.uint16))
    torch = pytest.importorskip("torch")
    th = torch.from_numpy(x[fin]).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(want[fin], th)


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_decode_every_16_bit_value(isa, kind):
    """Every bfloat16/float16 bit pattern loaded as float32: SGD with weight decay 1 on a -0 gradient
    makes the buffer -0 + 1*p = p exactly (NaN included)."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    p = h.view(DT[kind]).copy()
    g = np.full(h.size, -0.0, np.float32)
    buf = np.zeros(h.size, np.float32)
    _core.sgd([p], [g], [buf], 0.0, 1.0, 0.9, 1.0, 1.0, 1.0, INF, False, False, True, 3)
    want = reference.bf16_to_f32(h) if kind == "bfloat16" else reference.f16_to_f32(h)
    # the harness's addition quiets a signaling NaN (bfloat16 keeps them; float16 loads quieted)
    quieted = np.where(np.isnan(want), want.view(np.uint32) | np.uint32(0x400000), want.view(np.uint32))
    assert np.array_equal(buf.view(np.uint32), quieted)
    fin = ~np.isnan(want)
    assert np.array_equal(want[fin], h.view(DT[kind])[fin].astype(np.float32))  # ml_dtypes / NumPy
    torch = pytest.importorskip("torch")
    tdt = torch.bfloat16 if kind == "bfloat16" else torch.float16
    tt = torch.from_numpy(h.view(np.int16)).view(tdt).float().numpy()
    assert np.array_equal(tt[fin].view(np.uint32), want[fin].view(np.uint32))


def test_fp16_master_write_every_sampled_f32(isa):
    """float16 params with an fp32 master: SGD with lr 0 keeps the master and writes its RNE."""
    x = _f32_sample()[: 1 << 20]
    x = x[~np.isnan(x)]
    p = np.zeros(x.size, F16)
    m = x.copy()
    g = np.zeros(x.size, np.float32)
    _core.sgd([p], [g], None, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 2, None, None, [m])
    assert np.array_equal(m.view(np.uint32), x.view(np.uint32))
    assert np.array_equal(p.view(np.uint16), reference.f16_rne(x))


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_conversions_ignore_flush_to_zero(isa, kind):
    """Flush-to-zero / denormals-are-zero set by the caller (torch.set_flush_denormal) change no
    conversion: every finite 16-bit value survives a load and a store (SGD with lr 0), and float32
    values in the float16-subnormal range are stored as their float16 subnormals (F16C's
    VCVTPS2PH/VCVTPH2PS and the integer paths alike)."""
    torch = pytest.importorskip("torch")
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    if kind == "bfloat16":  # finite; not subnormal (those are float32 subnormals: the caller's DAZ
        h = h[((h & 0x7F80) != 0x7F80) & ((h & 0x7F80) != 0)]  # flushes them in the arithmetic, as in float32)
    else:  # finite (float16 subnormals are float32 normals)
        h = h[(h & 0x7C00) != 0x7C00]
    x = np.arange(4, 4000, dtype=np.float32) * np.float32(2.0**-26)  # float16 subnormals and beyond
    torch.set_flush_denormal(True)
    try:
        p = h.view(DT[kind]).copy()
        _core.sgd([p], [np.zeros(h.size, np.float32)], None, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 2)
        q = np.zeros(x.size, DT[kind])
        _core.sgd([q], [-x], None, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 2)
    finally:
        torch.set_flush_denormal(False)
    assert np.array_equal(p.view(np.uint16), h)
    want = reference.bf16_rne(x) if kind == "bfloat16" else reference.f16_rne(x)
    assert np.array_equal(q.view(np.uint16), want)
    assert np.count_nonzero(want) == x.size  # nothing was flushed


# ---------------------------------------------------------------------------------------------
# Philox, stochastic rounding, split
# ---------------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Known-answer vectors of Philox4x32-10 (the Random123 distribution's kat_vectors)."""
    cases = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]  # fmt: skip
    for ctr, key, want in cases:
        got = reference.philox4x32_10([np.array([c], np.uint32) for c in ctr], key)
        assert [int(w[0]) for w in got] == want


def test_sr_bits_layout():
    """sr_bits is the documented slicing of one Philox block per 8 elements."""
    idx = np.arange(64, dtype=np.uint64) + np.uint64(2**33 - 16)
    seed, step = 0x123456789ABCDEF0, 2**40 + 5
    bits = reference.sr_bits(seed, step, idx)
    for i, b in zip(idx.tolist(), bits.tolist()):
        j = i >> 3
        words = reference.philox4x32_10(
            [np.array([j & 0xFFFFFFFF]), np.array([j >> 32]), np.array([step & 0xFFFFFFFF]), np.array([step >> 32])],
            [seed & 0xFFFFFFFF, seed >> 32],
        )
        w = int(words[(i & 7) >> 1][0])
        assert b == ((w >> 16) if i & 1 else (w & 0xFFFF))


def _sr_sgd(p: np.ndarray, g: np.ndarray, lr: float, seed: int, step: int, sr: bool, threads: int = 2) -> None:
    _core.sgd([p], [g], None, lr, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, threads, None, None, None, sr, seed, step)


@pytest.mark.parametrize("sr", [True, False])
def test_stochastic_rounding_is_unbiased(sr):
    """2^16 bfloat16 ones, each moved by 1/8 of its ulp (2^-7): stochastic rounding moves about
    1/8 of them one ulp up (the mean moves by 2^-10 within 5 sigma); round-to-nearest moves none."""
    n = 1 << 16
    p = np.ones(n, BF16)
    g = np.full(n, -(2.0**-10), np.float32)
    _sr_sgd(p, g, 1.0, seed=42, step=1, sr=sr)
    moved = p.astype(np.float32) - 1.0
    assert set(np.unique(moved).tolist()) <= {0.0, 2.0**-7}
    frac = float(np.mean(moved > 0))
    sigma = math.sqrt(0.125 * 0.875 / n)
    unbiased = abs(frac - 0.125) < 5 * sigma
    assert unbiased == sr, frac


def test_stochastic_rounding_reproducible_and_keyed():
    x = np.random.default_rng(3).standard_normal(4099).astype(np.float32)
    g = np.random.default_rng(4).standard_normal(4099).astype(np.float32)

    def run(seed: int, step: int, threads: int) -> np.ndarray:
        p = x.astype(BF16)
        _sr_sgd(p, g, 1e-3, seed, step, True, threads)
        return p.view(np.uint16).copy()

    a = run(7, 3, 1)
    assert np.array_equal(a, run(7, 3, 2)) and np.array_equal(a, run(7, 3, 3))
    assert not np.array_equal(a, run(8, 3, 1))
    assert not np.array_equal(a, run(7, 4, 1))


def test_split_round_trip_rule():
    """split_encode/decode: lossless for every non-NaN master except at the documented tie (odd
    high half, low half 0x8000), where the master moves one float32 ulp away from zero; the parameter is always the
    RNE of the true master (and of the stored one)."""
    hi = np.arange(0, 1 << 16, 3, dtype=np.uint32)
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    u = ((hi[:, None] << np.uint32(16)) | lows[None, :]).ravel()
    x = u.view(np.float32)
    p, t = reference.split_encode(x)
    back = reference.split_decode(p, t).view(np.uint32)
    tie = (u & 0x1FFFF) == 0x18000
    fin = ~np.isnan(x)  # a NaN master stays NaN (its payload is not kept)
    assert np.array_equal(back[~tie & fin], u[~tie & fin])
    assert np.array_equal(back[tie & fin], u[tie & fin] + 1)
    assert np.array_equal(p[fin], reference.bf16_rne(x)[fin])
    assert np.isnan(reference.split_decode(p, t)[~fin]).all()


def test_split_kernel_round_trip_every_pattern(isa):
    """Every bf16 parameter with trails at and around the rounding points, through a step that keeps
    the master (SGD, lr 0): the kernel stores split_encode(split_decode(p, t)) — the tie rule, NaNs,
    infs — whether a 512-element chunk holds a NaN (the stores' exact redo) or none."""
    hi = np.arange(1 << 16, dtype=np.uint32)
    lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    p = np.repeat(hi, lows.size).astype(np.uint16)
    t = np.tile(lows, hi.size).astype(np.uint16)
    master = reference.split_decode(p, t)
    order = np.argsort(np.isnan(master), kind="stable")  # NaN-free chunks first, then NaN chunks
    p, t, master = p[order], t[order], master[order]
    want_p, want_t = reference.split_encode(master)
    params = p.view(BF16).copy()
    trails = t.copy()
    _core.sgd([params], [np.zeros(p.size, np.float32)], None, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False,
              2, None, None, [trails])  # fmt: skip
    assert np.array_equal(params.view(np.uint16), want_p)
    assert np.array_equal(trails, want_t)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_split_equals_fp32_master(isa, algo):
    """'split' gives the parameters and master (decoded) of 'fp32' bit for bit over 25 steps, as
    long as no element hit the tie rule (checked on the fp32 run)."""
    sizes = [3000, 17]
    n_states = ALGOS[algo][1]
    rng = np.random.default_rng(11)
    lay_m, lay_s = ("bfloat16", "float32", "float32", "master"), ("bfloat16", "float32", "float32", "split")
    a = Run(rng, sizes, lay_m, n_states)
    b = Run(np.random.default_rng(11), sizes, lay_s, n_states)
    ties = 0
    for t in range(1, 26):
        grads = _grads(rng, sizes, F32, t)
        _kernel_step(algo, t, a, grads, 2, False, 0, 1.0)
        _kernel_step(algo, t, b, grads, 3, False, 0, 1.0)
        assert a.masters is not None and b.masters is not None
        for k in range(len(sizes)):
            u = a.masters[k].view(np.uint32)
            ties += int(np.count_nonzero((u & 0x1FFFF) == 0x18000))
            if ties:
                return  # the runs may now differ by the documented one-ulp move
            assert np.array_equal(a.params[k].view(np.uint16), b.params[k].view(np.uint16))
            assert np.array_equal(reference.split_decode(b.params[k].view(np.uint16), b.masters[k]).view(np.uint32), u)
            for ra, rb in zip(a.states, b.states):
                assert np.array_equal(ra[k].view(np.uint32), rb[k].view(np.uint32))


def test_sr_moves_every_parameter_where_rne_moves_few():
    """A small update (well below half a bf16 ulp) at every element: with round-to-nearest
    nothing moves; with stochastic rounding over 50 steps every parameter moved at least once."""
    n = 4096
    x = np.random.default_rng(5).uniform(1.25, 2.0, n).astype(np.float32).astype(BF16)
    g = np.full(n, 1.0, np.float32)
    p_rne, p_sr = x.copy(), x.copy()
    moved = np.zeros(n, bool)
    for t in range(1, 51):
        _sr_sgd(p_rne, g, 2.0**-9, 1, t, False)  # 1/4 ulp on [1, 2): P(never moves) = 0.75**50
        before = p_sr.copy()
        _sr_sgd(p_sr, g, 2.0**-9, 1, t, True)
        moved |= p_sr.view(np.uint16) != before.view(np.uint16)
    assert np.array_equal(p_rne.view(np.uint16), x.view(np.uint16))
    assert moved.all()


# ---------------------------------------------------------------------------------------------
# Bad input: TypeError/ValueError naming the argument, nothing written
# ---------------------------------------------------------------------------------------------


def _adam_call(params, grads, m, v, masters=None, sr=False, torch_exact=False):
    s = _scalars.adam_scalars(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=True)
    _core.adam(params, grads, m, v, None, *s, 1.0, 1.0, INF, False, torch_exact, 1, None, None, masters, sr, 1, 1)


def _arrays(p_dt, g_dt, s_dt, n=10):
    rng = np.random.default_rng(0)
    return (
        [rng.standard_normal(n).astype(np.float32).astype(p_dt)],
        [rng.standard_normal(n).astype(np.float32).astype(g_dt)],
        [np.ones(n, s_dt)],
        [np.ones(n, s_dt)],
    )


BAD = [
    # (description, arrays maker, kwargs, exception, message fragment)
    ("grad float16 with bf16 params", lambda: _arrays(BF16, F16, F32), {}, TypeError, "grads[0]"),
    ("grad float64 with bf16 params", lambda: _arrays(BF16, np.float64, F32), {}, TypeError, "grads[0]"),
    ("grad bf16 with f32 params", lambda: _arrays(F32, BF16, F32), {}, TypeError, "grads[0]"),
    ("grad f16 with f64 params", lambda: _arrays(np.float64, F16, np.float64), {}, TypeError, "float64"),
    ("state float16 with bf16 params", lambda: _arrays(BF16, BF16, F16), {}, TypeError, "exp_avgs[0]"),
    ("state float64 with f16 params", lambda: _arrays(F16, F16, np.float64), {}, TypeError, "exp_avgs[0]"),
    ("bf16 as uint16 (not ml_dtypes)", lambda: _arrays(U16, F32, F32), {}, TypeError, "params[0]"),
    ("bf16 as V2 void", lambda: _arrays(np.dtype("V2"), F32, F32), {}, TypeError, "params[0]"),
    ("split on float16", lambda: _arrays(F16, F16, F32), {"masters": "u16"}, ValueError, "split"),
    ("master float64", lambda: _arrays(BF16, BF16, F32), {"masters": "f64"}, TypeError, "masters[0]"),
    ("master with f32 params", lambda: _arrays(F32, F32, BF16), {"masters": "f32"}, TypeError, "masters"),
    ("sr on float16", lambda: _arrays(F16, F16, F32), {"sr": True}, ValueError, "stochastic_rounding"),
    ("sr with masters", lambda: _arrays(BF16, BF16, F32), {"sr": True, "masters": "f32"}, ValueError, "stochastic_rounding"),
    ("torch_exact on bf16", lambda: _arrays(BF16, BF16, F32), {"torch_exact": True}, ValueError, "torch_exact"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_and_writes_nothing(case):
    _, make, kw, exc, frag = case
    params, grads, m, v = make()
    kw = dict(kw)
    if "masters" in kw:
        n = params[0].size
        kw["masters"] = [{"u16": np.zeros(n, np.uint16), "f32": np.ones(n, F32), "f64": np.ones(n)}[kw["masters"]]]
    before = [a.copy() for a in params + grads + m + v + (kw.get("masters") or [])]
    if params[0].dtype in (U16, np.dtype("V2")):
        params = [params[0].view(U16).view(params[0].dtype)]
    with pytest.raises(exc) as info:
        _adam_call(params, grads, m, v, **kw)
    assert frag in str(info.value)
    after = params + grads + m + v + (kw.get("masters") or [])
    for a, b in zip(after, before):
        assert a.tobytes() == b.tobytes()


def test_mixed_dtypes_inside_a_role_named():
    params = [np.ones(4, BF16), np.ones(4, BF16)]
    grads = [np.ones(4, BF16), np.ones(4, np.float32)]
    m = [np.zeros(4, F32)] * 1 + [np.zeros(4, F32)]
    v = [np.zeros(4, F32), np.zeros(4, F32)]
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        _adam_call(params, grads, m, v)


def test_plain_calls_keep_their_errors():
    """float32/float64 calls are unchanged: a float64 grad with float32 params keeps its message."""
    params, grads, m, v = _arrays(F32, np.float64, F32)
    with pytest.raises(TypeError, match="must match exactly"):
        _adam_call(params, grads, m, v)
    params, grads, m, v = _arrays(BF16, BF16, F32)
    with pytest.raises(TypeError, match="float32 and float64"):
        _core.check([("params", params, True), ("grads", grads, False)])


# ---------------------------------------------------------------------------------------------
# torch tensors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_torch_tensors_equal_numpy(kind):
    torch = pytest.importorskip("torch")
    import fusedopt.torch  # noqa: F401  (registers torch's types)

    _torch_lowp_run(torch, kind)  # (fusedopt.torch registers torch.bfloat16 and torch.float16)
    _core._register_torch(torch.Tensor, torch.float32, torch.float64, torch.strided)
    try:  # without that registration low-precision tensors are refused
        p = torch.ones(4, dtype=getattr(torch, kind))
        with pytest.raises(TypeError, match=r"params\[0\] has dtype"):
            _core.sgd([p], [p.float()], None, 0.1, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 1)
    finally:  # back to what fusedopt.torch registered
        _core._register_torch(torch.Tensor, torch.float32, torch.float64, torch.strided, torch.bfloat16, torch.float16)


def _torch_lowp_run(torch: Any, kind: str) -> None:
    tdt = getattr(torch, kind)
    lay = (kind, "param", "float32", "master")
    n = 1037
    rng = np.random.default_rng(9)
    x = rng.standard_normal(n).astype(np.float32)
    p_np = x.astype(DT[kind])
    p_t = torch.from_numpy(p_np.view(np.int16).copy()).view(tdt)
    m_np, m_t = p_np.astype(np.float32), torch.from_numpy(p_np.astype(np.float32))
    st_np = [np.zeros(n, F32) for _ in range(3)]
    st_t = [torch.zeros(n) for _ in range(3)]
    for t in range(1, 6):
        g = rng.standard_normal(n).astype(np.float32).astype(DT[kind])
        g_t = torch.from_numpy(g.view(np.int16).copy()).view(tdt)
        fn, scal, flags, _ = _adam(t)
        fn([p_np], [g], *[[s] for s in st_np], *scal, 1.0, 1.0, INF, *flags, 2, None, None, [m_np], False, 0, t)
        fn([p_t], [g_t], *[[s] for s in st_t], *scal, 1.0, 1.0, INF, *flags, 2, None, None, [m_t], False, 0, t)
        assert np.array_equal(p_t.view(torch.int16).numpy().view(np.uint16), p_np.view(np.uint16)), lay
        assert np.array_equal(m_t.numpy().view(np.uint32), m_np.view(np.uint32))
