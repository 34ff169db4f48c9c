"""Whole-model optimizer step: fusedopt.torch vs torch.optim (fused / foreach / for-loop) on CPU.

Parameter lists with the shapes of three models (random values and gradients; only the shapes
matter for the optimizer step):

* ``digits-mlp``: the MLP of ``examples/train_digits.py`` (64-128-128-10): 6 tensors, 26 122 elements;
* ``resnet18``: torchvision's ResNet-18 (ImageNet head): 62 tensors, 11 689 512 elements;
* ``transformer``: a small GPT-style decoder (d_model 64, 12 layers, vocab 8192, context 512, separate
  q/k/v projections, tied output embedding): 196 tensors, 1 156 992 elements.

By default fusedopt.torch is compared with torch's fused CPU kernel (``fused=True``; for RMSprop,
which has none, with foreach and the for-loop); ``--all`` adds foreach and the for-loop. For Adam
and AdamW, ``DeepSpeedCPUAdam`` (DeepSpeed's CPU Adam, ``adamw_mode=True``, same hyperparameters)
joins when DeepSpeed is importable (``pip install deepspeed ninja py-cpuinfo``, run with
``DS_ACCELERATOR=cpu``; its op compiles on first use, timed apart and printed; ``--no-deepspeed``
leaves it out); otherwise the script says why it is skipped. Each
measurement alternates the implementations step by step (so a busy machine slows all of them
alike) and reports the median and the minimum time of ``optimizer.step()``.

    python examples/bench_torch_models.py                       # Adam, all three models
    python examples/bench_torch_models.py --optimizer SGD --models resnet18 --repeats 50
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import fusedopt
import fusedopt.torch as ft
from fusedopt.bench import MODEL_SHAPES, Shape, ds_adam

# The parameter-shape lists live in fusedopt.bench (also used by `python -m fusedopt.bench --models`).
MODELS: Dict[str, Callable[[], List[Shape]]] = MODEL_SHAPES


def make_params(shapes: List[Shape], seed: int = 0) -> List[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    return params


def implementations(name: str, all_torch: bool,
                    deepspeed: bool = False) -> Dict[str, Callable[[List[torch.nn.Parameter]], torch.optim.Optimizer]]:  # fmt: skip
    kw = {"SGD": {"lr": 1e-2, "momentum": 0.9}, "RMSprop": {"lr": 1e-3}, "AdamW": {"lr": 1e-3, "weight_decay": 1e-2}}.get(
        name, {"lr": 1e-3}
    )
    impls: Dict[str, Callable] = {"fusedopt.torch": lambda ps: getattr(ft, name)(ps, **kw)}
    if deepspeed and name in ("Adam", "AdamW"):
        cls = ds_adam.adam_class()  # compiles DeepSpeed's op on first use: before anything is timed
        if cls is not None:
            ds_kw = {"lr": kw["lr"], "weight_decay": kw.get("weight_decay", 0.0), "bias_correction": True,
                     "adamw_mode": name == "AdamW"}  # fmt: skip
            impls["DeepSpeedCPUAdam"] = lambda ps: cls(ps, **ds_kw)
    if name in ("SGD", "Adam", "AdamW", "Adagrad"):
        impls["torch fused"] = lambda ps: getattr(torch.optim, name)(ps, fused=True, **kw)
    if all_torch or "torch fused" not in impls:
        impls["torch foreach"] = lambda ps: getattr(torch.optim, name)(ps, foreach=True, **kw)
        impls["torch for-loop"] = lambda ps: getattr(torch.optim, name)(ps, foreach=False, **kw)
    return impls


def bench(shapes: List[Shape], optimizer: str, repeats: int, all_torch: bool = False,
          warmup: int = 3, deepspeed: bool = False) -> Dict[str, Tuple[float, float]]:  # fmt: skip
    """{implementation: (median seconds, min seconds)} of one optimizer.step(), implementations interleaved."""
    impls = implementations(optimizer, all_torch, deepspeed)
    opts = {k: make(make_params(shapes)) for k, make in impls.items()}
    times: Dict[str, List[float]] = {k: [] for k in opts}
    for r in range(warmup + repeats):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", default="Adam", choices=["SGD", "RMSprop", "Adam", "AdamW", "Adagrad"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per implementation (default by size)")
    ap.add_argument("--threads", type=int, default=None, help="threads for both torch and fusedopt")
    ap.add_argument("--all", action="store_true",
                    help="also time torch's foreach and for-loop implementations (slow on big models)")  # fmt: skip
    ap.add_argument("--no-deepspeed", action="store_true", help="leave DeepSpeedCPUAdam out even when importable")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        fusedopt.set_num_threads(args.threads)
    cfg = fusedopt.show_config(print_=False)
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads; fusedopt {fusedopt.__version__}: "
          f"{cfg['active_isa']}, {fusedopt.get_num_threads()} threads; optimizer {args.optimizer}")  # fmt: skip
    deepspeed = not args.no_deepspeed and args.optimizer in ("Adam", "AdamW")
    if deepspeed:
        ds_adam.load()
        st = ds_adam.status()
        if "reason" in st:
            print(f"DeepSpeedCPUAdam: skipped: {st['reason']}")
        else:
            print(f"DeepSpeed {st['version']}: cpu_adam op built/loaded in {st['op_load_s']:.1f} s (not in any timing)")
    for model in args.models:
        shapes = MODELS[model]()
        n = sum(int(np.prod(s)) for s in shapes)
        repeats = args.repeats or (400 if n < 1e5 else 100 if n < 5e6 else 30)
        res = bench(shapes, args.optimizer, repeats, args.all, deepspeed=deepspeed)
        print(f"\n{model}: {len(shapes)} tensors, {n:,} elements ({repeats} steps each)")
        base = res["fusedopt.torch"][0]
        for k, (med, mn) in res.items():
            print(f"  {k:15s} median {1e3 * med:9.3f} ms   min {1e3 * mn:9.3f} ms   "
                  f"({med / base:4.2f}x fusedopt.torch's median)")  # fmt: skip


if __name__ == "__main__":
    main()
