"""Worlds of ZeroOptimizer ranks for tests/test_distributed.py (a helper script, not a test module).

``python tests/zero_worker.py OUTDIR WORLD...`` runs each world (:data:`WORLDS`) as processes
forked from this one (torch and fusedopt imported once, before any thread pool starts), with a
FileStore rendezvous in OUTDIR (no ports), on gloo, running its scenarios in order. Every rank
pickles each scenario's results (or its exception) to ``OUTDIR/<scenario><world size>_r<rank>.pkl``;
the launcher waits for each world with a deadline, kills what is left and writes
``OUTDIR/<world>_exit.pkl`` (exit codes, seconds).

Gradients (tests/zero_data.py): the averaged gradient of every step is exactly the same ``A``
for every world size, so the single-process reference steps on ``A``.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import time
import traceback
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist

import fusedopt.torch as ft
from fusedopt.distributed import ZeroOptimizer
from fusedopt.distributed._zero import _probe_elementwise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zero_data import LR, SHAPES, STEPS, grads_for, init_params
from zero_launch import launch

__all__ = ["LR", "SHAPES", "STEPS", "grads_for", "init_params"]

#: option variants per class (classes not listed run with their defaults only)
OPTIONS: Dict[str, List[Dict[str, Any]]] = {
    "SGD": [dict(momentum=0.9, nesterov=True, weight_decay=0.01), dict(momentum=0.9, dampening=0.1, maximize=True)],
    "Momentum": [dict(beta=0.8, bias_correction=True)],
    "RMSprop": [dict(centered=True, momentum=0.5, weight_decay=0.01)],
    "Adam": [dict(amsgrad=True, weight_decay=0.01)],
    "AdamW": [dict(amsgrad=True, maximize=True)],
    "Adagrad": [dict(lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)],
    "Adamax": [dict(weight_decay=0.01)],
    "RAdam": [dict(decoupled_weight_decay=True, weight_decay=0.01)],
    "Lion": [dict(weight_decay=0.1)],
    "Lamb": [dict(weight_decay=0.01, clamp_value=2.0, debias=True)],
    "LARS": [dict(weight_decay=1e-3, momentum=0.8, eta=0.01)],
}


def optimizer_classes() -> List[str]:
    """Every fusedopt.torch optimizer built on the algorithm registry (new ones included)."""
    out: Dict[Any, str] = {}
    for name in ft.__all__:
        c = getattr(ft, name, None)
        if isinstance(c, type) and issubclass(c, ft._FusedOptimizer) and hasattr(c, "_algo") and c not in out:
            out[c] = name
    return list(out.values())


def elementwise_cases() -> Tuple[List[Tuple[str, str, Dict[str, Any], str]], Dict[str, str]]:
    """(cases (id, class name, kwargs, dtype), {refused class: reason})."""
    cases, refused = [], {}
    for name in optimizer_classes():
        cls = getattr(ft, name)
        why = _probe_elementwise(cls, {"lr": LR}, {"lr": LR, **cls([torch.zeros(1)], lr=LR).defaults})
        if why is not None and not cls._algo.trust_ratio:  # (trust ratios: their block sums are exchanged)
            refused[name] = why
            continue
        for v, kw in enumerate([{}] + OPTIONS.get(name, [])):
            for dt in ("float32", "float64"):
                cases.append((f"{name}-{v}-{dt}", name, {"lr": LR, **kw}, dt))
    return cases, refused


def _set_grads(params: List[torch.Tensor], grads: List[np.ndarray]) -> None:
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy())


def _numpy(params: List[torch.Tensor]) -> List[np.ndarray]:
    return [p.detach().numpy().copy() for p in params]


# -- scenarios: one function per world, run on every rank -------------------------------------
def sc_elementwise(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Every element-wise and trust-ratio class with its options, float32 and float64, 20 steps."""
    cases, refused = elementwise_cases()
    out["refused"] = refused
    res = {}
    for seed, (cid, name, kw, dt) in enumerate(cases):
        ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, dt)]
        opt = ZeroOptimizer(ps, getattr(ft, name), threads=1, **kw)
        for t in range(1, STEPS + 1):
            _set_grads(ps, grads_for(seed, t, SHAPES, dt, world, rank)[1])
            opt.step()
        res[cid] = _numpy(ps)
    out["cases"] = cases
    out["params"] = res


def sc_options(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Clipping over two groups and mixed float32/float64; non-finite and found_inf skips."""
    # two groups, float32 and float64 parameters in each, global-norm clipping (active) + clip_value
    dts = ["float32", "float64", "float32", "float64"]
    init = [init_params([s], d, seed=k)[0] for k, (s, d) in enumerate(zip(SHAPES, dts))]
    ps = [torch.from_numpy(a.copy()).requires_grad_() for a in init]
    opt = ZeroOptimizer([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.1, "lr": 0.02}], ft.AdamW,
                        lr=LR, max_grad_norm=5.0, clip_value=0.9)  # fmt: skip
    norms = []
    for t in range(1, STEPS + 1):
        mine = [grads_for(100 + k, t, [s], d, world, rank)[1][0] for k, (s, d) in enumerate(zip(SHAPES, dts))]
        _set_grads(ps, mine)
        opt.step()
        norms.append(opt.last_grad_norm)
    out["clip_params"], out["clip_norms"] = _numpy(ps), norms
    # non-finite gradient on the last rank at step 5 (skip_if_nonfinite), found_inf on rank 0 only at step 9
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, "float32")]
    opt = ZeroOptimizer(ps, ft.Adam, lr=LR, skip_if_nonfinite=True)
    for t in range(1, STEPS + 1):
        g = grads_for(200, t, SHAPES, "float32", world, rank)[1]
        if t == 5 and rank == world - 1:
            g[1].reshape(-1)[17] = np.nan
        _set_grads(ps, g)
        opt.step(found_inf=torch.tensor(1.0 if (t == 9 and rank == 0) else 0.0))
    out["skip_params"], out["skipped"] = _numpy(ps), opt.skipped_steps
    out["threads"] = opt.threads
    # DDP mode: every rank's .grad is already the averaged gradient; clipping on
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, "float32")]
    opt = ZeroOptimizer(ps, ft.AdamW, lr=LR, reduce_grads=False, max_grad_norm=5.0)
    for t in range(1, STEPS + 1):
        _set_grads(ps, grads_for(400, t, SHAPES, "float32", world, rank)[0])
        opt.step()
    out["ddp_params"] = _numpy(ps)
    # the NumPy route over the same group (TorchCommunicator), float64, clipping on
    from fusedopt.distributed import ShardedOptimizer, TorchCommunicator

    nopt = ShardedOptimizer(init_params(SHAPES, "float64"), "adamw", TorchCommunicator(), lr=LR, max_grad_norm=5.0)
    for t in range(1, STEPS + 1):
        assert nopt.step(grads_for(500, t, SHAPES, "float64", world, rank)[1])
    out["numpy_params"] = [a.copy() for a in nopt.params]
    # trust ratios: Lamb in DDP mode with clipping; LARS on the NumPy route with clipping
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, "float32")]
    opt = ZeroOptimizer(ps, ft.Lamb, lr=LR, weight_decay=0.01, reduce_grads=False, max_grad_norm=5.0)
    for t in range(1, STEPS + 1):
        _set_grads(ps, grads_for(410, t, SHAPES, "float32", world, rank)[0])
        opt.step()
    out["lamb_ddp_params"] = _numpy(ps)
    nopt = ShardedOptimizer(init_params(SHAPES, "float64"), "lars", TorchCommunicator(), lr=0.1, momentum=0.9,
                            weight_decay=1e-4, max_grad_norm=5.0)  # fmt: skip
    for t in range(1, STEPS + 1):
        assert nopt.step(grads_for(510, t, SHAPES, "float64", world, rank)[1])
    out["numpy_lars_params"] = [a.copy() for a in nopt.params]


def _ckpt_model(name: str) -> Tuple[str, Dict[str, Any], str]:
    return {"AdamW": ("AdamW", {"lr": LR, "amsgrad": True}, "float32"),
            "SGD": ("SGD", {"lr": LR, "momentum": 0.9}, "float32"),
            "Adagrad": ("Adagrad", {"lr": LR, "initial_accumulator_value": 0.1}, "float64"),
            "NAdam": ("NAdam", {"lr": LR, "momentum_decay": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True},
                      "float32"),
            "Lamb": ("Lamb", {"lr": LR, "weight_decay": 0.01}, "float64")}[name]  # fmt: skip


#: (NAdam: its per-parameter scalar state mu_product goes through the checkpoint too; Lamb: a trust ratio)
CKPT = ("AdamW", "SGD", "Adagrad", "NAdam", "Lamb")


def sc_save(rank: int, world: int, out: Dict[str, Any]) -> None:
    """10 steps, consolidate on rank 0 and save (and every rank's shard), then 10 more."""
    for name in CKPT:
        cls, kw, dt = _ckpt_model(name)
        ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, dt)]
        opt = ZeroOptimizer(ps, getattr(ft, cls), **kw)
        for t in range(1, STEPS + 1):
            if t == 11:
                opt.consolidate_state_dict(to=0)
                out[f"{name}_shard"] = opt.shard_state_dict()
                out[f"{name}_at10"] = _numpy(ps)
                if rank == 0:
                    out[f"{name}_sd"] = opt.state_dict()
                else:
                    try:
                        opt.state_dict()
                    except RuntimeError as e:
                        out[f"{name}_not_consolidated"] = str(e)
            _set_grads(ps, grads_for(300, t, SHAPES, dt, world, rank)[1])
            opt.step()
        out[f"{name}_final"] = _numpy(ps)


def sc_resume(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Load the consolidated state dict saved by the 2-rank world and run steps 11 to 20."""
    with open(os.path.join(os.environ["ZERO_OUT"], "save2_r0.pkl"), "rb") as f:
        saved = pickle.load(f)
    for name in CKPT:
        cls, kw, dt = _ckpt_model(name)
        ps = [torch.from_numpy(a.copy()).requires_grad_() for a in saved[f"{name}_at10"]]
        opt = ZeroOptimizer(ps, getattr(ft, cls), **kw)
        opt.load_state_dict(saved[f"{name}_sd"])
        for t in range(11, STEPS + 1):
            _set_grads(ps, grads_for(300, t, SHAPES, dt, world, rank)[1])
            opt.step()
        out[f"{name}_final"] = _numpy(ps)


#: low precision: bfloat16/float16 parameters with or without master weights, bfloat16 states:
#: (id, class, kwargs, dtype, ZeroOptimizer-only kwargs)
LOWP_CASES: List[Tuple[str, str, Dict[str, Any], str, Dict[str, Any]]] = [
    ("AdamW-bf16-fp32", "AdamW", {"lr": LR, "weight_decay": 0.01, "master_weights": "fp32"}, "bfloat16", {}),
    ("RMSprop-bf16-fp32", "RMSprop", {"lr": LR, "momentum": 0.5, "master_weights": "fp32"}, "bfloat16", {}),
    ("Adam-fp16-fp32", "Adam", {"lr": LR, "master_weights": "fp32"}, "float16", {}),
    ("AdamW-bf16-split", "AdamW", {"lr": LR, "master_weights": "split"}, "bfloat16", {}),
    ("AdamW-bf16-ddp", "AdamW", {"lr": LR, "master_weights": "fp32"}, "bfloat16", {"reduce_grads": False}),
    ("AdamW-bf16-clip", "AdamW", {"lr": LR, "master_weights": "fp32"}, "bfloat16", {"max_grad_norm": 5.0}),
    ("AdamW-f32-bf16states", "AdamW", {"lr": LR, "weight_decay": 0.01, "state_dtype": "bfloat16"}, "float32", {}),
    ("Adam-bf16-fp32-bf16states", "Adam", {"lr": LR, "master_weights": "fp32", "state_dtype": "bfloat16"},
     "bfloat16", {}),
    ("Lion-bf16-nomaster", "Lion", {"lr": LR}, "bfloat16", {}),  # (bfloat16 states, as torch.optim)
    ("AdamW-f32-8bit", "AdamW", {"lr": LR, "state_dtype": "8bit", "min_8bit_size": 0}, "float32", {}),
    ("AdamW-bf16-fp32-8bit-ddp", "AdamW", {"lr": LR, "master_weights": "fp32", "state_dtype": "8bit",
                                          "min_8bit_size": 0}, "bfloat16", {"reduce_grads": False}),  # fmt: skip
    ("Adagrad-f32-8bit", "Adagrad", {"lr": LR, "initial_accumulator_value": 0.1, "state_dtype": "8bit",
                                     "min_8bit_size": 0}, "float32", {}),  # fmt: skip
    # stochastic rounding: an element's random bits are keyed by its position in its parameter
    ("AdamW-bf16-sr", "AdamW", {"lr": LR, "weight_decay": 0.01, "stochastic_rounding": True, "seed": 11}, "bfloat16",
     {}),
    ("Lion-bf16-sr-ddp", "Lion", {"lr": LR, "stochastic_rounding": True, "seed": 5}, "bfloat16",
     {"reduce_grads": False}),
    ("SGD-bf16-sr", "SGD", {"lr": LR, "momentum": 0.9, "stochastic_rounding": True, "seed": 7}, "bfloat16", {}),
]


def lowp_grads(seed: int, step: int, dtype: str, world: int, rank: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(averaged gradients A, this rank's) as bfloat16/float16 tensors: multiples of 1/16 in [-1, 1),
    rank 0's ``W*A - (W-1)*B`` has at most 7 significant bits (exact in bfloat16 and float16), so the
    float32 sum over ranks is exact and the averaged gradient is exactly A."""
    rng = np.random.default_rng([seed, step])
    a = [(rng.integers(-16, 16, s) / 16).astype(np.float32) for s in SHAPES]
    b = [(rng.integers(-16, 16, s) / 16).astype(np.float32) for s in SHAPES]
    mine = [x * world - y * (world - 1) for x, y in zip(a, b)] if rank == 0 else b
    dt = getattr(torch, dtype)
    return [torch.from_numpy(x).to(dt) for x in a], [torch.from_numpy(x).to(dt) for x in mine]


def lowp_params(dtype: str) -> List[torch.Tensor]:
    return [torch.from_numpy(a).to(getattr(torch, dtype)) for a in init_params(SHAPES, "float32")]


def _f32(params: List[torch.Tensor]) -> List[np.ndarray]:
    return [p.detach().float().numpy().copy() for p in params]


def sc_lowp(rank: int, world: int, out: Dict[str, Any]) -> None:
    """bfloat16/float16 parameters with master weights, 20 steps, consolidated at step 10; worlds other
    than 2 also resume from the 2-rank world's consolidated state dict at step 10."""
    for seed, (cid, name, kw, dt, zkw) in enumerate(LOWP_CASES):
        ps = [p.requires_grad_() for p in lowp_params(dt)]
        opt = ZeroOptimizer(ps, getattr(ft, name), threads=1, **zkw, **kw)
        for t in range(1, STEPS + 1):
            if t == 11:
                opt.consolidate_state_dict(to=0)
                out[f"{cid}_at10"] = [p.detach().clone() for p in ps]
                if rank == 0:
                    out[f"{cid}_sd"] = opt.state_dict()
                out[f"{cid}_bytes"] = opt.state_bytes()
            avg, mine = lowp_grads(600 + seed, t, dt, world, rank)
            for p, g in zip(ps, avg if zkw.get("reduce_grads") is False else mine):
                p.grad = g.clone()
            opt.step()
        out[f"{cid}_final"] = _f32(ps)
        if world != 2:
            with open(os.path.join(os.environ["ZERO_OUT"], "lowp2_r0.pkl"), "rb") as f:
                saved = pickle.load(f)
            ps = [p.clone().requires_grad_() for p in saved[f"{cid}_at10"]]
            opt = ZeroOptimizer(ps, getattr(ft, name), threads=1, **zkw, **kw)
            opt.load_state_dict(saved[f"{cid}_sd"])
            for t in range(11, STEPS + 1):
                avg, mine = lowp_grads(600 + seed, t, dt, world, rank)
                for p, g in zip(ps, avg if zkw.get("reduce_grads") is False else mine):
                    p.grad = g.clone()
                opt.step()
            out[f"{cid}_resumed"] = _f32(ps)


def sc_dead(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Rank 1 dies after construction: rank 0's step must raise, not hang."""
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, "float32")]
    opt = ZeroOptimizer(ps, ft.AdamW, lr=LR)
    if rank == 1:
        os._exit(3)
    time.sleep(0.5)
    _set_grads(ps, grads_for(0, 1, SHAPES, "float32", world, rank)[1])
    t0 = time.monotonic()
    try:
        opt.step()
        out["raised"] = None
    except Exception as e:
        out["raised"] = repr(e)
    out["seconds"] = time.monotonic() - t0


def sc_hang(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Rank 1 stays alive but never steps: rank 0 raises after the optimizer's group timeout."""
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES, "float32")]
    opt = ZeroOptimizer(ps, ft.AdamW, lr=LR, timeout=datetime.timedelta(seconds=3))
    if rank == 1:
        time.sleep(120)  # (killed by the launcher)
    _set_grads(ps, grads_for(0, 1, SHAPES, "float32", world, rank)[1])
    t0 = time.monotonic()
    try:
        opt.step()
        out["raised"] = None
    except Exception as e:
        out["raised"] = repr(e)
    out["seconds"] = time.monotonic() - t0


#: scenario name -> function
SCENARIOS = {"elementwise": sc_elementwise, "options": sc_options, "save": sc_save, "resume": sc_resume,
             "lowp": sc_lowp, "dead": sc_dead, "hang": sc_hang}  # fmt: skip
#: world name -> (world size, scenarios run in it in order, deadline in seconds, group timeout); results
#: go to ``<scenario><world size>_r<rank>.pkl``. "save" (2 ranks) runs before the worlds that resume.
WORLDS = {
    "w2": (2, ["elementwise", "options", "save", "lowp"], 300, 60),
    "w3": (3, ["elementwise", "options", "resume", "lowp"], 400, 60),
    "w1": (1, ["elementwise", "options", "resume", "lowp"], 300, 60),
    "dead": (2, ["dead"], 60, 10),
    "hang": (2, ["hang"], 60, 30),
}


def _rank_main(wname: str, rank: int, world: int, outdir: str) -> None:
    _, scenarios, _, timeout = WORLDS[wname]
    try:
        dist.init_process_group("gloo", init_method=f"file://{outdir}/store_{wname}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout))  # fmt: skip
    except BaseException:
        scenarios, failed = [], traceback.format_exc()
        with open(os.path.join(outdir, f"init_{wname}_r{rank}.txt"), "w") as f:
            f.write(failed)
    ok = True
    for sc in scenarios:
        out: Dict[str, Any] = {}
        try:
            SCENARIOS[sc](rank, world, out)
        except BaseException:
            out["error"] = traceback.format_exc()
            ok = False
        with open(os.path.join(outdir, f"{sc}{world}_r{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
        if not ok:  # (the other ranks may be inside a collective: they time out)
            break
    if ok and dist.is_initialized() and wname not in ("dead", "hang"):
        dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    launch(WORLDS, sys.argv[2:], _rank_main, sys.argv[1], rank0_decides=("hang",))
