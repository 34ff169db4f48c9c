"""Train the digits MLP with DDP + fusedopt.distributed.ZeroOptimizer (ZeRO-1) on CPU ranks.

Each rank trains on its own half (third, ...) of every batch. DDP all-reduces (averages) the
gradients during backward; the optimizer then only shards the state (``reduce_grads=False``):
each rank keeps and updates 1/world of AdamW's moments and the updated parameter ranges are
all-gathered. With ``--no-ddp`` the model is a plain module and the optimizer reduce-scatters the
gradients itself (the other mode). Global-norm clipping is on (``max_grad_norm``).

At the end rank 0 checks that the replicas agree bitwise, consolidates the state (a
``fusedopt.torch.AdamW`` state dict), and reports the optimizer state held per rank.

    torchrun --nproc_per_node 2 examples/train_digits_zero.py
    torchrun --nproc_per_node 2 examples/train_digits_zero.py --no-ddp --epochs 5

The digits data ship with scikit-learn (1797 8x8 images, no download).
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch
import torch.distributed as dist

import fusedopt.torch as ft
from fusedopt.distributed import ZeroOptimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--no-ddp", action="store_true", help="no DDP: the optimizer reduce-scatters the gradients")
    args = ap.parse_args()

    # a dead or stuck peer makes the others raise after 60 s instead of waiting forever
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()

    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.from_numpy((d.data / 16.0).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    n_test = len(y) // 5
    Xte, yte, Xtr, ytr = X[perm[:n_test]], y[perm[:n_test]], X[perm[n_test:]], y[perm[n_test:]]

    torch.manual_seed(0)  # the same initial weights on every rank
    model: torch.nn.Module = torch.nn.Sequential(
        torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, args.hidden),
        torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10),
    )  # fmt: skip
    net = model if args.no_ddp else torch.nn.parallel.DistributedDataParallel(model)
    opt = ZeroOptimizer(model.parameters(), ft.AdamW, lr=args.lr, weight_decay=1e-2, max_grad_norm=1.0,
                        reduce_grads=args.no_ddp)  # fmt: skip
    if rank == 0:
        mode = "optimizer reduce-scatters the gradients" if args.no_ddp else "DDP all-reduces the gradients"
        print(f"{world} ranks, {opt.threads} thread(s) per rank for the step; {mode}")

    rng = np.random.default_rng(1)  # the same batch order on every rank
    per_rank = args.batch // world
    step_s = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(ytr))
        losses = []
        for s in range(0, len(order) - args.batch + 1, args.batch):
            idx = torch.from_numpy(order[s + rank * per_rank : s + (rank + 1) * per_rank])
            loss = torch.nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            t0 = time.perf_counter()
            opt.step()
            step_s.append(time.perf_counter() - t0)
            losses.append(loss.item())
        with torch.no_grad():
            acc = (model(Xte).argmax(1) == yte).float().mean().item()
        mean_loss = torch.tensor(float(np.mean(losses)))
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"epoch {epoch + 1:2d}  loss {mean_loss.item() / world:.4f}  test accuracy {acc:.3f}  "
                  f"grad norm {opt.last_grad_norm:.3f}")  # fmt: skip

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(replicas, flat)
    opt.consolidate_state_dict(to=0)
    state = [torch.tensor(opt.state_bytes(), dtype=torch.int64) for _ in range(world)]
    dist.all_gather(state, torch.tensor(opt.state_bytes(), dtype=torch.int64))
    if rank == 0:
        n = sum(p.numel() for p in model.parameters())
        sd = opt.state_dict()
        print(f"replicas bitwise equal: {all(torch.equal(r, flat) for r in replicas)}")
        print(f"optimizer state per rank: {[int(s) / 1e6 for s in state]} MB "
              f"(a single process: {2 * n * 4 / 1e6:.2f} MB); step {np.median(step_s) * 1e3:.2f} ms median")  # fmt: skip
        print(f"consolidated state dict: {len(sd['state'])} parameters, keys {sorted(sd['state'][0])}")
        ref = ft.AdamW([torch.zeros_like(p) for p in model.parameters()])
        ref.load_state_dict(sd)  # an ordinary fusedopt.torch.AdamW state dict
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
