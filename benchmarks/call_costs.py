"""Per-call and per-tensor costs of a step, each against its peer measured in the same run.

    python benchmarks/call_costs.py [--rounds 7] [--no-deepspeed]

Rows (float32 Adam, 1 thread, best of ``--rounds`` rounds of many calls each, interleaved):

* ``_core.adam`` raw binding on one 16-element array (scalars precomputed): the floor of a call;
* ``functional.adam(p, g, m, v, step=t, lr=...)`` with keyword arguments: checks + scalars + call
  (the C++ fast path, cpp/bindings/functional.cpp), and the same call through the generated Python
  function it falls back to (``functional.adam.__wrapped__``);
* ``fusedopt.Adam.step([g])`` on one 16-element parameter (the planned path);
* ``fusedopt.torch.Adam.step()`` on one 16-element parameter, fresh ``.grad`` every step;
* ``fusedopt.torch.Adam.step()`` per tensor on the small transformer's 196 shapes, fresh ``.grad``
  tensors every step (``zero_grad(set_to_none=True)``), minus the same list stepped as NumPy arrays;
* DeepSpeed's raw ``adam_update`` on one 16-element tensor and ``DeepSpeedCPUAdam.step()`` on one
  16-element parameter, when DeepSpeed is importable (``DS_ACCELERATOR=cpu``; setup in README.md).

Absolute times on a shared machine mean little: read the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np

import fusedopt
from fusedopt import _core, _scalars, functional

fusedopt.set_num_threads(1)


def best_us(fn: Callable[[], Any], number: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=5000)
    ap.add_argument("--no-deepspeed", action="store_true")
    args = ap.parse_args()
    n, rounds = args.number, args.rounds
    rows: Dict[str, float] = {}

    p, g, m, v = (np.zeros(16, np.float32) for _ in range(4))
    g[:] = 1.0
    sc = _scalars.adam_scalars(step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                               decoupled_weight_decay=False)  # fmt: skip
    no = _scalars.NO_GRAD_TRANSFORM
    rows["_core.adam raw binding, 16 elements"] = best_us(
        lambda: _core.adam([p], [g], [m], [v], None, *sc, *no, False, False, 1), n, rounds
    )
    rows["functional.adam with keywords, 16 elements"] = best_us(
        lambda: functional.adam(p, g, m, v, step=3, lr=1e-3, beta1=0.9, weight_decay=0.0), n, rounds
    )
    py_adam = getattr(functional.adam, "__wrapped__", functional.adam)  # the generated Python function
    rows["  the same through its generated Python function"] = best_us(
        lambda: py_adam(p, g, m, v, step=3, lr=1e-3, beta1=0.9, weight_decay=0.0), n, rounds
    )
    opt = fusedopt.Adam([p], lr=1e-3)
    opt.step([g])
    rows["fusedopt.Adam.step, one 16-element parameter"] = best_us(lambda: opt.step([g]), n, rounds)

    try:
        import torch

        import fusedopt.torch as ft
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        torch.set_num_threads(1)
        w = torch.nn.Parameter(torch.zeros(16))
        topt = ft.Adam([w], lr=1e-3)
        grad = torch.ones(16)

        def torch_step() -> None:
            w.grad = grad.clone()  # a fresh tensor, as after zero_grad(set_to_none=True)
            topt.step()

        rows["fusedopt.torch.Adam.step, one 16-element parameter (incl. clone)"] = best_us(torch_step, n // 5, rounds)
        rows["  of which: the .grad clone"] = best_us(lambda: grad.clone(), n, rounds)

        from fusedopt.bench import MODEL_SHAPES

        shapes = [tuple(s) for s in MODEL_SHAPES["transformer"]()]
        params = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
        grads = [torch.randn(s) for s in shapes]
        topt2 = ft.Adam(params, lr=1e-3)
        fresh: List[Any] = [[gr.clone() for gr in grads] for _ in range(8)]

        def model_step() -> None:
            gs = fresh[int(time.perf_counter_ns()) % 8]
            for q, gr in zip(params, gs):
                q.grad = gr
            topt2.step()

        model_step()
        rng = np.random.default_rng(0)
        np_params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        np_grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        nopt = fusedopt.Adam(np_params, lr=1e-3)
        nopt.step(np_grads)
        t_torch = best_us(model_step, 20, rounds)
        t_np = best_us(lambda: nopt.step(np_grads), 20, rounds)
        rows[f"fusedopt.torch.Adam.step, transformer ({len(shapes)} tensors, fresh grads)"] = t_torch
        rows["fusedopt.Adam.step (NumPy list), same shapes"] = t_np
        rows["  per-tensor cost of torch tensors over NumPy arrays"] = (t_torch - t_np) / len(shapes)

        if not args.no_deepspeed:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            try:
                from fusedopt.bench import ds_adam

                op = ds_adam.load()
            except Exception as exc:
                op = None
                print(f"# DeepSpeed skipped: {exc}", file=sys.stderr)
            if op is None:
                print(f"# DeepSpeed skipped: {ds_adam.status().get('reason', 'not available')}", file=sys.stderr)
            else:
                tp, tg, tm, tv = (torch.zeros(16) for _ in range(4))
                tg += 1.0
                op.create_adam(99, 1e-3, 0.9, 0.999, 1e-8, 0.0, True, False)
                rows["DeepSpeed raw adam_update, 16 elements"] = best_us(
                    lambda: op.adam_update(99, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0, True, tp, tg, tm, tv), n, rounds
                )
                dw = torch.nn.Parameter(torch.zeros(16))
                dopt = ds_adam.adam_class()([dw], lr=1e-3)

                def ds_step() -> None:
                    dw.grad = grad.clone()
                    dopt.step()

                rows["DeepSpeedCPUAdam.step, one 16-element parameter (incl. clone)"] = best_us(ds_step, n // 5, rounds)

    width = max(map(len, rows))
    for k, t in rows.items():
        print(f"{k:<{width}}  {t:9.2f} us")
    base = rows["_core.adam raw binding, 16 elements"]
    print(f"\nratios to the raw binding in this run: functional {rows['functional.adam with keywords, 16 elements'] / base:.2f}x "
          f"(its Python function {rows['  the same through its generated Python function'] / base:.2f}x), "
          f"class step {rows['fusedopt.Adam.step, one 16-element parameter'] / base:.2f}x")  # fmt: skip
    ds = rows.get("DeepSpeed raw adam_update, 16 elements")
    if ds is not None:
        print(f"ratios to DeepSpeed's raw adam_update: functional {rows['functional.adam with keywords, 16 elements'] / ds:.2f}x, "
              f"raw binding {base / ds:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
