"""Train a small MLP on scikit-learn's bundled digits with torch autograd: torch.optim vs fusedopt.torch.

For each of Momentum, RMSprop and Adam the same model (same initial weights, same batch order) is
trained twice: once with the torch.optim optimizer and once with the fusedopt.torch drop-in. Per
epoch it prints the training loss, the test accuracy and the share of each training step's time that
went to ``optimizer.step()``; at the end it writes a PNG of the loss curves.

Momentum here is the exponential-moving-average form (Ng): ``v = beta*v + (1-beta)*g; p -= lr*v``.
torch has no such optimizer; for a constant learning rate it equals
``torch.optim.SGD(lr=lr*(1-beta), momentum=beta)``, which is what the torch run uses.

The digits data ship with scikit-learn (1797 8x8 images, no download).

    python examples/train_digits.py                      # ~15 s; writes docs/images/train_digits.png
    python examples/train_digits.py --epochs 30 --hidden 256 --out /tmp/digits.png
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import fusedopt
import fusedopt.torch as ft

#: optimizer name -> (torch.optim factory, fusedopt.torch factory); same hyperparameters
BETA = 0.9
OPTIMIZERS: Dict[str, Tuple[Callable, Callable]] = {
    "Momentum": (
        lambda ps, lr: torch.optim.SGD(ps, lr=lr * (1 - BETA), momentum=BETA),
        lambda ps, lr: ft.Momentum(ps, lr=lr, beta=BETA),
    ),
    "RMSprop": (
        lambda ps, lr: torch.optim.RMSprop(ps, lr=lr),
        lambda ps, lr: ft.RMSprop(ps, lr=lr),
    ),
    "Adam": (
        lambda ps, lr: torch.optim.Adam(ps, lr=lr, fused=True),
        lambda ps, lr: ft.Adam(ps, lr=lr),
    ),
}
SMOOTH = 15
TITLES = {"Momentum": f"Momentum (EMA, beta {BETA})\ntorch.optim: SGD(lr*(1-beta), momentum=beta)"}
DEFAULT_LR = {"Momentum": 0.5, "RMSprop": 1e-3, "Adam": 2e-3}


def load_data(seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.from_numpy((d.data / 16.0).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def make_model(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )  # fmt: skip


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, data, epochs: int, batch: int, seed: int,
          label: str) -> Tuple[List[float], List[float], float]:  # fmt: skip
    """Returns (per-step losses, per-epoch test accuracy, mean optimizer.step seconds)."""
    Xtr, ytr, Xte, yte = data
    rng = np.random.default_rng(seed)
    losses: List[float] = []
    accs: List[float] = []
    step_s: List[float] = []
    for epoch in range(epochs):
        t_total: List[float] = []
        t_opt: List[float] = []
        ep_losses = []
        perm = torch.from_numpy(rng.permutation(len(ytr)))
        for i in range(0, len(ytr), batch):
            idx = perm[i : i + batch]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            t_total.append(t2 - t0)
            t_opt.append(t2 - t1)
            ep_losses.append(loss.item())
        losses.extend(ep_losses)
        with torch.no_grad():
            acc = (model(Xte).argmax(1) == yte).float().mean().item()
        accs.append(acc)
        # medians: robust to the odd slow step on a busy machine
        opt_us, total_us = 1e6 * np.median(t_opt), 1e6 * np.median(t_total)
        step_s.extend(t_opt)
        print(f"  {label:15s} epoch {epoch + 1:3d}  loss {np.mean(ep_losses):.4f}  test acc {acc:6.2%}  "
              f"optimizer.step {opt_us / total_us:5.1%} of the step ({opt_us:.0f} of {total_us:.0f} us, median)")  # fmt: skip
    return losses, accs, float(np.median(step_s))


def plot(results: Dict[str, Dict[str, Tuple[List[float], List[float], float]]], steps_per_epoch: int,
         path: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        for impl, style in (("torch.optim", dict(color="tab:blue", lw=2.5, alpha=0.55)),
                            ("fusedopt.torch", dict(color="tab:orange", lw=1.0, ls="--"))):  # fmt: skip
            losses, accs, step = results[name][impl]
            x = np.arange(1, len(losses) + 1) / steps_per_epoch
            smooth = np.convolve(losses, np.ones(SMOOTH) / SMOOTH, mode="valid")
            ax.plot(x[SMOOTH - 1 :], smooth, label=f"{impl}  (acc {accs[-1]:.1%}, step {1e6 * step:.0f} µs)", **style)
        ax.set_title(TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"training loss ({SMOOTH}-step moving avg.)")
    fig.suptitle("MLP on scikit-learn digits: torch.optim vs fusedopt.torch (same init, same batches)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128, help="width of the two hidden layers")
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (1 is fastest for a model this small)")  # fmt: skip
    ap.add_argument("--out", default="docs/images/train_digits.png", help="PNG of the loss curves ('' to skip)")
    args = ap.parse_args()

    torch.set_num_threads(args.torch_threads)
    cfg = fusedopt.show_config(print_=False)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); fusedopt {fusedopt.__version__} "
          f"({cfg.get('active_isa', cfg.get('isa', '?'))}, {fusedopt.get_num_threads()} threads)")  # fmt: skip
    data = load_data(args.seed)
    model0 = make_model(args.hidden, args.seed)
    n_params = sum(p.numel() for p in model0.parameters())
    print(f"digits: {len(data[1])} train / {len(data[3])} test images; MLP 64-{args.hidden}-{args.hidden}-10, "
          f"{n_params} parameters in {len(list(model0.parameters()))} tensors; batch {args.batch_size}")  # fmt: skip

    results: Dict[str, Dict[str, Tuple[List[float], List[float], float]]] = {}
    for name in args.optimizers:
        make_torch, make_ours = OPTIMIZERS[name]
        lr = DEFAULT_LR[name]
        print(f"{name} (lr={lr})")
        results[name] = {}
        for impl, make in (("torch.optim", make_torch), ("fusedopt.torch", make_ours)):
            model = make_model(args.hidden, args.seed)
            results[name][impl] = train(model, make(model.parameters(), lr), data, args.epochs, args.batch_size,
                                        args.seed + 1, f"{impl}")  # fmt: skip
        (lt, at, st), (lf, af, sf) = results[name]["torch.optim"], results[name]["fusedopt.torch"]
        diff = max(abs(a - b) / abs(b) for a, b in zip(lf, lt))
        print(f"  -> median optimizer.step: torch.optim {1e6 * st:.0f} us, fusedopt.torch {1e6 * sf:.0f} us; "
              f"final test acc {at[-1]:.2%} / {af[-1]:.2%}; max relative loss difference {diff:.1e}")  # fmt: skip
    if args.out:
        steps_per_epoch = -(-len(data[1]) // args.batch_size)
        plot(results, steps_per_epoch, args.out)


if __name__ == "__main__":
    main()
