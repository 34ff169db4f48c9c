"""Where should a step with ``threads=None`` stop running serially? Measured three ways.

    python benchmarks/serial_threshold.py [--sizes 12:23] [--steps 30] [--threads 2] [--algorithm adam]

For each total size N = 2**k (float32 Adam; ``--algorithm sgd`` or ``lion`` for those), the same
step is timed forced serial (1 thread) and forced parallel (``--threads``), interleaved, in three
situations:

* ``hot``: steps back to back (the OpenMP team is awake);
* ``idle 50ms``: a 50 ms sleep before each step (libgomp's workers have gone to sleep);
* ``loop``: a real training loop — torch forward and backward of an MLP between steps (torch's own
  OpenMP threads busy, ours idle for the length of the backward), the ``fusedopt.torch`` step
  on the MLP's parameters (N elements in total), only the step timed.

Prints the median step time of each and the ratio serial / parallel (> 1: threads win). The
threshold in ``fusedopt/_threads.py`` (``SERIAL_BELOW``) is chosen from the ``loop`` and ``hot``
columns (see the table there); on a VM the ``idle`` column measures the hypervisor waking an idle
vCPU, which a training loop does not pay.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import numpy as np

import fusedopt
from fusedopt import _threads, functional


def _median_us(samples: List[float]) -> float:
    return statistics.median(samples) * 1e6


def _time(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _force(serial: bool) -> None:
    for k in _threads.SERIAL_BELOW:
        _threads.SERIAL_BELOW[k] = 1 << 62 if serial else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12:23", help="log2 sizes lo:hi (hi exclusive)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-loop", action="store_true", help="skip the torch training loop")
    ap.add_argument("--algorithm", default="adam", choices=("adam", "sgd", "lion"),
                    help="adam (Adam), sgd (SGD with momentum 0.9) or lion")
    args = ap.parse_args()
    lo, hi = map(int, args.sizes.split(":"))
    saved = dict(_threads.SERIAL_BELOW)
    fusedopt.set_num_threads(args.threads)
    try:
        torch = None
        if not args.no_loop:
            try:
                import torch  # type: ignore[no-redef]

                import fusedopt.torch as fot

                torch.set_num_threads(args.threads)
            except ImportError:
                torch = None
        print(f"{args.algorithm}, threads={args.threads}; median of {args.steps} steps, us; ratio = serial / parallel (>1: threads win)")
        print(f"{'N':>6} | {'hot 1t':>8} {'hot Nt':>8} {'ratio':>5} | {'idle 1t':>8} {'idle Nt':>8} {'ratio':>5} | "
              f"{'loop 1t':>8} {'loop Nt':>8} {'ratio':>5}")  # fmt: skip
        rng = np.random.default_rng(0)
        algo = args.algorithm
        for k in range(lo, hi):
            n = 1 << k
            p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
            m, v = np.zeros_like(p), np.zeros_like(p)

            def step(p: np.ndarray = p, g: np.ndarray = g, m: np.ndarray = m, v: np.ndarray = v) -> None:
                if algo == "adam":
                    functional.adam([p], [g], [m], [v], step=1, lr=1e-3)
                elif algo == "sgd":
                    functional.sgd([p], [g], [m], lr=1e-3, momentum=0.9)
                else:
                    functional.lion([p], [g], [m], lr=1e-4)

            row = {}
            for mode, pause in (("hot", 0.0), ("idle", 0.05)):
                s = {True: [], False: []}
                for i in range(args.steps):
                    for serial in (i % 2 == 0, i % 2 != 0):
                        _force(serial)
                        step()  # warm for this mode
                        if pause:
                            time.sleep(pause)
                        s[serial].append(_time(step))
                row[mode] = (_median_us(s[True]), _median_us(s[False]))
            if torch is not None:
                d = max(8, int(round((n / 2) ** 0.5)))  # two d x d layers ~ n elements
                runs = {}
                for serial in (True, False):  # each optimizer's plan keeps the rule it was made with
                    _force(serial)
                    model = torch.nn.Sequential(torch.nn.Linear(d, d, bias=False), torch.nn.Tanh(),
                                                torch.nn.Linear(d, d, bias=False))  # fmt: skip
                    cls = {"adam": fot.Adam, "sgd": fot.SGD, "lion": fot.Lion}[algo]
                    opt = cls(model.parameters(), lr=1e-4, **({"momentum": 0.9} if algo == "sgd" else {}))
                    runs[serial] = (model, opt)
                x = torch.randn(64, d)
                s = {True: [], False: []}
                for i in range(args.steps + 2):
                    for serial in (i % 2 == 0, i % 2 != 0):
                        _force(serial)
                        model, opt = runs[serial]
                        opt.zero_grad(set_to_none=True)
                        model(x).square().mean().backward()
                        dt = _time(opt.step)
                        if i >= 2:
                            s[serial].append(dt)
                row["loop"] = (_median_us(s[True]), _median_us(s[False]))
            cells = []
            for mode in ("hot", "idle", "loop"):
                if mode in row:
                    a, b = row[mode]
                    cells.append(f"{a:8.1f} {b:8.1f} {a / b:5.2f}")
                else:
                    cells.append(f"{'-':>8} {'-':>8} {'-':>5}")
            print(f"2^{k:<4} | " + " | ".join(cells), flush=True)
    finally:
        _threads.SERIAL_BELOW.update(saved)
        fusedopt.set_num_threads(None)


if __name__ == "__main__":
    main()
