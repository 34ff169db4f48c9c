"""Worlds of whole-parameter ZeroOptimizer ranks (Muon, Adafactor) for tests/test_distributed_whole.py
(a helper script, not a test module).

``python tests/zero_whole_worker.py OUTDIR WORLD...`` runs each world (:data:`WORLDS`) as processes
forked from this one, with a FileStore rendezvous in OUTDIR, on gloo, running its scenarios in
order; every rank pickles each scenario's results (or its exception) to
``OUTDIR/<scenario><world size>_r<rank>.pkl``; the launcher waits for each world with a deadline,
kills what is left and writes ``OUTDIR/<world>_exit.pkl``.

Gradients: tests/zero_data.py's ``grads_for``: the averaged gradient of every step is exactly the
same ``A`` for every world size, so the single-process reference steps on ``A``. torch's intra-op
thread count is 1 on every rank and in the reference (Muon's Newton-Schulz runs torch.mm).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zero_data import grads_for, init_params
from zero_launch import launch

STEPS = 6
#: Muon: 2-D only (one taller than wide: the transposed iteration); Adafactor: 1-D, 2-D and 3-D
SHAPES = {"Muon": [(24, 16), (16, 30), (8, 8), (5, 12), (12, 5)],
          "Adafactor": [(40,), (12, 10), (3, 4, 5), (7,), (6, 9)]}  # fmt: skip

#: (case id, class, dtype, param group split (None: one group), per-group overrides, class kwargs,
#: ZeroOptimizer kwargs, grad scale multiplying every rank's gradient (None: none))
Case = Tuple[str, str, str, Any, List[Dict[str, Any]], Dict[str, Any], Dict[str, Any], Any]
CASES: List[Case] = []
for _dt in ("float32", "float64"):
    CASES += [
        (f"muon-default-{_dt}", "Muon", _dt, None, [], {"lr": 0.02}, {}, None),
        (f"muon-plain-wd-adjust-{_dt}", "Muon", _dt, 2, [{}, {"lr": 0.05, "weight_decay": 0.0}],
         {"lr": 0.02, "nesterov": False, "weight_decay": 0.01, "adjust_lr_fn": "match_rms_adamw"}, {}, None),
        (f"adafactor-default-{_dt}", "Adafactor", _dt, None, [], {"lr": 0.01}, {}, None),
        (f"adafactor-wd-max-{_dt}", "Adafactor", _dt, 3, [{}, {"lr": 0.02, "maximize": False}],
         {"lr": 0.01, "weight_decay": 0.1, "maximize": True}, {}, None),
    ]
CASES += [  # global-norm clipping (active), grad_scale, clip_value, DDP mode
    ("muon-clip-scale-float32", "Muon", "float32", None, [], {"lr": 0.02}, {"max_grad_norm": 3.0}, 8.0),
    ("adafactor-clip-value-float64", "Adafactor", "float64", None, [], {"lr": 0.01},
     {"max_grad_norm": 4.0, "clip_value": 0.5}, None),
    ("muon-ddp-float32", "Muon", "float32", None, [], {"lr": 0.02, "nesterov": False},
     {"reduce_grads": False, "max_grad_norm": 3.0}, None),
]


def make_params(case: Case) -> List[torch.Tensor]:
    _, name, dt, _, _, _, _, _ = case
    return [torch.from_numpy(a).requires_grad_() for a in init_params(SHAPES[name], dt)]


def groups_of(case: Case, ps: List[torch.Tensor]) -> Any:
    split, over = case[3], case[4]
    if split is None:
        return ps
    return [{"params": ps[:split], **over[0]}, {"params": ps[split:], **over[1]}]


def case_grads(seed: int, case: Case, step: int, world: int, rank: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(averaged gradients A, this rank's gradients; scaled by the case's grad scale)."""
    a, mine = grads_for(seed, step, SHAPES[case[1]], case[2], world, rank)
    if case[7] is not None:  # (a power of two: exact)
        a = [x * x.dtype.type(case[7]) for x in a]
        mine = [x * x.dtype.type(case[7]) for x in mine]
    return a, mine


def _set(ps: List[torch.Tensor], grads: List[np.ndarray]) -> None:
    for p, g in zip(ps, grads):
        p.grad = torch.from_numpy(g.copy())


def _numpy(ps: List[torch.Tensor]) -> List[np.ndarray]:
    return [p.detach().numpy().copy() for p in ps]


def _make(case: Case, ps: List[torch.Tensor]) -> Any:
    return ZeroOptimizer(groups_of(case, ps), getattr(ft, case[1]), threads=1, **case[6], **case[5])


def _step(opt: Any, case: Case, seed: int, t: int, world: int, rank: int) -> None:
    avg, mine = case_grads(seed, case, t, world, rank)
    _set(opt_params(opt), avg if case[6].get("reduce_grads") is False else mine)
    opt.step(grad_scale=case[7])


def opt_params(opt: Any) -> List[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


# -- scenarios: one function per world, run on every rank -------------------------------------
def sc_parity(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Every case, STEPS steps: final parameters, state bytes, owners, last norm."""
    for seed, case in enumerate(CASES):
        ps = make_params(case)
        opt = _make(case, ps)
        for t in range(1, STEPS + 1):
            _step(opt, case, seed, t, world, rank)
        out[case[0]] = {"params": _numpy(ps), "bytes": opt.state_bytes(), "owners": list(opt.owners),
                        "norm": opt.last_grad_norm, "type": type(opt).__name__}  # fmt: skip


def sc_skip(rank: int, world: int, out: Dict[str, Any]) -> None:
    """found_inf on rank 0 only at step 2; a NaN gradient on the last rank at step 4 with
    skip_if_nonfinite: every rank skips both."""
    case = CASES[0]
    ps = make_params(case)
    opt = ZeroOptimizer(ps, ft.Muon, lr=0.02, skip_if_nonfinite=True, threads=1)
    for t in range(1, STEPS + 1):
        mine = case_grads(0, case, t, world, rank)[1]
        if t == 4 and rank == world - 1:
            mine[1][2, 3] = np.nan
        _set(ps, mine)
        opt.step(found_inf=torch.tensor(1.0 if (t == 2 and rank == 0) else 0.0))
    out["params"], out["skipped"] = _numpy(ps), opt.skipped_steps


#: Adafactor with eps=(None, 1e-3) over one group of a small float32 and a large float64 parameter:
#: torch takes eps1 from the group's first parameter (float32's machine epsilon), also on the rank
#: that owns only the float64 one
MIXED = [((7,), "float32"), ((12, 10), "float64"), ((3, 4, 5), "float32")]


def mixed_params() -> List[torch.Tensor]:
    return [torch.from_numpy(init_params([s], d, seed=k)[0]).requires_grad_() for k, (s, d) in enumerate(MIXED)]


def mixed_grads(t: int, world: int, rank: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The float64 parameter's gradients are scaled by 2**-30 (exact): their squares are below
    float32's eps1**2, so the clamp by eps1 decides its update."""
    got = [grads_for(300 + k, t, [s], d, world, rank) for k, (s, d) in enumerate(MIXED)]
    f = [1.0 if d == "float32" else 2.0**-30 for _, d in MIXED]
    return [a[0] * x for (a, _), x in zip(got, f)], [m[0] * x for (_, m), x in zip(got, f)]


def sc_mixed(rank: int, world: int, out: Dict[str, Any]) -> None:
    ps = mixed_params()
    opt = ZeroOptimizer(ps, ft.Adafactor, lr=0.01, threads=1)
    for t in range(1, STEPS + 1):
        _set(ps, mixed_grads(t, world, rank)[1])
        opt.step()
    out["params"], out["owners"] = _numpy(ps), list(opt.owners)


def sc_few(rank: int, world: int, out: Dict[str, Any]) -> None:
    """Fewer parameters than ranks (the last rank owns none), two groups, one of them empty on
    some rank: steps, consolidation."""
    ps = [torch.from_numpy(a).requires_grad_() for a in init_params([(6, 4), (3, 5)], "float64")]
    opt = ZeroOptimizer([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], ft.Muon, lr=0.02, threads=1)
    for t in range(1, STEPS + 1):
        _set(ps, grads_for(400, t, [(6, 4), (3, 5)], "float64", world, rank)[1])
        opt.step()
    opt.consolidate_state_dict(to=world - 1)
    out["params"], out["owners"], out["bytes"] = _numpy(ps), list(opt.owners), opt.state_bytes()
    if rank == world - 1:
        out["sd"] = opt.state_dict()


#: the cases saved on 2 ranks after step 3 and resumed on 3 ranks and 1 process
SAVE_CASES = [CASES[1], CASES[3]]
SAVE_AT = 3


def sc_save(rank: int, world: int, out: Dict[str, Any]) -> None:
    for case in SAVE_CASES:
        seed = CASES.index(case)
        ps = make_params(case)
        opt = _make(case, ps)
        for t in range(1, SAVE_AT + 1):
            _step(opt, case, seed, t, world, rank)
        out[case[0] + "_shard"] = opt.shard_state_dict()
        opt.consolidate_state_dict(to=world - 1)
        if rank == world - 1:
            out[case[0] + "_sd"] = opt.state_dict()
        out[case[0] + "_params"] = [p.detach().clone() for p in ps]


def sc_resume(rank: int, world: int, out: Dict[str, Any]) -> None:
    with open(os.path.join(os.environ["ZERO_OUT"], "save2_r1.pkl"), "rb") as f:
        saved = pickle.load(f)
    for case in SAVE_CASES:
        seed = CASES.index(case)
        ps = [p.clone().requires_grad_() for p in saved[case[0] + "_params"]]
        opt = _make(case, ps)
        opt.load_state_dict(saved[case[0] + "_sd"])
        for t in range(SAVE_AT + 1, STEPS + 1):
            _step(opt, case, seed, t, world, rank)
        out[case[0]] = _numpy(ps)


def _lost_peer(rank: int, out: Dict[str, Any], how: str) -> None:
    """Rank 1 dies after construction ("dead") or never steps ("hang", the optimizer's 3 s group
    timeout): rank 0's step must raise in bounded time, not hang."""
    case = CASES[0]
    ps = make_params(case)
    opt = ZeroOptimizer(ps, ft.Muon, lr=0.02, threads=1, timeout=datetime.timedelta(seconds=3))
    if rank == 1:
        if how == "dead":
            os._exit(3)
        time.sleep(120)  # (killed by the launcher)
    time.sleep(0.5)
    _set(ps, case_grads(0, case, 1, 2, rank)[1])
    t0 = time.monotonic()
    try:
        opt.step()
        out["raised"] = None
    except Exception as e:
        out["raised"] = repr(e)
    out["seconds"] = time.monotonic() - t0


def sc_dead(rank: int, world: int, out: Dict[str, Any]) -> None:
    _lost_peer(rank, out, "dead")


def sc_hang(rank: int, world: int, out: Dict[str, Any]) -> None:
    _lost_peer(rank, out, "hang")


SCENARIOS = {"parity": sc_parity, "skip": sc_skip, "save": sc_save, "resume": sc_resume, "mixed": sc_mixed, "few": sc_few,
             "dead": sc_dead, "hang": sc_hang}  # fmt: skip
#: world name -> (world size, scenarios in order, deadline in seconds, group timeout in seconds)
WORLDS = {
    "w2": (2, ["parity", "skip", "save", "mixed"], 120, 30),
    "w3": (3, ["parity", "skip", "resume", "mixed", "few"], 120, 30),
    "w1": (1, ["parity", "skip", "resume", "mixed"], 120, 30),
    "dead": (2, ["dead"], 60, 10),
    "hang": (2, ["hang"], 60, 30),
}


def _rank_main(wname: str, rank: int, world: int, outdir: str) -> None:
    torch.set_num_threads(1)
    _, scenarios, _, timeout = WORLDS[wname]
    try:
        dist.init_process_group("gloo", init_method=f"file://{outdir}/store_{wname}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout))  # fmt: skip
    except BaseException:
        scenarios = []
        with open(os.path.join(outdir, f"init_{wname}_r{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
    for sc in scenarios:
        out: Dict[str, Any] = {}
        ok = True
        try:
            SCENARIOS[sc](rank, world, out)
        except BaseException:
            out["error"] = traceback.format_exc()
            ok = False
        with open(os.path.join(outdir, f"{sc}{world}_r{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
        if not ok:  # (the other ranks may be inside a collective: they time out)
            break
    else:
        if dist.is_initialized() and wname not in ("dead", "hang"):
            dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    launch(WORLDS, sys.argv[2:], _rank_main, sys.argv[1], rank0_decides=("hang",))
