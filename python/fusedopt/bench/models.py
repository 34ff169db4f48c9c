"""Whole-model steps: one float32 Adam step over a model's parameter list, per contender."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from .. import functional
from ..arena import FlatParams
from ..optimizers import Adam
from . import ds_adam
from .timing import calibrate, interleaved, log, paired, summary
from .verify import mismatch

__all__ = ["MODEL_CONTENDERS", "MODEL_SHAPES", "Shape", "digits_mlp_shapes", "models_benchmark", "print_models",
           "resnet18_shapes", "transformer_shapes"]  # fmt: skip

Shape = Tuple[int, ...]

#: the hyperparameters of every model contender (torch's Adam defaults otherwise)
LR = 1e-3
#: tolerance of each model contender's parameters after one step against the fusedopt list's (verify.mismatch)
MODEL_TOLERANCE = {"fusedopt-arena": "exact", "fusedopt.torch": "exact", "torch-fused": "rel", "torch-foreach": "rel",
                   "deepspeed-step": "norm"}  # fmt: skip
#: display order of the model contenders
MODEL_CONTENDERS = ("fusedopt", "fusedopt-arena", "fusedopt-flat", "fusedopt.torch", "torch-fused", "torch-foreach",
                    "deepspeed-step")  # fmt: skip


def digits_mlp_shapes(hidden: int = 128) -> List[Shape]:
    """The MLP of examples/train_digits.py (64-128-128-10): 6 tensors, 26 122 elements."""
    return [(hidden, 64), (hidden,), (hidden, hidden), (hidden,), (10, hidden), (10,)]


def resnet18_shapes(num_classes: int = 1000) -> List[Shape]:
    """torchvision's ResNet-18 parameter shapes, in ``model.parameters()`` order: 62 tensors, 11 689 512 elements."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            shapes += [(out_ch, in_ch if block == 0 else out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv1, bn1
            shapes += [(out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]  # conv2, bn2
            if block == 0 and (stride != 1 or in_ch != out_ch):
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]  # downsample conv, bn
        in_ch = out_ch
    shapes += [(num_classes, 512), (num_classes,)]  # fc
    return shapes


def transformer_shapes(d_model: int = 64, n_layers: int = 12, vocab: int = 8192, context: int = 512) -> List[Shape]:
    """A small pre-LN GPT-style decoder (separate q/k/v, tied output embedding): 196 tensors, 1 156 992 elements."""
    d = d_model
    shapes: List[Shape] = [(vocab, d), (context, d)]  # token and position embeddings
    for _ in range(n_layers):
        shapes += [(d,), (d,)]  # ln1
        shapes += [(d, d), (d,)] * 3  # q, k, v
        shapes += [(d, d), (d,)]  # attention output projection
        shapes += [(d,), (d,)]  # ln2
        shapes += [(4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # MLP
    shapes += [(d,), (d,)]  # final layer norm
    return shapes


MODEL_SHAPES: Dict[str, Callable[[], List[Shape]]] = {
    "digits-mlp": digits_mlp_shapes,
    "transformer": transformer_shapes,
    "resnet18": resnet18_shapes,
}

#: (step, current parameter values as NumPy arrays); None: a timing reference whose values are not checked
ModelRunner = Tuple[Callable[[], Any], Any]


def _model_runners(values: List[np.ndarray], grads: List[np.ndarray], torch: Any,
                   use_deepspeed: bool) -> Dict[str, ModelRunner]:  # fmt: skip
    """One Adam step per contender on one model's parameter list (fresh copies for each), all from
    the same values, gradients and zero state, step counts starting at 1."""
    runners: Dict[str, ModelRunner] = {}
    list_params = [v.copy() for v in values]
    opt_list = Adam(list_params, lr=LR)
    runners["fusedopt"] = (lambda: opt_list.step(grads), lambda: list_params)
    arena = FlatParams(values)
    for view, g in zip(arena.grads, grads):
        view[...] = g
    runners["fusedopt-arena"] = (Adam(arena, lr=LR).step, lambda: arena.params)
    # timing reference: the same elements as one flat buffer (state not carried like the others)
    flat = [np.concatenate([v.ravel() for v in values])]
    flat_g = [np.concatenate([g.ravel() for g in grads])]
    flat_m, flat_v = [np.zeros_like(flat[0])], [np.zeros_like(flat[0])]
    runners["fusedopt-flat"] = (lambda: functional.adam(flat, flat_g, flat_m, flat_v, step=10, lr=LR), None)
    if torch is not None:
        import fusedopt.torch as ft

        def torch_params() -> List[Any]:
            ps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
            for p, g in zip(ps, grads):
                p.grad = torch.from_numpy(g.copy())
            return ps

        def numpy_of(ps: List[Any]) -> Callable[[], List[np.ndarray]]:
            return lambda: [p.detach().numpy() for p in ps]

        for name, make in (
            ("fusedopt.torch", lambda ps: ft.Adam(ps, lr=LR)),
            ("torch-fused", lambda ps: torch.optim.Adam(ps, lr=LR, fused=True)),
            ("torch-foreach", lambda ps: torch.optim.Adam(ps, lr=LR, foreach=True)),
        ):
            ps = torch_params()
            runners[name] = (make(ps).step, numpy_of(ps))
        cls = ds_adam.adam_class() if use_deepspeed else None
        if cls is not None:
            ps = torch_params()
            runners["deepspeed-step"] = (cls(ps, lr=LR, bias_correction=True, adamw_mode=True).step, numpy_of(ps))
    return runners


def models_benchmark(models: Sequence[str], rounds: int = 7, use_torch: bool = True,
                     use_deepspeed: bool = True) -> List[Dict[str, Any]]:  # fmt: skip
    """float32 Adam whole-model steps: fusedopt (list, arena, one flat buffer of the same total
    size), fusedopt.torch, torch.optim fused and foreach, DeepSpeedCPUAdam when importable;
    interleaved rounds, medians (µs/step). After the first step every contender's parameters are
    compared with the fusedopt list's (:data:`MODEL_TOLERANCE`): a contender that disagrees is
    reported WRONG and not timed."""
    from .contenders import torch_module

    torch = torch_module() if use_torch else None
    out = []
    for name in models:
        shapes = MODEL_SHAPES[name]()
        rng = np.random.default_rng(0)
        values = [rng.standard_normal(s).astype(np.float32) * np.float32(0.1) for s in shapes]
        grads = [rng.standard_normal(s).astype(np.float32) * np.float32(0.01) for s in shapes]
        n = sum(int(v.size) for v in values)
        runners = _model_runners(values, grads, torch, use_deepspeed and torch is not None)
        log(f"models: {name} ({len(shapes)} tensors, {n} elements): checking, calibrating")
        for step, _ in runners.values():
            step()  # step 1: state allocation, warm-up, and the values checked below
        want = runners["fusedopt"][1]()
        wrong: Dict[str, str] = {}
        for k, (_, current) in runners.items():
            if current is None or k == "fusedopt":
                continue
            for i, (got, w) in enumerate(zip(current(), want)):
                bad = mismatch(got, w, MODEL_TOLERANCE[k])
                if bad is not None:
                    wrong[k] = f"parameter {i} after one step vs the fusedopt list: {bad}"
                    log(f"  WRONG RESULT: {k} on {name}: {wrong[k]} -- not timed")
                    break
        fns = {k: step for k, (step, _) in runners.items() if k not in wrong}
        ks = {k: calibrate(fn) for k, fn in fns.items()}
        samples = interleaved(fns, ks, rounds)
        med = {k: summary(v)["median_s"] * 1e6 for k, v in samples.items()}
        best = {k: min(v) * 1e6 for k, v in samples.items()}
        ratios = {"list/flat": paired(samples["fusedopt"], samples["fusedopt-flat"])}  # medians of per-round ratios
        for base in ("torch-fused", "deepspeed-step"):
            if base in samples:
                for k in ("fusedopt", "fusedopt-arena", "fusedopt.torch"):
                    if k in samples:
                        ratios[f"{base}/{k}"] = paired(samples[base], samples[k])
        out.append({"model": name, "tensors": len(shapes), "elements": n, "us_per_step": med, "best_us": best,
                    "ratios": ratios, "wrong": wrong})  # fmt: skip
    return out


def print_models(results: List[Dict[str, Any]]) -> None:
    names = [k for k in MODEL_CONTENDERS if any(k in r["us_per_step"] for r in results)]
    bases = [b for b in ("torch-fused", "deepspeed-step") if b in names]
    short = {"torch-fused": "t.fused", "deepspeed-step": "DS"}
    print("whole-model float32 Adam step, µs/step (median); ratios (medians of per-round ratios): "
          "list/flat = list time / flat-buffer time, then <base> time / fusedopt time")  # fmt: skip
    print(f"{'model':12s} {'tensors':>7s} {'elements':>9s} | " + " | ".join(f"{k:>14s}" for k in names)
          + " | list/flat" + "".join(f" | x {short[b]} (list, arena, fusedopt.torch)" for b in bases))  # fmt: skip
    for r in results:
        m = r["us_per_step"]
        cells = " | ".join(f"{m[k]:14.1f}" if k in m else f"{'-':>14s}" for k in names)
        q = r["ratios"]
        line = f"{r['model']:12s} {r['tensors']:7d} {r['elements']:9d} | {cells} | {q['list/flat']:9.2f}"
        for b in bases:
            keys = ("fusedopt", "fusedopt-arena", "fusedopt.torch")
            line += " | " + ", ".join(f"{q[f'{b}/{k}']:.2f}x" if f"{b}/{k}" in q else "-" for k in keys)
        print(line)
    for r in results:
        for k, why in r.get("wrong", {}).items():
            print(f"WRONG RESULT (not timed): {r['model']} {k}: {why}")
