"""bfloat16 training done right: the same AdamW run in float64, float32, torch's in-place bf16 and
fusedopt's three bf16 options (an fp32 master, the "split" master, stochastic rounding).

The problem (issue 13's measurement): linear regression ``Y = X W*`` with a 256x256 weight matrix,
trained from ``W0`` (entries of magnitude ~1, as trained weights are) by full-batch AdamW (lr 1e-3,
200 steps; forward and backward in the parameters' dtype, as a bf16 model computes them). For
every run it reports, against the float64 run of the same steps:

* the final loss as a multiple of the float64 loss;
* the error ``|W - W64| / |W64 - W0|``: how wrong the weights are, relative to how far they moved;
* the share of the weights that never moved from ``W0`` (their bf16 bits unchanged).

A bf16 weight near 1 has an ulp of 2^-7, so an AdamW update of ~1e-3 is below half an ulp: rounded
to nearest in place (torch.optim, DeepSpeed's CPU Adam, fusedopt's default — the same semantics
as torch) most weights never move. An fp32 master (``master_weights="fp32"``, 4 more bytes per
weight) or the split master (``"split"``, 2 more bytes: the master's low half, lossless) keeps the
update; stochastic rounding (``stochastic_rounding=True``, no extra memory) keeps it on average.

    python examples/bf16_training.py            # ~20 s; writes docs/images/bf16_training.png
    python examples/bf16_training.py --steps 400 --lr 3e-4 --out /tmp/bf16.png
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List, Tuple

import torch

import fusedopt.torch as ft

Run = Tuple[torch.dtype, Callable[[List[torch.Tensor], float], torch.optim.Optimizer]]

#: run name -> (parameter/gradient dtype, optimizer factory)
RUNS: Dict[str, Run] = {
    "float32 (torch.optim.AdamW)": (torch.float32, lambda ps, lr: torch.optim.AdamW(ps, lr=lr, fused=True)),
    "bf16 in place (torch.optim.AdamW fused)": (torch.bfloat16, lambda ps, lr: torch.optim.AdamW(ps, lr=lr, fused=True)),
    "bf16 in place (fusedopt.torch.AdamW default)": (torch.bfloat16, lambda ps, lr: ft.AdamW(ps, lr=lr)),
    'bf16 master_weights="fp32"': (torch.bfloat16, lambda ps, lr: ft.AdamW(ps, lr=lr, master_weights="fp32")),
    'bf16 master_weights="split"': (torch.bfloat16, lambda ps, lr: ft.AdamW(ps, lr=lr, master_weights="split")),
    "bf16 stochastic_rounding=True": (torch.bfloat16, lambda ps, lr: ft.AdamW(ps, lr=lr, stochastic_rounding=True, seed=0)),
}  # fmt: skip


def problem(n: int, d: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X (n x d), Y = X W* and the start W0 (d x d), in float64. W0 is representable in bf16 so that
    every run starts from the same weights."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(d, d, generator=g, dtype=torch.float64).to(torch.bfloat16).to(torch.float64)
    w_true = w0 + 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64)
    return x, x @ w_true, w0


def train(dtype: torch.dtype, make: Callable[[List[torch.Tensor], float], torch.optim.Optimizer], x: torch.Tensor,
          y: torch.Tensor, w0: torch.Tensor, steps: int, lr: float) -> Tuple[torch.Tensor, List[float], float]:  # fmt: skip
    """Full-batch training; returns the final weights (float64), the float64 loss after every step
    and the time spent in optimizer.step()."""
    w = torch.nn.Parameter(w0.to(dtype).clone())
    opt = make([w], lr)
    xd, yd = x.to(dtype), y.to(dtype)
    losses: List[float] = []
    t_step = 0.0
    for _ in range(steps):
        opt.zero_grad()
        loss = ((xd @ w - yd) ** 2).mean()
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        t_step += time.perf_counter() - t0
        with torch.no_grad():
            losses.append(float(((x @ w.to(torch.float64) - y) ** 2).mean()))
    return w.detach().to(torch.float64), losses, t_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "images", "bf16_training.png"))
    a = ap.parse_args()

    x, y, w0 = problem(a.rows, a.dim, a.seed)
    w64, loss64, _ = train(torch.float64, lambda ps, lr: torch.optim.AdamW(ps, lr=lr), x, y, w0, a.steps, a.lr)
    moved64 = float((w64 - w0).norm())
    curves: Dict[str, List[float]] = {"float64 (torch.optim.AdamW)": loss64}
    print(f"{a.dim}x{a.dim} linear regression, {a.rows} rows, AdamW lr {a.lr}, {a.steps} full-batch steps")
    print(f"float64 run: final loss {loss64[-1]:.4g}, |W64 - W0| = {moved64:.4g}\n")
    print(f"{'run':46s} {'loss / float64':>14s} {'error':>8s} {'never moved':>12s}")
    for name, (dtype, make) in RUNS.items():
        w, losses, _ = train(dtype, make, x, y, w0, a.steps, a.lr)
        curves[name] = losses
        err = float((w - w64).norm()) / moved64
        unmoved = float((w.to(dtype) == w0.to(dtype)).double().mean())
        print(f"{name:46s} {losses[-1] / loss64[-1]:13.3f}x {err:8.1%} {unmoved:12.1%}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib not installed: no plot; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=name, linestyle="--" if "float64" in name else "-")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (computed in float64)")
    ax.set_title(f"AdamW on a {a.dim}x{a.dim} linear regression: bf16 parameters and gradients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
