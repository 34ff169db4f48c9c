"""Low-precision Adam layouts (issue 13) against our float32 step and each layout's byte ceiling, same run.

Usage: python benchmarks/lowp_layouts.py [--threads 2] [--sizes 16,24] [--reps 15] [--isa avx2]

For every layout: best-of-reps time of one ``_core.adam`` step (AdamW, no amsgrad), its speed as a
ratio to the float32 step (fp32 time / layout time; > 1 is faster), and the ratio of the layout's
byte ceiling to its time. The ceiling is ``_core._traffic_probe`` on float32 arrays sized so that it
moves the layout's bytes (LAYOUTS below), interleaved with the steps in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import ml_dtypes
import numpy as np

from fusedopt import _core, _scalars

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)

#: name -> (param dtype, grad dtype, state dtype, write: rne|sr|master|split, probe unit u, probe W)
#: The probe moves u * (2 W + 1) bytes per element: W arrays read and written and one array read,
#: each of u bytes per element (float32 arrays of n * u / 4 elements); u and W are chosen so that
#: this equals the layout's bytes per element (the fp32 master's parameter, written only, is
#: counted as read). BYTES: the layout's own bytes per element; the probe time is scaled by
#: BYTES / probe bytes where they differ (split).
LAYOUTS: Dict[str, Tuple[np.dtype, np.dtype, np.dtype, str, int, int]] = {
    "fp32": (F32, F32, F32, "rne", 4, 3),  # 28 B
    "bf16-all RNE": (BF16, BF16, BF16, "rne", 2, 3),  # 14 B
    "bf16-all SR": (BF16, BF16, BF16, "sr", 2, 3),  # 14 B
    "bf16 p+g, fp32 master+states": (BF16, BF16, F32, "master", 4, 3),  # 28 B
    "bf16 p+g, split, fp32 states": (BF16, BF16, F32, "split", 4, 3),  # 26 B (probe 28 B, scaled)
    "bf16 p, fp32 g+states RNE": (BF16, F32, F32, "rne", 8, 1),  # 24 B
    "fp16-all RNE": (F16, F16, F16, "rne", 2, 3),  # 14 B
    "fp32 p+g, bf16 states": (F32, F32, BF16, "rne", 4, 2),  # 20 B
}
BYTES = {"bf16 p+g, split, fp32 states": 26}


def _layout_step(name: str, n: int, threads: int) -> Callable[[], None]:
    p_dt, g_dt, s_dt, write, _, _ = LAYOUTS[name]
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32).astype(p_dt)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32).astype(g_dt)
    m, v = np.zeros(n, s_dt), np.zeros(n, s_dt)
    masters: Optional[List[np.ndarray]] = None
    if write == "master":
        masters = [p.astype(np.float32)]
    elif write == "split":
        masters = [np.zeros(n, np.uint16)]
    s = tuple(_scalars.adam_scalars(step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                    decoupled_weight_decay=True))  # fmt: skip
    sr = write == "sr"

    def step() -> None:
        _core.adam([p], [g], [m], [v], None, *s, 1.0, 1.0, math.inf, False, False, threads, None, None,
                   masters, sr, 1234, 3)  # fmt: skip

    return step


def _probe(name: str, n: int, threads: int) -> Callable[[], None]:
    u, w = LAYOUTS[name][4], LAYOUTS[name][5]
    written = [np.zeros(n * u // 4, np.float32) for _ in range(w)]
    read = np.zeros(n * u // 4, np.float32)
    w_lists = [[a] for a in written]

    def step() -> None:
        _core._traffic_probe(w_lists, [read], 0.0, threads)

    return step


def _best(fns: List[Callable[[], None]], reps: int) -> List[float]:
    best = [math.inf] * len(fns)
    for f in fns:
        f()  # warm
    for _ in range(reps):
        for k, f in enumerate(fns):  # interleaved: every contender sees the same machine state
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="16,24")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--isa", default=None)
    ap.add_argument("--layouts", default=None, help="comma-separated subset (default: all)")
    a = ap.parse_args()
    if a.isa:
        _core._force_isa(a.isa)
    names = list(LAYOUTS) if a.layouts is None else ["fp32"] + [x for x in a.layouts.split(",") if x != "fp32"]
    print(f"isa {_core.active_isa()}, threads {a.threads}, best of {a.reps}")
    for e in (int(x) for x in a.sizes.split(",")):
        n = 1 << e
        fns: List[Callable[[], None]] = []
        for name in names:
            fns += [_layout_step(name, n, a.threads), _probe(name, n, a.threads)]
        t = _best(fns, a.reps if e < 22 else max(3, a.reps // 3))
        fp32 = t[0]
        print(f"\n2^{e}: {'layout':32s} {'B/el':>4s} {'time':>10s} {'vs fp32':>8s} {'ceiling':>10s} {'of ceil':>8s}")
        for k, name in enumerate(names):
            step_t, probe_t = t[2 * k], t[2 * k + 1]
            probe_b = LAYOUTS[name][4] * (2 * LAYOUTS[name][5] + 1)
            b = BYTES.get(name, probe_b)
            probe_t *= b / probe_b
            print(f"      {name:32s} {b:4d} {step_t * 1e6:8.0f}us {fp32 / step_t:7.2f}x {probe_t * 1e6:8.0f}us "
                  f"{probe_t / step_t:7.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
