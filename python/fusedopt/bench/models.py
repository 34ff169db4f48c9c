"""Whole-model steps: one float32 step of an algorithm over a model's parameter list, per contender.

Adam has every contender (fusedopt's NumPy list, arena and one flat buffer, fusedopt.torch,
torch.optim fused / foreach / for-loop, DeepSpeedCPUAdam); any other algorithm runs the torch
drop-in :mod:`fusedopt.torch` against torch.optim's implementations of it (:class:`ModelOptimizer`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import functional
from ..algorithms import ZEROS
from ..arena import FlatParams
from ..optimizers import Adam
from . import ds_adam
from .contenders import TORCH_MODES, torch_mode_kwargs
from .run import fastest_torch
from .specs import SPECS
from .timing import calibrate, interleaved, log, paired, summary
from .verify import mismatch

__all__ = ["MODEL_ALGORITHMS", "MODEL_CONTENDERS", "MODEL_SHAPES", "ModelOptimizer", "Shape", "digits_mlp_shapes",
           "model_optimizer", "models_benchmark", "print_models", "resnet18_shapes", "transformer_shapes"]  # fmt: skip

Shape = Tuple[int, ...]

#: the hyperparameters of every model contender (torch's Adam defaults otherwise)
LR = 1e-3
#: tolerance of each model contender's parameters after one step against the fusedopt list's (verify.mismatch)
#: (other algorithms: every contender's parameters, or their change, within "rel" of torch.optim's
#: for-loop step's, torch's CPU default)
MODEL_TOLERANCE = {"fusedopt-arena": "exact", "fusedopt.torch": "exact", "torch-fused": "rel", "torch-foreach": "rel",
                   "torch-forloop": "rel", "deepspeed-step": "norm"}  # fmt: skip
#: display order of the model contenders
MODEL_CONTENDERS = ("fusedopt", "fusedopt-arena", "fusedopt-flat", "fusedopt.torch", "torch-fused", "torch-foreach",
                    "torch-forloop", "deepspeed-step")  # fmt: skip


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


@dataclass(frozen=True)
class ModelOptimizer:
    """How torch code steps a model with one algorithm: the class of :mod:`fusedopt.torch` and of
    torch.optim (the same name: a drop-in; "" when torch.optim has none), the constructor's
    arguments, and which parameters it takes (torch.optim.Muon: 2-D ones only), the others going
    to the optimizer of algorithm ``rest`` (as torch users pair Muon with AdamW), in both contenders."""

    fusedopt_class: str
    torch_class: str
    kwargs: Dict[str, Any]
    takes: Callable[[Shape], bool] = lambda shape: True
    rest: str = ""
    #: fusedopt.torch-only arguments: name -> attribute of torch (Muon's ns_dtype: torch's bfloat16
    #: Newton-Schulz iteration, so that its step is torch's, to the rounding)
    fusedopt_torch_kwargs: Dict[str, str] = field(default_factory=dict)


def _fusedopt_torch_class(name: str) -> str:
    """fusedopt.torch's class of an algorithm of the registry: torch.optim's name when torch has
    it (a drop-in), else the class built from that description (LAMB: ``Lamb``)."""
    import fusedopt.torch as ft

    algo = SPECS[name].algorithm
    if algo.torch_optim:
        return algo.torch_optim
    cls = next((k for k, c in vars(ft).items()
                if isinstance(c, type) and getattr(c.__dict__.get("_algo"), "name", None) == name), None)  # fmt: skip
    if cls is None:
        raise ValueError(f"fusedopt.torch has no optimizer class for {name!r}: no whole-model step")
    return cls


#: the model benchmark's algorithms outside the registry (hand-written front ends)
EXTRA_MODEL_OPTIMIZERS: Dict[str, ModelOptimizer] = {
    "muon": ModelOptimizer("Muon", "Muon", {"lr": 1e-3}, takes=lambda shape: len(shape) == 2, rest="adamw",
                           fusedopt_torch_kwargs={"ns_dtype": "bfloat16"}),
}
#: the algorithms ``--models`` accepts: the registry's (those with a fusedopt.torch class run) and the extras
MODEL_ALGORITHMS: Tuple[str, ...] = tuple(SPECS) + tuple(EXTRA_MODEL_OPTIMIZERS)


def model_optimizer(name: str) -> ModelOptimizer:
    """The :class:`ModelOptimizer` of an algorithm: from the registry and the size benchmark's
    hyperparameters (:data:`fusedopt.bench.specs.BENCHMARKED`), or :data:`EXTRA_MODEL_OPTIMIZERS`."""
    if name in EXTRA_MODEL_OPTIMIZERS:
        return EXTRA_MODEL_OPTIMIZERS[name]
    spec = SPECS[name]
    return ModelOptimizer(_fusedopt_torch_class(name), spec.algorithm.torch_optim, dict(spec.hyper))


#: (step, current parameter values as NumPy arrays); None: a timing reference whose values are not checked
ModelRunner = Tuple[Callable[[], Any], Any]


def _torch_steps(torch: Any, name: str, shapes: List[Shape], ps: List[Any], mode: str) -> Optional[Callable[[], Any]]:
    """One step of algorithm ``name`` on torch parameters ``ps``: fusedopt.torch's (``mode`` "fusedopt")
    or torch.optim's implementation ``mode`` (:data:`~fusedopt.bench.contenders.TORCH_MODES`; a class
    with no implementation choice, torch.optim.Muon, runs as it is in every mode), the parameters
    the algorithm does not take stepped by its ``rest`` (in the same mode). None: not available."""
    import fusedopt.torch as ft

    mo = model_optimizer(name)
    mine = [p for p, s in zip(ps, shapes) if mo.takes(s)]
    steps: List[Callable[[], Any]]
    if mode == "fusedopt":
        extra = {k: getattr(torch, v) for k, v in mo.fusedopt_torch_kwargs.items()}
        steps = [getattr(ft, mo.fusedopt_class)(mine, **mo.kwargs, **extra).step]
    else:
        cls = getattr(torch.optim, mo.torch_class) if mo.torch_class else None
        if cls is None:
            return None
        has_choice = any(k in inspect.signature(cls.__init__).parameters for k in ("fused", "foreach"))
        kw = torch_mode_kwargs(cls, mode) if has_choice else {}
        if kw is None:
            return None
        steps = [cls(mine, **mo.kwargs, **kw).step]
    rest = [(p, s) for p, s in zip(ps, shapes) if not mo.takes(s)]
    if rest:
        other = _torch_steps(torch, mo.rest, [s for _, s in rest], [p for p, _ in rest], mode)
        if other is None:
            return None
        steps.append(other)
    if len(steps) == 1:
        return steps[0]

    def step_all() -> None:
        for step in steps:
            step()

    return step_all


def _functional_step(name: str, values: List[np.ndarray], grads: List[np.ndarray]) -> Optional[List[np.ndarray]]:
    """The parameters after step 1 of :func:`fusedopt.functional.<name>` on copies of ``values``
    (zero states), with the hyperparameters fusedopt.torch's class derives from the benchmark's
    arguments; None when that is not this algorithm's first step (a state not starting at zero,
    not an algorithm of the registry)."""
    import torch

    import fusedopt.torch as ft

    if name not in SPECS:
        return None
    mo, algo = model_optimizer(name), SPECS[name].algorithm
    opt = getattr(ft, mo.fusedopt_class)([torch.nn.Parameter(torch.zeros(1))], **mo.kwargs)
    h = opt._hyper(opt.param_groups[0])
    roles = algo.present_states(h)
    if any(r.init != ZEROS for r in roles):
        return None
    ps = [v.copy() for v in values]
    kw = {a.name: h[a.name] for a in algo.arguments}
    if algo.step_arg:
        kw["step"] = 1
    SPECS[name].functional(ps, list(grads), *([np.zeros_like(v) for v in values] for _ in roles), **kw)
    return ps


def _model_runners(values: List[np.ndarray], grads: List[np.ndarray], torch: Any,
                   use_deepspeed: bool, algorithm: str = "adam") -> Dict[str, ModelRunner]:  # fmt: skip
    """One step of ``algorithm`` per contender on one model's parameter list (fresh copies for
    each), all from the same values, gradients and zero state, step counts starting at 1. Adam
    also has fusedopt's NumPy contenders and DeepSpeed's."""
    runners: Dict[str, ModelRunner] = {}
    if algorithm == "adam":
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
        shapes = [tuple(v.shape) for v in values]

        def torch_params() -> List[Any]:
            ps = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
            for p, g in zip(ps, grads):
                p.grad = torch.from_numpy(g.copy())
            return ps

        def numpy_of(ps: List[Any]) -> Callable[[], List[np.ndarray]]:
            return lambda: [p.detach().numpy() for p in ps]

        for name, mode in (("fusedopt.torch", "fusedopt"), *((f"torch-{m}", m) for m in TORCH_MODES)):
            ps = torch_params()
            step = _torch_steps(torch, algorithm, shapes, ps, mode)
            if step is not None:
                runners[name] = (step, numpy_of(ps))
        cls = ds_adam.adam_class() if use_deepspeed and algorithm == "adam" else None
        if cls is not None:
            ps = torch_params()
            runners["deepspeed-step"] = (cls(ps, lr=LR, bias_correction=True, adamw_mode=True).step, numpy_of(ps))
    return runners


def models_benchmark(models: Sequence[str], rounds: int = 7, use_torch: bool = True,
                     use_deepspeed: bool = True, algorithm: str = "adam") -> List[Dict[str, Any]]:  # fmt: skip
    """float32 whole-model steps of ``algorithm``: for Adam fusedopt (list, arena, one flat buffer
    of the same total size), fusedopt.torch, torch.optim fused, foreach and for-loop,
    DeepSpeedCPUAdam when importable; for the others fusedopt.torch and torch.optim's
    implementations (:func:`model_optimizer`). Interleaved rounds, medians (µs/step). After the
    first step every contender's parameters are compared with the fusedopt list's (Adam,
    :data:`MODEL_TOLERANCE`) or torch.optim's for-loop step's (the others: each parameter or its
    change within "rel", since a step as large as the parameter cancels in ``p``), or, when torch.optim
    has no such class (LAMB, LARS), fusedopt.torch's against the functional step (bitwise): a
    contender that disagrees is reported WRONG and not timed."""
    from .contenders import torch_module

    torch = torch_module() if use_torch else None
    out = []
    for name in models:
        shapes = MODEL_SHAPES[name]()
        rng = np.random.default_rng(0)
        values = [rng.standard_normal(s).astype(np.float32) * np.float32(0.1) for s in shapes]
        grads = [rng.standard_normal(s).astype(np.float32) * np.float32(0.01) for s in shapes]
        n = sum(int(v.size) for v in values)
        runners = _model_runners(values, grads, torch, use_deepspeed and torch is not None, algorithm)
        log(f"models: {algorithm} on {name} ({len(shapes)} tensors, {n} elements): checking, calibrating")
        for step, _ in runners.values():
            step()  # step 1: state allocation, warm-up, and the values checked below
        ref: Optional[str] = next((k for k in ("fusedopt", "torch-forloop") if k in runners), None)
        want = runners[ref][1]() if ref is not None else None
        if want is None and "fusedopt.torch" in runners:  # torch.optim has none (LAMB, LARS)
            ref, want = "fusedopt.functional", _functional_step(algorithm, values, grads)
        exact = ref in ("fusedopt", "fusedopt.functional")
        wrong: Dict[str, str] = {}
        for k, (_, current) in runners.items():
            if current is None or k == ref or want is None:
                continue
            tol = MODEL_TOLERANCE[k] if exact else "rel"
            for i, (got, w, v0) in enumerate(zip(current(), want, values)):
                bad = mismatch(got, w, tol)
                if bad is not None and not exact and mismatch(got - v0, w - v0, tol) is None:
                    bad = None  # against torch: p or its change (p cancels where the step is as large as p)
                if bad is not None:
                    wrong[k] = f"parameter {i} after one step vs {ref}: {bad}"
                    log(f"  WRONG RESULT: {k} on {name}: {wrong[k]} -- not timed")
                    break
        fns = {k: step for k, (step, _) in runners.items() if k not in wrong}
        ks = {k: calibrate(fn) for k, fn in fns.items()}
        samples = interleaved(fns, ks, rounds)
        med = {k: summary(v)["median_s"] * 1e6 for k, v in samples.items()}
        best = {k: min(v) * 1e6 for k, v in samples.items()}
        ratios = {}  # medians of per-round ratios
        if "fusedopt" in samples:
            ratios["list/flat"] = paired(samples["fusedopt"], samples["fusedopt-flat"])
        fastest = fastest_torch(samples)
        for base in ("torch-fused", "deepspeed-step", fastest):
            if base in samples:
                for k in ("fusedopt", "fusedopt-arena", "fusedopt.torch"):
                    if k in samples:
                        ratios[f"{base}/{k}"] = paired(samples[base], samples[k])
        out.append({"model": name, "algorithm": algorithm, "tensors": len(shapes), "elements": n,
                    "us_per_step": med, "best_us": best, "ratios": ratios, "torch_best": fastest,
                    "checked_against": ref if want is not None else None, "wrong": wrong})  # fmt: skip
    return out


def print_models(results: List[Dict[str, Any]]) -> None:
    names = [k for k in MODEL_CONTENDERS if any(k in r["us_per_step"] for r in results)]
    bases = [b for b in ("torch-fused", "deepspeed-step") if b in names]
    short = {"torch-fused": "t.fused", "deepspeed-step": "DS"}
    flat = any("list/flat" in r["ratios"] for r in results)
    print("whole-model float32 step, µs/step (median); ratios (medians of per-round ratios): "
          "list/flat = list time / flat-buffer time, then <base> time / fusedopt time; x torch = time of "
          "torch.optim's fastest implementation in this run (named) / fusedopt.torch's")  # fmt: skip
    print(f"{'algorithm':9s} {'model':12s} {'tensors':>7s} {'elements':>9s} | " + " | ".join(f"{k:>14s}" for k in names)
          + (" | list/flat" if flat else "") + "".join(f" | x {short[b]} (list, arena, fusedopt.torch)" for b in bases)
          + " | x torch (fastest)")  # fmt: skip
    for r in results:
        m = r["us_per_step"]
        cells = " | ".join(f"{m[k]:14.1f}" if k in m else f"{'-':>14s}" for k in names)
        q = r["ratios"]
        line = f"{r.get('algorithm', 'adam'):9s} {r['model']:12s} {r['tensors']:7d} {r['elements']:9d} | {cells}"
        if flat:
            line += f" | {q['list/flat']:9.2f}" if "list/flat" in q else f" | {'-':>9s}"
        for b in bases:
            keys = ("fusedopt", "fusedopt-arena", "fusedopt.torch")
            line += " | " + ", ".join(f"{q[f'{b}/{k}']:.2f}x" if f"{b}/{k}" in q else "-" for k in keys)
        fastest = r.get("torch_best")
        key = f"{fastest}/fusedopt.torch"
        line += f" | {q[key]:.2f}x {str(fastest).replace('torch-', '')}" if key in q else " | -"
        print(line)
    for r in results:
        if r.get("checked_against") is None and len(r["us_per_step"]) > 0:
            print(f"not checked: {r.get('algorithm')} on {r['model']} (no reference step: torch not importable?)")
        for k, why in r.get("wrong", {}).items():
            print(f"WRONG RESULT (not timed): {r.get('algorithm', 'adam')} {r['model']} {k}: {why}")
