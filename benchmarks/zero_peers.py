"""ZeRO-1 on CPU ranks: fusedopt.distributed.ZeroOptimizer against torch's ZeroRedundancyOptimizer.

Not a timed test. Forks ``--world`` ranks (gloo over loopback, FileStore rendezvous) and, for the
ResNet-18 and small-transformer parameter lists of :mod:`fusedopt.bench.models` (float32), times
AdamW steps of, in the same run:

* ``fusedopt ZeroOptimizer``: reduce-scatter of the gradients, the fused step on the rank's
  element range, all-gather of the updated ranges (gradient averaging included);
* ``fusedopt ZeroOptimizer, DDP mode`` (``reduce_grads=False``): the gradients are taken as
  already averaged; only the state is sharded;
* ``torch ZeroRedundancyOptimizer(torch.optim.AdamW, fused=True)``: whole-parameter partitions,
  the local fused AdamW, one broadcast per parameter. It does not average gradients (that is
  DDP's all-reduce), so it compares with the DDP-mode row; the row ``+ all-reduce`` first
  averages the gradients as DDP does by default (copy into one flat bucket, divide, all-reduce,
  copy back) to compare with the first row.

A step's time is the slowest rank's (barrier before each step; median over ``--steps``; the
contenders' steps interleaved, so that other load on the machine hits all of them alike). The
medians of the three columns are taken separately (they need not add up). The split: compute (packing, the optimizer's arithmetic) and communication (collectives). State memory
is the optimizer state a rank holds, against a single process's AdamW (2 float32 per parameter).
Each rank uses ``cores / world`` threads for both fusedopt and torch (torch.set_num_threads), as
torchrun's ``OMP_NUM_THREADS=1`` does on this 2-core machine.

    python benchmarks/zero_peers.py                    # 2 ranks, both models
    python benchmarks/zero_peers.py --steps 20 --models transformer
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing as mp
import os
import pickle
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

import fusedopt.torch as ft
from fusedopt.bench.models import resnet18_shapes, transformer_shapes
from fusedopt.distributed import ZeroOptimizer

MODELS = {"resnet18": resnet18_shapes, "transformer": transformer_shapes}


def _params(shapes: List[Tuple[int, ...]]) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _grads(ps: List[torch.Tensor], rank: int) -> None:
    g = torch.Generator().manual_seed(100 + rank)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2


def _timed(step: Callable[[], Tuple[float, float]]) -> List[float]:
    """[step seconds, compute seconds, communication seconds] of the slowest rank (barrier first)."""
    dist.barrier()
    t0 = time.perf_counter()
    compute, comm = step()
    total = time.perf_counter() - t0
    t = torch.tensor([total, compute, comm], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(x) for x in t.tolist()]


def _fusedopt_step(opt: ZeroOptimizer) -> Tuple[float, float]:
    opt.step()
    tm = opt.last_timings
    return tm["pack"] + tm["step"], tm["reduce_scatter"] + tm["all_gather"] + tm["norm_exchange"]


class _TorchZero:
    """torch's ZeroRedundancyOptimizer with its local step timed (compute); with ``allreduce``,
    the gradients are first averaged as DDP does by default (copied into one flat bucket,
    divided by the world size, all-reduced, copied back), the copies counted as compute."""

    def __init__(self, ps: List[torch.Tensor], allreduce: bool) -> None:
        self.zero = ZeroRedundancyOptimizer(ps, optimizer_class=torch.optim.AdamW, lr=1e-3, fused=True)
        self.inner = self.zero.optim.step
        self.zero.optim.step = self._timed_inner
        self.grads = [p.grad for p in ps if p.grad is not None]
        self.flat = torch.zeros(sum(g.numel() for g in self.grads)) if allreduce else None
        self.views: List[torch.Tensor] = []
        if self.flat is not None:
            pos = 0
            for g in self.grads:
                self.views.append(self.flat[pos : pos + g.numel()].view_as(g))
                pos += g.numel()
        self.compute = 0.0

    def _timed_inner(self, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        r = self.inner(*a, **k)
        self.compute = time.perf_counter() - t0
        return r

    def __call__(self) -> Tuple[float, float]:
        ar = copies = 0.0
        if self.flat is not None:
            t0 = time.perf_counter()
            torch._foreach_copy_(self.views, self.grads)
            self.flat.div_(dist.get_world_size())
            t1 = time.perf_counter()
            dist.all_reduce(self.flat)
            t2 = time.perf_counter()
            torch._foreach_copy_(self.grads, self.views)
            ar, copies = t2 - t1, (t1 - t0) + (time.perf_counter() - t2)
        t1 = time.perf_counter()
        self.zero.step()
        total = time.perf_counter() - t1
        return self.compute + copies, total - self.compute + ar

    def state_bytes(self) -> int:
        return sum(int(v.numel() * v.element_size()) for st in self.zero.optim.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor) and v.numel() > 1)  # fmt: skip


def _bench_model(name: str, rank: int, world: int, steps: int, warmup: int = 3) -> List[Dict[str, Any]]:
    """Every contender built, then their steps interleaved (one step of each in turn), so that a
    busy machine's noise falls on all of them alike; medians over ``steps``."""
    shapes = MODELS[name]()
    n = sum(int(torch.Size(s).numel()) for s in shapes)
    contenders: List[Tuple[str, Callable[[], Tuple[float, float]], Callable[[], int], int]] = []
    for label, reduce in (("fusedopt ZeroOptimizer", True), ("fusedopt ZeroOptimizer, DDP mode", False)):
        ps = _params(shapes)
        _grads(ps, rank)
        opt = ZeroOptimizer(ps, ft.AdamW, lr=1e-3, reduce_grads=reduce)
        contenders.append((label, functools.partial(_fusedopt_step, opt), opt.state_bytes, opt.threads))
    for label, allreduce in (("torch ZeroRedundancyOptimizer(AdamW, fused=True)", False),
                             ("torch ZeroRedundancyOptimizer + all-reduce of the gradients", True)):  # fmt: skip
        ps = _params(shapes)
        _grads(ps, rank)
        tz = _TorchZero(ps, allreduce)
        contenders.append((label, tz, tz.state_bytes, torch.get_num_threads()))
    rows: List[List[List[float]]] = [[] for _ in contenders]
    for i in range(warmup + steps):
        for k, (_, step, _, _) in enumerate(contenders):
            t = _timed(step)
            if i >= warmup:
                rows[k].append(t)
    out = []
    for (label, _, state, threads), rs in zip(contenders, rows):
        total, compute, comm = (statistics.median(r[j] for r in rs) for j in range(3))
        out.append(dict(model=name, n=n, contender=label, step=total, compute=compute, comm=comm,
                        state=state(), threads=threads))  # fmt: skip
    contenders.clear()
    gc.collect()
    return out


def _rank(rank: int, world: int, store: str, args: argparse.Namespace, result: str) -> None:
    threads = max(1, len(os.sched_getaffinity(0)) // world)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rows = []
    for name in args.models.split(","):
        rows += _bench_model(name, rank, world, args.steps)
    # the state each rank holds: gather it (the step times are already the slowest rank's)
    states = [None] * world
    dist.all_gather_object(states, [r["state"] for r in rows])
    if rank == 0:
        for k, r in enumerate(rows):
            r["state_per_rank"] = [s[k] for s in states]  # type: ignore[index]
        with open(result, "wb") as f:
            pickle.dump(rows, f)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="resnet18,transformer")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, result = os.path.join(tmp, "store"), os.path.join(tmp, "rows.pkl")
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_rank, args=(r, args.world, store, args, result)) for r in range(args.world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(1800)
        if any(p.exitcode != 0 for p in procs) or not os.path.exists(result):
            sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
        with open(result, "rb") as f:
            rows = pickle.load(f)
    print(f"{args.world} ranks (gloo, loopback), {rows[0]['threads']} thread(s) per rank, AdamW float32, "
          f"median of {args.steps} steps of the slowest rank; state = optimizer state held by each rank")  # fmt: skip
    print("| model | contender | step ms | compute ms | comm ms | state MB per rank | vs 1 process | step vs torch ZeRO |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        single = 2 * r["n"] * 4
        peer = next(x for x in rows if x["model"] == r["model"] and x["contender"].startswith("torch")
                    and ("all-reduce" in x["contender"]) == (r["contender"] == "fusedopt ZeroOptimizer"
                                                             or "all-reduce" in r["contender"]))  # fmt: skip
        st = max(r["state_per_rank"])
        print(f"| {r['model']} ({r['n'] / 1e6:.2f} M) | {r['contender']} | {r['step'] * 1e3:.1f} | "
              f"{r['compute'] * 1e3:.1f} | {r['comm'] * 1e3:.1f} | {st / 1e6:.1f} | {st / single:.2f}x | "
              f"{r['step'] / peer['step']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
