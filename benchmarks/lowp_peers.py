"""Issue 13's benchmark targets: our low-precision Adam layouts against our float32 step, their byte
ceilings, DeepSpeed's CPU Adam and torchao's bf16 AdamW, all measured side by side in one run.

Usage::

    DS_ACCELERATOR=cpu python benchmarks/lowp_peers.py [--threads 2] [--sizes 16,24,26] [--reps 5]
        [--reps-small 30] [--no-deepspeed] [--no-torchao] [--isa avx2]

Contenders (AdamW, lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01, bias correction at step 3):

* ours: raw ``_core.adam`` calls (the kernels, as in ``lowp_layouts.py``) with ``threads=--threads``:
  ``fp32`` (28 B/element), ``bf16-all SR`` (bf16 params, grads and states, stochastic rounding of
  every bf16 store, 14 B), ``bf16-all RNE`` (the same rounded to nearest; no target, shown because
  DeepSpeed rounds to nearest), ``bf16 p+g, fp32 master`` (fp32 master weights and states, 28 B),
  ``bf16 p+g, split`` (the fp32 master as the bf16 param plus a uint16 trail, fp32 states, 26 B);
* ceilings: ``_core._traffic_probe`` moving the layout's bytes (the probes of ``lowp_layouts.py``:
  28 B for fp32 and the fp32 master, 14 B for all-bf16; the split layout's is the 28 B probe's
  time scaled by 26/28);
* DeepSpeed's CPU Adam (``--no-deepspeed`` to skip): its compiled ``cpu_adam`` op's
  ``adam_update`` (loaded by ``fusedopt.bench.ds_adam``, as ``python -m fusedopt.bench
  --deepspeed`` does; ``adamw_mode=True``, ``bias_correction=True``) on torch views of the same
  arrays as our matching layout: ``DS bf16-all`` (bf16 params, grads and states) and ``DS bf16 p+g,
  fp32 states`` (DeepSpeed keeps no master copy: 22 B). The op takes the grads in the params' dtype
  and has (param, state) kernels for (fp32, fp32), (bf16, bf16), (bf16, fp32), (fp16, fp16),
  (fp16, fp32); its bf16 stores round to nearest even. Its vector bf16 path needs AVX-512: on an
  AVX2 machine its bf16 kernels are its scalar loop (the header says which ISA the run has);
* torchao (``--no-torchao`` to skip): ``torchao.optim._AdamW(bf16_stochastic_round=True)`` on one
  bf16 parameter viewing the same arrays as ``bf16-all SR`` (its states: views of ours, bf16, as
  the optimizer would create them). Its step is ``torch.compile(fullgraph=True, dynamic=False)``:
  every size is compiled and warmed up before anything is timed (the compile time is printed).

DeepSpeed and torchao use torch's OpenMP threads (``torch.set_num_threads(--threads)``).

Before timing, every contender makes one step at the smallest size from the same state, compared with
a float64 AdamW reference: every output within ``u·|ref| + 1e-5·max|ref|`` (u = 2^-7 for bf16
outputs, 1e-6 for float32). A failing contender is printed as WRONG and not timed; exit status 1.

Timing: rounds; each round runs the contenders in a new seeded random order, each one untimed step
then one timed step (so that a contender never pays for waking an OpenMP team another one let
sleep). Cells: best and median µs over the rounds; ratios use the best times. Targets are judged
where the issue states them: ``vs our fp32`` ≥ 1.8x at 2^24 and above, ceilings and peer ratios
out of cache (2^22 and above), ≥ 0.9x our fp32 in cache (2^16 and below); other sizes print the
ratios without a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np

from fusedopt import _core, _scalars
from fusedopt.reference import split_decode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from lowp_layouts import _probe

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)

LR, BETA1, BETA2, EPS, WD, STEP = 1e-3, 0.9, 0.999, 1e-8, 0.01, 3
SEED, SR_SEED = 20261207, 1234
IN_CACHE_MAX, OUT_OF_CACHE_MIN, FP32_RATIO_MIN = 16, 22, 24

Step = Callable[[], None]


class Contender:
    """One timed callable: ``fn`` steps ``arrays`` (a group shared by the contenders of one layout)."""

    def __init__(self, name: str, nbytes: int, group: str, fn: Step, reset: Optional[Step] = None,
                 outputs: str = "pmv") -> None:  # fmt: skip
        self.name, self.nbytes, self.group, self.fn = name, nbytes, group, fn
        self.reset = reset or (lambda: None)
        self.outputs = outputs  # the arrays the check compares: p, m, v, M (fp32 master), T (split master)


def _bf16_bits(a: np.ndarray) -> Any:
    """A torch bfloat16 tensor viewing the ml_dtypes bfloat16 array ``a`` (no copy)."""
    import torch

    return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)


def _groups(n: int) -> Dict[str, Dict[str, np.ndarray]]:
    """The arrays of every layout at size n, from the same bf16-representable values."""
    rng = np.random.default_rng(SEED)
    k = min(n, 1 << 20)  # random block, repeated: setup of 2^26 stays cheap

    def vals(scale: float, positive: bool = False) -> np.ndarray:
        x = rng.standard_normal(k, dtype=np.float32) * np.float32(scale)
        x = np.abs(x) if positive else x
        return np.resize(x.astype(BF16), n)

    p0, g0, m0, v0 = vals(0.05), vals(1e-3), vals(1e-3), vals(1e-6, positive=True)
    groups: Dict[str, Dict[str, np.ndarray]] = {
        "fp32": {"p": p0.astype(F32), "g": g0.astype(F32), "m": m0.astype(F32), "v": v0.astype(F32)},
        "bf16": {"p": p0, "g": g0, "m": m0, "v": v0},
        "master": {"p": p0.copy(), "g": g0.copy(), "m": m0.astype(F32), "v": v0.astype(F32), "master": p0.astype(F32)},
        "split": {"p": p0.copy(), "g": g0.copy(), "m": m0.astype(F32), "v": v0.astype(F32),
                  "trail": np.zeros(n, np.uint16)},
    }  # fmt: skip
    return groups


def _ours(a: Dict[str, np.ndarray], threads: int, sr: bool, masters: Optional[str]) -> Step:
    s = tuple(_scalars.adam_scalars(step=STEP, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=WD,
                                    decoupled_weight_decay=True))  # fmt: skip
    p, g, m, v = [a["p"]], [a["g"]], [a["m"]], [a["v"]]
    ms = None if masters is None else [a[masters]]

    def step() -> None:
        _core.adam(p, g, m, v, None, *s, 1.0, 1.0, math.inf, False, False, threads, None, None, ms, sr, SR_SEED,
                   STEP)  # fmt: skip

    return step


def _ds(op: Any, a: Dict[str, np.ndarray], opt_id: int) -> Step:
    import torch

    def view(x: np.ndarray) -> Any:
        return _bf16_bits(x) if x.dtype == BF16 else torch.from_numpy(x)

    p, g, m, v = (view(a[k]) for k in "pgmv")
    op.create_adam(opt_id, LR, BETA1, BETA2, EPS, WD, True, False)
    update = op.adam_update

    def step() -> None:
        update(opt_id, STEP, LR, BETA1, BETA2, EPS, WD, True, p, g, m, v)

    return step


def _torchao(cls: Any, a: Dict[str, np.ndarray]) -> Tuple[Step, Step]:
    import torch

    p = torch.nn.Parameter(_bf16_bits(a["p"]), requires_grad=False)
    p.grad = _bf16_bits(a["g"])
    opt = cls([p], lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD, bf16_stochastic_round=True)
    opt.state[p] = {"step": torch.tensor(float(STEP - 1)), "exp_avg": _bf16_bits(a["m"]),
                    "exp_avg_sq": _bf16_bits(a["v"])}  # fmt: skip

    def reset() -> None:  # the optimizer counts its own steps: the next one is step STEP again
        opt.state[p]["step"].fill_(float(STEP - 1))

    return opt.step, reset


def _split_master(a: Dict[str, np.ndarray]) -> np.ndarray:
    return split_decode(a["p"].view(np.uint16), a["trail"])


def _reference(a: Dict[str, np.ndarray], group: str) -> Dict[str, np.ndarray]:
    """One float64 AdamW step from the arrays ``a`` (the param's value: the master where there is one)."""
    if group == "master":
        p = a["master"].astype(np.float64)
    elif group == "split":
        p = _split_master(a).astype(np.float64)
    else:
        p = a["p"].astype(np.float64)
    g, m, v = (a[k].astype(np.float64) for k in "gmv")
    bc1, bc2 = 1 - BETA1**STEP, 1 - BETA2**STEP
    m = BETA1 * m + (1 - BETA1) * g
    v = BETA2 * v + (1 - BETA2) * g * g
    p = p * (1 - LR * WD) - LR * (m / bc1) / (np.sqrt(v / bc2) + EPS)
    return {"p": p, "m": m, "v": v, "M": p, "T": p}


def _check(c: Contender, a: Dict[str, np.ndarray], snap: Dict[str, np.ndarray]) -> str:
    """'' when one step of c from ``snap`` matches the float64 reference, else what differs."""
    for k, x in snap.items():
        a[k][...] = x
    c.reset()
    c.fn()
    ref = _reference(snap, c.group)
    bad = []
    for k in c.outputs:
        r = ref[k]
        out = a["master"] if k == "M" else _split_master(a) if k == "T" else a[k]
        got = out.astype(np.float64)
        u = 2.0**-7 if out.dtype == BF16 else 1e-6
        err = np.abs(got - r) - (u * np.abs(r) + 1e-5 * np.max(np.abs(r)))
        if not np.all(err <= 0):
            i = int(np.argmax(err))
            bad.append(f"{k}[{i}]={got[i]:.6g} (ref {r[i]:.6g})")
    for k, x in snap.items():  # leave the group as it was for the next contender
        a[k][...] = x
    return ", ".join(bad)


def _time(cs: List[Contender], rounds: int, seed: int) -> List[List[float]]:
    samples: List[List[float]] = [[] for _ in cs]
    order = list(range(len(cs)))
    rnd = random.Random(seed)
    for _ in range(rounds):
        rnd.shuffle(order)
        for k in order:
            f = cs[k].fn
            f()  # untimed: the same contender's OpenMP team is awake for the timed step
            t0 = time.perf_counter()
            f()
            samples[k].append(time.perf_counter() - t0)
    return samples


def _load_ds(enabled: bool) -> Tuple[Any, str]:
    if not enabled:
        return None, "skipped: --no-deepspeed"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from fusedopt.bench import ds_adam

    op = ds_adam.load()
    st = ds_adam.status()
    if op is None:
        return None, f"skipped: {st.get('reason', 'not available')}"
    return op, f"DeepSpeed {st.get('version', '?')}, cpu_adam op loaded in {st.get('op_load_s', 0.0):.1f} s"


def _load_torchao(enabled: bool) -> Tuple[Any, str]:
    if not enabled:
        return None, "skipped: --no-torchao"
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ao = importlib.import_module("torchao")
            cls = importlib.import_module("torchao.optim")._AdamW
    except Exception as exc:  # an optional peer that does not import is skipped, with the reason
        return None, f"skipped: {type(exc).__name__}: {exc}"
    return cls, f"torchao {getattr(ao, '__version__', '?')}, torchao.optim._AdamW(bf16_stochastic_round=True)"


def _verdicts(e: int, best: Dict[str, float]) -> List[Tuple[str, float, float]]:
    """(target, measured, minimum) of the issue's targets that apply at size 2^e (ratios > 1: ours faster)."""
    out: List[Tuple[str, float, float]] = []

    def add(label: str, num: str, den: str, minimum: float) -> None:
        if num in best and den in best:
            out.append((label, best[num] / best[den], minimum))

    sr, master, split = "ours bf16-all SR", "ours bf16 p+g, fp32 master", "ours bf16 p+g, split"
    if e >= FP32_RATIO_MIN:
        add("bf16-all SR >= 1.8x our fp32", "ours fp32", sr, 1.8)
    if e >= OUT_OF_CACHE_MIN:
        add("bf16-all SR >= 1.4x DS bf16-all", "DS bf16-all", sr, 1.4)
        add("bf16-all SR >= 90% of its 14 B ceiling", "ceiling 14 B", sr, 0.90)
        add("fp32 master >= 95% of its 28 B ceiling", "ceiling 28 B", master, 0.95)
        add("fp32 master >= 1.0x DS bf16 p+g, fp32 states", "DS bf16 p+g, fp32 states", master, 1.0)
        add("split >= 95% of its 26 B ceiling", "ceiling 26 B", split, 0.95)
        add("bf16-all SR >= 5x torchao bf16 SR", "torchao bf16-all SR", sr, 5.0)
    if e <= IN_CACHE_MAX:
        for name in (sr, master, split):
            add(f"{name[5:]} >= 0.9x our fp32 (in cache)", "ours fp32", name, 0.9)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="16,24,26", help="exponents of 2 (default 16,24,26)")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds at sizes >= 2^20 (default 5)")
    ap.add_argument("--reps-small", type=int, default=30, help="timed rounds below 2^20 (default 30)")
    ap.add_argument("--no-deepspeed", action="store_true")
    ap.add_argument("--no-torchao", action="store_true")
    ap.add_argument("--isa", default=None, help="force our kernels' ISA (_core._force_isa)")
    args = ap.parse_args()
    exps = sorted({int(x) for x in args.sizes.split(",")})
    if args.isa:
        _core._force_isa(args.isa)

    import torch

    torch.set_num_threads(args.threads)
    ds_op, ds_msg = _load_ds(not args.no_deepspeed)
    ao_cls, ao_msg = _load_torchao(not args.no_torchao)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"# {platform.processor() or platform.machine()}, our isa {_core.active_isa()}, AVX-512F "
          f"{'yes' if ' avx512f' in flags else 'no'}, threads {args.threads}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, torch {torch.__version__}, "
          f"numpy {np.__version__}")  # fmt: skip
    print(f"# DeepSpeed CPU Adam: {ds_msg}")
    print(f"# torchao: {ao_msg}")
    print(f"# AdamW lr {LR} betas {BETA1}/{BETA2} eps {EPS} wd {WD}, step {STEP}; best of {args.reps} rounds "
          f"(below 2^20: {args.reps_small}); ratios from best times, > 1: ours faster")  # fmt: skip

    wrong = False
    results: Dict[int, Dict[str, Tuple[float, float, int]]] = {}
    for idx, e in enumerate(exps):
        n = 1 << e
        g = _groups(n)
        th = args.threads
        cs = [
            Contender("ours fp32", 28, "fp32", _ours(g["fp32"], th, False, None)),
            Contender("ours bf16-all SR", 14, "bf16", _ours(g["bf16"], th, True, None)),
            Contender("ours bf16-all RNE", 14, "bf16", _ours(g["bf16"], th, False, None)),
            Contender(
                "ours bf16 p+g, fp32 master", 28, "master", _ours(g["master"], th, False, "master"), outputs="pmvM"
            ),
            Contender("ours bf16 p+g, split", 26, "split", _ours(g["split"], th, False, "trail"), outputs="pmvT"),
        ]
        if ds_op is not None:
            cs.append(Contender("DS bf16-all", 14, "bf16", _ds(ds_op, g["bf16"], 7000 + 2 * idx)))
            cs.append(Contender("DS bf16 p+g, fp32 states", 22, "master", _ds(ds_op, g["master"], 7001 + 2 * idx)))
        if ao_cls is not None:
            t0 = time.perf_counter()
            try:
                fn, reset = _torchao(ao_cls, g["bf16"])
                fn()  # compiles for this size
                fn()
                reset()
                cs.append(Contender("torchao bf16-all SR", 14, "bf16", fn, reset))
                print(f"# torchao at 2^{e}: compiled and warmed up in {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # torch.compile needs a working C++ toolchain
                print(f"# torchao at 2^{e}: skipped: {type(exc).__name__}: {str(exc)[:300]}")
        if idx == 0:
            checked = []
            for c in cs:
                snap = {k: x.copy() for k, x in g[c.group].items()}
                why = _check(c, g[c.group], snap)
                if why:
                    print(f"# WRONG at 2^{e}: {c.name}: {why} (not timed)")
                    wrong = True
                else:
                    checked.append(c)
            cs = checked
            print(f"# check at 2^{e} (one step vs float64 AdamW): {', '.join(c.name for c in cs)}: ok")
        cs.append(Contender("ceiling 28 B", 28, "", _probe("fp32", n, th)))
        cs.append(Contender("ceiling 14 B", 14, "", _probe("bf16-all SR", n, th)))
        samples = _time(cs, args.reps if e >= 20 else args.reps_small, SEED + e)
        res = {c.name: (min(s), float(np.median(s)), c.nbytes) for c, s in zip(cs, samples)}
        b28, m28, _ = res["ceiling 28 B"]
        res["ceiling 26 B"] = (b28 * 26 / 28, m28 * 26 / 28, 26)
        results[e] = res
        del g, cs, samples

        best = {k: v[0] for k, v in res.items()}
        fp32 = best["ours fp32"]
        ceil_of = {14: "ceiling 14 B", 28: "ceiling 28 B", 26: "ceiling 26 B"}
        print(f"\n2^{e} = {n} elements")
        print(f"  {'contender':28s} {'B/el':>4s} {'best us':>10s} {'median us':>10s} {'GB/s':>6s} "
              f"{'vs fp32':>8s} {'of ceil':>8s} {'vs peer':>8s}")  # fmt: skip
        peers = {"ours bf16-all SR": "DS bf16-all", "ours bf16-all RNE": "DS bf16-all",
                 "ours bf16 p+g, fp32 master": "DS bf16 p+g, fp32 states"}  # fmt: skip
        for name, (b, med, nb) in res.items():
            ceil = ceil_of.get(nb) if name.startswith("ours") else None
            of_ceil = f"{best[ceil] / b:7.0%}" if ceil else ""
            vs = f"{fp32 / b:7.2f}x" if not name.startswith("ceiling") else ""
            peer = peers.get(name)
            vs_peer = f"{best[peer] / b:7.2f}x" if peer in best else ""
            if name == "ours bf16-all SR" and "torchao bf16-all SR" in best:
                vs_peer += f" ({best['torchao bf16-all SR'] / b:.1f}x torchao)"
            print(f"  {name:28s} {nb:4d} {b * 1e6:10.0f} {med * 1e6:10.0f} {n * nb / b / 1e9:6.1f} {vs:>8s} "
                  f"{of_ceil:>8s} {vs_peer:>8s}")  # fmt: skip

    print("\nTargets (issue 13; ratio of best times, > 1: ours faster; % of ceiling = ceiling time / step time)")
    for e in exps:
        for label, got, minimum in _verdicts(e, {k: v[0] for k, v in results[e].items()}):
            shown = f"{got:.0%}" if minimum < 1.0 and "ceiling" in label else f"{got:.2f}x"
            print(f"  2^{e:<3d} {label:48s} {shown:>8s}  {'PASS' if got >= minimum else 'MISS'}")
    noisy = [f"2^{e} {k}" for e in exps for k, (b, med, _) in results[e].items() if med > 1.1 * b]
    if noisy:
        print(f"noisy (median > 1.1x best): {', '.join(noisy)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
